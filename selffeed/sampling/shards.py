"""The sample stage as shards: any number of processes write them, one merge makes ``samples.parquet``.

A round's prompts are planned into batches (sorted by token length) and the batches grouped into
shards of ``sample.shard_batches``. Batch b draws from a generator seeded by the run seed and b, so a
shard's rows do not depend on which process writes it, or when: :func:`write_shards` with
``part``/``parts`` writes every ``parts``-th missing shard (one GPU worker's share), skips shards already
on disk (a resumed or re-sent part never samples them again), and :func:`merge` concatenates them into
the same bytes a single process writes. Shard files are renamed into place whole, so an existing one
is complete. The model is loaded only when a shard is missing: a merge of finished shards needs none.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pandas as pd

from selffeed.config import RunConfig
from selffeed.filtering.labels import with_views
from selffeed.loop.curriculum import round_pool
from selffeed.recipes import recipe_for
from selffeed.run import schema
from selffeed.run.keys import stage_key
from selffeed.run.layout import RunLayout
from selffeed.run.manifest import Manifest, make_manifest
from selffeed.sampling.sampler import generate_batches, plan_batches, samples_frame
from selffeed.sampling.stepwise import generate_stepwise
from selffeed.sampling.vllm_engine import generate_batches as vllm_generate_batches
from selffeed.sampling.vllm_engine import load_vllm
from selffeed.training.model import load_checkpoint, load_tokenizer
from selffeed.training.precision import compute_dtype

Progress = Callable[[float], None]


@dataclass(frozen=True)
class Plan:
    """Round ``r``'s sampling work: the pool slice, its batches, and where each shard goes."""

    cfg: RunConfig
    r: int
    model: Manifest
    pool: pd.DataFrame
    batches: list[list[int]]
    seed: int
    tag: str  # the stage key's prefix: shards of another key (config, model, data) are never reused

    @property
    def layout(self) -> RunLayout:
        return RunLayout.of(self.cfg.runs_dir, self.cfg.name)

    @property
    def n_shards(self) -> int:
        per = self.cfg.sample.shard_batches
        return (len(self.batches) + per - 1) // per

    def shard(self, i: int) -> Path:
        return self.layout.sample_shard(self.r, self.tag, i)

    def missing(self) -> list[int]:
        return [i for i in range(self.n_shards) if not self.shard(i).exists()]


def plan(cfg: RunConfig, r: int, model: Manifest, data: Manifest, difficulties: list[int] | None = None) -> Plan:
    """The plan of round ``r``'s sample stage (reads the pool and the tokenizer, not the model)."""
    recipe = recipe_for(cfg)
    pool = schema.read(data.path("pool"), schema.POOL)
    # Only the active recipe's section is read: it alone is in this stage's key.
    per_round = (
        getattr(cfg, cfg.recipe).pool_per_round
        if cfg.recipe in ("arithmetic", "word_problems", "constrained_stories") else None
    )
    pool = round_pool(pool, r, difficulties, per_round)
    pool = with_views(pool, recipe.views) if cfg.filter.views and recipe.views else pool.assign(view=0)
    tokenizer = load_tokenizer(model.path("model"))
    batches = plan_batches(tokenizer, list(pool["prompt"]), cfg.sample.batch_prompts)
    tag = stage_key("sample", cfg, {"r": r, "model": model, "data": data, "difficulties": difficulties})[:16]
    return Plan(cfg, r, model, pool, batches, cfg.seed * 1000 + r, tag)


def write_shards(p: Plan, part: int = 0, parts: int = 1, progress: Progress | None = None) -> dict[str, int]:
    """Write the missing shards ``i`` with ``i % parts == part``; returns how many it wrote and skipped."""
    if not 0 <= part < parts:
        raise ValueError(f"part {part} of {parts}: expected 0 <= part < parts")
    cfg, lay = p.cfg, p.layout
    for stale in lay.stale_shard_dirs(p.r, p.tag):
        shutil.rmtree(stale, ignore_errors=True)
    mine = list(range(part, p.n_shards, parts))
    todo = [i for i in mine if not p.shard(i).exists()]
    if todo:
        recipe = recipe_for(cfg)
        if cfg.sample.backend == "vllm":  # same Completion rows, seeded per prompt instead of per batch
            lm, tokenizer = load_vllm(p.model.path("model"), seed=cfg.seed, threads=cfg.threads)
            generate = vllm_generate_batches
        else:
            lm, tokenizer = load_checkpoint(p.model.path("model"), compute_dtype(cfg))
            generate = generate_batches
        if recipe.steps is not None:  # the same engine, asked one step at a time
            generate = partial(generate_stepwise, generate, steps=recipe.steps, parse_answer=recipe.parse_answer)
        k = 1 if cfg.sample.greedy else cfg.sample.k
        per, prompts = cfg.sample.shard_batches, list(p.pool["prompt"])
        for n, i in enumerate(todo):
            first = i * per
            done = generate(lm, tokenizer, prompts, p.batches[first : first + per], cfg.sample, p.seed,
                            recipe.max_new_tokens, first)
            frame = samples_frame(
                p.pool, done, recipe.parse_answer, round_=p.r, model_id=lay.model_id(p.model.round or 0),
                cfg=cfg.sample, seed=p.seed,
            )
            frame["sample_idx"] += p.pool["view"].to_numpy()[[c.prompt_index for c in done]] * k
            schema.write(frame, schema.SAMPLES, p.shard(i))
            if progress is not None:
                progress((n + 1) / len(todo))
    return {"written": len(todo), "skipped": len(mine) - len(todo)}


def merge(p: Plan, t0: float, resumed: int) -> Manifest:
    """Concatenate every shard into ``samples.parquet`` (prompt order, then sample index); fails naming
    the first missing shard rather than writing a partial round."""
    missing = p.missing()
    if missing:
        raise FileNotFoundError(f"sample shard {p.shard(missing[0])}: missing ({len(missing)} of {p.n_shards})")
    lay, recipe = p.layout, recipe_for(p.cfg)
    shards = [schema.read(p.shard(i), schema.SAMPLES) for i in range(p.n_shards)]
    position = dict(zip(p.pool["prompt_id"], range(len(p.pool))))
    df = pd.concat(shards, ignore_index=True) if shards else samples_frame(
        p.pool, [], recipe.parse_answer, round_=p.r, model_id=lay.model_id(p.model.round or 0),
        cfg=p.cfg.sample, seed=p.seed,
    )
    df = df.assign(_pos=df["prompt_id"].map(position)).sort_values(["_pos", "sample_idx"]).drop(columns="_pos")
    n = schema.write(df, schema.SAMPLES, lay.samples(p.r))
    shutil.rmtree(lay.sample_shards(p.r, p.tag), ignore_errors=True)
    seconds = time.perf_counter() - t0
    return make_manifest(
        "sample",
        {"samples": lay.samples(p.r)},
        round_=p.r,
        rows=n,
        prompts=int(p.pool["prompt_id"].nunique()),
        prompt_views=len(p.pool),
        difficulties=sorted(int(d) for d in p.pool["difficulty"].unique()),
        shards=p.n_shards,
        shards_resumed=resumed,
        parsed=float(df["answer"].notna().mean()) if n else 0.0,
        tokens=int(df["n_tokens"].sum()),
        tokens_per_s=float(df["n_tokens"].sum()) / max(seconds, 1e-9),
        seconds=seconds,
    )
