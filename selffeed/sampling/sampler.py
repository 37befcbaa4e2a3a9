"""Sampling: k completions per prompt from a batched decode loop over the KV cache.

Prompts are sorted by token length and cut into batches, so left padding stays minimal; each batch
repeats every prompt k times and decodes all rows together, drawing tokens from a generator seeded
by the run seed and the batch index, so a fixed seed, model and thread count reproduce every
completion, however the batches are split into shards or resumed. The loop does what ``generate``
does for sampling (temperature, top-k, top-p, stop at EOS per row) without its per-step overhead,
which dominates for small models (benchmarks/sampling.py); models whose forward takes no cache
argument go through ``generate`` instead. ``logprob`` is the sum of the generated tokens'
log-probabilities under the distribution they were drawn from (after temperature and truncation;
the raw model distribution when greedy), as ``compute_transition_scores(normalize_logits=True)``.

::

    rows = sample_completions(model, tok, ["321+540="], SampleConfig(k=8), seed=0, max_new_tokens=5)
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import pandas as pd
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase
from transformers.cache_utils import DynamicLayer

from selffeed.config import SampleConfig
from selffeed.sampling.attention import decode_attention
from selffeed.sampling.packed import packed_linears


@dataclass(frozen=True)
class Completion:
    prompt_index: int
    sample_idx: int
    text: str
    n_tokens: int
    logprob: float


def batch_seed(seed: int, batch_index: int) -> int:
    return (seed * 1_000_003 + batch_index) % (2**63 - 1)


def _process(logits: torch.Tensor, cfg: SampleConfig) -> torch.Tensor:
    """Scores the next token is drawn from: temperature, then top-k, then top-p, as ``generate``
    applies them (greedy uses the raw logits)."""
    if cfg.greedy:
        return logits
    scores = logits / cfg.temperature if cfg.temperature != 1.0 else logits
    if 0 < cfg.top_k < scores.shape[-1]:
        kth = torch.topk(scores, cfg.top_k, dim=-1).values[:, -1:]
        scores = scores.masked_fill(scores < kth, -math.inf)
    if cfg.top_p < 1.0:
        sorted_scores, order = torch.sort(scores, dim=-1)
        cum = sorted_scores.softmax(-1).cumsum(-1)
        drop = cum <= 1 - cfg.top_p
        drop[:, -1] = False  # always keep the most likely token
        scores = scores.masked_fill(drop.scatter(1, order, drop), -math.inf)
    return scores


def _draw(probs: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """One token per row from unnormalised ``probs``: the first index whose cumulative mass exceeds a
    uniform draw. The same distribution as ``multinomial``, whose exponential draw over the whole
    vocabulary cost a small model a tenth of its decode step; one uniform per row is enough."""
    cdf = probs.cumsum(-1)
    u = torch.rand((probs.shape[0], 1), generator=gen, device=probs.device, dtype=cdf.dtype) * cdf[:, -1:]
    return torch.searchsorted(cdf, u, right=True).squeeze(1).clamp_(max=probs.shape[-1] - 1)


def _cache_argument(model: PreTrainedModel) -> str | None:
    """The name under which this model's forward takes a KV cache, or None (then ``generate`` is used)."""
    params = inspect.signature(model.forward).parameters
    if getattr(model.config, "is_encoder_decoder", False) or "logits_to_keep" not in params:
        return None
    return next((name for name in ("cache", "past_key_values") if name in params), None)


class _ReservedLayer(DynamicLayer):
    """A ``DynamicLayer`` whose keys and values are views into buffers sized for the whole decode, so a
    step writes one position instead of concatenating (copying) the whole cache, as ``DynamicLayer`` does."""

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        n, new = self.keys.shape[-2], key_states.shape[-2]
        self.key_buffer[..., n : n + new, :] = key_states
        self.value_buffer[..., n : n + new, :] = value_states
        self.keys, self.values = self.key_buffer[..., : n + new, :], self.value_buffer[..., : n + new, :]
        return self.keys, self.values

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        n = self.keys.shape[-2]
        self.key_buffer, self.value_buffer = self.key_buffer[indices], self.value_buffer[indices]
        self.keys, self.values = self.key_buffer[..., :n, :], self.value_buffer[..., :n, :]


def _reserve(cache, extra: int) -> None:
    """Give the plain dynamic layers of ``cache`` room for ``extra`` more positions (others are left as they are)."""
    for layer in getattr(cache, "layers", []):
        # is_initialized arrived in transformers 4.57; before it an empty layer's keys are None.
        initialized = getattr(layer, "is_initialized", getattr(layer, "keys", None) is not None)
        if type(layer) is DynamicLayer and initialized and layer.keys.numel():
            b, h, n, d = layer.keys.shape
            layer.key_buffer = layer.keys.new_empty((b, h, n + extra, layer.keys.shape[-1]))
            layer.value_buffer = layer.values.new_empty((b, h, n + extra, layer.values.shape[-1]))
            layer.key_buffer[..., :n, :], layer.value_buffer[..., :n, :] = layer.keys, layer.values
            layer.__class__ = _ReservedLayer


@contextlib.contextmanager
def _fused_gelu(model: PreTrainedModel) -> Iterator[None]:
    """Run GPT-2's ``gelu_new`` as torch's fused tanh-GELU: the same formula, which transformers spells
    out in five elementwise ops that cost a small model a third of its decode step."""
    swapped = [m for m in model.modules() if type(m).__name__ == "NewGELUActivation"]
    for m in swapped:
        m.forward = functools.partial(torch.nn.functional.gelu, approximate="tanh")
    try:
        yield
    finally:
        for m in swapped:
            del m.forward


@torch.inference_mode()
def _decode_batch(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    cfg: SampleConfig,
    k: int,
    max_new_tokens: int,
    seed: int,
    cache_arg: str,
) -> list[tuple[str, int, float]]:
    """k completions per prompt (contiguous per prompt) from a plain decode loop over the KV cache.

    ``generate`` spends much of a small model's step in Python bookkeeping; this loop does only the
    forward, the sampling and the stop check. Rows that finished are dropped from the batch (and
    the cache) once they are half of it, so long budgets do not keep paying for short answers.
    """
    dev = model.device
    enc = tokenizer(list(prompts), return_tensors="pt", padding=True, add_special_tokens=False).to(dev)
    mask = enc["attention_mask"]
    gen = torch.Generator(device=dev).manual_seed(seed)
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    padded = not bool(mask.all())
    # Position ids as generate computes them, so left-padded rows see the positions they would alone.
    pos = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)
    # Each prompt is read once and its cache copied k times (generate reads it k times).
    out = model(input_ids=enc["input_ids"], attention_mask=mask if padded else None, position_ids=pos,
                use_cache=True, logits_to_keep=1)
    cache = out[cache_arg]
    logits = out.logits[:, -1]
    if k > 1:
        cache.batch_repeat_interleave(k)
        logits, mask = logits.repeat_interleave(k, 0), mask.repeat_interleave(k, 0)
        pos = pos.repeat_interleave(k, 0)
    _reserve(cache, max_new_tokens)
    pos = pos[:, -1:]
    n = mask.shape[0]
    tokens = torch.full((n, max_new_tokens), pad, dtype=torch.long, device=dev)
    logprob = torch.zeros(n, device=dev)
    length = torch.full((n,), max_new_tokens, dtype=torch.long, device=dev)
    stopped = torch.zeros(n, dtype=torch.bool, device=dev)
    rows = torch.arange(n, device=dev)  # the original row of each row still in the batch
    done = torch.zeros(n, dtype=torch.bool, device=dev)  # rows still in the batch that already stopped
    for t in range(max_new_tokens):
        logp = torch.log_softmax(_process(logits.float(), cfg), dim=-1)
        if cfg.greedy:
            nxt = logp.argmax(-1)
        else:
            nxt = _draw(logp.exp(), gen)
        # Rows that stopped still decode (their output is dropped) until the batch is compacted.
        tokens[rows, t] = nxt.masked_fill(done, pad)
        logprob[rows] += logp.gather(1, nxt.unsqueeze(1)).squeeze(1).masked_fill(done, 0.0)
        new_stop = (nxt == eos) & ~done
        if bool(new_stop.any()):
            length[rows[new_stop]] = t + 1
            stopped[rows[new_stop]] = True
            done = done | new_stop
            if bool(done.all()):
                break
        if t + 1 == max_new_tokens:
            break
        if int(done.sum()) * 2 >= rows.numel():
            keep = (~done).nonzero().squeeze(1)
            cache.batch_select_indices(keep)
            rows, nxt, pos, mask, done = rows[keep], nxt[keep], pos[keep], mask[keep], done[keep]
        pos = pos + 1
        if padded:
            mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=1)
        with decode_attention(model):
            out = model(input_ids=nxt.unsqueeze(1), attention_mask=mask if padded else None, position_ids=pos,
                        use_cache=True, logits_to_keep=1, **{cache_arg: cache})
        logits = out.logits[:, -1]
    # The text stops before EOS; n_tokens counts it.
    texts = tokenizer.batch_decode(
        [row[: int(m) - int(s)].tolist() for row, m, s in zip(tokens, length, stopped)], skip_special_tokens=True
    )
    return [(t, int(m), float(lp)) for t, m, lp in zip(texts, length, logprob)]


@torch.inference_mode()
def _generate_batch_hf(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    cfg: SampleConfig,
    k: int,
    max_new_tokens: int,
    seed: int,
) -> list[tuple[str, int, float]]:
    """The same through ``model.generate``, for models whose forward takes no KV cache argument."""
    # No token_type_ids: some tokenizers return them, and GPT-2 would add them to its embeddings.
    enc = tokenizer(
        list(prompts), return_tensors="pt", padding=True, add_special_tokens=False, return_token_type_ids=False
    ).to(model.device)
    torch.manual_seed(seed)
    sampling = {}
    if not cfg.greedy:
        sampling = dict(
            temperature=cfg.temperature,
            top_k=cfg.top_k,  # 0 disables, as in SampleConfig (None would mean generate's default, 50)
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
    none = torch.full((new.shape[0],), new.shape[1], dtype=torch.long, device=new.device)
    first_eos = torch.where(is_eos.any(1), is_eos.int().argmax(1), none)
    lengths = torch.clamp(first_eos + 1, max=new.shape[1])
    positions = torch.arange(new.shape[1], device=new.device).unsqueeze(0)
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
    cache_arg = _cache_argument(model)
    out: list[Completion] = []
    with contextlib.ExitStack() as fast:
        if cache_arg is not None:
            fast.enter_context(_fused_gelu(model))
            fast.enter_context(packed_linears(model))  # CPU weights only
        for b, idx in enumerate(batches, start=first_batch):
            batch = [prompts[i] for i in idx]
            if cache_arg is None:
                texts = _generate_batch_hf(model, tokenizer, batch, cfg, k, max_new, batch_seed(seed, b))
            else:
                texts = _decode_batch(model, tokenizer, batch, cfg, k, max_new, batch_seed(seed, b), cache_arg)
            # Both return the k samples of each prompt contiguously.
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
