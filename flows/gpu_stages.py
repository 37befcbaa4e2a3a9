"""GPU-bound stages as flows of their own, and the routing that runs them where a GPU is.

Each GPU stage (fine-tune, sample, retrain, validate) is a flow deployed on the ``gpu`` work pool
(``deployments/prefect.yaml``). The orchestrating flow calls :func:`run_stage`: when the pool has an
online worker (or ``orchestration.gpu_stages=workers``) it starts the stage's deployment with
``run_deployment`` and waits; otherwise (no server, no worker, or ``gpu_stages=local``) it runs the
stage's task in this process. With several workers online the sample stage is split: one
``gpu-sample-shard`` flow run per worker (:func:`sample_sharded`), each writing its share of the shards,
merged here. Either way the task is cached under the run directory, and after a
remote run the manifest is read from that cache: results cross machines through the run directory
(shared storage), never through Prefect's result payloads. Every routing decision is logged with its
reason (the run logger, else this module's logger); an API error is a warning, not a silent fallback.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import httpx
from prefect import flow, get_run_logger
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import FlowRun
from prefect.deployments import run_deployment
from prefect.exceptions import MissingContextError
from prefect.states import Crashed

from selffeed.config import RunConfig
from selffeed.loop import stages
from selffeed.loop.stages import layout_of
from selffeed.run.manifest import Manifest
from tasks.cache import cached_result
from tasks.stages import for_run

# stage task name -> (GPU flow name, its deployment name in deployments/prefect.yaml)
DEPLOYMENTS = {
    "finetune": "gpu-finetune/gpu-finetune",
    "sample": "gpu-sample/gpu-sample",
    "retrain": "gpu-retrain/gpu-retrain",
    "validate": "gpu-validate/gpu-validate",
}
SHARD_DEPLOYMENT = "gpu-sample-shard/gpu-sample-shard"
POLL_S = 1.0


@flow(name="gpu-finetune", flow_run_name="{config.name}-finetune-r0")
def finetune_stage(config: RunConfig, data: Manifest) -> Manifest:
    return for_run(config).finetune(config, data)


@flow(name="gpu-sample", flow_run_name="{config.name}-sample-r{r}")
def sample_stage(
    config: RunConfig, r: int, model: Manifest, data: Manifest, difficulties: list[int] | None = None
) -> Manifest:
    return for_run(config).sample(config, r, model, data, difficulties)


@flow(name="gpu-retrain", flow_run_name="{config.name}-retrain-r{r}")
def retrain_stage(config: RunConfig, r: int, previous: Manifest, data: Manifest, kept: list[Manifest]) -> Manifest:
    return for_run(config).retrain(config, r, previous, data, kept)


@flow(name="gpu-validate", flow_run_name="{config.name}-validate-r{r}")
def validate_stage(
    config: RunConfig, r: int, model: Manifest, data: Manifest, upstream: list[Manifest] | None = None,
    measured: dict[str, Any] | None = None,
) -> Manifest:
    return for_run(config).validate(config, r, model, data, upstream, measured)


def online_workers(config: RunConfig) -> tuple[int, str | None]:
    """How many workers of the configured GPU pool are ONLINE, and when none, why not (one line)."""
    pool = config.orchestration.gpu_pool
    try:
        with get_client(sync_client=True) as client:
            workers = client.read_workers_for_work_pool(pool)
    except httpx.HTTPStatusError as err:
        if err.response.status_code == 404:
            return 0, f"no work pool {pool!r} on the API"
        return 0, f"API error: {_one_line(err)}"
    except Exception as err:  # unreachable server, timeouts, ...: reported, never silent
        return 0, f"API error: {_one_line(err)}"
    n = len(_online(workers))
    return n, None if n else f"no worker online in pool {pool!r}"


def gpu_pool_unavailable(config: RunConfig) -> str | None:
    """None when the configured GPU pool has a worker ONLINE, else why not, in one line."""
    return online_workers(config)[1]


def gpu_workers_online(config: RunConfig) -> bool:
    """True when the configured GPU pool exists on the API and has a worker ONLINE."""
    return gpu_pool_unavailable(config) is None


def run_stage(stage: str, config: RunConfig, **args: Any) -> Manifest:
    """Run a GPU stage on the GPU pool or in-process, per ``config.orchestration.gpu_stages``."""
    mode, pool = config.orchestration.gpu_stages, config.orchestration.gpu_pool
    results = layout_of(config).results.resolve()
    online = 0
    if mode == "local":
        why = "orchestration.gpu_stages=local"
    elif cached_result(stage, config, args, results) is not None:
        why = "cached, nothing to ship"
    else:
        online, why = online_workers(config)
        if why is not None and mode == "workers":
            raise RuntimeError(f"GPU stage {stage}: orchestration.gpu_stages=workers but {why}; "
                               f"start a worker on pool {pool!r} or set orchestration.gpu_stages=auto")
    log = _logger()
    if why is not None:
        level = logging.WARNING if why.startswith("API error") else logging.INFO
        log.log(level, "%s runs in this process: %s", stage, why)
        return getattr(for_run(config), stage)(config, **args)

    parameters = {"config": config.model_dump(mode="json")}
    parameters |= {k: _jsonable(v) for k, v in args.items()}
    parts = min(online, config.orchestration.sample_workers) if stage == "sample" else 1
    if parts > 1:
        return sample_sharded(config, parts, args, parameters)
    log.info("%s sent to pool %r (deployment %s): a worker is online", stage, pool, DEPLOYMENTS[stage])
    child = run_deployment(
        DEPLOYMENTS[stage], parameters=parameters, timeout=config.orchestration.gpu_timeout_s, poll_interval=1
    )
    if child.state is None or not child.state.is_completed():
        state = child.state.name if child.state else "unknown"
        raise RuntimeError(f"GPU stage {stage} ({DEPLOYMENTS[stage]}) ended {state}: flow run {child.id}")
    log.info("%s ran on pool %r as flow run %s", stage, pool, child.id)
    # The child committed the stage's manifest under the run directory: read it from there, never recompute.
    result = cached_result(stage, config, args, results)
    if result is None:
        raise RuntimeError(
            f"GPU stage {stage} completed on pool {pool!r} as flow run {child.id}, but its result is not visible "
            f"here (looked in {results}): the worker wrote to another run directory. runs_dir must be storage "
            f"both machines share, under the same absolute path (here runs_dir={config.runs_dir!r})."
        )
    return result


def sample_sharded(config: RunConfig, parts: int, args: dict[str, Any], parameters: dict[str, Any]) -> Manifest:
    """The sample stage as ``parts`` concurrent flow runs of ``gpu-sample-shard`` on the GPU pool, then
    their shards merged here into ``samples.parquet`` (the bytes one process would write).

    A part whose flow run fails or crashes, or whose worker goes offline while running it (killed, its
    box lost: Prefect marks a worker OFFLINE after three missed heartbeats), is sent again, up to
    ``orchestration.shard_retries`` times; any worker may take it, and it samples only the shards its
    first run did not write. ``parameters`` are the stage's flow parameters (``args`` as JSON)."""
    log, orch = _logger(), config.orchestration
    name = SHARD_DEPLOYMENT

    def submit(part: int) -> FlowRun:
        return run_deployment(name, parameters=parameters | {"part": part, "parts": parts}, timeout=0)

    log.info("sample split into %d parts on pool %r (deployment %s): one per online worker, at most "
             "orchestration.sample_workers=%d", parts, orch.gpu_pool, name, orch.sample_workers)
    running = {part: submit(part) for part in range(parts)}
    sent = dict.fromkeys(running, 1)
    deadline = time.monotonic() + orch.gpu_timeout_s
    with get_client(sync_client=True) as client:
        while running:
            time.sleep(POLL_S)
            alive = {w.name for w in _online(client.read_workers_for_work_pool(orch.gpu_pool))}
            for part, run in list(running.items()):
                run = client.read_flow_run(run.id)
                state, worker = run.state, (run.labels or {}).get("prefect.worker.name")
                if state is not None and not state.is_final() and worker and worker not in alive:
                    # Its worker stopped heartbeating (the box died, the process was killed): Prefect's
                    # foreman marked it OFFLINE, but nothing ends the run it held. End it here.
                    state = Crashed(message=f"worker {worker!r} went offline while running this part")
                    client.set_flow_run_state(run.id, state, force=True)
                if state is None or not state.is_final():
                    continue
                del running[part]
                if state.is_completed():
                    log.info("sample part %d/%d done: flow run %s", part + 1, parts, run.id)
                    continue
                if sent[part] > orch.shard_retries:
                    raise RuntimeError(f"sample part {part + 1}/{parts} ({name}) ended {state.name} "
                                       f"{sent[part]} times, last as flow run {run.id}")
                log.warning("sample part %d/%d ended %s (flow run %s): sent again, its written shards kept",
                            part + 1, parts, state.name, run.id)
                running[part], sent[part] = submit(part), sent[part] + 1
            if running and time.monotonic() > deadline:
                raise RuntimeError(f"sample parts {sorted(p + 1 for p in running)} of {parts} not done after "
                                   f"orchestration.gpu_timeout_s={orch.gpu_timeout_s}")
    missing = stages.missing_sample_shards(config, **args)
    if missing:
        raise RuntimeError(
            f"sample parts completed on pool {orch.gpu_pool!r}, but shard {missing[0]} is not visible here: the "
            f"workers wrote to another run directory. runs_dir must be storage every machine shares, under the "
            f"same absolute path (here runs_dir={config.runs_dir!r})."
        )
    return for_run(config).sample(config, **args)  # every shard is on disk: merges, samples nothing


@flow(name="gpu-sample-shard", flow_run_name="{config.name}-sample-r{r}-part{part}of{parts}")
def sample_shard_stage(
    config: RunConfig, r: int, model: Manifest, data: Manifest, difficulties: list[int] | None = None,
    part: int = 0, parts: int = 1,
) -> dict[str, int]:
    """One GPU worker's share of a round's sample stage: shards ``part``, ``part + parts``, ..."""
    return for_run(config).sample_part(config, r, model, data, difficulties, part, parts)


def _online(workers: list[Any]) -> list[Any]:
    return [w for w in workers if w.status is not None and w.status.value == "ONLINE"]


def _logger() -> logging.Logger | logging.LoggerAdapter:
    try:
        return get_run_logger()
    except MissingContextError:  # called outside a flow or task run
        return logging.getLogger(__name__)


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0]}" if text else type(err).__name__


def _jsonable(value: Any) -> Any:
    if isinstance(value, Manifest):
        return value.model_dump(mode="json")
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    return value
