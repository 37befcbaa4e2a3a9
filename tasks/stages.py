"""Prefect tasks for the loop's stages; each is one call into :mod:`selffeed.loop`.

Every stage is persisted and cached under a content-addressed key (:mod:`tasks.cache`), so a re-run
of a flow (new run, Retry button, ``prefect flow-run retry``) reuses each completed stage and runs
only what failed and what follows it. Results are stored under the run directory; bind the tasks to
a run with :func:`for_run`. GPU-bound stages (fine-tune, retrain, sample, validate) carry the ``gpu``
tag (a label: a GPU is kept to one stage at a time by its worker's ``--limit 1``). Task runs are named
after stage and round (``sample-r3``) so the Prefect UI reads like the loop.
"""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.cache_policies import NO_CACHE
from prefect.settings import PREFECT_API_URL

from selffeed.config import RunConfig
from selffeed.loop import rounds, stages
from selffeed.run import bookkeeping
from selffeed.run.manifest import Manifest
from selffeed.run.report import artifact_key, round_markdown
from tasks.cache import StageCache

GPU = ["gpu"]


def _stage(stage: str, **options: Any) -> dict[str, Any]:
    return dict(name=stage, cache_policy=StageCache(stage=stage), persist_result=True, retries=0, **options)


def _progress(description: str) -> Callable[[float], None]:
    """A progress artifact for the running task, updated in steps of 10% (each update is an API call)."""
    artifact_id = create_progress_artifact(progress=0.0, description=description)
    last = [0.0]

    def update(fraction: float) -> None:
        pct = round(100 * fraction, 1)
        if pct - last[0] >= 10 or fraction >= 1:
            update_progress_artifact(artifact_id=artifact_id, progress=pct)
            last[0] = pct

    return update


@task(**_stage("prepare", task_run_name="prepare"))
def prepare(cfg: RunConfig) -> Manifest:
    return stages.prepare(cfg)


@task(**_stage("finetune", task_run_name="finetune-r0", tags=GPU))
def finetune(cfg: RunConfig, data: Manifest) -> Manifest:
    return stages.finetune(cfg, data, progress=_progress("fine-tune r0"))


@task(**_stage("finetune", task_run_name="finetune-r0-adopted") | {"name": "adopt-round0"})
def adopt_round0(cfg: RunConfig, data: Manifest, model: Manifest) -> Manifest:
    """Round 0 as a copy of ``model``, another run's round 0 with the same seed, data and fine-tune settings.

    Keyed like a fine-tune with the adopted model's digest as an extra input, so it is never taken for one."""
    return rounds.adopt_round0(cfg, model)


@task(**_stage("sample", task_run_name="sample-r{r}", tags=GPU))
def sample(cfg: RunConfig, r: int, model: Manifest, data: Manifest, difficulties: list[int] | None = None) -> Manifest:
    return stages.sample(cfg, r, model, data, difficulties, progress=_progress(f"sample r{r}"))


@task(name="sample-part", task_run_name="sample-r{r}-part{part}of{parts}", cache_policy=NO_CACHE, tags=GPU)
def sample_part(
    cfg: RunConfig, r: int, model: Manifest, data: Manifest, difficulties: list[int] | None, part: int, parts: int
) -> dict[str, int]:
    # Not cached by Prefect: the shard files are the record (a part sent again skips the ones on disk).
    done = stages.sample_part(cfg, r, model, data, difficulties, part, parts,
                              progress=_progress(f"sample r{r} part {part + 1}/{parts}"))
    get_run_logger().info("part %d/%d: wrote %d shards, %d already on disk", part + 1, parts,
                          done["written"], done["skipped"])
    return done


@task(**_stage("filter", task_run_name="filter-r{r}"))
def filter_samples(
    cfg: RunConfig, r: int, samples: Manifest, ensemble: list[Manifest] | None = None,
    earlier: list[Manifest] | None = None,
) -> Manifest:
    return stages.filter_samples(cfg, r, samples, ensemble, earlier)


@task(**_stage("retrain", task_run_name="retrain-r{r}", tags=GPU))
def retrain(cfg: RunConfig, r: int, previous: Manifest, data: Manifest, kept: list[Manifest]) -> Manifest:
    return stages.retrain(cfg, r, previous, data, kept, progress=_progress(f"retrain r{r}"))


@task(**_stage("validate", task_run_name="validate-r{r}", tags=GPU))
def validate(
    cfg: RunConfig, r: int, model: Manifest, data: Manifest, upstream: list[Manifest] | None = None,
    measured: dict[str, Any] | None = None,
) -> Manifest:
    return stages.validate(cfg, r, model, data, upstream, measured)


@task(name="decide", task_run_name="decide-r{r}", cache_policy=NO_CACHE)
def decide(cfg: RunConfig, r: int, history: list[dict[str, Any]]) -> dict[str, Any]:
    """Pick the best round and whether to stop; publish the round's metrics and report."""
    record = bookkeeping.decide(cfg, history)
    key = artifact_key(cfg.name)
    create_table_artifact(
        key=f"{key}-metrics",
        table=[{k: v for k, v in m.items() if not isinstance(v, dict)} for m in history],
        description=f"Validation metrics of run {cfg.name}, one row per round",
    )
    create_markdown_artifact(key=f"{key}-report", markdown=round_markdown(cfg.name, history, record))
    return record


def for_run(cfg: RunConfig) -> SimpleNamespace:
    """The stage tasks with their results stored under ``cfg``'s run directory.

    Without a configured server (Prefect's embedded one, private to this process) a tag limit can
    coordinate nothing, yet a tagged task would still pay a concurrency-lease round trip when one
    exists: the tag is dropped there and kept whenever a shared API is configured.
    """
    storage = stages.layout_of(cfg).results.resolve()
    options: dict[str, Any] = {"result_storage": storage}
    if not PREFECT_API_URL.value():
        options["tags"] = []
    bound = {
        name: t.with_options(**options)
        for name, t in dict(
            prepare=prepare, finetune=finetune, adopt_round0=adopt_round0, sample=sample, sample_part=sample_part,
            filter_samples=filter_samples, retrain=retrain, validate=validate,
        ).items()
    }
    return SimpleNamespace(**bound, decide=decide)
