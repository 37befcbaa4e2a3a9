"""GPU-bound stages as flows of their own, and the routing that runs them where a GPU is.

Each GPU stage (fine-tune, sample, retrain, validate) is a flow deployed on the ``gpu`` work pool
(``deployments/prefect.yaml``). The orchestrating flow calls :func:`run_stage`: when the pool has an
online worker (or ``orchestration.gpu_stages=workers``) it starts the stage's deployment with
``run_deployment`` and waits; otherwise (no server, no worker, or ``gpu_stages=local``) it runs the
stage's task in this process. Either way the task is cached under the run directory, so after a
remote run the local call is a cache hit that returns the manifest: results cross machines through
the run directory (shared storage), never through Prefect's result payloads.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger
from prefect.client.orchestration import get_client
from prefect.deployments import run_deployment

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


def gpu_workers_online(config: RunConfig) -> bool:
    """True when the configured GPU pool exists on the API and has a worker ONLINE."""
    try:
        with get_client(sync_client=True) as client:
            workers = client.read_workers_for_work_pool(config.orchestration.gpu_pool)
    except Exception:  # no such pool, or no API that knows work pools: run in-process
        return False
    return any(w.status is not None and w.status.value == "ONLINE" for w in workers)


def run_stage(stage: str, config: RunConfig, **args: Any) -> Manifest:
    """Run a GPU stage on the GPU pool or in-process, per ``config.orchestration.gpu_stages``."""
    local = getattr(for_run(config), stage)
    mode = config.orchestration.gpu_stages
    remote = mode == "workers" or (mode == "auto" and gpu_workers_online(config))
    if remote and cached_result(stage, config, args, layout_of(config).results.resolve()) is not None:
        remote = False  # nothing to compute: the local call below is a cache hit
    if remote:
        parameters = {"config": config.model_dump(mode="json")}
        parameters |= {k: _jsonable(v) for k, v in args.items()}
        child = run_deployment(
            DEPLOYMENTS[stage], parameters=parameters, timeout=config.orchestration.gpu_timeout_s, poll_interval=1
        )
        if child.state is None or not child.state.is_completed():
            state = child.state.name if child.state else "unknown"
            raise RuntimeError(f"GPU stage {stage} ({DEPLOYMENTS[stage]}) ended {state}: flow run {child.id}")
        get_run_logger().info("%s ran on the %s pool as flow run %s", stage, config.orchestration.gpu_pool, child.id)
    # After a remote run this is a cache hit (the child committed the same key under the run directory).
    return local(config, **args)


def _jsonable(value: Any) -> Any:
    if isinstance(value, Manifest):
        return value.model_dump(mode="json")
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    return value
