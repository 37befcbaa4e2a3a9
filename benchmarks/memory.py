"""Benchmark: peak RSS of the sample stage as the prompt pool grows 10x.

Prepares a small arithmetic run (tiny model, a few fine-tune steps), then runs
``selffeed.loop.stages.sample`` for round 1 in a fresh subprocess per pool size (``pool_per_round`` =
--base and 10 x --base, k=8) and reads that process's peak RSS (``ru_maxrss``). Completions are
written in shards and merged into ``samples.parquet``; the target is a growth of at most 1.2x.

    python benchmarks/memory.py                 # pools of 1,000 and 10,000 prompts (~3 min on 2 cores)
    python benchmarks/memory.py --base 2000     # the demo's pool size and 10x
    python benchmarks/memory.py --quick         # 100 and 1,000: checks the script
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

OVERRIDES = [
    "name=mem", "threads=2", "model.n_embd=32", "model.n_layer=2", "model.n_head=2", "model.n_inner=64",
    "finetune.steps=20", "finetune.progress=false", "arithmetic.pool_slices=1", "sample.k=8",
]


def config(runs: str, pool: int):
    from selffeed.config import load_config

    return load_config(None, [f"runs_dir={runs}", f"arithmetic.pool_per_round={pool}", *OVERRIDES])


def child(spec: dict) -> None:
    """Run the sample stage once and print its peak RSS (the process does nothing else heavy)."""
    from selffeed.loop import stages
    from selffeed.run.manifest import Manifest

    cfg = config(spec["runs"], spec["pool"])
    data, model = (Manifest.model_validate_json(Path(spec[name]).read_text()) for name in ("data", "model"))
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    out = stages.sample(cfg, 1, model, data)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"rows": out.rows, "shards": out.meta["shards"], "seconds": time.perf_counter() - t0,
                      "before_mib": base / 1024, "peak_mib": peak / 1024}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base", type=int, default=1000, help="prompts in the small pool; the large one has 10x")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(json.loads(args.child))
        return
    if args.quick:
        args.base = 100

    from selffeed.loop import stages
    runs = tempfile.mkdtemp(prefix="selffeed-bench-mem-")
    print("sample stage, k=8, tiny model; each pool size in a fresh process\n")
    header = f"{'pool':>7} {'rows':>8} {'shards':>6} {'seconds':>8} {'RSS before MiB':>15} {'peak RSS MiB':>13}"
    print(header)
    print("-" * len(header))
    peaks = []
    for pool in (args.base, 10 * args.base):
        # Each size is its own run (the pool is part of the data), prepared in this process.
        cfg = config(f"{runs}/{pool}", pool)
        data = stages.prepare(cfg)
        model = stages.finetune(cfg, data)
        spec = {"runs": f"{runs}/{pool}", "pool": pool, "data": f"{runs}/{pool}/data.json",
                "model": f"{runs}/{pool}/model.json"}
        Path(spec["data"]).write_text(data.model_dump_json())
        Path(spec["model"]).write_text(model.model_dump_json())
        proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True)
        if proc.returncode != 0:
            sys.exit(proc.stderr)
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        peaks.append(r["peak_mib"])
        print(f"{pool:7d} {r['rows']:8d} {r['shards']:6d} {r['seconds']:8.1f} {r['before_mib']:15.0f} {r['peak_mib']:13.0f}")
    print(f"\npeak RSS growth for a 10x pool: {peaks[1] / peaks[0]:.2f}x (target <= 1.2x)")


if __name__ == "__main__":
    main()
