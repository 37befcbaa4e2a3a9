"""The round loop, once: prepare, fine-tune, then sample -> filter -> retrain -> validate until a stop rule fires.

The stage calls are passed in, so the Prefect flow (its cached tasks, GPU routing) and a plain run (the
functions of :mod:`selffeed.loop.stages`) run the same loop::

    from selffeed.loop.rounds import run_rounds
    record = run_rounds(load_config("data/configs/word_problems.yaml"))   # plain stages

A plain run holds the run's writer lock and writes the same files, but caches nothing: an interrupted
plain run starts again from prepare (``selffeed run`` resumes, through Prefect's cache).
``python -m selffeed.loop.rounds`` runs a controlled experiment this way (:func:`main`).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from selffeed.config import ConfigError, RunConfig, load_config
from selffeed.run.bookkeeping import decide, next_difficulties, open_run
from selffeed.run.manifest import Manifest, make_manifest

# selffeed.loop.stages (torch, transformers: seconds to import) is imported where a stage runs, not here, so that walking
# the loop over cached results (flows/replay.py) starts in well under a second.


@dataclass(frozen=True)
class Stages:
    """The loop's stage calls, each with :mod:`selffeed.loop.stages`' signature (called with keywords)."""

    prepare: Callable[..., Manifest]
    finetune: Callable[..., Manifest]
    sample: Callable[..., Manifest]
    filter_samples: Callable[..., Manifest]
    retrain: Callable[..., Manifest]
    validate: Callable[..., Manifest]
    decide: Callable[..., dict[str, Any]]


def plain() -> Stages:
    """The stages as plain function calls in this process."""
    from selffeed.loop import stages

    return Stages(
        prepare=stages.prepare, finetune=stages.finetune, sample=stages.sample,
        filter_samples=stages.filter_samples, retrain=stages.retrain, validate=stages.validate,
        decide=lambda cfg, r, history: decide(cfg, history),
    )


def loop(cfg: RunConfig, s: Stages, first: tuple[Manifest, Manifest] | None = None,
         measured: dict[str, Any] | None = None) -> dict[str, Any]:
    """Rounds until ``s.decide`` says stop; returns its last record (best round, stop reason).

    ``first`` (the prepared data and a round-0 model) starts from a fine-tune done elsewhere, e.g. by
    another arm of an experiment with the same seed; it is validated as this run's round 0, or, given
    ``measured`` (that other run's round-0 metrics), takes those figures instead of measuring them again."""
    data = first[0] if first else s.prepare(cfg)
    model = first[1] if first else s.finetune(cfg, data=data)
    extra = {"measured": measured} if measured else {}  # stages that never share round 0 need not take it
    history = [s.validate(cfg, r=0, model=model, data=data, **extra).meta["metrics"]]
    decision = s.decide(cfg, r=0, history=history)
    kept: list[Manifest] = []
    models = [model]
    r = 0
    while not decision["stopped"]:
        r += 1
        upstream: list[Manifest] = []
        if cfg.loop.mix != "seed_only":  # the control arm trains on seed data alone
            difficulties = next_difficulties(cfg, data, history)
            samples = s.sample(cfg, r=r, model=model, data=data, difficulties=difficulties)
            ensemble = models[-(cfg.filter.ensemble_rounds + 1) :] if cfg.filter.ensemble_rounds else None
            filtered = s.filter_samples(cfg, r=r, samples=samples, ensemble=ensemble, earlier=list(kept))
            kept.append(filtered)
            upstream = [samples, filtered]
        model = s.retrain(cfg, r=r, previous=model, data=data, kept=kept)
        models.append(model)
        history.append(s.validate(cfg, r=r, model=model, data=data, upstream=upstream).meta["metrics"])
        decision = s.decide(cfg, r=r, history=history)
    return decision


def run_rounds(cfg: RunConfig, s: Stages | None = None, owner: str | None = None,
               first: tuple[Manifest, Manifest] | None = None,
               measured: dict[str, Any] | None = None) -> dict[str, Any]:
    """:func:`loop` (by default over :func:`plain` stages) while holding ``cfg``'s run directory (its writer
    lock, config.yaml); ``first`` and ``measured`` as :func:`loop` takes them."""
    with open_run(cfg, owner=owner or f"plain run {cfg.name}"):
        return loop(cfg, s or plain(), first, measured)


def adopt_round0(cfg: RunConfig, model: Manifest) -> Manifest:
    """``model`` (another run's round-0 checkpoint, fine-tuned with the same seed, data and settings) copied
    into ``cfg``'s run as its own round 0, so the arms of an experiment fine-tune once per seed."""
    from selffeed.loop import stages
    from selffeed.run.layout import atomic_path

    t0 = time.perf_counter()
    dest = stages.layout_of(cfg).model(0)
    with atomic_path(dest) as tmp:
        shutil.copytree(model.path("model"), tmp)
    # The model's figures (train loss, tokens, ...) are the source's; the time is the copy's.
    source = model.meta.get("adopted_from", model.paths["model"])  # a run continuing its own copy keeps the source
    meta = model.meta | {"seconds": time.perf_counter() - t0, "adopted_from": source}
    return make_manifest("finetune", {"model": dest}, round_=0, rows=model.rows, **meta)


def shared_round0(cfg: RunConfig, source: str) -> tuple[Manifest, dict[str, Any] | None]:
    """Run ``source``'s committed round-0 model (a run in the same ``runs_dir``: another arm of an experiment with
    the same seed, or this run itself when it continues after adopting its round 0), for ``cfg`` to adopt instead of
    fine-tuning, and its round-0 metrics where validating under ``cfg`` gives the same figures
    (:func:`~selffeed.run.keys.same_validation`), else None.

    Raises ConfigError when ``source`` has no committed round 0, or prepared or fine-tuned under other
    settings than ``cfg`` (then its model is not the one ``cfg`` would train)."""
    from selffeed.run.keys import config_material, same_validation
    from selffeed.run.layout import RunLayout, read_json

    lay = RunLayout.of(cfg.runs_dir, source)
    if not lay.round_manifest(0).is_file():
        raise ConfigError(f"round0_from: run {source!r} has no committed round 0 (no {lay.round_manifest(0)})")
    theirs = load_config(lay.config)

    def training(c: RunConfig) -> dict[str, dict[str, Any]]:  # what round 0's data and model depend on
        own = ("name", "runs_dir")
        return {s: {k: v for k, v in config_material(s, c).items() if k not in own} for s in ("prepare", "finetune")}

    mine, source_round0 = training(cfg), training(theirs)
    if mine != source_round0:
        differ = sorted({k for s, m in mine.items() for k, v in m.items() if source_round0[s].get(k) != v})
        raise ConfigError(f"round0_from: run {source!r} was prepared or fine-tuned with other settings "
                          f"({', '.join(differ)} differ), so its round-0 model is not this run's")
    model = Manifest.model_validate(read_json(lay.round_manifest(0))["stages"]["finetune"])
    return model, read_json(lay.metrics(0)) if same_validation(cfg, theirs) else None


def run_experiment(cfg: RunConfig, arms: list[str], seeds: int) -> None:
    """Every arm for every seed, plainly (no Prefect), as the ``experiment`` flow runs them: the seed's first
    arm fine-tunes round 0 and the others copy it (:func:`shared_round0`, which also hands over its round-0
    figures where :func:`~selffeed.run.keys.same_validation` holds)."""
    from selffeed.experiments.arms import arm_config, seeds_of
    from selffeed.loop import stages

    for seed in seeds_of(cfg, seeds):
        source: str | None = None  # the seed's first arm, whose round 0 the others copy
        for arm in arms:
            arm_cfg = arm_config(cfg, arm, seed)
            t0 = time.perf_counter()
            with open_run(arm_cfg, owner=f"plain experiment {arm_cfg.name}"):
                first, measured = None, None
                if source is not None:
                    model, measured = shared_round0(arm_cfg, source)
                    first = (stages.prepare(arm_cfg), adopt_round0(arm_cfg, model))
                record = loop(arm_cfg, plain(), first, measured)
            source = source or arm_cfg.name
            print(f"{arm_cfg.name}: best round {record['best_round']} ({record['stop_reason']}), "
                  f"{time.perf_counter() - t0:.0f} s", flush=True)


def main(argv: list[str] | None = None) -> None:
    """``python -m selffeed.loop.rounds CONFIG [key=value ...] [--arms ...] [--seeds N] [--report]``: an experiment
    without Prefect (e.g. on a GPU box that has only the core library's dependencies), then its report."""
    from selffeed.experiments.arms import ARMS, parse_arms, report_markdown, summarize_runs, write_report
    from selffeed.run.layout import ExperimentLayout

    p = argparse.ArgumentParser(prog="python -m selffeed.loop.rounds", description=main.__doc__)
    p.add_argument("config")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    p.add_argument("--arms", default=",".join(ARMS))
    p.add_argument("--seeds", type=int, default=1, help="seeds: the config's seed and the next ones")
    p.add_argument("--report", action="store_true", help="only write the report over the finished runs")
    args = p.parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
        arms = parse_arms(args.arms)
    except ConfigError as err:
        raise SystemExit(f"error: {err}") from None
    t0 = time.perf_counter()
    if not args.report:
        run_experiment(cfg, arms, args.seeds)
    command = "python -m selffeed.loop.rounds " + " ".join(argv if argv is not None else sys.argv[1:])
    summary = summarize_runs(cfg, arms, args.seeds)
    lay = ExperimentLayout.of(cfg.runs_dir, cfg.name)
    write_report(lay, summary, command)
    print(report_markdown(summary, command))
    print(f"report: {lay.report_md} ({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
