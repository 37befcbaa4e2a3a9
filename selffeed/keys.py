"""Content-addressed stage keys: what a stage's output depends on, hashed.

A key covers the stage's code version (the source of the modules and functions it runs, so a
change in a helper counts, unlike Prefect's TASK_SOURCE), the config sections it reads, the seed,
the run directory it writes into, the round, and the content digests of its upstream manifests
(never their paths). For the prompts recipe it also covers the data file's bytes and a user scorer's
source. Changing the filter config therefore changes the filter's key and, through the
kept digest, every key downstream, while prepare, fine-tune and sample keep theirs.
"""

from __future__ import annotations

import glob
import hashlib
import importlib.util
import inspect
import json
import sys
from functools import cache
from pathlib import Path
from typing import Any

from selffeed.config import RunConfig
from selffeed.manifest import Manifest

# Bump to invalidate every cached stage at once (e.g. after changing the on-disk format).
FORMAT_VERSION = 1

# Modules whose source a stage's output depends on (its own function in selffeed.stages is added).
STAGE_MODULES: dict[str, tuple[str, ...]] = {
    "prepare": (
        "selffeed.recipes", "selffeed.recipes.arithmetic", "selffeed.recipes.prompts", "selffeed.schema",
        "selffeed.recipes.text", "selffeed.recipes.stories",
    ),
    "finetune": (
        "selffeed.finetune", "selffeed.model", "selffeed.recipes.arithmetic", "selffeed.recipes.prompts",
        "selffeed.recipes.text", "selffeed.backends.lora",
    ),
    "sample": (
        "selffeed.sample", "selffeed.model", "selffeed.schema", "selffeed.recipes", "selffeed.recipes.arithmetic",
        "selffeed.recipes.prompts", "selffeed.scorers", "selffeed.curriculum", "selffeed.recipes.text",
        "selffeed.backends.vllm_sampler", "selffeed.labels",
    ),
    "filter": (
        "selffeed.filters", "selffeed.schema", "selffeed.recipes", "selffeed.scorers", "selffeed.sample",
        "selffeed.model", "selffeed.text_filters", "selffeed.labels",
    ),
    "retrain": (
        "selffeed.finetune", "selffeed.model", "selffeed.loop", "selffeed.schema", "selffeed.recipes",
        "selffeed.recipes.text", "selffeed.backends.lora",
    ),
    "validate": (
        "selffeed.validate", "selffeed.sample", "selffeed.model", "selffeed.recipes", "selffeed.recipes.arithmetic",
        "selffeed.recipes.prompts", "selffeed.scorers", "selffeed.audit", "selffeed.text_metrics",
        "selffeed.text_filters", "selffeed.recipes.text", "selffeed.recipes.stories", "selffeed.labels",
    ),
}
# Fields of the recipe's config section that sampling, filtering and validation read (prepare reads
# all of it); a field missing from a section is skipped.
RECIPE_FIELDS: dict[str, tuple[str, ...]] = {
    "sample": ("width", "answer", "max_new_tokens"),
    "filter": (
        "scorer", "max_repeat_ratio", "repeat_n", "near_dup", "shingle_n", "min_sample_perplexity",
        "max_sample_perplexity",
    ),
    "validate": ("width", "scorer", "answer", "max_new_tokens", "diversity_prompts"),
}
# Functions of selffeed.stages each stage runs.
STAGE_FUNCTIONS: dict[str, tuple[str, ...]] = {
    "prepare": ("prepare",),
    "finetune": ("finetune", "_base_model", "_train_and_save"),
    "sample": ("sample",),
    "filter": ("filter_samples", "_earlier_documents"),
    "retrain": ("retrain", "_train_and_save", "_base_model"),
    "validate": ("validate",),
}


def _config_sections(stage: str, cfg: RunConfig) -> dict[str, Any]:
    d = cfg.model_dump(mode="json")
    common = {"seed": d["seed"], "runs_dir": str(Path(cfg.runs_dir).resolve()), "name": cfg.name}
    # Results depend on the thread count (float reduction order), so compute stages key on it.
    by_stage = {
        "prepare": {"recipe": d["recipe"], d["recipe"]: d[d["recipe"]]},
        "finetune": {"model": d["model"], "finetune": d["finetune"], "threads": d["threads"]},
        "sample": {"sample": d["sample"], "views": d["filter"]["views"], "threads": d["threads"]},
        "filter": {"filter": d["filter"]},
        "retrain": {
            "retrain": d["retrain"], "mix": d["loop"]["mix"], "threads": d["threads"],
            # reinit trains the base model again, which the model section describes
            "policy": {k: d["loop"][k] for k in ("min_real_fraction", "init")}, "model": d["model"],
        },
        "validate": {"threads": d["threads"], "audit": d["audit"]},
    }
    section = d[d["recipe"]]
    if stage in RECIPE_FIELDS:
        by_stage[stage][d["recipe"]] = {f: section[f] for f in RECIPE_FIELDS[stage] if f in section}
    if d["recipe"] == "prompts":
        if stage == "prepare":  # the data file and the model's chat template shape the splits
            by_stage[stage]["data"] = _file_digest(section["data"])
            by_stage[stage]["gold"] = _file_digest(section.get("gold"))
            by_stage[stage]["model_path"] = d["model"]["path"]
        if stage in ("filter", "validate"):  # a user scorer's own source counts like ours
            by_stage[stage]["scorer_source"] = _scorer_digest(section["scorer"])
    if d["recipe"] == "text":
        if stage == "prepare":  # the corpus files (a glob may name several) and the prompt file
            by_stage[stage]["data"] = [_file_digest(f) for f in sorted(glob.glob(section["data"] or ""))]
            by_stage[stage]["prompts_file"] = _file_digest(section["prompts"])
        if stage == "filter" and section["scorer"]:
            by_stage[stage]["scorer_source"] = _scorer_digest(section["scorer"])
        if stage == "validate":  # diversity is measured on sampled continuations
            by_stage[stage]["sample"] = d["sample"]
    return {**common, **by_stage[stage]}


def _file_digest(path: str | None) -> str | None:
    """sha256 of a file, or of every file under a directory (names and bytes); None if absent."""
    if not path or not Path(path).exists():
        return None
    p = Path(path)
    h = hashlib.sha256()
    for f in sorted(p.rglob("*")) if p.is_dir() else [p]:
        if f.is_file():
            h.update(str(f.relative_to(p) if p.is_dir() else f.name).encode())
            h.update(f.read_bytes())
    return h.hexdigest()


def _scorer_digest(spec: str) -> str | None:
    from selffeed.scorers import BUILTIN

    if spec in BUILTIN:
        return None
    module = spec.rpartition(":")[0]
    if module.endswith(".py") or "/" in module:
        return _file_digest(module)
    try:
        found = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    return _file_digest(found.origin) if found and found.origin else None


@cache
def code_version(stage: str) -> str:
    """sha256 over the source of the modules and stage functions ``stage`` runs."""
    import selffeed.stages as stages_mod

    h = hashlib.sha256(f"format={FORMAT_VERSION}".encode())
    for name in STAGE_MODULES[stage]:
        __import__(name)
        h.update(Path(sys.modules[name].__file__).read_bytes())
    for fn in STAGE_FUNCTIONS[stage]:
        h.update(inspect.getsource(inspect.unwrap(getattr(stages_mod, fn))).encode())
    return h.hexdigest()


def _digests(value: Any) -> Any:
    if isinstance(value, Manifest):
        return {"stage": value.stage, "round": value.round, "digests": value.digests}
    if isinstance(value, list | tuple):
        return [_digests(v) for v in value]
    return value


def stage_key(stage: str, cfg: RunConfig, inputs: dict[str, Any]) -> str:
    """The key of running ``stage`` with ``inputs`` (the task's arguments other than the config)."""
    material = {
        "stage": stage,
        "code": code_version(stage),
        "config": _config_sections(stage, cfg),
        # Omitted optional arguments and explicit None must give the same key.
        "inputs": {k: _digests(v) for k, v in sorted(inputs.items()) if v is not None},
    }
    return hashlib.sha256(json.dumps(material, sort_keys=True, default=str).encode()).hexdigest()
