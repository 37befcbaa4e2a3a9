"""A run's bookkeeping across rounds: its history on disk, the best-round and stop record
(``run.json`` and the ``best`` export), the curriculum's next pool, continuing a finished run, and the
writer lock a flow holds while it runs. The stages themselves are in :mod:`selffeed.loop.stages`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from selffeed.config import RunConfig, dump_config, load_config
from selffeed.loop.curriculum import pool_difficulties
from selffeed.loop.policy import audit_stop, best_round, stop_reason
from selffeed.run import schema
from selffeed.run.layout import RunLayout, point_to, read_json, remove_temporaries, write_json, write_text
from selffeed.run.lock import run_lock
from selffeed.run.manifest import Manifest


def next_difficulties(cfg: RunConfig, data: Manifest, history: list[dict[str, Any]]) -> list[int] | None:
    """The curriculum's pool difficulties for the round after ``history``; None samples every one."""
    if cfg.curriculum.mode == "fixed":
        return None
    pool = schema.read(data.path("pool"), schema.POOL)
    return pool_difficulties(history, cfg.curriculum, sorted(int(d) for d in pool["difficulty"].unique()))


def decide(cfg: RunConfig, history: list[dict[str, Any]]) -> dict[str, Any]:
    """Record best round and stop reason in ``run.json`` and point ``best`` at that round's model; returns
    the record."""
    record = decision(cfg, history)
    lay = RunLayout.of(cfg.runs_dir, cfg.name)
    point_to(lay.best, lay.model(record["best_round"]))
    write_json(lay.run_json, record)
    return record


def decision(cfg: RunConfig, history: list[dict[str, Any]]) -> dict[str, Any]:
    """The best round and stop reason after ``history``, written nowhere."""
    reason = audit_stop(history, cfg.audit.min_precision) or stop_reason(history, cfg.loop)
    lay = RunLayout.of(cfg.runs_dir, cfg.name)
    best = best_round(history, cfg.loop)
    return {
        "name": cfg.name,
        "rounds": [m["round"] for m in history],
        "best_round": best,
        "metric": cfg.loop.metric,
        "stopped": reason is not None,
        "stop_reason": reason,
        "best_model": str(lay.model(best)),
        "export": str(lay.best),
    }


def read_history(lay: RunLayout) -> list[dict[str, Any]]:
    """Metrics of every committed round of a run, ascending, with stage times under ``seconds``."""
    history = []
    for r in lay.rounds():
        if not lay.round_manifest(r).exists():
            continue
        stages_done = read_json(lay.round_manifest(r))["stages"]
        metrics = read_json(lay.metrics(r))
        metrics["seconds"] = {name: m["meta"].get("seconds") for name, m in stages_done.items()}
        history.append(metrics)
    return history


def continued_config(runs_dir: str, name: str, rounds: int) -> RunConfig:
    """The stored config of run ``name``, extended to run exactly ``rounds`` rounds past its last
    committed one (stop rules other than max_rounds are relaxed so the rounds do happen)."""
    lay = RunLayout.of(runs_dir, name)
    if not lay.config.exists():
        raise FileNotFoundError(f"{lay.root}: no such run (no config.yaml); start it with selffeed run first")
    cfg = load_config(lay.config, [f"runs_dir={runs_dir}"])
    committed = [r for r in lay.rounds() if lay.round_manifest(r).exists()]
    last = max(committed, default=0)
    cfg.loop.max_rounds = last + rounds
    cfg.loop.patience = last + rounds + 1
    cfg.loop.loss_threshold = None
    return cfg


def adopted_round0(runs_dir: str, name: str) -> bool:
    """Whether run ``name``'s committed round 0 is a copy of another run's (an experiment arm's); continuing it
    must adopt that model again rather than fine-tune one under the plain key."""
    lay = RunLayout.of(runs_dir, name)
    if not lay.round_manifest(0).is_file():
        return False
    return "adopted_from" in read_json(lay.round_manifest(0))["stages"]["finetune"]["meta"]


@contextmanager
def open_run(cfg: RunConfig, owner: str) -> Iterator[RunLayout]:
    """Hold the run's writer lock; on entry, remove temporaries a killed writer left and record the
    config of this invocation in ``config.yaml``."""
    lay = RunLayout.of(cfg.runs_dir, cfg.name)
    with run_lock(lay.lock, owner):
        remove_temporaries(lay.root)
        write_text(lay.config, dump_config(cfg))
        yield lay
