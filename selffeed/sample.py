"""Sampling: k completions per prompt with batched ``generate`` and the KV cache.

Prompts are sorted by token length and cut into batches, so left padding stays minimal; each batch
draws its k samples through ``num_return_sequences`` under a seed derived from the run seed and the
batch index, so a fixed seed, model and thread count reproduce every completion, however the batches
are split into shards or resumed.

::

    rows = sample_completions(model, tok, ["321+540="], SampleConfig(k=8), seed=0, max_new_tokens=5)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pandas as pd
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from selffeed.config import SampleConfig


@dataclass(frozen=True)
class Completion:
    prompt_index: int
    sample_idx: int
    text: str
    n_tokens: int
    logprob: float


def batch_seed(seed: int, batch_index: int) -> int:
    return (seed * 1_000_003 + batch_index) % (2**63 - 1)


@torch.inference_mode()
def _generate_batch(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    cfg: SampleConfig,
    k: int,
    max_new_tokens: int,
    seed: int,
) -> list[tuple[str, int, float]]:
    enc = tokenizer(list(prompts), return_tensors="pt", padding=True, add_special_tokens=False)
    torch.manual_seed(seed)
    sampling = {}
    if not cfg.greedy:
        sampling = dict(
            temperature=cfg.temperature,
            top_k=cfg.top_k or None,
            top_p=cfg.top_p,
        )
    out = model.generate(
        **enc,
        do_sample=not cfg.greedy,
        num_return_sequences=k,
        max_new_tokens=max_new_tokens,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        output_scores=True,
        return_dict_in_generate=True,
        **sampling,
    )
    new = out.sequences[:, enc["input_ids"].shape[1] :]
    scores = model.compute_transition_scores(out.sequences, out.scores, normalize_logits=True)
    eos = tokenizer.eos_token_id
    is_eos = new == eos
    # Generated length includes the first EOS; everything after it is padding.
    none = torch.full((new.shape[0],), new.shape[1], dtype=torch.long)
    first_eos = torch.where(is_eos.any(1), is_eos.int().argmax(1), none)
    lengths = torch.clamp(first_eos + 1, max=new.shape[1])
    positions = torch.arange(new.shape[1]).unsqueeze(0)
    valid = positions < lengths.unsqueeze(1)
    logprobs = torch.where(valid, scores.float(), torch.zeros_like(scores, dtype=torch.float)).sum(1)
    texts = tokenizer.batch_decode(
        [row[: int(e)].tolist() for row, e in zip(new, first_eos)], skip_special_tokens=True
    )
    return [(t, int(n), float(lp)) for t, n, lp in zip(texts, lengths, logprobs)]


def plan_batches(tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str], batch_prompts: int) -> list[list[int]]:
    """Prompt indices per generate call: sorted by token length, so left padding stays minimal."""
    lengths = [len(ids) for ids in tokenizer(list(prompts), add_special_tokens=False)["input_ids"]]
    order = sorted(range(len(prompts)), key=lambda i: (lengths[i], i))
    return [order[i : i + batch_prompts] for i in range(0, len(order), batch_prompts)]


def generate_batches(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    batches: Sequence[Sequence[int]],
    cfg: SampleConfig,
    seed: int,
    max_new_tokens: int,
    first_batch: int = 0,
    on_batch: Callable[[int], None] | None = None,
) -> list[Completion]:
    """Completions of the prompts in ``batches``, which are batches ``first_batch, first_batch + 1, ...``
    of a plan; batch b is seeded by ``batch_seed(seed, b)``, so any split of a plan into runs of
    batches (shards, a resumed run) gives the same completions as one pass."""
    model.eval()
    k = 1 if cfg.greedy else cfg.k
    max_new = min(cfg.max_new_tokens or max_new_tokens, max_new_tokens)
    out: list[Completion] = []
    for b, idx in enumerate(batches, start=first_batch):
        texts = _generate_batch(model, tokenizer, [prompts[i] for i in idx], cfg, k, max_new, batch_seed(seed, b))
        # generate returns the k samples of each prompt contiguously.
        for j, i in enumerate(idx):
            out.extend(Completion(i, s, *texts[j * k + s]) for s in range(k))
        if on_batch is not None:
            on_batch(b)
    return out


def sample_completions(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    cfg: SampleConfig,
    seed: int,
    max_new_tokens: int,
) -> list[Completion]:
    """``cfg.k`` completions for each prompt (1 when greedy), ordered by prompt then sample index."""
    batches = plan_batches(tokenizer, prompts, cfg.batch_prompts)
    done = generate_batches(model, tokenizer, prompts, batches, cfg, seed, max_new_tokens)
    return sorted(done, key=lambda c: (c.prompt_index, c.sample_idx))


def samples_frame(
    pool: pd.DataFrame,
    completions: list[Completion],
    parse_answer: Callable[[str], str | None],
    *,
    round_: int,
    model_id: str,
    cfg: SampleConfig,
    seed: int,
) -> pd.DataFrame:
    """Rows of ``samples.parquet``: one per completion, joined with its pool prompt."""
    pool = pool.reset_index(drop=True)
    src = pool.iloc[[c.prompt_index for c in completions]].reset_index(drop=True)
    return pd.DataFrame(
        {
            "round": round_,
            "prompt_id": src["prompt_id"].to_numpy(),
            "sample_idx": [c.sample_idx for c in completions],
            "prompt": src["prompt"].to_numpy(),
            "completion": [c.text for c in completions],
            "answer": [parse_answer(c.text) for c in completions],
            "reference": src["reference"].to_numpy() if "reference" in src else None,
            "difficulty": src["difficulty"].to_numpy(),
            "n_tokens": [c.n_tokens for c in completions],
            "logprob": [c.logprob for c in completions],
            "model_id": model_id,
            "temperature": cfg.temperature,
            "top_k": cfg.top_k,
            "top_p": cfg.top_p,
            "greedy": cfg.greedy,
            "seed": seed,
        }
    )
