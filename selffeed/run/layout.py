"""The on-disk layout of a run. Every other module asks this one for paths; nobody joins them by hand.

::

    <runs_dir>/<name>/
        config.yaml                 resolved config of the latest invocation
        run.json                    rounds done, best round, stop reason
        data/{seed,pool,test}.parquet
        round-000/model -> .ver-<id>-model
                                    seed fine-tune: a symlink to the checkpoint version published last
        round-000/.ver-<id>-model/  that checkpoint (save_pretrained: safetensors + tokenizer)
        round-000/metrics.json
        round-001/samples.parquet   every completion of round 1
        round-001/kept.parquet      what the filters kept
        round-001/model -> .ver-<id>-model
                                    retrained checkpoint (and its .ver-<id>-model/ beside it)
        round-001/metrics.json
        round-001/manifest.json     written last: the round is committed
        best -> round-00N/model     the best validated round's model (the run's export)
        round-001/.samples-<key>/   sampling shards while a sample stage runs (resumable)
        .lock                       the single writer's PID and host
        .prefect-results/           Prefect's persisted stage results (cache records)

Writes are atomic and durable. A file is written under a temporary sibling name (``.tmp-<id>-<name>``),
fsynced, renamed into place, and its directory fsynced, so a reader never sees a partial file and a
power cut never leaves a name pointing at data that was not on disk. A checkpoint directory is written
the same way, fsynced file by file, renamed to a version ``.ver-<id>-model/``, and published by renaming
a fresh symlink over ``model``: one rename, so ``round-NNN/model`` and ``best`` (a symlink to it) always
name a complete checkpoint, the old one until the rename and the new one after it; the old version is
then deleted. A killed writer leaves only ``.tmp-*`` names and ``.ver-*`` directories no symlink names,
and :func:`remove_temporaries` deletes both when the next writer opens the run.

A run written before versioned checkpoints has real ``model/`` directories. The first re-publish of
one moves it aside and puts the symlink in its place: two renames, between which ``model`` is missing.
A writer killed there loses that round's checkpoint (its manifest then reports it missing, so the stage
runs again); this happens at most once per legacy checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TMP_MARK = ".tmp-"
VERSION_MARK = ".ver-"  # a published checkpoint version: kept while a symlink names it


@dataclass(frozen=True)
class RunLayout:
    """Paths of one run directory."""

    root: Path

    @classmethod
    def of(cls, runs_dir: str | Path, name: str) -> RunLayout:
        return cls(Path(runs_dir) / name)

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def run_json(self) -> Path:
        return self.root / "run.json"

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    def split(self, name: str) -> Path:
        """``seed``, ``pool`` or ``test`` Parquet file written by the prepare stage."""
        return self.data_dir / f"{name}.parquet"

    def round_dir(self, r: int) -> Path:
        return self.root / f"round-{r:03d}"

    def samples(self, r: int) -> Path:
        return self.round_dir(r) / "samples.parquet"

    def kept(self, r: int) -> Path:
        return self.round_dir(r) / "kept.parquet"

    def model(self, r: int) -> Path:
        return self.round_dir(r) / "model"

    def metrics(self, r: int) -> Path:
        return self.round_dir(r) / "metrics.json"

    def round_manifest(self, r: int) -> Path:
        return self.round_dir(r) / "manifest.json"

    def sample_shards(self, r: int, tag: str) -> Path:
        return self.round_dir(r) / f".samples-{tag}"

    def sample_shard(self, r: int, tag: str, i: int) -> Path:
        return self.sample_shards(r, tag) / f"shard-{i:05d}.parquet"

    def scratch(self, r: int, what: str) -> Path:
        """A temporary directory of round ``r``'s stage (e.g. a data-parallel launch's files): named as a
        temporary, so a killed writer's leftovers go with the next writer's cleanup."""
        return self.round_dir(r) / f"{TMP_MARK}{what}"

    def stale_shard_dirs(self, r: int, tag: str) -> list[Path]:
        """Shard directories of round ``r`` left by a sample stage with another key."""
        keep = self.sample_shards(r, tag)
        return [p for p in self.round_dir(r).glob(".samples-*") if p != keep]

    @property
    def best(self) -> Path:
        """Symlink to the best validated round's ``model/``: the run's exported model."""
        return self.root / "best"

    @property
    def lock(self) -> Path:
        return self.root / ".lock"

    @property
    def results(self) -> Path:
        return self.root / ".prefect-results"

    def rounds(self) -> list[int]:
        """Round numbers whose directory exists, ascending."""
        if not self.root.is_dir():
            return []
        out = []
        for p in self.root.glob("round-*"):
            suffix = p.name.removeprefix("round-")
            if p.is_dir() and suffix.isdigit():
                out.append(int(suffix))
        return sorted(out)

    def model_id(self, r: int) -> str:
        return f"{self.root.name}/round-{r:03d}"


@dataclass(frozen=True)
class ExperimentLayout:
    """Paths of an experiment's report (``selffeed experiment``): ``<runs_dir>/<name>-experiment/``.

    Its arms' runs are ordinary run directories beside it, ``<runs_dir>/<name>-<arm>-s<seed>/``.
    """

    root: Path

    @classmethod
    def of(cls, runs_dir: str | Path, name: str) -> ExperimentLayout:
        return cls(Path(runs_dir) / f"{name}-experiment")

    @property
    def report_md(self) -> Path:
        return self.root / "report.md"

    @property
    def report_json(self) -> Path:
        return self.root / "report.json"

    @property
    def plot(self) -> Path:
        return self.root / "accuracy.png"

    @staticmethod
    def arm_run(runs_dir: str | Path, name: str, arm: str, seed: int) -> RunLayout:
        return RunLayout.of(runs_dir, f"{name}-{arm}-s{seed}")


def _sibling(path: Path, mark: str) -> Path:
    return path.with_name(f"{mark}{uuid.uuid4().hex[:8]}-{path.name}")


def _fsync(path: Path) -> None:
    """Flush a file's data, or a directory's entries, to disk (Linux flushes through a read-only fd)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _make_dirs(d: Path) -> None:
    """``mkdir -p`` that fsyncs each new directory's parent: a file's name is only durable if every
    directory above it is."""
    if not d.is_dir():
        _make_dirs(d.parent)
        d.mkdir(exist_ok=True)
        _fsync(d.parent)


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary sibling of ``path``; publish it at ``path`` only if the block succeeds.

    A file is fsynced and renamed onto ``path``; a directory is published by :func:`_publish_dir`.
    The parent is fsynced last, so the new name itself survives a power cut.
    """
    _make_dirs(path.parent)
    tmp = _sibling(path, TMP_MARK)
    try:
        yield tmp
        if tmp.is_dir():
            _publish_dir(tmp, path)
        else:
            _fsync(tmp)
            os.replace(tmp, path)
            _fsync(path.parent)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()


def _publish_dir(tmp: Path, path: Path) -> None:
    """Make the complete directory ``tmp`` appear at ``path`` in one rename: of a symlink, since a
    directory cannot be renamed over a non-empty one. ``path`` ends up a symlink to ``.ver-<id>-<name>``."""
    for p in tmp.rglob("*"):
        if not p.is_symlink():
            _fsync(p)
    _fsync(tmp)
    version = _sibling(path, VERSION_MARK)
    os.replace(tmp, version)
    _fsync(path.parent)  # the version is on disk before any symlink names it
    old = _version_behind(path)
    link = _sibling(path, TMP_MARK)
    link.symlink_to(version.name)
    if path.is_dir() and not path.is_symlink():
        # A legacy real directory: the one publish that takes two renames (see the module docstring).
        old = _sibling(path, TMP_MARK)
        os.replace(path, old)
    os.replace(link, path)
    _fsync(path.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _version_behind(link: Path) -> Path | None:
    """The ``.ver-*`` sibling directory that symlink ``link`` publishes, if it is one."""
    if not link.is_symlink():
        return None
    target = os.readlink(link)
    return link.with_name(target) if target.startswith(VERSION_MARK) and "/" not in target else None


def _is_live(version: Path) -> bool:
    """Whether ``.ver-<id>-<name>`` is what its sibling symlink ``<name>`` names now."""
    return _version_behind(version.with_name(version.name.split("-", 2)[-1])) == version


def remove_temporaries(root: Path) -> list[Path]:
    """Delete what a killed writer left under ``root``: temporaries, and checkpoint versions that no
    symlink publishes (never the live ones). Only call while holding the run lock."""
    if not root.is_dir():
        return []
    found = sorted(root.rglob(f"{TMP_MARK}*"))
    found += sorted(p for p in root.rglob(f"{VERSION_MARK}*") if not _is_live(p))
    for p in found:
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
    return found


def point_to(link: Path, target: Path) -> None:
    """Make ``link`` a relative symlink to ``target``, replacing any old one atomically."""
    tmp = _sibling(link, TMP_MARK)
    tmp.symlink_to(os.path.relpath(target, link.parent))
    os.replace(tmp, link)
    _fsync(link.parent)


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically (sorted keys, indented, trailing newline)."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


def write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
