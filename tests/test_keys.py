"""Stage keys cover everything a stage's output depends on.

Each recipe's stages run once, for real, on a tiny model under two tracers: one records every config
field a stage reads, the other every source file it executes. Then:

- the config walk changes every field of the schema and checks that each stage that read the field
  gets a new key (and that stop rules, the curriculum and orchestration change no key, so continuing a
  run reuses its rounds);
- the code trace checks that every project file a stage executed is hashed into its key.

Both checkers are tested against today's-style gaps put back (a hand-kept field list, an unhashed
verifier), so they cannot pass vacuously.
"""

from __future__ import annotations

import sys
import threading
import typing
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from selffeed import config as C
from selffeed.config import RunConfig, load_config
from selffeed.loop import stages
from selffeed.run import keys
from selffeed.run.manifest import Manifest
from selffeed.training.model import load_checkpoint, save_checkpoint
from tests.conftest import tiny_overrides

pytestmark = [pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("prepare", "finetune", "sample", "filter", "retrain", "validate")
COMMON = ("seed", "name", "runs_dir")
# Settings no stage output depends on: a run continued with more rounds (nightly) or another stop rule
# must reuse every stage, so none of these may reach a key.
NEVER_KEYED = (
    "loop.max_rounds", "loop.patience", "loop.min_delta", "loop.loss_threshold", "loop.metric", "loop.direction",
    "loop.max_perplexity_rise", "loop.max_diversity_drop", "loop.guard_patience",
    "curriculum.mode", "curriculum.mastered", "curriculum.min_accuracy",
    "orchestration.gpu_stages", "orchestration.gpu_pool", "orchestration.gpu_timeout_s",
)

FIXED = {
    "arithmetic": ("filter.min_score", "filter.best_of_k"), "text": ("recipe",),
    "word_problems": ("filter.min_score", "filter.best_of_k"), "prompts": ("recipe", "loop.metric"),
    "constrained_stories": ("recipe", "constrained_stories.max_ref_perplexity"),
}
"""Fields a stage reads that the config allows no other value for alone: score filters need a scorer,
these scored configs cannot become another recipe without dropping their score filter, the prompts
recipe's metric is its scorer's, and the story guard by the frozen base model needs model.path, which a
tiny traced run has not (its whole section is in the filter's key all the same)."""

VERIFIER = "def ok(prompt, completion):\n    return len(completion) > 0\n"
SCORER = (
    "def score(samples, references=None, prompts=None):\n"
    "    return [float(len(s) % 3) for s in samples]\n"
)


class Trace:
    """Config fields read and source files executed, per stage, while stages run."""

    def __init__(self, cfg: RunConfig) -> None:
        self.reads: dict[str, set[str]] = defaultdict(set)
        self.files: dict[str, set[Path]] = defaultdict(set)
        self.stage: str | None = None
        self.paths = _section_paths(cfg)
        self.by_class = _sections_by_class(cfg)

    def field_read(self, obj: BaseModel, name: str) -> None:
        caller = sys._getframe(2).f_code.co_filename
        if self.stage is None or caller == keys.__file__:  # computing a key is not reading
            return
        prefix = self.paths.get(id(obj))
        if prefix is None:  # a copy of a section (model_copy): known by its class when that is unambiguous
            owners = self.by_class[type(obj).__name__]
            assert len(owners) == 1, f"{type(obj).__name__}.{name} read on a copy of one of {owners}"
            prefix = owners[0]
        self.reads[self.stage].add(prefix + name)

    def profile(self, frame, event, arg) -> None:
        if event == "call" and self.stage is not None:
            self.files[self.stage].add(Path(frame.f_code.co_filename))

    def run(self, stage: str, fn, *args, **kwargs):
        self.stage = stage
        sys.setprofile(self.profile)
        threading.setprofile(self.profile)
        try:
            return fn(*args, **kwargs)
        finally:
            sys.setprofile(None)
            threading.setprofile(None)
            self.stage = None


def _section_paths(cfg: RunConfig) -> dict[int, str]:
    out = {id(cfg): ""}
    for name in type(cfg).model_fields:
        value = object.__getattribute__(cfg, name)
        if isinstance(value, BaseModel):
            out[id(value)] = f"{name}."
    return out


def _sections_by_class(cfg: RunConfig) -> dict[str, list[str]]:
    out: dict[str, list[str]] = defaultdict(list)
    for name in type(cfg).model_fields:
        value = object.__getattribute__(cfg, name)
        if isinstance(value, BaseModel):
            out[type(value).__name__].append(f"{name}.")
    return out


def run_traced(cfg: RunConfig, monkeypatch) -> Trace:
    """Run every stage of two rounds of ``cfg`` under the tracers."""
    trace = Trace(cfg)
    original = C._Section.__getattribute__

    def spy(self, name):
        value = original(self, name)
        if name in type(self).model_fields and not isinstance(value, BaseModel):
            trace.field_read(self, name)
        return value

    monkeypatch.setattr(C._Section, "__getattribute__", spy)
    data = trace.run("prepare", stages.prepare, cfg)
    model = trace.run("finetune", stages.finetune, cfg, data)
    trace.run("validate", stages.validate, cfg, 0, model, data)
    models, kept = [model], []
    for r in (1, 2):
        samples = trace.run("sample", stages.sample, cfg, r, model, data)
        ensemble = models[-(cfg.filter.ensemble_rounds + 1):] if cfg.filter.ensemble_rounds else None
        kept.append(trace.run("filter", stages.filter_samples, cfg, r, samples, ensemble, list(kept)))
        model = trace.run("retrain", stages.retrain, cfg, r, model, data, kept)
        models.append(model)
        trace.run("validate", stages.validate, cfg, r, model, data, [samples, kept[-1]])
    monkeypatch.setattr(C._Section, "__getattribute__", original)
    return trace


def leaf_fields(model: type[BaseModel] = RunConfig, prefix: str = "") -> list[str]:
    out = []
    for name, info in model.model_fields.items():
        ann = info.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            out += leaf_fields(ann, f"{prefix}{name}.")
        else:
            out.append(prefix + name)
    return out


def candidates(value: Any, annotation: Any, extra: dict[str, list[Any]], field: str) -> list[Any]:
    """Valid-looking other values for a field: explicit ones first, then by type."""
    out = list(extra.get(field, []))
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) is typing.Literal:
        out += [a for a in args if a != value]
    if isinstance(value, bool):
        out.append(not value)
    elif isinstance(value, int):
        out += [value + 1, value - 1, value * 2 + 1]
    elif isinstance(value, float):
        out += [value * 0.5 + 0.01, value + 0.1, value - 0.1]
    elif isinstance(value, str):
        out += [value + "x", "x"]
    elif isinstance(value, tuple):
        out.append(tuple(v * 0.9 for v in value))
    elif isinstance(value, list):
        out += [value[:-1], [*value, *value[-1:]]] if value else []
    elif value is None:
        out += [1, 0.5, "x", True]
    return out


def changed(cfg: RunConfig, field: str, extra: dict[str, list[Any]]) -> RunConfig | None:
    """A copy of ``cfg`` with ``field`` set to another valid value, or None when none is found."""
    section, _, name = field.rpartition(".")
    value = getattr(getattr(cfg, section) if section else cfg, name)
    info = (type(getattr(cfg, section)) if section else RunConfig).model_fields[name]
    for new in candidates(value, info.annotation, extra, field):
        if new == value:
            continue
        d = cfg.model_dump()
        (d[section] if section else d)[name] = new
        if field != "loop.metric":  # let the recipe's default metric follow a changed recipe or scorer
            d["loop"].pop("metric")
        try:
            return RunConfig.model_validate(d)
        except (ValidationError, ValueError, TypeError):
            continue
    return None


def inputs_of(stage: str) -> dict[str, Any]:
    m = Manifest(stage="x", paths={}, digests={"x": "0"})
    return {"prepare": {}, "finetune": {"data": m}, "sample": {"r": 1, "model": m, "data": m},
            "filter": {"r": 1, "samples": m}, "retrain": {"r": 1, "previous": m, "data": m, "kept": [m]},
            "validate": {"r": 1, "model": m, "data": m}}[stage]


def uncovered_fields(cfg: RunConfig, trace: Trace, extra: dict[str, list[Any]]) -> dict[str, list[str]]:
    """Per field of the schema: the stages that read it but whose key stays the same when it changes,
    plus NEVER_KEYED fields that do change a key (under 'keyed:<stage>'), plus read fields no value could
    be found for (under 'unchangeable')."""
    base = {s: keys.stage_key(s, cfg, inputs_of(s)) for s in STAGES}
    problems: dict[str, list[str]] = defaultdict(list)
    for field in leaf_fields():
        readers = [s for s in STAGES if field in trace.reads[s]]
        other = changed(cfg, field, extra)
        if other is None:
            if (readers or field in NEVER_KEYED) and field not in FIXED.get(cfg.recipe, ()):
                problems[field].append("unchangeable")
            continue
        new = {s: keys.stage_key(s, other, inputs_of(s)) for s in STAGES}
        problems[field] += [s for s in readers if new[s] == base[s]]
        if field in NEVER_KEYED:
            problems[field] += [f"keyed:{s}" for s in STAGES if new[s] != base[s]]
    return {f: p for f, p in problems.items() if p}


def unhashed_files(cfg: RunConfig, trace: Trace) -> dict[str, list[str]]:
    """Per stage: project files (anything outside the virtualenv and the standard library) it executed
    whose content is not part of its key."""
    skip = [Path(sys.prefix).resolve(), Path(sys.base_prefix).resolve()]
    out = {}
    for stage in STAGES:
        covered = {f.resolve() for f in keys.covered_files(stage, cfg)}
        ran = {f.resolve() for f in trace.files[stage] if f.is_file()}
        missing = sorted(
            str(f) for f in ran - covered
            if not any(f.is_relative_to(p) for p in skip) and f.suffix == ".py" and "site-packages" not in f.parts
            and f != Path(__file__).resolve()
        )
        if missing:
            out[stage] = missing
    return out


def write_user_code(tmp_path: Path) -> tuple[str, str]:
    (tmp_path / "verifier.py").write_text(VERIFIER)
    (tmp_path / "my_scorer.py").write_text(SCORER)
    return f"{tmp_path / 'verifier.py'}:ok", f"{tmp_path / 'my_scorer.py'}:score"


def arithmetic_cfg(tmp_path: Path) -> RunConfig:
    verifier, _ = write_user_code(tmp_path)
    return load_config(None, tiny_overrides(
        tmp_path / "runs", **{
            "filter.views": "true", "arithmetic.offset_views": 1, "filter.ensemble_rounds": 1,
            "filter.ensemble_min": 0.5, "filter.min_logprob": -50, "filter.verifier": verifier, "audit.size": 10,
            "loop.mix": "latest", "loop.min_real_fraction": 0.3, "sample.top_k": 5, "sample.top_p": 0.9,
            "loop.max_rounds": 2,
        }))


def text_cfg(tmp_path: Path) -> RunConfig:
    _, scorer = write_user_code(tmp_path)
    from tests.test_text_recipe import SMALL

    return load_config(None, [
        f"runs_dir={tmp_path / 'runs'}", "recipe=text", *SMALL, f"text.scorer={scorer}", "filter.min_score=0",
        "text.min_sample_perplexity=1.0", "text.max_sample_perplexity=1e6", "loop.mix=replace",
        "loop.min_real_fraction=0.5", "loop.max_rounds=2",
    ])


def prompts_cfg(tmp_path: Path) -> RunConfig:
    from selffeed.recipes.examples import write_examples

    verifier, scorer = write_user_code(tmp_path)
    data = write_examples(tmp_path / "data")
    return load_config(ROOT / "data/configs/translation.yaml", [
        f"runs_dir={tmp_path / 'runs'}", f"prompts.data={data['translation']}", f"prompts.scorer={scorer}",
        f"filter.verifier={verifier}", "filter.min_score=0", "threads=1", "model.n_embd=16", "model.n_layer=1",
        "model.n_head=2", "model.n_inner=32", "finetune.steps=4", "finetune.progress=false", "retrain.steps=2",
        "retrain.progress=false", "sample.k=2", "loop.max_rounds=2",
    ])


def word_problems_cfg(tmp_path: Path) -> RunConfig:
    return load_config(None, [
        f"runs_dir={tmp_path / 'runs'}", "recipe=word_problems", "threads=1", "model.n_embd=16", "model.n_layer=1",
        "model.n_head=2", "model.n_inner=32", "model.n_positions=320", "word_problems.seed_size=8",
        "word_problems.pool_per_round=6", "word_problems.pool_slices=1", "word_problems.test_per_steps=2",
        "word_problems.val_per_steps=2", "word_problems.max_new_tokens=8", "finetune.steps=2",
        "finetune.progress=false", "retrain.steps=2", "retrain.progress=false", "sample.k=2", "audit.size=4",
        "filter.check_steps=true", "filter.check_numbers=true", "filter.min_agreement=0", "loop.init=reinit",
        "loop.max_rounds=2",
    ])


def stories_cfg(tmp_path: Path) -> RunConfig:
    # A tiny model has no frozen base checkpoint to judge stories with: that guard is off here.
    return load_config(ROOT / "data/configs/stories.yaml", [
        f"runs_dir={tmp_path / 'runs'}", "model.path=null", "constrained_stories.max_ref_perplexity=null",
        "threads=1", "model.n_embd=16", "model.n_layer=1", "model.n_head=2", "model.n_inner=32",
        "model.n_positions=256", "constrained_stories.pool_per_round=3", "constrained_stories.pool_slices=1",
        "constrained_stories.val_prompts=2", "constrained_stories.test_prompts=2", "constrained_stories.max_new_tokens=8",
        "constrained_stories.min_words=1", "filter.min_score=0", "retrain.steps=2", "retrain.progress=false",
        "sample.k=2", "loop.max_rounds=2",
    ])


def extra_values(cfg: RunConfig, tmp_path: Path, trace_model: Path) -> dict[str, list[Any]]:
    """Values the type-based guesses cannot find: paths that must exist, specs that must load."""
    other = tmp_path / "other_verifier.py"
    other.write_text(VERIFIER.replace("> 0", ">= 0"))
    return {
        "model.path": [str(trace_model)],
        "filter.verifier": [f"{other}:ok"],
        "prompts.scorer": ["chrf", "bleu"],
        "text.scorer": [f"{other}:ok"],
        "prompts.data": [str(p) for p in (tmp_path / "data").glob("*.csv")] or [None],
        "name": ["renamed"],
        "loop.metric": ["accuracy", "loss", "perplexity", "chrf", "bleu", "constraint_score"],
        "constrained_stories.words": [["owl", "map", "key", "hat", "moon", "tree"]],
        "finetune.lora_target_modules": [["c_attn"]],
        "retrain.lora_target_modules": [["c_attn"]],
    }


@pytest.fixture(scope="module", params=["arithmetic", "text", "prompts", "word_problems", "constrained_stories"])
def traced(request, tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp(request.param)
    cfg = {"arithmetic": arithmetic_cfg, "text": text_cfg, "prompts": prompts_cfg,
           "word_problems": word_problems_cfg, "constrained_stories": stories_cfg}[request.param](tmp_path)
    with pytest.MonkeyPatch.context() as monkeypatch:
        trace = run_traced(cfg, monkeypatch)
    lm, tok = load_checkpoint(stages.layout_of(cfg).model(0))
    save_checkpoint(lm, tok, tmp_path / "a-checkpoint")
    return cfg, trace, extra_values(cfg, tmp_path, tmp_path / "a-checkpoint")


def test_every_field_a_stage_reads_is_in_its_key(traced):
    cfg, trace, extra = traced
    for stage in STAGES:  # the tracer saw the stages do their work
        assert trace.reads[stage], stage
    assert trace.reads["sample"] >= {"sample.k", "sample.temperature"}
    assert uncovered_fields(cfg, trace, extra) == {}


def test_every_file_a_stage_runs_is_in_its_key(traced):
    cfg, trace, _ = traced
    assert any(f.name == "sampler.py" for f in trace.files["sample"])
    assert unhashed_files(cfg, trace) == {}


def test_the_checkers_find_the_gaps_of_hand_kept_lists(tmp_path, monkeypatch):
    """Put back what the old keys had: the sample key saw three recipe fields (not offset_views), the
    filter key no verifier source. Both checkers must object."""
    cfg = arithmetic_cfg(tmp_path)
    trace = run_traced(cfg, monkeypatch)
    lm, tok = load_checkpoint(stages.layout_of(cfg).model(0))
    save_checkpoint(lm, tok, tmp_path / "a-checkpoint")
    extra = extra_values(cfg, tmp_path, tmp_path / "a-checkpoint")
    monkeypatch.setitem(keys.STAGE_CONFIG, "sample", (
        "recipe", "arithmetic.width", "sample", "filter.views", "threads",
    ))
    monkeypatch.setattr(keys, "USER_CODE_STAGES", ("validate",))
    monkeypatch.setattr(keys, "data_files", lambda stage, c: {})
    assert "sample" in uncovered_fields(cfg, trace, extra)["arithmetic.offset_views"]
    assert "sample" in uncovered_fields(cfg, trace, extra)["arithmetic.pool_per_round"]
    assert any(f.endswith("verifier.py") for f in unhashed_files(cfg, trace)["filter"])


def test_user_code_model_content_and_library_versions_are_keyed(tmp_path, monkeypatch, tiny_model, tokenizer):
    verifier, _ = write_user_code(tmp_path)
    save_checkpoint(tiny_model, tokenizer, tmp_path / "ckpt")
    cfg = load_config(None, tiny_overrides(tmp_path / "runs", **{
        "filter.verifier": verifier, "model.path": str(tmp_path / "ckpt")}))
    before = {s: keys.stage_key(s, cfg, inputs_of(s)) for s in STAGES}

    (tmp_path / "verifier.py").write_text(VERIFIER.replace("> 0", "> 1"))  # same path, new code
    after = {s: keys.stage_key(s, cfg, inputs_of(s)) for s in STAGES}
    assert [s for s in STAGES if after[s] != before[s]] == ["filter", "validate"]

    weights = next((tmp_path / "ckpt").glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:-4] + b"\0\0\0\1")  # same path, other weights
    moved = {s: keys.stage_key(s, cfg, inputs_of(s)) for s in STAGES}
    # Every stage that names model.path keys its content: the filter and validation of constrained stories
    # load it as the frozen base model.
    assert {s for s in STAGES if moved[s] != after[s]} == set(STAGES)

    keys.code_version.cache_clear()
    monkeypatch.setattr(keys, "library_versions", lambda: {"torch": "0.0.0"})
    try:
        assert all(keys.stage_key(s, cfg, inputs_of(s)) != moved[s] for s in STAGES)
    finally:
        keys.code_version.cache_clear()


def test_earlier_kept_rows_are_an_input_of_the_filter_key(tiny_cfg):
    a = Manifest(stage="filter", round=1, paths={}, digests={"kept": "a"})
    b = Manifest(stage="filter", round=1, paths={}, digests={"kept": "b"})
    m = inputs_of("filter")
    assert keys.stage_key("filter", tiny_cfg, {**m, "earlier": [a]}) != keys.stage_key("filter", tiny_cfg, {**m, "earlier": [b]})


def test_keys_do_not_import_the_stages():
    import subprocess

    code = "import selffeed.run.keys, sys; print('selffeed.loop.stages' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "False"
