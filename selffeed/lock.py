"""One writer per run: an exclusive lock file in the run directory naming its holder.

The lock holds the owner's PID, host and start time. A lock left by a dead process on this host
(``kill -9``, a crash) is stale and taken over; a live holder, or one on another host whose
liveness cannot be checked, makes :func:`run_lock` raise :class:`RunLocked` naming it.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class RunLocked(RuntimeError):
    """Another process holds the run's lock; the message names it."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def read_holder(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _is_stale(holder: dict | None) -> bool:
    if holder is None:  # torn or empty lock file: its writer died mid-write
        return True
    return holder.get("host") == socket.gethostname() and not _alive(int(holder.get("pid", -1)))


def acquire(path: Path, owner: str = "") -> dict:
    """Create the lock file or raise :class:`RunLocked`; a stale lock is replaced."""
    path.parent.mkdir(parents=True, exist_ok=True)
    me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "owner": owner}
    for _ in range(3):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = read_holder(path)
            if _is_stale(holder):
                path.unlink(missing_ok=True)
                continue
            raise RunLocked(_locked_message(path, holder)) from None
        with os.fdopen(fd, "w") as fh:
            json.dump(me, fh)
        return me
    raise RunLocked(f"{path}: could not take the lock")


def assert_unlocked(path: Path) -> None:
    """Raise :class:`RunLocked` if a live process holds the lock (checked before starting a flow)."""
    holder = read_holder(path)
    if path.exists() and not _is_stale(holder):
        raise RunLocked(_locked_message(path, holder))


def _locked_message(path: Path, holder: dict) -> str:
    owner = f" ({holder['owner']})" if holder.get("owner") else ""
    return (
        f"{path.parent}: run is locked by pid {holder['pid']} on {holder['host']} since {holder['since']}{owner}; "
        f"wait for it, or remove {path} if that process is gone"
    )


def release(path: Path) -> None:
    """Remove the lock if this process holds it."""
    holder = read_holder(path)
    if holder and holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname():
        path.unlink(missing_ok=True)


@contextmanager
def run_lock(path: Path, owner: str = "") -> Iterator[dict]:
    acquire(path, owner)
    try:
        yield read_holder(path) or {}
    finally:
        release(path)
