"""Benchmark: what Prefect orchestration and caching cost on top of the stages themselves.

Prints, for a finished N-round run of a config (default: the demo, 3 rounds):
  - wall time of the uncached flow, the sum of its stage times, and the orchestration share
    (flow wall time minus stage time, over flow wall time; target <= 5%);
  - wall time of a fully cached re-run of the same flow (target <= 3 s beyond process start and
    Prefect's server start, both measured separately and excluded).

    python benchmarks/orchestration.py                       # demo config, 3 rounds (~2.5 min on 2 cores)
    python benchmarks/orchestration.py --quick               # a tiny model, seconds
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

QUICK = [
    "model.n_embd=32", "model.n_layer=2", "model.n_head=2", "model.n_inner=64", "finetune.steps=100",
    "retrain.steps=50", "arithmetic.pool_per_round=500", "finetune.progress=false", "retrain.progress=false",
]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=str(ROOT / "data/configs/arithmetic.yaml"))
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="tiny model and pool: checks the script, not the target")
    args = p.parse_args()

    runs = Path(tempfile.mkdtemp(prefix="selffeed-bench-"))
    os.environ["PREFECT_HOME"] = str(runs / ".prefect")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

    from selffeed.config import load_config

    overrides = [f"runs_dir={runs}", "name=bench", f"loop.max_rounds={args.rounds}", f"loop.patience={args.rounds + 1}",
                 "finetune.progress=false", "retrain.progress=false"]
    cfg = load_config(args.config, overrides + (QUICK if args.quick else []))

    t0 = time.perf_counter()
    from prefect import flow

    from flows.cli import quiet_libraries
    from flows.self_improve import self_improve
    from selffeed.loop.stages import layout_of
    from selffeed.run.bookkeeping import read_history

    quiet_libraries()

    t_import = time.perf_counter() - t0

    @flow
    def warm_up() -> None:  # starts Prefect's temporary server, so the timings below exclude it
        return None

    t0 = time.perf_counter()
    warm_up()
    t_server = time.perf_counter() - t0

    t0 = time.perf_counter()
    self_improve(cfg)
    t_uncached = time.perf_counter() - t0
    history = read_history(layout_of(cfg))
    stage_s = sum(s for m in history for s in m["seconds"].values() if s is not None)

    t0 = time.perf_counter()
    self_improve(cfg)
    t_cached = time.perf_counter() - t0

    rows = [
        ("import of prefect + flows (excluded)", f"{t_import:.2f} s"),
        ("Prefect temporary server start (excluded)", f"{t_server:.2f} s"),
        (f"uncached flow, {args.rounds} rounds: wall", f"{t_uncached:.2f} s"),
        ("  of which stage bodies", f"{stage_s:.2f} s"),
        ("  orchestration share (target <= 5%)", f"{100 * (t_uncached - stage_s) / t_uncached:.1f} %"),
        ("  per round (wall)", f"{t_uncached / (args.rounds + 1):.2f} s"),
        ("fully cached re-run: wall (target <= 3 s)", f"{t_cached:.2f} s"),
    ]
    width = max(len(r[0]) for r in rows)
    print(f"config {args.config}{' (quick)' if args.quick else ''}; runs under {runs}")
    for name, value in rows:
        print(f"{name:<{width}}  {value:>10}")


if __name__ == "__main__":
    main()
