"""The run lock: never two holders at once, freed by the kernel when its holder dies, and the refusal
names the holder."""

from __future__ import annotations

import fcntl
import json
import multiprocessing
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from selffeed.run.lock import RunLocked, acquire, assert_unlocked, read_holder, release, run_lock

ROOT = Path(__file__).parents[1]
PROCESSES, SHARE = 8, 150


def contend(path: Path, marker: Path, share: int, results) -> None:
    """Take the lock ``share`` times; while holding, claim ``marker`` with O_EXCL, which fails if
    another process believes it holds the lock too."""
    got = refused = overlaps = wrong_details = 0
    while got < share:
        try:
            acquire(path, owner="contender")
        except RunLocked:
            refused += 1
            time.sleep(random.uniform(0, 0.001))
            continue
        got += 1
        try:
            fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            overlaps += 1
        else:
            os.close(fd)
            wrong_details += (read_holder(path) or {}).get("pid") != os.getpid()
            time.sleep(random.uniform(0, 0.0005))
            os.unlink(marker)
        release(path)
    results.put((got, refused, overlaps, wrong_details))


def test_contending_processes_never_hold_the_lock_together(tmp_path):
    ctx = multiprocessing.get_context("fork")
    results = ctx.Queue()
    procs = [ctx.Process(target=contend, args=(tmp_path / ".lock", tmp_path / "holder", SHARE, results))
             for _ in range(PROCESSES)]
    t0 = time.perf_counter()
    for p in procs:
        p.start()
    counts = [results.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=10)
        assert p.exitcode == 0
    got, refused, overlaps, wrong_details = (sum(c) for c in zip(*counts))
    print(f"{got} acquisitions, {refused} refusals, {overlaps} overlaps in {time.perf_counter() - t0:.1f} s")
    assert got >= 1000 and refused > 0  # refusals: the processes really contended
    assert overlaps == 0
    assert wrong_details == 0  # a reader that sees details sees the real holder
    assert read_holder(tmp_path / ".lock") is None


def hold(path: Path) -> subprocess.Popen:
    """A process that takes the lock and sleeps; returns once it holds it."""
    code = (f"import sys, time; from pathlib import Path; from selffeed.run.lock import acquire; "
            f"acquire(Path({str(path)!r}), owner='sleeper'); print('ready', flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "ready\n"
    return proc


def test_kill_9_of_the_holder_frees_the_lock(tmp_path):
    path = tmp_path / ".lock"
    proc = hold(path)
    try:
        assert read_holder(path)["pid"] == proc.pid
        with pytest.raises(RunLocked, match=rf"locked by pid {proc.pid} on .* since .* \(sleeper\); wait"):
            acquire(path)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        deadline = time.monotonic() + 2
        while True:
            try:
                me = acquire(path)
                break
            except RunLocked:
                assert time.monotonic() < deadline, "the lock outlived its killed holder"
                time.sleep(0.01)
        assert me["pid"] == os.getpid() and read_holder(path)["pid"] == os.getpid()
        release(path)
    finally:
        proc.kill()
        proc.wait()


def assert_free(path: Path) -> None:
    """Nobody, this process included, holds the lock: a fresh exclusive flock succeeds."""
    with open(path) as fh:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)


def test_assert_unlocked_refuses_a_live_holder_and_takes_nothing(tmp_path):
    path = tmp_path / ".lock"
    assert_unlocked(path)  # no file yet
    assert not path.exists()
    proc = hold(path)
    try:
        with pytest.raises(RunLocked, match=f"locked by pid {proc.pid}"):
            assert_unlocked(path)
    finally:
        proc.kill()
        proc.wait()
    # The dead holder's details are still in the file; they do not block.
    assert json.loads(path.read_text())["pid"] == proc.pid
    assert read_holder(path) is None
    assert_unlocked(path)
    assert_free(path)
    with run_lock(path, owner="me") as me:
        assert me["pid"] == os.getpid() and read_holder(path) == me
    assert_unlocked(path)
    assert_free(path)


def test_lock_file_contents_do_not_lock(tmp_path):
    """Only the flock counts: neither a live process named in the file nor a torn file blocks."""
    path = tmp_path / ".lock"
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        path.write_text(json.dumps({"pid": sleeper.pid, "host": os.uname().nodename, "since": "then"}))
        assert read_holder(path) is None
        assert acquire(path)["pid"] == os.getpid()
        release(path)
    finally:
        sleeper.kill()
        sleeper.wait()
    path.write_text("{torn")
    assert acquire(path)["pid"] == os.getpid()
    release(path)
    assert path.read_text() == ""  # released: no details left to mistake for a holder


def test_same_process_cannot_take_the_lock_twice(tmp_path):
    path = tmp_path / ".lock"
    with run_lock(path, owner="outer"):
        with pytest.raises(RunLocked, match=rf"locked by pid {os.getpid()} .*\(outer\)"):
            acquire(path)
        assert read_holder(path)["owner"] == "outer"  # the refused attempt did not disturb the holder
    assert_free(path)


def test_holder_without_details_yet_gives_one_clear_line(tmp_path):
    """Between taking the flock and writing its details, the holder is named as best we can."""
    path = tmp_path / ".lock"
    path.write_text("")
    with open(path) as fh:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert read_holder(path) == {}
        with pytest.raises(RunLocked) as err:
            assert_unlocked(path)
    message = str(err.value)
    assert len(message.splitlines()) == 1 and "just starting or stopping" in message and "None" not in message
