"""Manifests: the small records stages hand each other instead of DataFrames or models.

A manifest names an output (file or checkpoint directory), its content digest, its row count and a
few figures. Downstream stages take manifests as inputs, so an orchestrator can hash them cheaply
and a reader can check that the files are still what the stage wrote.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field


def digest(path: Path) -> str:
    """sha256 of a file's bytes, or of a directory's relative paths and file bytes (sorted)."""
    h = hashlib.sha256()
    p = Path(path)
    files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
    for f in files:
        if p.is_dir():
            h.update(str(f.relative_to(p)).encode() + b"\0")
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def stat_of(path: Path) -> list[int]:
    """(total size, newest mtime_ns, file count): a cheap change detector for a file or directory."""
    p = Path(path)
    files = [f for f in p.rglob("*") if f.is_file()] if p.is_dir() else [p]
    stats = [f.stat() for f in files]
    return [sum(s.st_size for s in stats), max((s.st_mtime_ns for s in stats), default=0), len(stats)]


class Manifest(BaseModel):
    """What a stage produced."""

    stage: str
    round: int | None = None
    paths: dict[str, str] = Field(description="Named outputs (file or directory paths).")
    digests: dict[str, str] = Field(description="sha256 of each named output.")
    stats: dict[str, list[int]] = Field(default_factory=dict, description="size/mtime/count at write time.")
    rows: int | None = None
    meta: dict[str, Any] = Field(default_factory=dict)

    def path(self, name: str) -> Path:
        return Path(self.paths[name])

    def problems(self) -> list[str]:
        """What is wrong with the outputs on disk now: missing or changed files; empty when valid.

        Unchanged size and mtime are trusted (hashing a large checkpoint on every check is costly);
        otherwise the content digest decides, so a file rewritten with the same bytes still counts.
        """
        out = []
        for name, p in self.paths.items():
            path = Path(p)
            if not path.exists():
                out.append(f"{name}: {p} is missing")
            elif self.stats.get(name) != stat_of(path) and digest(path) != self.digests[name]:
                out.append(f"{name}: {p} changed since it was written")
        return out

    def is_valid(self) -> bool:
        return not self.problems()


def make_manifest(
    stage: str, paths: dict[str, Path], round_: int | None = None, rows: int | None = None, **meta: Any
) -> Manifest:
    return Manifest(
        stage=stage,
        round=round_,
        paths={k: str(v) for k, v in paths.items()},
        digests={k: digest(v) for k, v in paths.items()},
        stats={k: stat_of(v) for k, v in paths.items()},
        rows=rows,
        meta=meta,
    )
