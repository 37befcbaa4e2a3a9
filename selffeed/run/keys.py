"""Content-addressed stage keys: everything a stage's output depends on, hashed.

A key covers:

- **code**: the source of every module of the ``selffeed`` package (not a hand-kept list of the
  modules a stage happens to run today), the versions of the libraries that compute the results
  (torch, transformers, ...) and of Python;
- **user code**: the source files of user callables the stage runs (``prompts.scorer``,
  ``text.scorer``, ``filter.verifier``);
- **config**: the sections a stage reads (:data:`STAGE_CONFIG`; whole sections, so a new field is
  covered the day it is added), the seed, the run directory and name;
- **inputs**: the content digests of its upstream manifests (never their paths), including the
  earlier rounds' kept rows the filter deduplicates against;
- **files**: the content of every file the config names that the stage reads (``model.path`` by its
  bytes, the prompt data, the text corpus).

Over-invalidating is cheap; a stale result is silent. ``tests/test_keys.py`` traces which config
fields and which source files every stage really touches and fails when a key misses one.
"""

from __future__ import annotations

import glob
import hashlib
import importlib.metadata
import importlib.util
import json
import platform
from functools import cache
from pathlib import Path
from typing import Any

from selffeed.config import RunConfig
from selffeed.run.manifest import Manifest, digest, stat_of

# Bump to invalidate every cached stage at once (e.g. after changing the on-disk format).
FORMAT_VERSION = 2

PACKAGE_DIR = Path(__file__).resolve().parents[1]

LIBRARIES = (
    "selffeed", "torch", "transformers", "tokenizers", "safetensors", "numpy", "pandas", "pyarrow", "datasets",
    "peft", "accelerate", "vllm", "sacrebleu", "rouge-score",
)
"""Distributions whose version is part of every key (absent ones count as absent)."""

RECIPE = "<recipe>"
"""Stands for the run's recipe section (arithmetic, prompts, text or word_problems) in :data:`STAGE_CONFIG`."""

STAGE_CONFIG: dict[str, tuple[str, ...]] = {
    "prepare": ("recipe", RECIPE, "model", "filter.label_free"),
    "finetune": ("recipe", RECIPE, "model", "finetune", "threads"),
    "sample": ("recipe", RECIPE, "sample", "filter.views", "model.precision", "model.path", "threads"),
    "filter": ("recipe", RECIPE, "filter", "sample", "model.precision", "model.path", "threads"),
    "retrain": ("recipe", RECIPE, "model", "retrain", "loop.mix", "loop.min_real_fraction", "loop.init", "threads"),
    "validate": ("recipe", RECIPE, "sample", "audit", "model.precision", "model.path", "threads"),
}
"""Config sections (or ``section.field``) each stage's output depends on, besides seed, name and
runs_dir. Left out everywhere, because no stage output depends on them: the stop rules and best-round
choice (``loop`` but for the mix), the curriculum (its choice reaches sample as an explicit input) and
``orchestration`` (where a stage runs)."""

USER_CODE_STAGES = ("filter", "validate")
"""Stages that call user callables (scorers, verifiers)."""


@cache
def code_version() -> str:
    """sha256 over every source file of the selffeed package, library versions and the format."""
    h = hashlib.sha256(f"format={FORMAT_VERSION}".encode())
    for f in package_files():
        h.update(str(f.relative_to(PACKAGE_DIR)).encode() + b"\0" + f.read_bytes())
    h.update(json.dumps(library_versions(), sort_keys=True).encode())
    return h.hexdigest()


def package_files() -> list[Path]:
    """Every Python source file of the selffeed package, sorted."""
    return sorted(PACKAGE_DIR.rglob("*.py"))


def library_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


_DIGESTS: dict[tuple[str, tuple[int, ...]], str] = {}


def content_digest(path: str | Path | None) -> str | None:
    """sha256 of a file or directory's content (see :func:`selffeed.run.manifest.digest`); None if absent.

    Remembered per (path, size, mtime, file count), so a large checkpoint is hashed once per process.
    """
    if not path or not Path(path).exists():
        return None
    p = Path(path).resolve()
    stamp = (str(p), tuple(stat_of(p)))
    if stamp not in _DIGESTS:
        _DIGESTS[stamp] = digest(p)
    return _DIGESTS[stamp]


def callable_file(spec: str | None) -> Path | None:
    """The source file of a user callable ``'path/to/file.py:function'`` or ``'module:function'``;
    None for built-in scorers, empty specs and modules that cannot be found."""
    from selffeed.filtering.scorers import BUILTIN

    if not spec or spec in BUILTIN:
        return None
    module = spec.rpartition(":")[0]
    if module.endswith(".py") or "/" in module:
        return Path(module).resolve()
    try:
        found = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    return Path(found.origin).resolve() if found and found.origin else None


def user_code_files(cfg: RunConfig) -> list[Path]:
    """Source files of the user callables ``cfg`` names (scorers and verifier)."""
    specs = [cfg.filter.verifier]
    if cfg.recipe == "prompts":
        specs.append(cfg.prompts.scorer)
    if cfg.recipe == "text":
        specs.append(cfg.text.scorer)
    return [f for f in (callable_file(s) for s in specs) if f is not None]


def covered_files(stage: str, cfg: RunConfig) -> list[Path]:
    """Source files whose content is part of ``stage``'s key."""
    return package_files() + (user_code_files(cfg) if stage in USER_CODE_STAGES else [])


def data_files(stage: str, cfg: RunConfig) -> dict[str, str | None]:
    """Digests of the files the config names that ``stage`` reads."""
    out: dict[str, str | None] = {}
    if cfg.model.path and {"model", "model.path"} & set(STAGE_CONFIG[stage]):
        out["model.path"] = content_digest(cfg.model.path)
    if stage == "prepare" and cfg.recipe == "prompts":
        out["prompts.data"] = content_digest(cfg.prompts.data)
        out["prompts.gold"] = content_digest(cfg.prompts.gold)
    if stage == "prepare" and cfg.recipe == "text":
        files = sorted(glob.glob(cfg.text.data)) if cfg.text.data else []
        out["text.data"] = json.dumps([content_digest(f) for f in files])
        out["text.prompts"] = content_digest(cfg.text.prompts)
    if stage in USER_CODE_STAGES:
        out |= {str(f): content_digest(f) for f in user_code_files(cfg)}
    return out


def config_material(stage: str, cfg: RunConfig) -> dict[str, Any]:
    """The config values ``stage``'s key covers."""
    d = cfg.model_dump(mode="json")
    out: dict[str, Any] = {"seed": d["seed"], "name": d["name"], "runs_dir": str(Path(cfg.runs_dir).resolve())}
    for item in STAGE_CONFIG[stage]:
        section, _, field = (d["recipe"] if item == RECIPE else item).partition(".")
        out[item if field else section] = d[section][field] if field else d[section]
    return out


def _digests(value: Any) -> Any:
    if isinstance(value, Manifest):
        return {"stage": value.stage, "round": value.round, "digests": value.digests}
    if isinstance(value, list | tuple):
        return [_digests(v) for v in value]
    return value


def same_validation(a: RunConfig, b: RunConfig) -> bool:
    """Whether validating one model under ``a`` and under ``b`` gives the same figures: validation reads
    neither the filter, loop nor audit settings, and the sampling settings only for recipes it samples."""
    ignored = {"name", "filter", "loop", "audit"}
    if a.recipe not in ("text", "constrained_stories"):
        ignored.add("sample")
    return a.model_dump(exclude=ignored) == b.model_dump(exclude=ignored)


def stage_key(stage: str, cfg: RunConfig, inputs: dict[str, Any]) -> str:
    """The key of running ``stage`` with ``inputs`` (the task's arguments other than the config)."""
    material = {
        "stage": stage,
        "code": code_version(),
        "config": config_material(stage, cfg),
        "files": data_files(stage, cfg),
        # Omitted optional arguments and explicit None must give the same key.
        "inputs": {k: _digests(v) for k, v in sorted(inputs.items()) if v is not None},
    }
    return hashlib.sha256(json.dumps(material, sort_keys=True, default=str).encode()).hexdigest()
