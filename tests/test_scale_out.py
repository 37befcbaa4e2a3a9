"""A round's sampling split across two GPU workers on a real Prefect server, and a worker killed mid-shard.

A real server, ``deployments/setup.sh``, the ``gpu-sample-shard`` deployment and two process workers
on the ``gpu`` pool (``--limit 1`` each, as the README says to start one per GPU). An orchestrating flow
(a subprocess, as a ``cpu`` worker would run it) calls the sample stage: it must run as shard flow runs
on both workers at once and merge to the bytes one process writes. Then again with one worker killed
while its part is half written: the part is sent again, a third worker finishes it without sampling
the shards already on disk, and the bytes are the same.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest

from selffeed.config import load_config
from selffeed.loop import stages
from selffeed.run.layout import RunLayout
from tests.conftest import api, descendants, stop_group, tiny_overrides

pytestmark = [pytest.mark.slow, pytest.mark.integration]

ROOT = Path(__file__).parents[1]
# A model big enough that one part samples for several seconds: time to see parts overlap and to kill one.
OVERRIDES = {
    "model.n_embd": 256, "model.n_layer": 4, "model.n_inner": 1024, "model.n_head": 4,
    "arithmetic.pool_per_round": 4000, "arithmetic.pool_slices": 1,
    "sample.k": 8, "sample.batch_prompts": 32, "sample.shard_batches": 2,
}
DRIVER = """
import json, sys
from prefect import flow
from flows.gpu_stages import run_stage
from selffeed.config import load_config
from selffeed.run.manifest import Manifest

cfg = load_config(None, json.loads(sys.argv[1]))
model, data = (Manifest.model_validate_json(a) for a in sys.argv[2:4])

@flow(name="sample-round")
def sample_round() -> Manifest:
    return run_stage("sample", cfg, r=1, model=model, data=data, difficulties=None)

print(sample_round().model_dump_json())
"""


def flow_runs(url: str, flow_name: str) -> list[dict]:
    return api(url, "/flow_runs/filter", {"flows": {"name": {"any_": [flow_name]}}})


def ran_by(log: Path) -> set[str]:
    """Flow run ids a worker submitted, read from its log."""
    text = log.read_text()
    mark = "submitting flow run '"
    return {line.split(mark)[1].split("'")[0] for line in text.splitlines() if mark in line}


def when(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


class Pool:
    """Process workers on the ``gpu`` pool, each started with ``--limit 1``."""

    def __init__(self, url: str, env: dict, logs: Path):
        self.url, self.env, self.logs, self.procs = url, env, logs, {}

    def start(self, name: str) -> None:
        log = open(self.logs / f"{name}.log", "w")
        self.procs[name] = subprocess.Popen(
            [sys.executable, "-m", "prefect", "worker", "start", "--pool", "gpu", "--limit", "1", "--name", name],
            cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )

    def wait_online(self, names: set[str], timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while True:
            online = {w["name"] for w in api(self.url, "/work_pools/gpu/workers/filter", {}) if w["status"] == "ONLINE"}
            if names <= online:
                return
            assert time.monotonic() < deadline, f"workers {names - online} not online"
            time.sleep(0.5)

    def stop(self, name: str, sig: int) -> None:
        stop_group(self.procs.pop(name), sig)

    def lose(self, name: str) -> None:
        """The worker's box is lost: SIGKILL to it and every process under it, its flow runs included.

        Not SIGTERM: a worker given SIGTERM may let its flow run finish (CI saw a run it held complete),
        and its runs start in sessions of their own, out of reach of a signal to its process group."""
        proc = self.procs.pop(name)
        for pid in [proc.pid, *descendants(proc.pid)]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.wait()

    def log(self, name: str) -> Path:
        return self.logs / f"{name}.log"


@pytest.fixture
def gpu_pool(prefect_server, tmp_path):
    url, env = prefect_server
    # Workers heartbeat every 2 s, so a killed one is OFFLINE (3 missed) within the foreman's next pass.
    env = dict(env, PREFECT_API_URL=url, SELFFEED_HOME=str(ROOT), PREFECT_WORKER_QUERY_SECONDS="1",
               PREFECT_WORKER_PREFETCH_SECONDS="2", PREFECT_WORKER_HEARTBEAT_SECONDS="2")
    subprocess.run(["bash", "deployments/setup.sh"], cwd=ROOT, env=env, check=True, capture_output=True, timeout=120)
    deploy = subprocess.run(
        [sys.executable, "-m", "prefect", "--no-prompt", "deploy", "--prefect-file", "deployments/prefect.yaml",
         "--name", "gpu-sample-shard"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert deploy.returncode == 0, deploy.stdout[-2000:] + deploy.stderr[-2000:]
    pool = Pool(url, env, tmp_path)
    try:
        yield pool
    finally:
        for name in list(pool.procs):  # workers first, while the server still answers
            pool.stop(name, signal.SIGINT)


def test_sample_stage_split_across_two_workers_survives_losing_one(gpu_pool, tmp_path):
    overrides = tiny_overrides(tmp_path / "runs", **OVERRIDES)
    cfg = load_config(None, overrides)
    data = stages.prepare(cfg)
    model = stages.finetune(cfg, data)
    lay = RunLayout.of(cfg.runs_dir, cfg.name)
    stages.sample(cfg, 1, model, data)  # one process, no Prefect: the bytes to match
    whole = lay.samples(1).read_bytes()
    n_shards = len(stages.missing_sample_shards(cfg, 1, model, data))
    assert n_shards > 20

    def driver() -> subprocess.Popen:
        lay.samples(1).unlink()
        return subprocess.Popen(
            [sys.executable, "-c", DRIVER, json.dumps(overrides), model.model_dump_json(), data.model_dump_json()],
            cwd=ROOT, env=gpu_pool.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )

    gpu_pool.start("gpu-a")
    gpu_pool.start("gpu-b")
    gpu_pool.wait_online({"gpu-a", "gpu-b"})

    # Two workers online: two shard flow runs, one on each worker, running at the same time.
    out, err = driver().communicate(timeout=600)
    assert lay.samples(1).read_bytes() == whole, err[-3000:]
    runs = flow_runs(gpu_pool.url, "gpu-sample-shard")
    assert len(runs) == 2 and {r["state_type"] for r in runs} == {"COMPLETED"}
    assert sorted(r["parameters"]["part"] for r in runs) == [0, 1]
    assert {r["id"] for r in runs} == ran_by(gpu_pool.log("gpu-a")) | ran_by(gpu_pool.log("gpu-b"))
    assert ran_by(gpu_pool.log("gpu-a")) and ran_by(gpu_pool.log("gpu-b"))
    assert max(when(r["start_time"]) for r in runs) < min(when(r["end_time"]) for r in runs), "parts did not overlap"
    assert json.loads(out)["meta"]["shards"] == n_shards

    # Again, losing gpu-b (SIGKILL to it and the flow run it started) once its part has written some shards.
    first = {r["id"] for r in runs}
    proc = driver()
    deadline = time.monotonic() + 300
    while True:
        mine = ran_by(gpu_pool.log("gpu-b")) - first
        live = [r for r in flow_runs(gpu_pool.url, "gpu-sample-shard") if r["id"] in mine]
        written = {int(p.stem.split("-")[1]) for p in lay.round_dir(1).glob(".samples-*/shard-*.parquet")}
        if live and live[0]["state_type"] == "RUNNING":
            part = live[0]["parameters"]["part"]
            done = {i for i in written if i % 2 == part}
            if 2 <= len(done) < len(range(part, n_shards, 2)) - 2:
                break
        assert proc.poll() is None and time.monotonic() < deadline, "no half-written part to kill"
        time.sleep(0.2)
    gpu_pool.lose("gpu-b")
    killed = live[0]["id"]
    gpu_pool.start("gpu-c")
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    assert lay.samples(1).read_bytes() == whole

    runs = {r["id"]: r for r in flow_runs(gpu_pool.url, "gpu-sample-shard") if r["id"] not in first}
    assert runs[killed]["state_type"] == "CRASHED", runs[killed]["state"]
    assert "went offline" in runs[killed]["state"]["message"]
    resent = [r for r in runs.values() if r["parameters"]["part"] == part and r["id"] != killed]
    assert len(resent) == 1 and resent[0]["state_type"] == "COMPLETED"
    logs = api(gpu_pool.url, "/logs/filter", {"logs": {"flow_run_id": {"any_": [resent[0]["id"]]}}})
    said = [entry["message"] for entry in logs if "already on disk" in entry["message"]]
    assert len(said) == 1, said
    kept = int(said[0].split(", ")[1].split()[0])  # "part 2/2: wrote 9 shards, 22 already on disk"
    assert len(done) <= kept < len(range(part, n_shards, 2)), said  # written before the kill: not sampled again
