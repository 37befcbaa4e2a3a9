"""A failed flow run retried on a real Prefect server (``prefect flow-run retry``, what the UI's
Retry button does) re-executes only the failed stage and those after it.

The test starts ``prefect server start`` on 127.0.0.1 with a private PREFECT_HOME, runs the flow
with a verifier that fails while a flag file exists, removes the flag, retries the flow run, and
reads the task-run states from the API. It stops the server it started.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.integration]

ROOT = Path(__file__).parents[1]
VERIFIER = '''
import os, pathlib
def check(prompt, completion):
    if pathlib.Path(os.environ["SELFFEED_TEST_FLAG"]).exists():
        raise RuntimeError("verifier service unavailable")
    return True
'''


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def api(url: str, path: str, body: dict | None = None):
    req = urllib.request.Request(
        url + path, data=None if body is None else json.dumps(body).encode(),
        headers={"Content-Type": "application/json"}, method="GET" if body is None else "POST",
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())


@pytest.fixture
def server(tmp_path):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(tmp_path / "prefect-home"), PREFECT_SERVER_ANALYTICS_ENABLED="false")
    proc = subprocess.Popen(
        [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}/api"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                api(url, "/health")
                break
            except OSError:
                assert proc.poll() is None, "prefect server exited"
                assert time.monotonic() < deadline, "prefect server did not start"
                time.sleep(0.5)
        yield url, env
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_flow_run_retry_reuses_completed_stages(tmp_path, server):
    url, env = server
    (tmp_path / "flaky_verifier.py").write_text(VERIFIER)
    flag = tmp_path / "verifier-down"
    flag.touch()
    env = dict(env, PREFECT_API_URL=url, SELFFEED_TEST_FLAG=str(flag),
               PYTHONPATH=os.pathsep.join([str(tmp_path), str(ROOT)]))
    overrides = [
        f"runs_dir={tmp_path / 'runs'}", "name=retry-me", "threads=1", "model.n_embd=16", "model.n_layer=1",
        "model.n_head=2", "model.n_inner=32", "model.n_positions=32", "arithmetic.width=2",
        "arithmetic.seed_digits=[1, 2]", "arithmetic.seed_size=60", "arithmetic.pool_digits=[2]",
        "arithmetic.pool_per_round=40", "arithmetic.test_digits=[2]", "arithmetic.test_per_digits=30",
        "finetune.steps=30", "finetune.batch_size=32", "retrain.steps=10", "retrain.batch_size=32",
        "sample.k=4", "filter.verifier=flaky_verifier:check", "loop.max_rounds=1",
    ]
    first = subprocess.run(
        [sys.executable, "-m", "flows.cli", "run", "data/configs/arithmetic.yaml", *overrides],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    assert first.returncode != 0
    runs = api(url, "/flow_runs/filter", {"flow_runs": {"name": {"any_": ["retry-me"]}}})
    assert len(runs) == 1 and runs[0]["state_type"] == "FAILED"
    run_id = runs[0]["id"]

    flag.unlink()
    retry = subprocess.run(
        [sys.executable, "-m", "prefect", "flow-run", "retry", run_id, "--entrypoint", "flows/self_improve.py:self_improve"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    assert retry.returncode == 0, retry.stdout[-2000:] + retry.stderr[-2000:]
    assert api(url, f"/flow_runs/{run_id}")["state_type"] == "COMPLETED"

    task_runs = api(url, "/task_runs/filter", {"flow_runs": {"id": {"any_": [run_id]}}, "sort": "EXPECTED_START_TIME_ASC"})
    latest = {}
    for t in sorted(task_runs, key=lambda t: t["created"]):
        latest[t["name"]] = t["state"]["name"]
    for name in ("prepare", "finetune-r0", "validate-r0", "sample-r1"):
        assert latest[name] == "Cached", (name, latest)
    for name in ("filter-r1", "retrain-r1", "validate-r1"):
        assert latest[name] == "Completed", (name, latest)
    assert (tmp_path / "runs" / "retry-me" / "round-001" / "manifest.json").is_file()
