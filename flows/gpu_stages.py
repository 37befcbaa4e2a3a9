"""GPU-bound stages as flows of their own, and the routing that runs them where a GPU is.

Each GPU stage (fine-tune, sample, retrain, validate) is a flow deployed on the ``gpu`` work pool
(``deployments/prefect.yaml``). The orchestrating flow calls :func:`run_stage`: when the pool has an
online worker (or ``orchestration.gpu_stages=workers``) it starts the stage's deployment with
``run_deployment`` and waits; otherwise (no server, no worker, or ``gpu_stages=local``) it runs the
stage's task in this process. Either way the task is cached under the run directory, and after a
remote run the manifest is read from that cache: results cross machines through the run directory
(shared storage), never through Prefect's result payloads. Every routing decision is logged with its
reason (the run logger, else this module's logger); an API error is a warning, not a silent fallback.
"""

from __future__ import annotations

import logging
from typing import Any

import httpx
from prefect import flow, get_run_logger
from prefect.client.orchestration import get_client
from prefect.deployments import run_deployment
from prefect.exceptions import MissingContextError

from selffeed.config import RunConfig
from selffeed.manifest import Manifest
from selffeed.stages import layout_of
from tasks.cache import cached_result
from tasks.stages import for_run

# stage task name -> (GPU flow name, its deployment name in deployments/prefect.yaml)
DEPLOYMENTS = {
    "finetune": "gpu-finetune/gpu-finetune",
    "sample": "gpu-sample/gpu-sample",
    "retrain": "gpu-retrain/gpu-retrain",
    "validate": "gpu-validate/gpu-validate",
}


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
    config: RunConfig, r: int, model: Manifest, data: Manifest, upstream: list[Manifest] | None = None
) -> Manifest:
    return for_run(config).validate(config, r, model, data, upstream)


def gpu_pool_unavailable(config: RunConfig) -> str | None:
    """None when the configured GPU pool has a worker ONLINE, else why not, in one line."""
    pool = config.orchestration.gpu_pool
    try:
        with get_client(sync_client=True) as client:
            workers = client.read_workers_for_work_pool(pool)
    except httpx.HTTPStatusError as err:
        if err.response.status_code == 404:
            return f"no work pool {pool!r} on the API"
        return f"API error: {_one_line(err)}"
    except Exception as err:  # unreachable server, timeouts, ...: reported, never silent
        return f"API error: {_one_line(err)}"
    if not any(w.status is not None and w.status.value == "ONLINE" for w in workers):
        return f"no worker online in pool {pool!r}"
    return None


def gpu_workers_online(config: RunConfig) -> bool:
    """True when the configured GPU pool exists on the API and has a worker ONLINE."""
    return gpu_pool_unavailable(config) is None


def run_stage(stage: str, config: RunConfig, **args: Any) -> Manifest:
    """Run a GPU stage on the GPU pool or in-process, per ``config.orchestration.gpu_stages``."""
    mode, pool = config.orchestration.gpu_stages, config.orchestration.gpu_pool
    results = layout_of(config).results.resolve()
    if mode == "local":
        why = "orchestration.gpu_stages=local"
    elif cached_result(stage, config, args, results) is not None:
        why = "cached, nothing to ship"
    else:
        why = gpu_pool_unavailable(config)
        if why is not None and mode == "workers":
            raise RuntimeError(f"GPU stage {stage}: orchestration.gpu_stages=workers but {why}; "
                               f"start a worker on pool {pool!r} or set orchestration.gpu_stages=auto")
    log = _logger()
    if why is not None:
        level = logging.WARNING if why.startswith("API error") else logging.INFO
        log.log(level, "%s runs in this process: %s", stage, why)
        return getattr(for_run(config), stage)(config, **args)

    log.info("%s sent to pool %r (deployment %s): a worker is online", stage, pool, DEPLOYMENTS[stage])
    parameters = {"config": config.model_dump(mode="json")}
    parameters |= {k: _jsonable(v) for k, v in args.items()}
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
