"""Plain-text reports of a run: the per-round table and the comparison with a control arm.

Reports show the held-out figures of the **test** split (``metrics["test"]``), which nothing in the
loop decides on; the validation figure that picked the best round is shown beside them as ``val``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any


def _fmt(x: Any, spec: str = ".3f") -> str:
    return "-" if x is None else format(x, spec)


def _labels(m: dict[str, Any]) -> str:
    """The true labels the round used that could steer it (``labels.total``, see selffeed.filtering.labels)."""
    return _fmt((m.get("labels") or {}).get("total"), "d")


def on_test(m: dict[str, Any], metric: str | None = None) -> dict[str, Any]:
    """A round's metrics with the test split's figures in place of the validation split's, and the
    validation value of ``metric`` under ``val`` (rounds of older runs, without a test entry, as they are)."""
    if "test" not in m:
        return m
    return {**m, **m["test"], "val": m.get(metric) if metric else None}


def round_table(history: Sequence[dict[str, Any]], metric: str | None = None) -> str:
    """One line per round: sizes, true labels used (``labels``: seed, references, oracle, steering
    audit and validation labels), filter precision, test accuracy per difficulty, stage times, and
    with ``metric`` its validation value (``val``, what picks the best round).

    Rounds of a scored recipe (metrics name their ``metric``) show the kept rows' mean score and the
    test metric instead of precision and accuracies.
    """
    history = [on_test(m, metric) for m in history]
    if "constraints_met" in history[0]:
        return _stories_table(history)
    if "distinct_2" in history[0]:
        return _text_table(history)
    if "metric" in history[0]:
        return _scored_table(history)
    buckets = sorted({d for m in history for d in m["accuracy_by_difficulty"]}, key=int)
    stages = ["finetune", "sample", "filter", "retrain", "validate"]
    audited = any(m.get("audit_precision") is not None for m in history)
    curriculum = any(m.get("pool_difficulties") for m in history)
    head = (
        ["round", "train", "kept", "precision"]
        + (["audit"] if audited else [])
        + (["pool"] if curriculum else [])
        + [f"acc@{d}" for d in buckets]
        + ["acc", "loss"]
        + (["val"] if metric else [])
        + ["labels"]
        + [f"{s}_s" for s in stages]
    )
    rows = [head]
    for m in history:
        times = m.get("seconds", {})
        rows.append(
            [str(m["round"]), _fmt(m.get("train_size"), "d"), _fmt(m.get("kept"), "d"), _fmt(m.get("kept_precision"))]
            + ([_fmt(m.get("audit_precision"))] if audited else [])
            + ([",".join(map(str, m.get("pool_difficulties") or [])) or "-"] if curriculum else [])
            + [_fmt(m["accuracy_by_difficulty"].get(d)) for d in buckets]
            + [_fmt(m["accuracy"]), _fmt(m["loss"])]
            + ([_fmt(m.get("val"))] if metric else [])
            + [_labels(m)]
            + [_fmt(times.get(s), ".1f") for s in stages]
        )
    return _grid(rows)


def _grid(rows: list[list[str]]) -> str:
    """Rows of cells as right-aligned columns two spaces apart."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in rows)


def _text_table(history: Sequence[dict[str, Any]]) -> str:
    """Text recipe: mix size and real share, kept rows, held-out perplexity, diversity of generations
    (distinct-1/2, self-BLEU: lower is more diverse) and, for the demo, the well-formed share."""
    stages = ["finetune", "sample", "filter", "retrain", "validate"]
    formed = any(m.get("wellformed") is not None for m in history)
    val = any(m.get("val") is not None for m in history)
    head = (["round", "train", "real", "kept", "ppl", "dist-1", "dist-2", "self-bleu"]
            + (["wellformed"] if formed else []) + (["val"] if val else []) + ["labels"] + [f"{s}_s" for s in stages])
    rows = [head]
    for m in history:
        times = m.get("seconds", {})
        rows.append(
            [str(m["round"]), _fmt(m.get("train_size"), "d"), _fmt(m.get("real_fraction"), ".2f"),
             _fmt(m.get("kept"), "d"), _fmt(m["perplexity"]), _fmt(m["distinct_1"]), _fmt(m["distinct_2"]),
             _fmt(m["self_bleu"], ".1f")]
            + ([_fmt(m.get("wellformed"))] if formed else [])
            + ([_fmt(m.get("val"))] if val else [])
            + [_labels(m)]
            + [_fmt(times.get(s), ".1f") for s in stages]
        )
    return _grid(rows)


def _stories_table(history: Sequence[dict[str, Any]]) -> str:
    """Constrained stories: kept stories, the share of greedy stories meeting every constraint and each group's
    rate, and the guards' figures on sampled stories (distinct-2, repeated 3-grams, perplexity under the
    frozen base model, length)."""
    stages = ["finetune", "sample", "filter", "retrain", "validate"]
    val = any(m.get("val") is not None for m in history)
    head = (["round", "train", "kept", "all_met", "opening", "words", "length", "ending", "dist-2", "repeat",
             "ref_ppl", "words/story"] + (["val"] if val else []) + ["labels"] + [f"{s}_s" for s in stages])
    rows = [head]
    for m in history:
        times = m.get("seconds", {})
        rows.append(
            [str(m["round"]), _fmt(m.get("train_size"), "d"), _fmt(m.get("kept"), "d"), _fmt(m["constraints_met"])]
            + [_fmt(m.get(f"met_{k}")) for k in ("opening", "words", "length", "ending")]
            + [_fmt(m["distinct_2"]), _fmt(m["repeat_ratio"]), _fmt(m.get("perplexity"), ".2f"),
               _fmt(m.get("mean_words"), ".0f")]
            + ([_fmt(m.get("val"))] if val else [])
            + [_labels(m)]
            + [_fmt(times.get(s), ".1f") for s in stages]
        )
    return _grid(rows)


def _scored_table(history: Sequence[dict[str, Any]]) -> str:
    name = history[0]["metric"]
    stages = ["finetune", "sample", "filter", "retrain", "validate"]
    val = any(m.get("val") is not None for m in history)
    head = (["round", "train", "kept", "kept_score", name, "loss"] + (["val"] if val else []) + ["labels"]
            + [f"{s}_s" for s in stages])
    rows = [head]
    for m in history:
        times = m.get("seconds", {})
        rows.append(
            [str(m["round"]), _fmt(m.get("train_size"), "d"), _fmt(m.get("kept"), "d"), _fmt(m.get("kept_score"))]
            + [_fmt(m[name]), _fmt(m["loss"])]
            + ([_fmt(m.get("val"))] if val else [])
            + [_labels(m)]
            + [_fmt(times.get(s), ".1f") for s in stages]
        )
    return _grid(rows)


def comparison(main: Sequence[dict[str, Any]], control: Sequence[dict[str, Any]], label: str = "seed-only") -> str:
    """Final-round test accuracy per difficulty of the loop vs a control with the same steps."""
    a, b = on_test(main[-1]), on_test(control[-1])
    if "constraints_met" in a:  # stories: the constraints and every guard's figure, side by side
        lines = [f"final round {a['round']} (same rounds and training steps in both arms)",
                 f"{'metric':>16}  {'self-improve':>12}  {label:>12}  {'delta':>7}"]
        for name in ("constraints_met", "constraint_score", "distinct_2", "repeat_ratio", "perplexity"):
            x, y = a.get(name), b.get(name)
            delta = "-" if x is None or y is None else format(x - y, "+7.3f")
            lines.append(f"{name:>16}  {_fmt(x):>12}  {_fmt(y):>12}  {delta:>7}")
        return "\n".join(lines)
    if "metric" in a or "distinct_2" in a:  # a scored or text recipe: one validation metric, no buckets
        name = a.get("metric", "perplexity")
        return "\n".join([
            f"final round {a['round']} (same training steps in both arms)",
            f"{'metric':>10}  {'self-improve':>12}  {label:>12}  {'delta':>7}",
            f"{name:>10}  {a[name]:12.3f}  {b[name]:12.3f}  {a[name] - b[name]:+7.3f}",
        ])
    buckets = sorted(a["accuracy_by_difficulty"], key=int)
    lines = [f"final round {a['round']} (same training steps in both arms)"]
    lines.append(f"{'difficulty':>10}  {'self-improve':>12}  {label:>12}  {'delta':>7}")
    for d in buckets:
        x, y = a["accuracy_by_difficulty"][d], b["accuracy_by_difficulty"].get(d)
        lines.append(f"{d:>10}  {x:12.3f}  {_fmt(y):>12}  {(x - y) if y is not None else 0:+7.3f}")
    lines.append(f"{'all':>10}  {a['accuracy']:12.3f}  {b['accuracy']:12.3f}  {a['accuracy'] - b['accuracy']:+7.3f}")
    return "\n".join(lines)


def artifact_key(name: str) -> str:
    """A Prefect artifact key for a run name (lowercase letters, digits and dashes only)."""
    return re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-") or "run"


def round_markdown(name: str, history: Sequence[dict[str, Any]], record: dict[str, Any]) -> str:
    """The round report attached to the flow run: the table, the best round and the stop reason."""
    last = on_test(history[-1])
    metric = last.get("metric", "perplexity" if "distinct_2" in last else "accuracy")
    lines = [
        f"# {name}: round {last['round']}",
        "",
        f"- test {metric} {last[metric]:.3f}, loss {_fmt(last.get('loss'), '.4f')}",
        f"- kept {_fmt(last.get('kept'), 'd')} rows, precision {_fmt(last.get('kept_precision'))}",
        f"- best round so far: {record['best_round']} ({record['metric']})",
        f"- stopped: {record['stop_reason'] or 'no'}",
        "",
        "```",
        round_table(history, record["metric"]),
        "```",
    ]
    return "\n".join(lines)
