"""The controlled experiment: the self-improvement flow per arm and seed, then the report.

Each arm's run (``self``, ``seed_only``, ``unfiltered``, ``oracle``; see :mod:`selffeed.experiments.arms`)
is a ``self-improve`` subflow named ``<name>-<arm>-s<seed>``, run one after another (they share the
CPUs/GPU). The arms of a seed fine-tune round 0 once: the seed's first arm trains it, the others copy it
(and its round-0 figures, where their validation would measure the same ones). The report (tables, gap
closure, precision, accuracy-vs-round PNG) is written under ``<runs_dir>/<name>-experiment/`` and attached
to this flow run as a markdown and an image artifact.
Stages are cached like any run's, so running it again only redoes what is missing and the report::

    from flows.experiment import experiment
    from selffeed.config import load_config
    experiment(load_config("data/configs/arithmetic.yaml"), seeds=3)
"""

from __future__ import annotations

import base64
from typing import Annotated, Any, Literal

from prefect import flow, task
from prefect.artifacts import create_image_artifact, create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from pydantic import Field

from flows.self_improve import self_improve
from selffeed.config import RunConfig
from selffeed.experiments import arms as ex
from selffeed.run.layout import ExperimentLayout
from selffeed.run.report import artifact_key

Arm = Literal["self", "seed_only", "unfiltered", "oracle"]


@task(name="experiment-report", task_run_name="report", cache_policy=NO_CACHE, persist_result=False)
def report(config: RunConfig, arms: list[str], seeds: int, command: str) -> dict[str, Any]:
    """Aggregate the arms' runs, write the report files and attach them to the flow run."""
    summary = ex.summarize_runs(config, arms, seeds)
    lay = ExperimentLayout.of(config.runs_dir, config.name)
    ex.write_report(lay, summary, command)
    key = artifact_key(f"{config.name}-experiment")
    # The UI shows images as <img src=...>; a data: URL needs no server to host the PNG.
    png = "data:image/png;base64," + base64.b64encode(lay.plot.read_bytes()).decode()
    create_markdown_artifact(
        key=key, markdown=ex.report_markdown(summary, command, plot_name=png),
        description=f"experiment {config.name}: {', '.join(arms)} x {seeds} seed(s)",
    )
    create_image_artifact(
        image_url=png, key=f"{key}-plot",
        description="held-out accuracy vs round per arm (mean ± sd across seeds)",
    )
    return {**summary, "report": {"md": str(lay.report_md), "json": str(lay.report_json), "png": str(lay.plot)}}


@flow(name="experiment", flow_run_name="{config.name}-experiment", validate_parameters=True)
def experiment(
    config: RunConfig = RunConfig(),
    # Bounds as Annotated, not `= Field(...)`: Prefect fills a Field default in only for deployment runs.
    # The UI's descriptions come from the docstring.
    seeds: Annotated[int, Field(ge=1, le=20)] = 3,
    arms: Annotated[list[Arm], Field(min_length=1)] = list(ex.ARMS),
    command: str = "flow experiment",
) -> dict[str, Any]:
    """Run every arm over ``seeds`` seeds with identical rounds and steps, then write the report.

    Args:
        config: The self arm's run config; the other arms are derived from it.
        seeds: Seeds per arm: the config's seed and the next ones.
        arms: Arms to run (all share rounds and steps).
        command: What started it, quoted in the report.
    """
    arms = list(arms)
    first: dict[int, str] = {}  # seed -> its first arm's run, whose round-0 fine-tune the others copy
    for _arm, seed, cfg in ex.arm_configs(config, arms, seeds):
        self_improve(cfg, round0_from=first.get(seed))
        first.setdefault(seed, cfg.name)
    return report(config, arms, seeds, command)
