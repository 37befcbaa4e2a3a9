"""The sample stage on 1 and on 2 GPU-pool workers of a real Prefect server, against in-process sampling.

Starts ``prefect server``, runs ``deployments/setup.sh``, deploys ``gpu-sample`` and ``gpu-sample-shard``,
and samples round 1 of a small arithmetic run (a 4-layer GPT-2, 4,000 prompts x k=8, 1 thread per
process) three ways: in this process without Prefect; through ``run_stage`` with one worker online (the
whole stage is one flow run); with two workers online (two shard flow runs, merged by the orchestrator).
Every way must write the same ``samples.parquet``. Prints wall times, the speed-up of 2 workers over 1,
and per shard flow run: pickup (created -> running), run time, and the sampling task's own time::

    python benchmarks/scale_out.py [--pool 4000]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).parents[1]
sys.path.insert(0, str(ROOT))

from selffeed.config import load_config  # noqa: E402
from selffeed.loop import stages  # noqa: E402
from selffeed.run.layout import RunLayout  # noqa: E402

DRIVER = """
import json, sys, time
from prefect import flow
from flows.gpu_stages import run_stage
from selffeed.config import load_config
from selffeed.run.manifest import Manifest
cfg = load_config(None, json.loads(sys.argv[1]))
model, data = (Manifest.model_validate_json(a) for a in sys.argv[2:4])
@flow(name="sample-round")
def sample_round():
    t0 = time.perf_counter(); run_stage("sample", cfg, r=1, model=model, data=data, difficulties=None)
    return time.perf_counter() - t0
print(sample_round())
"""


def api(url: str, path: str, body: dict | None = None):
    req = urllib.request.Request(url + path, data=None if body is None else json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"}, method="GET" if body is None else "POST")
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())


def ts(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pool", type=int, default=4000, help="prompts sampled (k=8 each)")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="scale-out-"))
    overrides = [
        f"runs_dir={tmp / 'runs'}", "name=bench", "threads=1", "model.n_embd=256", "model.n_layer=4",
        "model.n_inner=1024", "model.n_head=4", "model.n_positions=32", "arithmetic.width=2",
        "arithmetic.pool_digits=[2]", f"arithmetic.pool_per_round={args.pool}", "arithmetic.pool_slices=1",
        "arithmetic.seed_size=60", "arithmetic.seed_digits=[1, 2]", "arithmetic.test_digits=[2]",
        "arithmetic.test_per_digits=30", "arithmetic.val_per_digits=30", "finetune.steps=30", "finetune.progress=false", "sample.k=8",
        "sample.batch_prompts=32", "sample.shard_batches=2",
    ]
    cfg = load_config(None, overrides)
    data = stages.prepare(cfg)
    model = stages.finetune(cfg, data)
    lay = RunLayout.of(cfg.runs_dir, cfg.name)
    t0 = time.perf_counter()
    stages.sample(cfg, 1, model, data)
    local_s = time.perf_counter() - t0
    whole = lay.samples(1).read_bytes()

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/api"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PATH=os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]),
               PREFECT_HOME=str(tmp / "prefect-home"), PREFECT_SERVER_ANALYTICS_ENABLED="false",
               PREFECT_API_URL=url, SELFFEED_HOME=str(ROOT), PREFECT_WORKER_QUERY_SECONDS="1",
               PREFECT_WORKER_PREFETCH_SECONDS="2")
    procs = [subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                               "--port", str(port)], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)]
    try:
        while True:
            try:
                api(url, "/health")
                break
            except OSError:
                time.sleep(0.5)
        subprocess.run(["bash", "deployments/setup.sh"], cwd=ROOT, env=env, check=True, capture_output=True)
        for name in ("gpu-sample", "gpu-sample-shard"):
            subprocess.run([sys.executable, "-m", "prefect", "--no-prompt", "deploy", "--prefect-file",
                            "deployments/prefect.yaml", "--name", name], cwd=ROOT, env=env, check=True,
                           capture_output=True)
        walls = {}
        for n in (1, 2):
            while len(procs) - 1 < n:
                procs.append(subprocess.Popen(
                    [sys.executable, "-m", "prefect", "worker", "start", "--pool", "gpu", "--limit", "1", "--name",
                     f"gpu-{len(procs)}"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL, start_new_session=True))
            while sum(w["status"] == "ONLINE" for w in api(url, "/work_pools/gpu/workers/filter", {})) < n:
                time.sleep(0.5)
            lay.samples(1).unlink()
            t0 = time.perf_counter()
            out = subprocess.run([sys.executable, "-c", DRIVER, json.dumps(overrides), model.model_dump_json(),
                                  data.model_dump_json()], cwd=ROOT, env=env, capture_output=True, text=True)
            walls[n] = (time.perf_counter() - t0, float(out.stdout.strip().splitlines()[-1]))
            assert lay.samples(1).read_bytes() == whole, f"{n} workers: samples.parquet differs"
        print(f"sample stage, {args.pool} prompts x k=8, 1 thread per process, same samples.parquet every way")
        print(f"  in process, no Prefect:       {local_s:6.1f} s")
        for n, (wall, stage) in walls.items():
            print(f"  {n} worker(s): run_stage {stage:6.1f} s (driver process {wall:6.1f} s)")
        print(f"  speed-up of 2 workers over 1 (run_stage): {walls[1][1] / walls[2][1]:.2f}x")
        runs = api(url, "/flow_runs/filter", {"flows": {"name": {"any_": ["gpu-sample", "gpu-sample-shard"]}}})
        tasks = api(url, "/task_runs/filter", {"flow_runs": {"id": {"any_": [r["id"] for r in runs]}}})
        sampling = {t["flow_run_id"]: t["total_run_time"] for t in tasks if t["name"].startswith("sample")}
        for r in sorted(runs, key=lambda r: r["created"]):
            pickup = ts(r["start_time"]) - ts(r["created"])
            run = ts(r["end_time"]) - ts(r["start_time"])
            print(f"  {r['name']:28s} pickup {pickup:5.1f} s  run {run:5.1f} s  sampling task "
                  f"{sampling.get(r['id'], float('nan')):5.1f} s  overhead {pickup + run - sampling.get(r['id'], 0):5.1f} s")
    finally:
        for p in reversed(procs):  # workers before the server
            os.killpg(p.pid, signal.SIGINT)
            p.wait()


if __name__ == "__main__":
    main()
