"""The looping self-improvement flow: prepare, fine-tune, then rounds of
sample -> filter -> retrain -> validate until a stop rule fires.

Every stage is cached under a content-addressed key, so running the flow again on the same run (a
new run, the UI's Retry, ``prefect flow-run retry``) reuses completed stages and runs only what
failed and what follows. One flow at a time may write a run directory (a lock file names the
holder). Runs against whatever Prefect API is configured, or Prefect's embedded temporary server
when none is (the ``selffeed`` command keeps its ``PREFECT_HOME`` under the runs directory)::

    from flows.self_improve import self_improve
    from selffeed.config import load_config
    self_improve(load_config("data/configs/arithmetic.yaml", ["loop.max_rounds=2"]))
"""

from __future__ import annotations

from typing import Any

from prefect import flow

from selffeed.config import RunConfig
from selffeed.stages import open_run
from tasks.stages import for_run


@flow(name="self-improve", flow_run_name="{config.name}", validate_parameters=True)
def self_improve(config: RunConfig = RunConfig()) -> dict[str, Any]:
    """Run the loop for ``config`` and return the run record (best round, stop reason)."""
    t = for_run(config)
    with open_run(config, owner=f"flow self-improve, run {config.name}"):
        data = t.prepare(config)
        model = t.finetune(config, data)
        history = [t.validate(config, 0, model, data).meta["metrics"]]
        decision = t.decide(config, 0, history)
        kept = []
        r = 0
        while not decision["stopped"]:
            r += 1
            upstream = []
            if config.loop.mix != "seed_only":  # the control arm trains on seed data alone
                samples = t.sample(config, r, model, data)
                filtered = t.filter_samples(config, r, samples)
                kept.append(filtered)
                upstream = [samples, filtered]
            model = t.retrain(config, r, model, data, kept)
            history.append(t.validate(config, r, model, data, upstream).meta["metrics"])
            decision = t.decide(config, r, history)
    return decision
