"""The loop's stages as plain functions over a config, a run layout and upstream manifests.

Each stage reads its inputs from disk, writes its outputs atomically to the paths the layout gives,
and returns a :class:`~selffeed.run.manifest.Manifest`. Prefect tasks wrap these one-to-one; a notebook
can call them directly::

    cfg = load_config("data/configs/arithmetic.yaml")
    data = prepare(cfg)
    model = finetune(cfg, data)
    metrics = validate(cfg, 0, model, data)
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from selffeed.config import RunConfig
from selffeed.evaluation.text import evaluate_text
from selffeed.evaluation.validate import evaluate, evaluate_scored
from selffeed.filtering.audit import audit
from selffeed.filtering.filters import apply_filters, majority_vote
from selffeed.filtering.labels import (
    audit_truth,
    ensemble_answers,
    filter_labels,
    in_prompt_frame,
    kept_precision,
    labels_used,
    oracle_kept,
    with_views,
)
from selffeed.filtering.scorers import score_rows
from selffeed.filtering.text import apply_text_filters, documents
from selffeed.loop.curriculum import round_pool
from selffeed.loop.policy import training_mix
from selffeed.recipes import recipe_for
from selffeed.recipes.prompts import chars_of
from selffeed.recipes.story_checks import evaluate_stories, story_filters
from selffeed.run import schema
from selffeed.run.keys import stage_key
from selffeed.run.layout import RunLayout, write_json
from selffeed.run.manifest import Manifest, make_manifest
from selffeed.sampling import shards
from selffeed.sampling.sampler import generate_batches, plan_batches, samples_frame
from selffeed.training import distributed
from selffeed.training.finetune import train
from selffeed.training.lora import merge_lora, with_lora
from selffeed.training.model import char_tokenizer, default_device, load_checkpoint, save_checkpoint, tiny_gpt2
from selffeed.training.precision import compute_dtype
from selffeed.training.precision import name as precision_name

Progress = Callable[[float], None]
"""Called with the fraction done (0..1) as a long stage advances."""


def layout_of(cfg: RunConfig) -> RunLayout:
    return RunLayout.of(cfg.runs_dir, cfg.name)


def _threads(cfg: RunConfig) -> None:
    # Results depend on the thread count, so every stage pins it rather than inheriting it.
    torch.set_num_threads(cfg.threads)


def prepare(cfg: RunConfig) -> Manifest:
    """Write the labelled seed, the unlabelled pool and the held-out validation and test splits."""
    t0 = time.perf_counter()
    lay = layout_of(cfg)
    splits = recipe_for(cfg).make_splits(cfg.seed)
    rows = {}
    for name in ("seed", "val", "test"):
        rows[name] = schema.write(splits[name], schema.LABELLED, lay.split(name))
    rows["pool"] = schema.write(splits["pool"], schema.POOL, lay.split("pool"))
    names = ["seed", "pool", "val", "test"]
    if "gold" in splits:  # the audit's hidden answers for some pool prompts
        rows["gold"] = schema.write(splits["gold"], schema.LABELLED, lay.split("gold"))
        names.append("gold")
    return make_manifest(
        "prepare",
        {s: lay.split(s) for s in names},
        rows=sum(rows.values()),
        split_rows=rows,
        seconds=time.perf_counter() - t0,
    )


def _base_model(cfg: RunConfig, data: Manifest):
    if cfg.model.path:
        return load_checkpoint(cfg.model.path)
    recipe = recipe_for(cfg)
    needs_data = recipe.make_tokenizer is not None or recipe.chars is None
    splits = [pd.read_parquet(data.path(s)) for s in ("seed", "pool", "val", "test")] if needs_data else []
    if recipe.make_tokenizer is not None:  # e.g. the text recipe's word-level tokens over the prepared corpus
        tokenizer = recipe.make_tokenizer(*splits)
    else:  # characters: the recipe's alphabet, or every character of the prepared data
        tokenizer = char_tokenizer(recipe.chars if recipe.chars is not None else chars_of(*splits))
    return tiny_gpt2(cfg.model, tokenizer, seed=cfg.seed).to(default_device()), tokenizer


def _train_and_save(
    cfg: RunConfig, r: int, model, tokenizer, mix: pd.DataFrame, train_cfg, n_kept: int, progress: Progress | None,
    t0: float,
) -> Manifest:
    amp = compute_dtype(cfg, next(model.parameters()).device)
    stats = None
    # No steps, or nothing to train on (a recipe without seed data whose round kept nothing): the round's
    # model is its starting model as it is.
    trains = bool(train_cfg.steps and len(mix))
    if trains and train_cfg.processes > 1:
        scratch = layout_of(cfg).scratch(r, "train-processes")
        shutil.rmtree(scratch, ignore_errors=True)
        scratch.mkdir(parents=True)
        try:
            model, _, stats = distributed.launch(
                model, tokenizer, mix, train_cfg, cfg.seed * 1000 + r, precision_name(amp), scratch, cfg.threads
            )
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    else:
        model = with_lora(model, train_cfg)  # unchanged when train_cfg.lora_r == 0
        if trains:
            stats = train(model, tokenizer, mix, train_cfg, seed=cfg.seed * 1000 + r, desc=f"train r{r}",
                          progress=progress, amp=amp)
        model = merge_lora(model)  # saved checkpoints stay plain HF causal LMs
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
        train_loss=stats.final_loss if stats else None,
        train_tokens=stats.tokens if stats else 0,
        steps=stats.steps if stats else 0,
        precision=precision_name(amp),
        processes=train_cfg.processes if stats is not None else 1,
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
    cfg: RunConfig,
    r: int,
    model: Manifest,
    data: Manifest,
    difficulties: list[int] | None = None,
    progress: Progress | None = None,
) -> Manifest:
    """Draw ``cfg.sample.k`` completions per prompt of round ``r``'s pool slice from ``model``.

    ``difficulties`` (the curriculum's choice) restricts the slice; with ``filter.views`` each prompt's
    equivalent views are sampled too, under the same ``prompt_id`` (sample_idx ``view * k + i``).

    Completions are written in shards of ``cfg.sample.shard_batches`` batches
    (:mod:`selffeed.sampling.shards`); a re-run after a crash, or after GPU workers wrote some or all of
    them (:func:`sample_part`), reuses the finished shards and writes the same ``samples.parquet`` as an
    uninterrupted run. The shards are removed once it is written.
    """
    _threads(cfg)
    t0 = time.perf_counter()
    plan = shards.plan(cfg, r, model, data, difficulties)
    resumed = plan.n_shards - len(plan.missing())
    shards.write_shards(plan, progress=progress)
    return shards.merge(plan, t0, resumed)


def sample_part(
    cfg: RunConfig,
    r: int,
    model: Manifest,
    data: Manifest,
    difficulties: list[int] | None = None,
    part: int = 0,
    parts: int = 1,
    progress: Progress | None = None,
) -> dict[str, int]:
    """One worker's share of :func:`sample`: the missing shards ``i`` with ``i % parts == part``.

    Returns ``{"written": n, "skipped": m}``; :func:`sample` then merges every part's shards."""
    _threads(cfg)
    plan = shards.plan(cfg, r, model, data, difficulties)
    return shards.write_shards(plan, part, parts, progress)


def missing_sample_shards(
    cfg: RunConfig, r: int, model: Manifest, data: Manifest, difficulties: list[int] | None = None
) -> list[Path]:
    """The shard files of round ``r``'s sample stage not on disk (what a merge here would still sample)."""
    plan = shards.plan(cfg, r, model, data, difficulties)
    return [plan.shard(i) for i in plan.missing()]


def _documents(kept: list[Manifest]) -> list[str]:
    """Prompt + completion of every row of the ``kept`` corpora (the text recipe's dedup reference)."""
    return [d for m in kept for d in documents(schema.read(m.path("kept"), schema.KEPT))]


def filter_samples(
    cfg: RunConfig, r: int, samples: Manifest, ensemble: list[Manifest] | None = None,
    earlier: list[Manifest] | None = None,
) -> Manifest:
    """Keep what the configured filters accept. ``earlier`` are the kept corpora of rounds before ``r``
    (the text recipe's near-duplicate reference), passed in so that they are part of the stage's key.
    Which true labels a filter may see is documented on :class:`~selffeed.config.FilterConfig`."""
    t0 = time.perf_counter()
    df = schema.read(samples.path("samples"), schema.SAMPLES)
    recipe = recipe_for(cfg)
    if recipe.scorer is not None:
        df["score"] = score_rows(recipe.scorer, list(df["completion"]), list(df["reference"]), list(df["prompt"]))
    mapped = cfg.filter.views and cfg.filter.vote and recipe.view_answer is not None and not cfg.filter.oracle
    if mapped:  # views with answers of their own: vote in the prompt's frame, keep each view's raw answer
        df, original = in_prompt_frame(df, 1 if cfg.sample.greedy else cfg.sample.k, recipe.view_answer)
    answers = None
    if ensemble and cfg.filter.vote and not cfg.filter.oracle:
        # Only prompts the vote keeps can be kept, so only they need the ensemble's answers.
        candidates = df[majority_vote(df, cfg.filter.min_agreement)]
        _threads(cfg)
        answers = ensemble_answers(cfg, sorted(candidates["prompt"].unique()), ensemble)
        if mapped:
            answers["answer"] = [
                recipe.view_answer(original.get(p, p), p, a) for p, a in zip(answers["prompt"], answers["answer"])
            ]
    if cfg.recipe == "text":  # free text: no vote; repetition, duplicate and perplexity filters instead
        kept = apply_text_filters(df, cfg, earlier=_documents(earlier or []))
    elif cfg.recipe == "constrained_stories":  # best of k that meets the constraints and passes the guards
        _threads(cfg)
        stories = [c for m in earlier or [] for c in schema.read(m.path("kept"), schema.KEPT)["completion"]]
        judge = cfg.constrained_stories.max_ref_perplexity is not None  # else the base model is not read
        kept = story_filters(df, cfg, earlier=stories, reference=_reference(cfg) if judge else None)
    else:
        kept = oracle_kept(cfg, df) if cfg.filter.oracle else apply_filters(df, cfg.filter, ensemble_answers=answers)
    if mapped:
        kept = kept.assign(answer=kept.pop("view_answer"))
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
        labels=filter_labels(cfg, df, kept),
        seconds=time.perf_counter() - t0,
    )


def _reference(cfg: RunConfig):
    """The frozen base model (``model.path``) that judges how natural a story is; None without one."""
    return load_checkpoint(cfg.model.path, compute_dtype(cfg)) if cfg.model.path else None


def retrain(
    cfg: RunConfig, r: int, previous: Manifest, data: Manifest, kept: list[Manifest], progress: Progress | None = None
) -> Manifest:
    """Continue training round ``r-1``'s model (or, with ``loop.init=reinit``, the base model) on the
    mix of seed data and kept generations."""
    _threads(cfg)
    t0 = time.perf_counter()
    seed = schema.read(data.path("seed"), schema.LABELLED)
    kept_frames = [schema.read(k.path("kept"), schema.KEPT) for k in kept]
    mix = training_mix(seed, kept_frames, cfg.loop, recipe_for(cfg).one_answer_per_prompt)
    if cfg.loop.init == "reinit":  # ReST-EM: every round fine-tunes the base model on the new mix
        model, tokenizer = _base_model(cfg, data)
    else:
        model, tokenizer = load_checkpoint(previous.path("model"))
    n_kept = len(kept_frames[-1]) if kept_frames else 0
    return _train_and_save(cfg, r, model, tokenizer, mix, cfg.retrain, n_kept, progress, t0)


def validate(
    cfg: RunConfig, r: int, model: Manifest, data: Manifest, upstream: list[Manifest] | None = None,
    measured: dict[str, Any] | None = None,
) -> Manifest:
    """Held-out metrics of round ``r``'s model on the validation split (top level: what the loop decides
    on) and the test split (``metrics["test"]``: reported only), with the round's figures, written to
    ``metrics.json``.

    ``measured``: another run's metrics of this same model on the same splits (the arms of an experiment
    share round 0, and :func:`~selffeed.run.keys.same_validation` holds), whose held-out figures are taken
    instead of measured again."""
    _threads(cfg)
    t0 = time.perf_counter()
    lay = layout_of(cfg)
    recipe = recipe_for(cfg)
    lm, tokenizer = (None, None) if measured else load_checkpoint(model.path("model"), compute_dtype(cfg))

    reference = _reference(cfg) if cfg.recipe == "constrained_stories" and not measured else None

    def held_out(split: str) -> dict[str, Any]:
        df = schema.read(data.path(split), schema.LABELLED)
        if cfg.recipe == "constrained_stories":
            return evaluate_stories(lm, tokenizer, df, recipe.max_new_tokens, reference, cfg.sample, cfg.seed)
        if cfg.recipe == "text":
            return evaluate_text(
                lm, tokenizer, df, cfg.sample, cfg.seed, recipe.max_new_tokens, cfg.text.diversity_prompts,
                recipe.wellformed,
            )
        if recipe.scorer is not None:
            return evaluate_scored(lm, tokenizer, df, recipe.scorer, recipe.max_new_tokens)
        return evaluate(lm, tokenizer, df, recipe.parse_answer, recipe.max_new_tokens)

    # The validation split's figures sit at the top level: the loop decides on them (best round,
    # patience, curriculum, collapse guard). The test split's are only reported, under "test".
    if measured:  # every figure below that is the run's own (round, labels, train_*) is written again
        figures = {k: v for k, v in measured.items() if k not in ("round", "model_id")}
    else:
        figures = {**held_out("val"), "test": held_out("test")}
    metrics: dict[str, Any] = {"round": r, "model_id": lay.model_id(r), **figures}
    if cfg.recipe == "text":
        train_size, generated = model.meta.get("train_size"), model.meta.get("generated_rows") or 0
        metrics["real_fraction"] = 1 - generated / train_size if train_size else None
    metrics["train_size"] = model.meta.get("train_size")
    metrics["train_loss"] = model.meta.get("train_loss")
    for m in upstream or []:
        if m.stage == "sample":
            metrics["samples"] = m.rows
            metrics["pool_difficulties"] = m.meta.get("difficulties")
        if m.stage == "filter":
            kept = schema.read(m.path("kept"), schema.KEPT)
            metrics["kept"] = m.rows
            metrics["kept_prompts"] = m.meta.get("kept_prompts")
            metrics["kept_precision"] = kept_precision(cfg, kept)
            truth, audited = audit_truth(cfg, data, kept)
            if cfg.audit.size and truth is not None and not audited.empty:
                est = audit(audited, truth, cfg.audit.size, cfg.seed * 1000 + r)
                metrics["audit_precision"] = est["precision"]
                metrics["audit"] = est
            if recipe.scorer is not None:  # mean score of the kept rows: how good the new labels look
                metrics["kept_score"] = float(kept["score"].mean()) if kept["score"].notna().any() else None
    metrics["labels"] = labels_used(cfg, r, data, model, upstream)
    # metrics.json holds only what the seed determines (no timings), so reruns reproduce it byte for
    # byte; stage times live in the round's manifest.json.
    write_json(lay.metrics(r), metrics)
    done = make_manifest(
        "validate", {"metrics": lay.metrics(r)}, round_=r, metrics=metrics, seconds=time.perf_counter() - t0,
        **({"measured_by": measured["model_id"]} if measured else {}),
    )
    # Written last: a round with a manifest.json is committed, and its files are the ones listed.
    stages_done = [data, *(upstream or []), model, done]
    write_json(lay.round_manifest(r), {"round": r, "stages": {m.stage: m.model_dump(mode="json") for m in stages_done}})
    return done
