"""The looping self-improvement flow, and the nightly flow that continues a run.

``self_improve``: prepare, fine-tune, then rounds of sample -> filter -> retrain -> validate until a
stop rule fires (:func:`selffeed.loop.rounds.loop`, with this package's tasks as its stages). GPU-bound stages go through :func:`flows.gpu_stages.run_stage` (the gpu pool's
workers when one is online, else this process). Every stage is cached under a content-addressed
key, so running the flow again on the same run (a new run, the UI's Retry, ``prefect flow-run
retry``) reuses completed stages and runs only what failed and what follows. One flow at a time
may write a run directory (a lock file names the holder).

``nightly``: add rounds to an existing run, continuing from its last committed round.

Runs against whatever Prefect API is configured, or Prefect's embedded temporary server when none
is (the ``selffeed`` command keeps its ``PREFECT_HOME`` under the runs directory)::

    from flows.self_improve import self_improve
    from selffeed.config import load_config
    self_improve(load_config("data/configs/arithmetic.yaml", ["loop.max_rounds=2"]))
"""

from __future__ import annotations

import functools
from typing import Any

from prefect import flow
from pydantic import Field

from flows.gpu_stages import run_stage
from selffeed.config import RunConfig
from selffeed.loop.rounds import Stages, run_rounds, shared_round0
from selffeed.run.bookkeeping import adopted_round0, continued_config
from tasks.stages import for_run


@flow(name="self-improve", flow_run_name="{config.name}", validate_parameters=True)
def self_improve(config: RunConfig = RunConfig(), round0_from: str | None = None) -> dict[str, Any]:
    """Run the self-improvement loop for ``config``; returns the run record (best round, stop reason).

    Args:
        config: The run's settings.
        round0_from: Another run in the same runs_dir, with the same seed, data and fine-tune settings (an
            experiment's other arm), whose round-0 model this run copies instead of fine-tuning its own;
            its round-0 figures too, where validation would measure the same ones.
    """
    t = for_run(config)
    gpu = functools.partial
    finetune, measured = gpu(run_stage, "finetune"), None
    if round0_from:
        model, measured = shared_round0(config, round0_from)
        finetune = functools.partial(t.adopt_round0, model=model)
    return run_rounds(config, Stages(
        prepare=lambda cfg: t.prepare(cfg),
        finetune=finetune,
        sample=gpu(run_stage, "sample"),
        filter_samples=lambda cfg, **kw: t.filter_samples(cfg, **kw),
        retrain=gpu(run_stage, "retrain"),
        validate=gpu(run_stage, "validate"),
        decide=lambda cfg, r, history: t.decide(cfg, r, history),
    ), owner=f"flow self-improve, run {config.name}", measured=measured)


@flow(name="nightly", flow_run_name="{run_name}-nightly", validate_parameters=True)
def nightly(
    run_name: str = Field("arith-demo", description="Name of the run to continue."),
    runs_dir: str = Field("runs", description="Directory holding the run (relative to the worker's checkout)."),
    rounds: int = Field(1, ge=1, le=50, description="Rounds to add after the last committed round."),
) -> dict[str, Any]:
    """Add ``rounds`` rounds to an existing run: earlier rounds are reused from the cache, untouched."""
    # A run whose round 0 was copied from another arm finds it under the adopting task's key, from itself.
    own = run_name if adopted_round0(runs_dir, run_name) else None
    return self_improve(continued_config(runs_dir, run_name, rounds), round0_from=own)
