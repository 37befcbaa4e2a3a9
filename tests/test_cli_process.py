"""What a ``selffeed run`` leaves on the machine: no process after ``kill -9``, no telemetry notice.

Processes are found through /proc by the private PREFECT_HOME each test gives its command, which
every child (the temporary API server included) inherits.
"""

from __future__ import annotations

import os
import pty
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from flows.cli import _reap_orphaned_servers
from tests.conftest import tiny_overrides

pytestmark = pytest.mark.skipif(not Path("/proc").exists(), reason="reads processes from /proc")

ROOT = Path(__file__).parents[1]
NOTICE = b"collects anonymous usage data"


def _env(home: Path) -> dict[str, str]:
    """This environment without Prefect settings or telemetry switches (Prefect takes any CI variable
    as one), and PREFECT_HOME=home."""
    from prefect._internal.analytics.ci_detection import CI_ENV_VARS

    env = {k: v for k, v in os.environ.items()
           if not k.startswith("PREFECT_") and k != "DO_NOT_TRACK" and k not in CI_ENV_VARS}
    return dict(env, PREFECT_HOME=str(home))


def _processes(home: Path) -> dict[int, list[bytes]]:
    """Live (not zombie) processes whose environment has PREFECT_HOME=home: pid -> environment."""
    out = {}
    for entry in Path("/proc").iterdir():
        try:
            environ = (entry / "environ").read_bytes().split(b"\0") if entry.name.isdigit() else []
            if f"PREFECT_HOME={home}".encode() in environ and _state(entry) != "Z":
                out[int(entry.name)] = environ
        except OSError:
            pass
    return out


def _state(entry: Path) -> str:
    return (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]


def _pty_run(args: list[str], env: dict[str, str]) -> tuple[subprocess.Popen, Callable[[], bytes]]:
    """Start ``args`` with a pseudo-terminal as stdout and stderr, as in a shell; also returns a function
    that gives its output once the process (and any child holding the terminal) has gone."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(args, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=slave, stderr=slave)
    os.close(slave)
    out = bytearray()

    def drain():
        try:
            while chunk := os.read(master, 4096):
                out.extend(chunk)
        except OSError:  # EIO: every writer has gone
            pass
        os.close(master)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()

    def output() -> bytes:
        reader.join(timeout=10)
        return bytes(out)

    return proc, output


@pytest.mark.slow
@pytest.mark.integration
def test_sigkill_leaves_no_process_and_a_terminal_run_shows_no_telemetry_notice(tmp_path):
    home, lock = tmp_path / "prefect-home", tmp_path / "runs" / "killed" / ".lock"
    proc, output = _pty_run(
        [sys.executable, "-m", "flows.cli", "run", "data/configs/arithmetic.yaml",
         *tiny_overrides(tmp_path / "runs", name="killed", **{"finetune.steps": 100000})],
        _env(home),
    )
    try:
        servers: dict[int, list[bytes]] = {}
        deadline = time.time() + 240
        while time.time() < deadline and not (servers and lock.exists()):
            assert proc.poll() is None, output().decode(errors="replace")[-3000:]
            time.sleep(0.5)
            servers = {pid: env for pid, env in _processes(home).items() if b"PREFECT__SERVER_EPHEMERAL=1" in env}
        assert servers and lock.exists(), "the run never got going"
        time.sleep(2)  # into training
        for env in servers.values():
            assert b"DO_NOT_TRACK=1" in env and b"PREFECT_SERVER_ANALYTICS_ENABLED=False" in env, "telemetry is on"

        proc.kill()
        proc.wait()
        killed = time.monotonic()
        while (left := _processes(home)) and time.monotonic() - killed < 5:
            time.sleep(0.05)
        assert not left, f"still running {time.monotonic() - killed:.1f} s after kill -9: {sorted(left)}"
        assert NOTICE not in output()
    finally:
        for pid in [proc.pid, *_processes(home)]:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass


def test_telemetry_notice_only_without_the_cli_defaults(tmp_path):
    """In a terminal, importing Prefect with a fresh PREFECT_HOME prints its notice, unless the CLI's
    environment (``_prefect_env``) came first."""
    script = (
        "import os, sys; from flows.cli import _prefect_env; from selffeed.config import load_config\n"
        "if sys.argv[1] == 'cli': _prefect_env(load_config(None, [f'runs_dir={sys.argv[2]}']))\n"
        "import prefect\n"
        "print('env', os.environ.get('DO_NOT_TRACK'), os.environ.get('PREFECT_SERVER_ANALYTICS_ENABLED'))\n"
    )
    outputs = {}
    for mode in ("cli", "bare"):  # each with a fresh PREFECT_HOME: the notice shows once per home
        proc, output = _pty_run([sys.executable, "-c", script, mode, str(tmp_path / mode)], _env(tmp_path / mode / ".prefect"))
        assert proc.wait(timeout=120) == 0
        outputs[mode] = output()
    assert NOTICE in outputs["bare"], "the notice did not show: the test cannot see what it looks for"
    assert NOTICE not in outputs["cli"] and b"env 1 false" in outputs["cli"]


def test_telemetry_is_on_when_asked_for(tmp_path, monkeypatch):
    from flows.cli import _prefect_env
    from selffeed.config import load_config

    env = {"DO_NOT_TRACK": "0", "PREFECT_SERVER_ANALYTICS_ENABLED": "true"}
    monkeypatch.setattr(os, "environ", dict(env))  # _prefect_env fills in this copy only
    _prefect_env(load_config(None, [f"runs_dir={tmp_path}"]))
    assert {k: os.environ[k] for k in env} == env


def test_next_run_reaps_orphaned_servers_of_its_run_area_only(tmp_path):
    """Servers orphaned before (parent 1) with this run area's PREFECT_HOME are killed; others are not."""
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    for home in (ours, theirs):  # `sh` exits at once: its `sleep` is orphaned
        subprocess.run(["sh", "-c", "sleep 300 >/dev/null 2>&1 &"], check=True,
                       env=dict(_env(home), PREFECT__SERVER_EPHEMERAL="1"))
    deadline = time.time() + 10
    while time.time() < deadline and len(_processes(ours)) + len(_processes(theirs)) < 2:
        time.sleep(0.05)
    (orphan,), (other,) = _processes(ours), _processes(theirs)
    try:
        if (Path("/proc") / str(orphan) / "stat").read_text().rsplit(")", 1)[1].split()[1] != "1":
            pytest.skip("orphans are adopted by a subreaper here, not by init")
        _reap_orphaned_servers(str(ours))
        deadline = time.time() + 5
        while time.time() < deadline and _processes(ours):
            time.sleep(0.05)
        assert not _processes(ours) and other in _processes(theirs)
    finally:
        for pid in (orphan, other):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
