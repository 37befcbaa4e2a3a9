"""Controlled experiments: the self-improvement loop against its control arms, over several seeds.

Each arm is the given config transformed (:func:`arm_config`); every arm runs the same rounds and
training steps and samples the same pool prompts, and with ``filter.views`` the same views of each
(arithmetic: ``b+a`` and the offset problems ``a'+b``), so the arms differ only in the labels of what
is added to the training data each round:

- ``self``: the config as given (its filters keep self-labelled samples; each kept view is a row);
- ``seed_only``: no generated data at all (``loop.mix=seed_only``);
- ``unfiltered``: one sample of every prompt and every view, each kept with its own answer whatever it
  says (no vote, no other filter but length and dedup);
- ``oracle``: every prompt and view labelled with its own true answer (``filter.oracle``), the ceiling.

So a kept prompt adds up to one row per view in every arm; the report shows kept rows and distinct
kept prompts side by side.

:func:`summarize` turns the arms' metric histories into mean ± sd per round and difficulty across
seeds on the **test** split (``metrics["test"]``; older runs' top-level figures), kept rows, prompts
and precision, and the gap closure on the hardest difficulty at the final round and at each arm's best
round, which is picked on the **validation** split as the loop picks it (:func:`selffeed.loop.policy.best_round`),
so no test figure selects anything. :func:`write_report` writes ``report.json``, ``report.md`` and
``accuracy.png`` under :class:`~selffeed.run.layout.ExperimentLayout`::

    runs = arm_configs(load_config("data/configs/arithmetic.yaml"), ARMS, seeds=3)
    ...  # run each config (flows/experiment.py does, as Prefect subflows)
    summary = summarize_runs(cfg, ARMS, seeds=3)
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from selffeed.config import ConfigError, FilterConfig, LoopConfig, RunConfig
from selffeed.loop.policy import best_round
from selffeed.recipes import recipe_for
from selffeed.run.bookkeeping import read_history
from selffeed.run.layout import ExperimentLayout, RunLayout, write_json, write_text

ARMS = ("self", "seed_only", "unfiltered", "oracle")


def parse_arms(text: str) -> list[str]:
    """``"self,oracle"`` -> ``["self", "oracle"]``; an unknown or repeated arm is a one-line error."""
    arms = [a.strip() for a in text.split(",") if a.strip()]
    bad = [a for a in arms if a not in ARMS]
    if bad or not arms or len(set(arms)) != len(arms):
        raise ConfigError(f"--arms '{text}': expected distinct arms from {','.join(ARMS)}")
    return arms


def seeds_of(cfg: RunConfig, seeds: int) -> list[int]:
    """The seeds an experiment runs: the config's seed and the next ``seeds - 1``."""
    return list(range(cfg.seed, cfg.seed + seeds))


def control_config(cfg: RunConfig, kind: str, rounds: int) -> RunConfig:
    """The control arm ``selffeed run --control`` runs beside ``cfg``, named ``<name>-<kind>``, for exactly
    ``rounds`` rounds with the same training steps: ``seed-only`` trains on the seed alone each round;
    ``unguarded`` (constrained_stories) keeps the best of k by the constraint checker alone and trains on
    the last round's stories alone (loop.mix=replace): no repetition, near-duplicate or base-model
    perplexity filter and no collapse guard, to show what the guards prevent."""
    control = cfg.model_copy(deep=True)
    control.name = f"{cfg.name}-{kind}"
    if kind == "seed-only":
        control.loop.mix = "seed_only"
    elif kind == "unguarded":
        if cfg.recipe != "constrained_stories":
            raise ConfigError(f"--control unguarded: recipe {cfg.recipe} has no guards to drop (constrained_stories)")
        s = control.constrained_stories
        s.max_repeat_ratio = s.near_dup = s.max_ref_perplexity = None
        control.loop.mix = "replace"
        control.loop.max_perplexity_rise = control.loop.max_diversity_drop = None
    else:
        raise ConfigError(f"--control {kind}: expected seed-only or unguarded")
    control.loop.max_rounds = rounds
    control.loop.patience = rounds + 1  # same number of rounds and steps as the main arm
    control.loop.loss_threshold = None
    return control


def arm_config(cfg: RunConfig, arm: str, seed: int) -> RunConfig:
    """``cfg`` turned into ``arm`` with ``seed``, named ``<name>-<arm>-s<seed>``; every arm runs exactly
    ``loop.max_rounds`` rounds (stop rules off, ``audit.min_precision`` included) with the same training steps."""
    out = cfg.model_copy(deep=True)
    out.name = f"{cfg.name}-{arm}-s{seed}"
    out.seed = seed
    # Every stop rule off: the arms are compared round for round, so none may end early.
    out.loop.patience = cfg.loop.max_rounds + 1
    out.loop.loss_threshold = None
    out.loop.max_perplexity_rise = None
    out.loop.max_diversity_drop = None
    out.audit.min_precision = None
    if arm == "seed_only":
        out.loop.mix = "seed_only"
    elif arm == "unfiltered":
        # A fresh filter section turns off every filter, present and future, except length and dedup;
        # views stay on so every view the self arm sampled gets its one unchecked answer.
        out.filter = FilterConfig(
            vote=False, dedup=cfg.filter.dedup, views=cfg.filter.views, label_free=cfg.filter.label_free
        )
        out.sample.k = 1
    elif arm == "oracle":
        if recipe_for(cfg).true_completion is None:
            raise ConfigError(f"arm oracle: recipe {cfg.recipe} has no true answers (drop it with --arms)")
        out.filter = FilterConfig(oracle=True, views=cfg.filter.views)  # every prompt and view, truly labelled
        out.sample.k = 1  # the samples only feed the report; the labels are the true ones
    elif arm != "self":
        raise ConfigError(f"arm '{arm}': expected one of {', '.join(ARMS)}")
    return out


def arm_configs(cfg: RunConfig, arms: Sequence[str], seeds: int) -> list[tuple[str, int, RunConfig]]:
    """(arm, seed, config) of every run of the experiment, seed by seed."""
    return [(arm, s, arm_config(cfg, arm, s)) for s in seeds_of(cfg, seeds) for arm in arms]


def _values(m: dict[str, Any]) -> dict[str, float]:
    """A round's test figures by difficulty (plus ``all``), or the scorer's metric of a scored recipe.

    The test split's figures sit under ``test``; runs from before the split have only the top level.
    """
    t = m.get("test") or m
    if "metric" in m:
        return {m["metric"]: t[m["metric"]]}
    return {**t["accuracy_by_difficulty"], "all": t["accuracy"]}


def _best(history: list[dict[str, Any]], loop: LoopConfig) -> dict[str, Any]:
    """The round the loop's rule picks on the validation figures (top level), never on test ones."""
    r = best_round(history, loop)
    return next(m for m in history if m["round"] == r)


def _stat(xs: Sequence[float | None]) -> dict[str, Any]:
    """Mean and sample sd (0 with one value) of the values that exist; None when there are none."""
    xs = [x for x in xs if x is not None]
    if not xs:
        return {"mean": None, "sd": None, "n": 0}
    return {"mean": statistics.fmean(xs), "sd": statistics.stdev(xs) if len(xs) > 1 else 0.0, "n": len(xs)}


def _closure(self_: float, seed_only: float, oracle: float) -> float | None:
    gap = oracle - seed_only
    return None if abs(gap) < 1e-9 else (self_ - seed_only) / gap


def summarize(
    histories: dict[str, dict[int, list[dict[str, Any]]]], name: str = "experiment", loop: LoopConfig | None = None
) -> dict[str, Any]:
    """Aggregate ``histories[arm][seed]`` (each a run's metrics per round) into the report's figures.

    Per arm and round: test accuracy per difficulty (mean ± sd across seeds), kept rows, distinct kept
    prompts and kept precision. Gap closure on the hardest difficulty, ``(self - seed_only) /
    (oracle - seed_only)`` per seed, at the final round and at each arm's best round, picked by
    ``loop``'s rule on the validation figures (default: the recipe's loop metric, higher is better).
    Worst-round precision per arm: the lowest kept precision of any round of any seed.
    """
    arms = list(histories)
    seeds = sorted({s for per_seed in histories.values() for s in per_seed})
    rounds = sorted({m["round"] for per_seed in histories.values() for h in per_seed.values() for m in h})
    first = next(m for per_seed in histories.values() for h in per_seed.values() for m in h)
    loop = loop or LoopConfig(metric=first.get("metric", "accuracy_hardest"))
    keys = list(_values(first))
    hardest = keys[-2] if keys[-1] == "all" else keys[-1]
    per_arm: dict[str, Any] = {}
    for arm, per_seed in histories.items():
        by_round = {r: [m for h in per_seed.values() for m in h if m["round"] == r] for r in rounds}
        per_arm[arm] = {
            "rounds": [
                {
                    "round": r,
                    "accuracy": {k: _stat([_values(m).get(k) for m in ms]) for k in keys},
                    "kept": _stat([m.get("kept") for m in ms]),
                    "prompts": _stat([m.get("kept_prompts") for m in ms]),
                    "precision": _stat([m.get("kept_precision") for m in ms]),
                }
                for r, ms in by_round.items()
            ],
            "final": {s: _values(h[-1])[hardest] for s, h in per_seed.items()},
            "best_round": {s: _best(h, loop)["round"] for s, h in per_seed.items()},
            "best": {s: _values(_best(h, loop))[hardest] for s, h in per_seed.items()},
            "worst_precision": min(
                (m["kept_precision"] for h in per_seed.values() for m in h if m.get("kept_precision") is not None),
                default=None,
            ),
        }
    closure: dict[str, Any] = {}
    if {"self", "seed_only", "oracle"} <= set(arms):
        for when in ("final", "best"):
            a, b, c = (per_arm[x][when] for x in ("self", "seed_only", "oracle"))
            per = {s: _closure(a[s], b[s], c[s]) for s in seeds if s in a and s in b and s in c}
            closure[when] = {**_stat(list(per.values())), "per_seed": per}
    deltas: dict[str, Any] = {}
    if "self" in arms:
        for other in arms:
            if other != "self":
                a, b = per_arm["self"]["final"], per_arm[other]["final"]
                diff = {s: a[s] - b[s] for s in seeds if s in a and s in b}
                deltas[other] = {**_stat(list(diff.values())), "wins": sum(d > 0 for d in diff.values())}
    return {
        "name": name, "arms": arms, "seeds": seeds, "rounds": rounds, "keys": keys, "hardest": hardest,
        "per_arm": per_arm, "gap_closure": closure, "self_minus": deltas,
    }


def summarize_runs(cfg: RunConfig, arms: Sequence[str], seeds: int) -> dict[str, Any]:
    """:func:`summarize` over the arms' run directories of the experiment ``cfg`` describes.

    An arm may have run on fewer seeds than others (a costly oracle arm on one seed of two): its figures
    are over the seeds it has (``n`` in each statistic), and per-seed comparisons use the seeds both sides
    have. An arm with no run at all is an error naming its first run."""
    histories: dict[str, dict[int, list[dict[str, Any]]]] = {arm: {} for arm in arms}
    missing: dict[str, Path] = {}
    for arm, s, arm_cfg in arm_configs(cfg, arms, seeds):
        # Rounds past max_rounds are left over from an earlier, longer experiment of the same name.
        lay = RunLayout.of(arm_cfg.runs_dir, arm_cfg.name)
        h = [m for m in read_history(lay) if m["round"] <= cfg.loop.max_rounds]
        if h:
            histories[arm][s] = h
        else:
            missing.setdefault(arm, lay.root)
    for arm, per_seed in histories.items():
        if not per_seed:
            raise FileNotFoundError(f"{missing[arm]}: no committed rounds (run the experiment first)")
    return summarize(histories, cfg.name, cfg.loop)


def _ms(st: dict[str, Any], spec: str = ".3f") -> str:
    if st["mean"] is None:
        return "-"
    return f"{st['mean']:{spec}} ± {st['sd']:{spec}}" if st["n"] > 1 else format(st["mean"], spec)


def _table(head: list[str], rows: list[list[str]], markdown: bool) -> str:
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])
    widths = [max(len(x) for x in col) for col in zip(head, *rows)]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in [head, *rows])


def arm_table(summary: dict[str, Any], arm: str, markdown: bool = False) -> str:
    """One line per round of ``arm``: kept rows, distinct kept prompts, precision, test accuracy per
    difficulty (mean ± sd). Rows count views too, so rows / prompts is the views kept per prompt."""
    head = ["round", "kept", "prompts", "precision", *(f"acc@{k}" if k != "all" else "acc" for k in summary["keys"])]
    rows = [
        [str(r["round"]), _ms(r["kept"], ".0f"), _ms(r["prompts"], ".0f"), _ms(r["precision"]),
         *(_ms(r["accuracy"][k]) for k in summary["keys"])]
        for r in summary["per_arm"][arm]["rounds"]
    ]
    return _table(head, rows, markdown)


def final_table(summary: dict[str, Any], markdown: bool = False) -> str:
    """Final-round test accuracy per difficulty, one column per arm (mean ± sd across seeds)."""
    arms = summary["arms"]
    rows = [
        [k, *(_ms(summary["per_arm"][a]["rounds"][-1]["accuracy"][k]) for a in arms)] for k in summary["keys"]
    ]
    return _table(["difficulty", *arms], rows, markdown)


def findings(summary: dict[str, Any]) -> list[str]:
    """The headline figures in words: gap closure, precision, and self vs each control."""
    h = summary["hardest"]
    out = []
    for when, what in (("final", "the final round"), ("best", "each arm's best round (picked on validation)")):
        c = summary["gap_closure"].get(when)
        if c:
            per = ", ".join("-" if v is None else f"{v:.2f}" for v in c["per_seed"].values())
            out.append(f"gap closure on {h} at {what}: {_ms(c, '.2f')} (per seed: {per})")
    for arm in summary["arms"]:
        wp = summary["per_arm"][arm]["worst_precision"]
        if wp is not None:
            out.append(f"{arm}: worst-round kept precision {wp:.3f}")
    for other, d in summary["self_minus"].items():
        out.append(f"self - {other} on {h} at the final round: {d['mean']:+.3f} (sd {d['sd']:.3f}), "
                   f"self ahead in {d['wins']}/{d['n']} seeds")  # the seeds both arms ran
    return out


def report_markdown(summary: dict[str, Any], command: str, plot_name: str = "accuracy.png") -> str:
    """``report.md``: the command, final-round comparison, findings, and one table per arm."""
    n = len(summary["seeds"])
    lines = [
        f"# Experiment {summary['name']}: {', '.join(summary['arms'])} x {n} seed(s)",
        "",
        f"Produced by `{command}`. Seeds {', '.join(map(str, summary['seeds']))}; every arm ran rounds "
        f"0..{summary['rounds'][-1]} with the same training steps. Figures are test-split figures, mean ± sd "
        "across seeds; each arm's best round is picked on its validation split. `kept` counts rows (one per "
        "kept view), `prompts` the distinct prompts they answer.",
        "",
        f"## Final round {summary['rounds'][-1]}",
        "",
        final_table(summary, markdown=True),
        "",
        *(f"- {f}" for f in findings(summary)),
        "",
        f"![accuracy vs round]({plot_name})",
    ]
    for arm in summary["arms"]:
        lines += ["", f"## Arm {arm}", "", arm_table(summary, arm, markdown=True)]
    return "\n".join(lines) + "\n"


def write_report(lay: ExperimentLayout, summary: dict[str, Any], command: str) -> None:
    """Write ``report.json``, ``report.md`` and ``accuracy.png`` atomically."""
    from selffeed.experiments.plots import accuracy_plot

    write_json(lay.report_json, {**summary, "command": command})
    accuracy_plot(summary, lay.plot)
    write_text(lay.report_md, report_markdown(summary, command, lay.plot.name))
