"""A failed flow run retried on a real Prefect server (``prefect flow-run retry``, what the UI's
Retry button does) re-executes only the failed stage and those after it.

The test starts ``prefect server start`` on 127.0.0.1 with a private PREFECT_HOME, runs the flow
with a verifier that fails while a flag file exists, removes the flag, retries the flow run, and
reads the task-run states from the API. It stops the server it started.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import api, tiny_overrides

pytestmark = [pytest.mark.slow, pytest.mark.integration]

ROOT = Path(__file__).parents[1]
VERIFIER = '''
import os, pathlib
def check(prompt, completion):
    if pathlib.Path(os.environ["SELFFEED_TEST_FLAG"]).exists():
        raise RuntimeError("verifier service unavailable")
    return True
'''


def test_flow_run_retry_reuses_completed_stages(tmp_path, prefect_server):
    url, env = prefect_server
    (tmp_path / "flaky_verifier.py").write_text(VERIFIER)
    flag = tmp_path / "verifier-down"
    flag.touch()
    env = dict(env, PREFECT_API_URL=url, SELFFEED_TEST_FLAG=str(flag),
               PYTHONPATH=os.pathsep.join([str(tmp_path), str(ROOT)]))
    overrides = tiny_overrides(tmp_path / "runs", name="retry-me", **{"filter.verifier": "flaky_verifier:check"})
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
