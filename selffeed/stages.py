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

import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pandas as pd
import torch

from selffeed import schema
from selffeed.config import RunConfig, dump_config, load_config
from selffeed.filters import apply_filters
from selffeed.finetune import train
from selffeed.layout import RunLayout, read_json, remove_temporaries, write_json, write_text
from selffeed.lock import run_lock
from selffeed.loop import best_round, stop_reason, training_mix
from selffeed.manifest import Manifest, make_manifest
from selffeed.model import load_checkpoint, save_checkpoint, tiny_gpt2, char_tokenizer
from selffeed.recipes import recipe_for
from selffeed.recipes.prompts import chars_of
from selffeed.scorers import score_rows
from selffeed.keys import stage_key
from selffeed.sample import generate_batches, plan_batches, samples_frame
from selffeed.validate import evaluate, evaluate_scored


Progress = Callable[[float], None]
"""Called with the fraction done (0..1) as a long stage advances."""


def layout_of(cfg: RunConfig) -> RunLayout:
    return RunLayout.of(cfg.runs_dir, cfg.name)


def _threads(cfg: RunConfig) -> None:
    # Results depend on the thread count, so every stage pins it rather than inheriting it.
    torch.set_num_threads(cfg.threads)


def prepare(cfg: RunConfig) -> Manifest:
    """Write the labelled seed, the unlabelled pool and the held-out test split."""
    t0 = time.perf_counter()
    lay = layout_of(cfg)
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


def _base_model(cfg: RunConfig, data: Manifest):
    if cfg.model.path:
        return load_checkpoint(cfg.model.path)
    chars = recipe_for(cfg).chars
    if chars is None:  # a recipe without a fixed alphabet: every character of the prepared data
        chars = chars_of(*(pd.read_parquet(data.path(s)) for s in ("seed", "pool", "test")))
    tokenizer = char_tokenizer(chars)
    return tiny_gpt2(cfg.model, tokenizer, seed=cfg.seed), tokenizer


def _train_and_save(
    cfg: RunConfig, r: int, model, tokenizer, mix: pd.DataFrame, train_cfg, n_kept: int, progress: Progress | None,
    t0: float,
) -> Manifest:
    stats = train(model, tokenizer, mix, train_cfg, seed=cfg.seed * 1000 + r, desc=f"train r{r}", progress=progress)
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


def finetune(cfg: RunConfig, data: Manifest, progress: Progress | None = None) -> Manifest:
    """Round 0: fine-tune the base model (local checkpoint or tiny GPT-2) on the labelled seed."""
    _threads(cfg)
    t0 = time.perf_counter()
    model, tokenizer = _base_model(cfg, data)
    seed = schema.read(data.path("seed"), schema.LABELLED).assign(source="seed")
    return _train_and_save(cfg, 0, model, tokenizer, seed, cfg.finetune, 0, progress, t0)


def sample(
    cfg: RunConfig, r: int, model: Manifest, data: Manifest, progress: Progress | None = None
) -> Manifest:
    """Draw ``cfg.sample.k`` completions per prompt of round ``r``'s pool slice from ``model``.

    Completions are written in shards of ``cfg.sample.shard_batches`` batches under a directory
    named by the stage key; a re-run after a crash reuses the finished shards and produces the same
    ``samples.parquet`` as an uninterrupted run. The shards are removed once it is written.
    """
    _threads(cfg)
    t0 = time.perf_counter()
    lay = layout_of(cfg)
    recipe = recipe_for(cfg)
    pool = schema.read(data.path("pool"), schema.POOL)
    n_slices = int(pool["slice"].max()) + 1
    pool = pool[pool["slice"] == (r - 1) % n_slices].reset_index(drop=True)
    lm, tokenizer = load_checkpoint(model.path("model"))
    seed = cfg.seed * 1000 + r
    prompts = list(pool["prompt"])
    batches = plan_batches(tokenizer, prompts, cfg.sample.batch_prompts)
    per = cfg.sample.shard_batches
    tag = stage_key("sample", cfg, {"r": r, "model": model, "data": data})[:16]
    for stale in lay.stale_shard_dirs(r, tag):
        shutil.rmtree(stale, ignore_errors=True)
    shards, resumed = [], 0
    for i, first in enumerate(range(0, len(batches), per)):
        path = lay.sample_shard(r, tag, i)
        if path.exists():  # shards are renamed into place complete, so an existing one is whole
            resumed += 1
        else:
            done = generate_batches(
                lm, tokenizer, prompts, batches[first : first + per], cfg.sample, seed, recipe.max_new_tokens, first
            )
            frame = samples_frame(
                pool, done, recipe.parse_answer, round_=r, model_id=lay.model_id(model.round or 0),
                cfg=cfg.sample, seed=seed,
            )
            schema.write(frame, schema.SAMPLES, path)
        shards.append(schema.read(path, schema.SAMPLES))
        if progress is not None:
            progress(min(first + per, len(batches)) / max(len(batches), 1))
    position = dict(zip(pool["prompt_id"], range(len(pool))))
    df = pd.concat(shards, ignore_index=True) if shards else samples_frame(
        pool, [], recipe.parse_answer, round_=r, model_id=lay.model_id(model.round or 0), cfg=cfg.sample, seed=seed
    )
    df = (
        df.assign(_pos=df["prompt_id"].map(position))
        .sort_values(["_pos", "sample_idx"])
        .drop(columns="_pos")
    )
    n = schema.write(df, schema.SAMPLES, lay.samples(r))
    shutil.rmtree(lay.sample_shards(r, tag), ignore_errors=True)
    seconds = time.perf_counter() - t0
    return make_manifest(
        "sample",
        {"samples": lay.samples(r)},
        round_=r,
        rows=n,
        prompts=len(pool),
        shards=len(shards),
        shards_resumed=resumed,
        parsed=float(df["answer"].notna().mean()) if n else 0.0,
        tokens=int(df["n_tokens"].sum()),
        tokens_per_s=float(df["n_tokens"].sum()) / max(seconds, 1e-9),
        seconds=seconds,
    )


def filter_samples(cfg: RunConfig, r: int, samples: Manifest) -> Manifest:
    """Keep what the configured filters accept; never looks at true answers."""
    t0 = time.perf_counter()
    df = schema.read(samples.path("samples"), schema.SAMPLES)
    scorer = recipe_for(cfg).scorer
    if scorer is not None:
        df["score"] = score_rows(scorer, list(df["completion"]), list(df["reference"]), list(df["prompt"]))
    kept = apply_filters(df, cfg.filter)
    path = layout_of(cfg).kept(r)
    n = schema.write(kept, schema.KEPT, path)
    scored = df["score"].dropna() if "score" in df else pd.Series([], dtype=float)
    return make_manifest(
        "filter",
        {"kept": path},
        round_=r,
        rows=n,
        kept_prompts=int(kept["prompt_id"].nunique()),
        mean_agreement=float(kept["agreement"].mean()) if n else 0.0,
        mean_score=float(scored.mean()) if len(scored) else None,
        kept_score=float(kept["score"].mean()) if kept["score"].notna().any() else None,
        seconds=time.perf_counter() - t0,
    )


def retrain(
    cfg: RunConfig, r: int, previous: Manifest, data: Manifest, kept: list[Manifest], progress: Progress | None = None
) -> Manifest:
    """Continue training round ``r-1``'s model on the mix of seed data and kept generations."""
    _threads(cfg)
    t0 = time.perf_counter()
    seed = schema.read(data.path("seed"), schema.LABELLED)
    kept_frames = [schema.read(k.path("kept"), schema.KEPT) for k in kept]
    mix = training_mix(seed, kept_frames, cfg.loop)
    model, tokenizer = load_checkpoint(previous.path("model"))
    n_kept = len(kept_frames[-1]) if kept_frames else 0
    return _train_and_save(cfg, r, model, tokenizer, mix, cfg.retrain, n_kept, progress, t0)


def kept_precision(cfg: RunConfig, kept: pd.DataFrame) -> float | None:
    """Share of kept rows whose answer is right, from the recipe's hidden truth (reporting only)."""
    recipe = recipe_for(cfg)
    if kept.empty or recipe.true_completion is None:
        return None
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
    if recipe.scorer is not None:
        metrics.update(evaluate_scored(lm, tokenizer, test, recipe.scorer, recipe.max_new_tokens))
    else:
        metrics.update(evaluate(lm, tokenizer, test, recipe.parse_answer, recipe.max_new_tokens))
    metrics["train_size"] = model.meta.get("train_size")
    metrics["train_loss"] = model.meta.get("train_loss")
    for m in upstream or []:
        if m.stage == "sample":
            metrics["samples"] = m.rows
        if m.stage == "filter":
            kept = schema.read(m.path("kept"), schema.KEPT)
            metrics["kept"] = m.rows
            metrics["kept_precision"] = kept_precision(cfg, kept)
            if recipe.scorer is not None:  # mean score of the kept rows: how good the new labels look
                metrics["kept_score"] = float(kept["score"].mean()) if kept["score"].notna().any() else None
    # metrics.json holds only what the seed determines (no timings), so reruns reproduce it byte for
    # byte; stage times live in the round's manifest.json.
    write_json(lay.metrics(r), metrics)
    done = make_manifest(
        "validate", {"metrics": lay.metrics(r)}, round_=r, metrics=metrics, seconds=time.perf_counter() - t0
    )
    # Written last: a round with a manifest.json is committed, and its files are the ones listed.
    stages_done = [data, *(upstream or []), model, done]
    write_json(lay.round_manifest(r), {"round": r, "stages": {m.stage: m.model_dump(mode="json") for m in stages_done}})
    return done


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


def read_history(lay: RunLayout) -> list[dict[str, Any]]:
    """Metrics of every committed round of a run, ascending, with stage times under ``seconds``."""
    history = []
    for r in lay.rounds():
        if not lay.round_manifest(r).exists():
            continue
        stages_done = read_json(lay.round_manifest(r))["stages"]
        metrics = read_json(lay.metrics(r))
        metrics["seconds"] = {name: m["meta"].get("seconds") for name, m in stages_done.items()}
        history.append(metrics)
    return history


def continued_config(runs_dir: str, name: str, rounds: int) -> RunConfig:
    """The stored config of run ``name``, extended to run exactly ``rounds`` rounds past its last
    committed one (stop rules other than max_rounds are relaxed so the rounds do happen)."""
    lay = RunLayout.of(runs_dir, name)
    if not lay.config.exists():
        raise FileNotFoundError(f"{lay.root}: no such run (no config.yaml); start it with selffeed run first")
    cfg = load_config(lay.config, [f"runs_dir={runs_dir}"])
    committed = [r for r in lay.rounds() if lay.round_manifest(r).exists()]
    last = max(committed, default=0)
    cfg.loop.max_rounds = last + rounds
    cfg.loop.patience = last + rounds + 1
    cfg.loop.loss_threshold = None
    return cfg


@contextmanager
def open_run(cfg: RunConfig, owner: str) -> Iterator[RunLayout]:
    """Hold the run's writer lock; on entry, remove temporaries a killed writer left and record the
    config of this invocation in ``config.yaml``."""
    lay = layout_of(cfg)
    with run_lock(lay.lock, owner):
        remove_temporaries(lay.root)
        write_text(lay.config, dump_config(cfg))
        yield lay
