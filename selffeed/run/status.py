"""The state of a run read from its files alone: rounds, stages, done/stale/missing, key figures.

A round is committed when its ``manifest.json`` exists (validation writes it last). Each stage the
manifest lists is ``done`` when its outputs match the recorded digests, ``stale`` when they changed
and ``missing`` when they are gone. A round directory without a manifest is ``partial``: a stage
failed or is still running, and the outputs present so far are listed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from selffeed.run.layout import RunLayout, read_json
from selffeed.run.lock import read_holder
from selffeed.run.manifest import Manifest
from selffeed.run.report import on_test

STAGE_ORDER = ["prepare", "finetune", "sample", "filter", "retrain", "validate"]


def run_status(root: Path) -> dict[str, Any]:
    """A JSON-able description of the run at ``root``."""
    lay = RunLayout(Path(root))
    if not lay.config.exists():
        raise FileNotFoundError(f"{root}: not a selffeed run directory (no config.yaml)")
    rounds = []
    for r in lay.rounds():
        entry: dict[str, Any] = {"round": r}
        if lay.round_manifest(r).exists():
            stages = read_json(lay.round_manifest(r))["stages"]
            entry["state"] = "committed"
            entry["stages"] = {}
            for name in sorted(stages, key=STAGE_ORDER.index):
                problems = Manifest.model_validate(stages[name]).problems()
                state = "done" if not problems else ("missing" if any("missing" in p for p in problems) else "stale")
                entry["stages"][name] = {"state": state, "problems": problems, "seconds": stages[name]["meta"].get("seconds")}
            if any(s["state"] != "done" for s in entry["stages"].values()):
                entry["state"] = "needs recompute"
            metrics = on_test(stages["validate"]["meta"]["metrics"])  # figures of the test split
            entry["figures"] = {
                k: metrics.get(k) for k in ("accuracy", "accuracy_hardest", "loss", "train_size", "kept", "kept_precision")
            }
            if "metric" in metrics or "distinct_2" in metrics:  # scored or text: one metric, kept rows' mean score
                name = metrics.get("metric", "perplexity")
                entry["figures"].update(metric=name, value=metrics[name], kept_score=metrics.get("kept_score"))
        else:
            entry["state"] = "partial"
            present = {
                "samples": lay.samples(r).exists(),
                "kept": lay.kept(r).exists(),
                "model": lay.model(r).is_dir(),
                "metrics": lay.metrics(r).exists(),
                "sample shards": sum(1 for _ in lay.round_dir(r).glob(".samples-*/shard-*.parquet")),
            }
            entry["present"] = {k: v for k, v in present.items() if v}
        rounds.append(entry)
    run = read_json(lay.run_json) if lay.run_json.exists() else {}
    return {"run": str(lay.root), "rounds": rounds, "best_round": run.get("best_round"),
            "stop_reason": run.get("stop_reason"), "lock": read_holder(lay.lock)}


def format_status(status: dict[str, Any]) -> str:
    lines = [f"run {status['run']}"]
    holder = status["lock"]
    lines.append(f"  writer: pid {holder['pid']} on {holder['host']} since {holder['since']}" if holder else "  writer: none")
    for entry in status["rounds"]:
        r = entry["round"]
        if entry["state"] == "partial":
            what = ", ".join(f"{k}={v}" if not isinstance(v, bool) else k for k, v in entry["present"].items())
            lines.append(f"  round {r:3d}  partial (not committed; present: {what or 'nothing'})")
            continue
        f = entry["figures"]
        best = "  <- best" if r == status["best_round"] else ""
        prec = "-" if f.get("kept_precision") is None else f"{f['kept_precision']:.3f}"
        if "metric" in f:
            score = "-" if f.get("kept_score") is None else f"{f['kept_score']:.3f}"
            lines.append(
                f"  round {r:3d}  {entry['state']:<9} {f['metric']} {f['value']:.3f}  loss {f['loss']:.4f}  "
                f"train {f['train_size']}  kept {'-' if f.get('kept') is None else f['kept']}  kept_score {score}{best}"
            )
        else:
            lines.append(
                f"  round {r:3d}  {entry['state']:<9} acc {f['accuracy']:.3f}  hardest {f['accuracy_hardest']:.3f}  "
                f"loss {f['loss']:.4f}  train {f['train_size']}  kept {'-' if f.get('kept') is None else f['kept']}  precision {prec}{best}"
            )
        for name, st in entry["stages"].items():
            secs = "" if st["seconds"] is None else f" {st['seconds']:.1f}s"
            lines.append(f"      {name:<9} {st['state']}{secs}" + "".join(f"  [{p}]" for p in st["problems"]))
    if status["stop_reason"]:
        lines.append(f"  stopped: {status['stop_reason']}")
    return "\n".join(lines)
