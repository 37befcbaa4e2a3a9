"""One writer per run: an ``flock`` on the run's ``.lock`` file, with the holder's details in it.

The writer holds ``fcntl.flock(LOCK_EX)`` on ``.lock`` for as long as it runs. The kernel drops the
lock when the holder's file is closed, which includes the holder dying (``kill -9``, a crash), so
there are no stale locks to detect or take over. The file is never unlinked: a contender that
opened the old inode and one that created a new one could both hold "the" lock. Once the lock is
held, the holder writes its PID, host, start time and owner into the file; a contender refused the
lock reads them to name the holder in :class:`RunLocked`. Details left in the file by a dead
holder mean nothing: only the flock counts.

Within one process, two ``open()`` of the file conflict too (flock is per open file description),
so taking the same lock twice raises :class:`RunLocked`; flows are never nested on one run.

On NFS, ``flock`` may lock only against processes on the same host (it depends on the client and
server), so two hosts sharing a ``runs_dir`` over NFS may not exclude each other.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# fds of the locks this process holds, by resolved path; closing one releases its lock. os.open makes
# them non-inheritable, so a subprocess (e.g. Prefect's server) cannot keep a lock alive after us.
_held: dict[Path, int] = {}


class RunLocked(RuntimeError):
    """Another process holds the run's lock; the message names it."""


def _try_flock(fd: int, kind: int) -> bool:
    try:
        fcntl.flock(fd, kind | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _details(fd: int) -> dict:
    """The holder's details, or {} while a new holder has the lock but has not written them yet."""
    try:
        return json.loads(os.pread(fd, 4096, 0) or b"{}")
    except json.JSONDecodeError:  # caught mid-write
        return {}


def read_holder(path: Path) -> dict | None:
    """The details of the process holding the lock, or None if nobody holds it."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        # A shared lock we can take means no writer holds the exclusive one; it is dropped at once.
        return None if _try_flock(fd, fcntl.LOCK_SH) else _details(fd)
    finally:
        os.close(fd)


def acquire(path: Path, owner: str = "") -> dict:
    """Take the lock and write this process's details into it, or raise :class:`RunLocked`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)  # no O_TRUNC: the file may hold a live holder's details
    # read_holder's probe holds a shared lock for a moment; retry briefly rather than blame it.
    for _ in range(5):
        if _try_flock(fd, fcntl.LOCK_EX):
            break
        time.sleep(0.002)
    else:
        holder = _details(fd)
        os.close(fd)
        raise RunLocked(_locked_message(path, holder))
    me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "owner": owner}
    _held[path.resolve()] = fd
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(me).encode(), 0)
    except BaseException:  # e.g. a full disk: do not keep a lock nobody will release
        release(path)
        raise
    return me


def assert_unlocked(path: Path) -> None:
    """Raise :class:`RunLocked` if a live process holds the lock (checked before starting a flow).
    Takes nothing: the lock is free again when this returns."""
    holder = read_holder(path)
    if holder is not None:
        raise RunLocked(_locked_message(path, holder))


def _locked_message(path: Path, holder: dict) -> str:
    if "pid" not in holder:
        return f"{path.parent}: run is locked by a process that is just starting or stopping; try again in a moment"
    owner = f" ({holder['owner']})" if holder.get("owner") else ""
    return (
        f"{path.parent}: run is locked by pid {holder['pid']} on {holder['host']} since {holder['since']}{owner}; "
        f"wait for it to finish, or stop it"
    )


def release(path: Path) -> None:
    """Release the lock if this process holds it; its details are cleared first, so that nobody reads
    them as the next holder's."""
    fd = _held.pop(path.resolve(), None)
    if fd is not None:
        os.ftruncate(fd, 0)
        os.close(fd)


@contextmanager
def run_lock(path: Path, owner: str = "") -> Iterator[dict]:
    me = acquire(path, owner)
    try:
        yield me
    finally:
        release(path)
