"""A ``selffeed run`` stopped with SIGTERM exits without leaving Prefect's temporary API server behind
and releases its run lock."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from selffeed.run.lock import read_holder
from tests.conftest import descendants, tiny_overrides

pytestmark = [pytest.mark.slow, pytest.mark.integration]

ROOT = Path(__file__).parents[1]


def _cmdline(pid: int) -> bytes:
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_bytes()
    except OSError:
        return b""


def _alive(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not Path("/proc").exists(), reason="reads the process tree from /proc")
def test_sigterm_stops_the_temporary_server_and_releases_the_lock(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env["PREFECT_HOME"] = str(tmp_path / "prefect-home")  # a server of its own
    runs = tmp_path / "runs"
    proc = subprocess.Popen(
        [sys.executable, "-m", "flows.cli", "run", "data/configs/arithmetic.yaml",
         *tiny_overrides(runs, name="term", **{"finetune.steps": 100000})],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    servers: list[int] = []
    try:
        deadline = time.time() + 180
        while time.time() < deadline and not (servers and (runs / "term" / ".lock").exists()):
            time.sleep(0.5)
            servers = [c for c in descendants(proc.pid) if b"uvicorn" in _cmdline(c)]
        assert servers and (runs / "term" / ".lock").exists(), "the run never got going"
        time.sleep(2)  # into training
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) != 0
        deadline = time.time() + 30
        while time.time() < deadline and any(_alive(s) for s in servers):
            time.sleep(0.5)
        assert not any(_alive(s) for s in servers), "the temporary API server outlived its run"
        assert read_holder(runs / "term" / ".lock") is None  # the file stays (selffeed.run.lock); nobody holds it
    finally:
        if proc.poll() is None:
            proc.kill()
        for s in servers:
            if _alive(s):
                os.kill(s, signal.SIGKILL)
