"""Typed configuration for a selffeed run, loaded from YAML with ``key=value`` overrides.

One pydantic model per stage, nested in :class:`RunConfig`. Every field has a working default and a
description (the Prefect UI renders them as a form). Unknown keys and wrong types are rejected; all
problems surface as :class:`ConfigError`, whose message is a single line naming the field or file::

    cfg = load_config("data/configs/arithmetic.yaml", ["sample.k=4", "loop.max_rounds=2"])
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class ConfigError(ValueError):
    """A config file or override is wrong; the message is one line naming the field or file."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ArithmeticConfig(_Section):
    """The arithmetic recipe: `a+b=` with operands zero-padded to `width` digits and written reversed."""

    width: int = Field(3, ge=1, le=30, description="Operand width W; answers have W+1 digits.")
    seed_digits: list[int] = Field([2, 3], description="Digit counts of the labelled seed problems.")
    seed_size: int = Field(400, ge=1, description="Labelled seed problems, spread evenly over seed_digits.")
    pool_digits: list[int] = Field([3], description="Digit counts of the unlabelled prompt pool.")
    pool_per_round: int = Field(2000, ge=1, description="Unlabelled prompts sampled each round.")
    pool_slices: int = Field(4, ge=1, description="Disjoint pool slices; round r uses slice (r-1) mod this.")
    test_digits: list[int] = Field([2, 3], description="Digit counts of the held-out test problems.")
    test_per_digits: int = Field(300, ge=1, description="Held-out test problems per digit count.")


class PromptsConfig(_Section):
    """The generic recipe: your prompts (some with references), a template and a scorer. See README."""

    data: str | None = Field(
        None, description="Prompt file (.parquet, .jsonl, .csv) or a datasets save_to_disk directory."
    )
    prompt_column: str = Field("prompt", description="Column holding the prompt text.")
    reference_column: str | None = Field(
        None, description="Column of reference answers (may be empty on some rows); used by the scorer."
    )
    completion_column: str | None = Field(
        None, description="Column of full target completions; training rows that have one form the labelled seed."
    )
    split_column: str | None = Field(
        None, description="Column naming each row's split; rows equal to validation_value are held out."
    )
    validation_value: str = Field("validation", description="Value of split_column marking validation rows.")
    validation_fraction: float = Field(
        0.2, gt=0, lt=1, description="Without split_column: share of rows with a reference held out for validation."
    )
    template: str = Field(
        "{prompt}", description="Prompt template; {prompt} and any other column of the data in braces."
    )
    chat_template: bool = Field(
        True, description="Wrap the templated prompt in the tokenizer's chat template when it has one."
    )
    scorer: str = Field(
        "exact_match",
        description="exact_match, final_answer, bleu, chrf, rougeL, or 'path/to/file.py:function'; its mean "
        "over the validation split is a metric of that name, and filter.min_score / best_of_k use it.",
    )
    answer: Literal["text", "final"] = Field(
        "text", description="What the self-consistency vote compares: normalized text, or the final number."
    )
    max_new_tokens: int = Field(64, ge=1, description="Longest completion sampled or validated (tokens).")
    pool_slices: int = Field(1, ge=1, description="Disjoint pool slices; round r samples slice (r-1) mod this.")


class ModelConfig(_Section):
    """Which causal LM to start from: a local checkpoint, or a tiny GPT-2 built from this config."""

    path: str | None = Field(
        None, description="Local Hugging Face checkpoint directory; empty builds a tiny GPT-2."
    )
    n_embd: int = Field(64, ge=8, description="Tiny GPT-2: embedding width.")
    n_layer: int = Field(3, ge=1, description="Tiny GPT-2: number of layers.")
    n_head: int = Field(4, ge=1, description="Tiny GPT-2: attention heads.")
    n_inner: int = Field(256, ge=8, description="Tiny GPT-2: MLP width.")
    n_positions: int = Field(64, ge=8, description="Tiny GPT-2: maximum sequence length.")
    dropout: float = Field(0.1, ge=0.0, lt=1.0, description="Tiny GPT-2: dropout everywhere.")


class TrainConfig(_Section):
    """AdamW on cross-entropy of the completion tokens, for a fixed number of optimizer steps."""

    steps: int = Field(800, ge=1, description="Optimizer steps.")
    batch_size: int = Field(128, ge=1, description="Sequences per step.")
    lr: float = Field(2e-3, gt=0, description="Peak learning rate.")
    betas: tuple[float, float] = Field((0.9, 0.98), description="AdamW betas.")
    weight_decay: float = Field(0.1, ge=0, description="AdamW weight decay.")
    warmup_steps: int = Field(100, ge=0, description="Linear warm-up steps, then cosine decay.")
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="Final LR as a fraction of the peak.")
    grad_clip: float = Field(1.0, gt=0, description="Gradient-norm clip.")
    position_offset: int = Field(
        0, ge=0, description="Shift each sequence's position ids by a random 0..n while training, so "
        "learned absolute positions generalize to longer inputs (length extension); 0 disables.",
    )
    progress: bool = Field(True, description="Show a progress bar.")


class SampleConfig(_Section):
    """How completions are drawn from the current model."""

    k: int = Field(8, ge=1, le=256, description="Completions per prompt.")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature.")
    top_k: int = Field(0, ge=0, description="Top-k truncation; 0 disables.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus truncation; 1 disables.")
    greedy: bool = Field(False, description="Greedy decoding (k is forced to 1).")
    batch_prompts: int = Field(128, ge=1, description="Prompts per generate call (x k sequences).")
    max_new_tokens: int | None = Field(None, ge=1, description="Cap on new tokens; empty = recipe's.")
    shard_batches: int = Field(
        4, ge=1, description="Batches per shard file; a crashed sample stage resumes from the last shard."
    )


class FilterConfig(_Section):
    """Which completions are kept. Filters see completions and parsed answers, never true labels."""

    vote: bool = Field(True, description="Self-consistency majority vote over a prompt's k samples.")
    min_agreement: float = Field(
        1.0, ge=0, le=1, description="Keep a prompt's majority answer when its share of k is at least this."
    )
    min_chars: int = Field(1, ge=0, description="Shortest completion kept (characters).")
    max_chars: int = Field(10_000, ge=1, description="Longest completion kept (characters).")
    dedup: bool = Field(True, description="Keep one row per identical (prompt, completion).")
    verifier: str | None = Field(
        None, description="Optional 'module:function' called as f(prompt, completion) -> bool."
    )
    min_score: float | None = Field(
        None, description="Keep a scored completion when its score (prompts.scorer) is at least this."
    )
    best_of_k: bool = Field(
        False, description="Keep only the best-scoring completion of each prompt (reward-ranked fine-tuning)."
    )


class LoopConfig(_Section):
    """Rounds, the training mix and the stop rules."""

    max_rounds: int = Field(4, ge=0, description="Self-improvement rounds after the seed fine-tune.")
    patience: int = Field(2, ge=1, description="Stop after this many rounds without a new best.")
    min_delta: float = Field(0.0, ge=0, description="Improvement needed to count as a new best.")
    loss_threshold: float | None = Field(None, description="Stop once validation loss is at most this.")
    mix: Literal["accumulate", "latest", "seed_only"] = Field(
        "accumulate",
        description="Training mix: seed + kept of all rounds, seed + this round's kept, or seed only "
        "(the control arm: identical steps, no generated data).",
    )
    metric: str = Field(
        "accuracy_hardest",
        description="Validation figure that picks the best round (higher is better): accuracy_hardest or "
        "accuracy for arithmetic; the scorer's name (chrf, rougeL, ...) for prompts, its default there.",
    )


class OrchestrationConfig(_Section):
    """Where GPU-bound stages run. No stage output depends on these settings."""

    gpu_stages: Literal["auto", "local", "workers"] = Field(
        "auto",
        description="auto: on the gpu pool's workers when one is online, else in this process; "
        "local: always in this process; workers: always on the gpu pool (fail if none is online).",
    )
    gpu_pool: str = Field("gpu", description="Work pool whose workers run the GPU stage deployments.")
    gpu_timeout_s: int = Field(6 * 3600, ge=60, description="Longest wait for one GPU stage run.")


class RunConfig(_Section):
    """Everything one run needs; `name` picks the run directory `<runs_dir>/<name>`."""

    name: str = Field("arith-demo", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", description="Run name.")
    runs_dir: str = Field("runs", description="Parent directory of all runs.")
    seed: int = Field(0, ge=0, description="Seed for data, init, training and sampling.")
    threads: int = Field(2, ge=1, description="torch intra-op threads (results depend on it).")
    recipe: Literal["arithmetic", "prompts"] = Field("arithmetic", description="Task recipe.")
    arithmetic: ArithmeticConfig = Field(default_factory=ArithmeticConfig)
    prompts: PromptsConfig = Field(default_factory=PromptsConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    finetune: TrainConfig = Field(default_factory=TrainConfig)
    retrain: TrainConfig = Field(default_factory=lambda: TrainConfig(steps=400))
    sample: SampleConfig = Field(default_factory=SampleConfig)
    filter: FilterConfig = Field(default_factory=FilterConfig)
    loop: LoopConfig = Field(default_factory=LoopConfig)
    orchestration: OrchestrationConfig = Field(default_factory=OrchestrationConfig)

    @model_validator(mode="after")
    def check_recipe_fields(self) -> RunConfig:
        # Cross-section rules; the loop metric is resolved here so run.json always names it.
        from selffeed.scorers import metric_name

        scored = self.recipe == "prompts"
        if scored and not self.prompts.data:
            raise ValueError("prompts.data: required when recipe is prompts (a .parquet/.jsonl/.csv file or directory)")
        if not scored and (self.filter.min_score is not None or self.filter.best_of_k):
            raise ValueError("filter.min_score / filter.best_of_k: need a scorer (recipe: prompts)")
        allowed = [metric_name(self.prompts.scorer)] if scored else ["accuracy_hardest", "accuracy"]
        if "metric" not in self.loop.model_fields_set:
            self.loop.metric = allowed[0]
        elif self.loop.metric not in allowed:
            raise ValueError(
                f"loop.metric: '{self.loop.metric}' is not a validation metric of recipe {self.recipe} "
                f"(choose {' or '.join(allowed)})"
            )
        return self


def _first_error(err: ValidationError, source: str) -> str:
    e = err.errors()[0]
    field = ".".join(str(p) for p in e["loc"]) or "<root>"
    if e["type"] == "extra_forbidden":
        return f"{source}: unknown key '{field}'"
    if not e["loc"] and e["type"] == "value_error":  # cross-section rule: its message names the field
        return f"{source}: {e['ctx']['error']}"
    return f"{source}: field '{field}': {e['msg']} (got {e.get('input')!r})"


def _parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ConfigError(f"override '{item}': expected key=value, e.g. sample.k=4")
    key, raw = item.split("=", 1)
    if not key:
        raise ConfigError(f"override '{item}': empty key")
    # YAML parsing turns "4" into 4, "true" into True and "[1, 2]" into a list, as in the file.
    try:
        value = yaml.safe_load(raw) if raw != "" else None
    except yaml.YAMLError:
        raise ConfigError(f"override '{item}': value is not valid YAML (quote it: {key}='\"...\"')") from None
    return key.split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Set dotted ``key=value`` pairs into a nested dict (values parsed as YAML)."""
    for item in overrides:
        path, value = _parse_override(item)
        node = data
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override '{item}': '{part}' is not a section")
            node = child
        node[path[-1]] = value
    return data


def parse_config(data: dict[str, Any], source: str = "config") -> RunConfig:
    """Validate a nested dict into a :class:`RunConfig`, raising a one-line :class:`ConfigError`."""
    try:
        return RunConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_first_error(err, source)) from None


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Load a YAML config (or the defaults when ``path`` is None) and apply ``key=value`` overrides."""
    data: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        p = Path(path)
        source = str(p)
        if not p.is_file():
            raise ConfigError(f"{p}: config file not found")
        try:
            loaded = yaml.safe_load(p.read_text())
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark is not None else ""
            raise ConfigError(f"{p}: not valid YAML{where}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{p}: expected a mapping of sections at the top level")
        data = loaded or {}
    apply_overrides(data, overrides or [])
    return parse_config(data, source)


def dump_config(cfg: RunConfig) -> str:
    """The config as YAML, as stored beside a run (``config.yaml``)."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
