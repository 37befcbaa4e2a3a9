"""Prefect tasks for the loop's stages; each is one call into :mod:`selffeed.stages`.

GPU-bound stages (fine-tune, retrain, sample, validate) carry the ``gpu`` tag so a tag concurrency
limit can keep one GPU box to one of them at a time. Task runs are named after stage and round
(``sample-r3``) so the Prefect UI reads like the loop.
"""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from selffeed import stages
from selffeed.config import RunConfig
from selffeed.manifest import Manifest

# Stages pass manifests (small pydantic records) rather than frames or models, so Prefect can
# hash and store them cheaply. Caching across runs is added with content-addressed keys later.
COMMON: dict[str, Any] = dict(cache_policy=NO_CACHE, retries=0)
GPU = ["gpu"]


@task(name="prepare", task_run_name="prepare", **COMMON)
def prepare(cfg: RunConfig) -> Manifest:
    return stages.prepare(cfg)


@task(name="finetune", task_run_name="finetune-r0", tags=GPU, **COMMON)
def finetune(cfg: RunConfig, data: Manifest) -> Manifest:
    return stages.finetune(cfg, data)


@task(name="sample", task_run_name="sample-r{r}", tags=GPU, **COMMON)
def sample(cfg: RunConfig, r: int, model: Manifest, data: Manifest) -> Manifest:
    return stages.sample(cfg, r, model, data)


@task(name="filter", task_run_name="filter-r{r}", **COMMON)
def filter_samples(cfg: RunConfig, r: int, samples: Manifest) -> Manifest:
    return stages.filter_samples(cfg, r, samples)


@task(name="retrain", task_run_name="retrain-r{r}", tags=GPU, **COMMON)
def retrain(cfg: RunConfig, r: int, previous: Manifest, data: Manifest, kept: list[Manifest]) -> Manifest:
    return stages.retrain(cfg, r, previous, data, kept)


@task(name="validate", task_run_name="validate-r{r}", tags=GPU, **COMMON)
def validate(
    cfg: RunConfig, r: int, model: Manifest, data: Manifest, upstream: list[Manifest] | None = None
) -> Manifest:
    return stages.validate(cfg, r, model, data, upstream)


@task(name="decide", task_run_name="decide-r{r}", **COMMON)
def decide(cfg: RunConfig, r: int, history: list[dict[str, Any]]) -> dict[str, Any]:
    return stages.decide(cfg, history)
