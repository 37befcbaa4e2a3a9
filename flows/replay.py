"""Answer a run whose every stage is already cached, without starting Prefect's server.

Re-running a finished run computes nothing: each stage's key finds its committed result. Yet the flow
would first start Prefect's embedded API server and import torch and transformers, seconds of waiting
for nothing. :func:`replay` walks the same loop (:func:`selffeed.loop.rounds.loop`) with stages that only look up
their cached result (:func:`tasks.cache.cached_result`, the lookup the flow's tasks make) and gives up
at the first miss, so that the caller runs the flow, which then does the real work and records it in
Prefect. A replay records nothing there: nothing ran.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from selffeed.config import RunConfig, dump_config
from selffeed.loop.rounds import Stages, loop, shared_round0
from selffeed.run.bookkeeping import decide, decision
from selffeed.run.layout import RunLayout, write_text
from selffeed.run.lock import run_lock
from selffeed.run.manifest import Manifest


class _Miss(Exception):
    """A stage has no valid cached result under its current key."""


def replay(cfg: RunConfig, round0_from: str | None = None) -> dict[str, Any] | None:
    """The run record of ``cfg``'s loop if every stage of it is cached with its files intact, else None.

    ``round0_from`` as the flow takes it (round 0 copied from that run). Holds the run's writer lock while it
    looks. On a hit it writes what the flow writes when every stage is cached: this invocation's
    ``config.yaml``, and ``run.json`` and ``best`` from the last decision; on a miss, nothing."""
    lay = RunLayout.of(cfg.runs_dir, cfg.name)
    storage = lay.results.resolve()
    if not storage.is_dir():
        return None
    # Imported only now: it imports Prefect, which creates PREFECT_HOME, and a first run's input is
    # not yet checked.
    from tasks.cache import cached_result

    def cached(stage: str) -> Callable[..., Manifest]:
        def lookup(cfg: RunConfig, **inputs: Any) -> Manifest:
            found = cached_result(stage, cfg, inputs, storage)
            if found is None:
                raise _Miss(stage)
            return found

        return lookup

    final: list[list[dict[str, Any]]] = []

    def decide_unwritten(cfg: RunConfig, r: int, history: list[dict[str, Any]]) -> dict[str, Any]:
        final[:] = [history]
        return decision(cfg, history)

    finetune, measured = cached("finetune"), None
    if round0_from:  # looked up under the adopting task's key: the fine-tune's plus the adopted model
        model, measured = shared_round0(cfg, round0_from)
        finetune = functools.partial(finetune, model=model)
    stages = Stages(
        prepare=cached("prepare"), finetune=finetune, sample=cached("sample"),
        filter_samples=cached("filter"), retrain=cached("retrain"), validate=cached("validate"),
        decide=decide_unwritten,
    )
    try:
        with run_lock(lay.lock, f"selffeed run {cfg.name} (replay of cached stages)"):
            loop(cfg, stages, measured=measured)
            write_text(lay.config, dump_config(cfg))
            return decide(cfg, final[0])
    except _Miss:
        return None
