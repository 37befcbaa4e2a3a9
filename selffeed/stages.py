"""The loop's stages as plain functions over a config, a run layout and upstream manifests.

Each stage reads its inputs from disk, writes its outputs atomically to the paths the layout gives,
and returns a :class:`~selffeed.manifest.Manifest`. Prefect tasks wrap these one-to-one; a notebook
can call them directly::

    cfg = load_config("data/configs/arithmetic.yaml")
    data = prepare(cfg)
    model = finetune(cfg, data)
    metrics = validate(cfg, 0, model, data)
"""

from __future__ import annotations

import time
from typing import Any

import pandas as pd
import torch

from selffeed import schema
from selffeed.config import RunConfig, dump_config
from selffeed.filters import apply_filters
from selffeed.finetune import train
from selffeed.layout import RunLayout, read_json, write_json, write_text
from selffeed.loop import best_round, stop_reason, training_mix
from selffeed.manifest import Manifest, make_manifest
from selffeed.model import load_checkpoint, save_checkpoint, tiny_gpt2, char_tokenizer
from selffeed.recipes import recipe_for
from selffeed.sample import sample_completions, samples_frame
from selffeed.validate import evaluate


def layout_of(cfg: RunConfig) -> RunLayout:
    return RunLayout.of(cfg.runs_dir, cfg.name)


def _threads(cfg: RunConfig) -> None:
    # Results depend on the thread count, so every stage pins it rather than inheriting it.
    torch.set_num_threads(cfg.threads)


def prepare(cfg: RunConfig) -> Manifest:
    """Write the labelled seed, the unlabelled pool and the held-out test split, and the config."""
    t0 = time.perf_counter()
    lay = layout_of(cfg)
    write_text(lay.config, dump_config(cfg))
    splits = recipe_for(cfg).make_splits(cfg.seed)
    rows = {}
    rows["seed"] = schema.write(splits["seed"], schema.LABELLED, lay.split("seed"))
    rows["test"] = schema.write(splits["test"], schema.LABELLED, lay.split("test"))
    rows["pool"] = schema.write(splits["pool"], schema.POOL, lay.split("pool"))
    return make_manifest(
        "prepare",
        {s: lay.split(s) for s in ("seed", "pool", "test")},
        rows=sum(rows.values()),
        split_rows=rows,
        seconds=time.perf_counter() - t0,
    )


def _base_model(cfg: RunConfig):
    if cfg.model.path:
        return load_checkpoint(cfg.model.path)
    tokenizer = char_tokenizer(recipe_for(cfg).chars)
    return tiny_gpt2(cfg.model, tokenizer, seed=cfg.seed), tokenizer


def _train_and_save(cfg: RunConfig, r: int, model, tokenizer, mix: pd.DataFrame, train_cfg, n_kept: int) -> Manifest:
    t0 = time.perf_counter()
    stats = train(model, tokenizer, mix, train_cfg, seed=cfg.seed * 1000 + r, desc=f"train r{r}")
    path = layout_of(cfg).model(r)
    save_checkpoint(model, tokenizer, path)
    return make_manifest(
        "finetune" if r == 0 else "retrain",
        {"model": path},
        round_=r,
        rows=len(mix),
        train_size=len(mix),
        generated_rows=int((mix["source"] == "generated").sum()) if "source" in mix else 0,
        kept_new=n_kept,
        train_loss=stats.final_loss,
        train_tokens=stats.tokens,
        steps=stats.steps,
        seconds=time.perf_counter() - t0,
    )


def finetune(cfg: RunConfig, data: Manifest) -> Manifest:
    """Round 0: fine-tune the base model (local checkpoint or tiny GPT-2) on the labelled seed."""
    _threads(cfg)
    model, tokenizer = _base_model(cfg)
    seed = schema.read(data.path("seed"), schema.LABELLED).assign(source="seed")
    return _train_and_save(cfg, 0, model, tokenizer, seed, cfg.finetune, 0)


def sample(cfg: RunConfig, r: int, model: Manifest, data: Manifest) -> Manifest:
    """Draw ``cfg.sample.k`` completions per prompt of round ``r``'s pool slice from ``model``."""
    _threads(cfg)
    t0 = time.perf_counter()
    lay = layout_of(cfg)
    recipe = recipe_for(cfg)
    pool = schema.read(data.path("pool"), schema.POOL)
    n_slices = int(pool["slice"].max()) + 1
    pool = pool[pool["slice"] == (r - 1) % n_slices].reset_index(drop=True)
    lm, tokenizer = load_checkpoint(model.path("model"))
    seed = cfg.seed * 1000 + r
    done = sample_completions(lm, tokenizer, list(pool["prompt"]), cfg.sample, seed, recipe.max_new_tokens)
    df = samples_frame(
        pool, done, recipe.parse_answer, round_=r, model_id=lay.model_id(model.round or 0), cfg=cfg.sample, seed=seed
    )
    n = schema.write(df, schema.SAMPLES, lay.samples(r))
    seconds = time.perf_counter() - t0
    return make_manifest(
        "sample",
        {"samples": lay.samples(r)},
        round_=r,
        rows=n,
        prompts=len(pool),
        parsed=float(df["answer"].notna().mean()) if n else 0.0,
        tokens=int(df["n_tokens"].sum()),
        tokens_per_s=float(df["n_tokens"].sum()) / max(seconds, 1e-9),
        seconds=seconds,
    )


def filter_samples(cfg: RunConfig, r: int, samples: Manifest) -> Manifest:
    """Keep what the configured filters accept; never looks at true answers."""
    t0 = time.perf_counter()
    df = schema.read(samples.path("samples"), schema.SAMPLES)
    kept = apply_filters(df, cfg.filter)
    path = layout_of(cfg).kept(r)
    n = schema.write(kept, schema.KEPT, path)
    return make_manifest(
        "filter",
        {"kept": path},
        round_=r,
        rows=n,
        kept_prompts=int(kept["prompt_id"].nunique()),
        mean_agreement=float(kept["agreement"].mean()) if n else 0.0,
        seconds=time.perf_counter() - t0,
    )


def retrain(cfg: RunConfig, r: int, previous: Manifest, data: Manifest, kept: list[Manifest]) -> Manifest:
    """Continue training round ``r-1``'s model on the mix of seed data and kept generations."""
    _threads(cfg)
    seed = schema.read(data.path("seed"), schema.LABELLED)
    kept_frames = [schema.read(k.path("kept"), schema.KEPT) for k in kept]
    mix = training_mix(seed, kept_frames, cfg.loop)
    model, tokenizer = load_checkpoint(previous.path("model"))
    return _train_and_save(cfg, r, model, tokenizer, mix, cfg.retrain, len(kept_frames[-1]) if kept_frames else 0)


def kept_precision(cfg: RunConfig, kept: pd.DataFrame) -> float | None:
    """Share of kept rows whose answer is right, from the recipe's hidden truth (reporting only)."""
    if kept.empty:
        return None
    recipe = recipe_for(cfg)
    truth = [recipe.parse_answer(recipe.true_completion(p)) for p in kept["prompt"]]
    return float(sum(a == t for a, t in zip(kept["answer"], truth)) / len(kept))


def validate(
    cfg: RunConfig, r: int, model: Manifest, data: Manifest, upstream: list[Manifest] | None = None
) -> Manifest:
    """Held-out metrics of round ``r``'s model, with the round's figures, written to ``metrics.json``."""
    _threads(cfg)
    t0 = time.perf_counter()
    lay = layout_of(cfg)
    recipe = recipe_for(cfg)
    lm, tokenizer = load_checkpoint(model.path("model"))
    test = schema.read(data.path("test"), schema.LABELLED)
    metrics: dict[str, Any] = {"round": r, "model_id": lay.model_id(r)}
    metrics.update(evaluate(lm, tokenizer, test, recipe.parse_answer, recipe.max_new_tokens))
    metrics["train_size"] = model.meta.get("train_size")
    metrics["train_loss"] = model.meta.get("train_loss")
    times = {model.stage: round(model.meta["seconds"], 3)}
    for m in upstream or []:
        times[m.stage] = round(m.meta["seconds"], 3)
        if m.stage == "sample":
            metrics["samples"] = m.rows
            metrics["sample_tokens_per_s"] = m.meta["tokens_per_s"]
        if m.stage == "filter":
            kept = schema.read(m.path("kept"), schema.KEPT)
            metrics["kept"] = m.rows
            metrics["kept_precision"] = kept_precision(cfg, kept)
    times["validate"] = round(time.perf_counter() - t0, 3)
    metrics["seconds"] = times
    write_json(lay.metrics(r), metrics)
    return make_manifest("validate", {"metrics": lay.metrics(r)}, round_=r, metrics=metrics, seconds=times["validate"])


def decide(cfg: RunConfig, history: list[dict[str, Any]]) -> dict[str, Any]:
    """Record best round and stop reason in ``run.json``; returns that record."""
    reason = stop_reason(history, cfg.loop)
    record = {
        "name": cfg.name,
        "rounds": [m["round"] for m in history],
        "best_round": best_round(history, cfg.loop),
        "metric": cfg.loop.metric,
        "stopped": reason is not None,
        "stop_reason": reason,
        "best_model": str(layout_of(cfg).model(best_round(history, cfg.loop))),
    }
    write_json(layout_of(cfg).run_json, record)
    return record


def read_history(cfg: RunConfig) -> list[dict[str, Any]]:
    """Metrics of every validated round of the run, ascending."""
    lay = layout_of(cfg)
    return [read_json(lay.metrics(r)) for r in lay.rounds() if lay.metrics(r).exists()]
