"""The Prefect cache policy of the stages: content-addressed keys that heal themselves.

The key is :func:`selffeed.run.keys.stage_key` (the package's source, library versions, the config
sections the stage reads, user code, the content of files the config names, and upstream digests). Prefect alone knows nothing about the Parquet files and checkpoints a
manifest names: when a cached manifest's files are gone or changed, this policy drops the record so
the lookup misses and the stage runs again under the same key, instead of handing a dangling or
stale path downstream.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect.cache_policies import CachePolicy
from prefect.context import TaskRunContext

from selffeed.run.keys import stage_key
from selffeed.run.manifest import Manifest


def _manifests(value: Any) -> list[Manifest]:
    if isinstance(value, Manifest):
        return [value]
    if isinstance(value, list | tuple):
        return [m for v in value for m in _manifests(v)]
    return []


@dataclass
class StageCache(CachePolicy):
    stage: str = ""

    def compute_key(
        self,
        task_ctx: TaskRunContext,
        inputs: dict[str, Any],
        flow_parameters: dict[str, Any],
        **kwargs: Any,
    ) -> str | None:
        cfg = inputs["cfg"]
        key = stage_key(self.stage, cfg, {k: v for k, v in inputs.items() if k != "cfg"})
        store = task_ctx.result_store
        if store is not None and store.exists(key):
            try:
                stale = any(not m.is_valid() for m in _manifests(store.read(key).result))
            except Exception:  # unreadable record: treat as a miss too
                stale = True
            if stale:
                storage = store.metadata_storage or store.result_storage
                base = getattr(storage, "basepath", None)
                if base is not None:
                    (Path(os.path.expanduser(str(base))) / key).unlink(missing_ok=True)
        return key


def cached_result(stage: str, cfg: Any, inputs: dict[str, Any], storage: Path) -> Manifest | None:
    """The manifest a stage's task would return from the cache right now, or None on a miss.

    Lets the orchestrator skip shipping a stage to a GPU worker when it has nothing to compute.
    """
    from prefect.filesystems import LocalFileSystem
    from prefect.results import ResultStore

    key = stage_key(stage, cfg, inputs)
    store = ResultStore(result_storage=LocalFileSystem(basepath=str(storage)))
    try:
        if not store.exists(key):
            return None
        result = store.read(key).result
    except Exception:
        return None
    return result if isinstance(result, Manifest) and result.is_valid() else None
