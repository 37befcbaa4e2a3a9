"""The on-disk layout of a run. Every other module asks this one for paths; nobody joins them by hand.

::

    <runs_dir>/<name>/
        config.yaml                 resolved config of the latest invocation
        run.json                    rounds done, best round, stop reason
        data/{seed,pool,test}.parquet
        round-000/model/            seed fine-tune (save_pretrained: safetensors + tokenizer)
        round-000/metrics.json
        round-001/samples.parquet   every completion of round 1
        round-001/kept.parquet      what the filters kept
        round-001/model/            retrained checkpoint
        round-001/metrics.json
        round-001/manifest.json     written last: the round is committed
        best -> round-00N/model     the best validated round's model (the run's export)
        round-001/.samples-<key>/   sampling shards while a sample stage runs (resumable)
        .lock                       the single writer's PID and host
        .prefect-results/           Prefect's persisted stage results (cache records)

Writes are atomic: files and checkpoint directories are written under a temporary name in the same
directory and renamed into place when complete, so a reader never sees a partial file.
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


def _tmp_sibling(path: Path) -> Path:
    return path.with_name(f"{TMP_MARK}{uuid.uuid4().hex[:8]}-{path.name}")


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary sibling of ``path``; rename it onto ``path`` only if the block succeeds.

    Works for files and directories; an existing directory at ``path`` is replaced.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_sibling(path)
    try:
        yield tmp
        if path.is_dir() and not path.is_symlink():
            # Directories cannot be renamed over non-empty ones: move the old aside first.
            old = _tmp_sibling(path)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()


def remove_temporaries(root: Path) -> list[Path]:
    """Delete temporaries a killed writer left under ``root``; only call while holding the run lock."""
    found = sorted(root.rglob(f"{TMP_MARK}*")) if root.is_dir() else []
    for p in found:
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
    return found


def point_to(link: Path, target: Path) -> None:
    """Make ``link`` a relative symlink to ``target``, replacing any old one atomically."""
    tmp = _tmp_sibling(link)
    tmp.symlink_to(os.path.relpath(target, link.parent))
    os.replace(tmp, link)


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically (sorted keys, indented, trailing newline)."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


def write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
