"""Benchmark: training tokens/s of selffeed's trainer against plain PyTorch loops.

On a random-weight GPT-2 (tiny: the default 64-dim 3-layer config; small: 128-dim 4 layers) and
examples of mixed lengths (prompt and completion each 2-40 characters), it measures non-padding
tokens per second of:

  selffeed          selffeed.training.finetune.train (length-bucketed batches, TrainConfig defaults)
  plain, same       a plain loop (forward with labels, backward, clip, fused AdamW step) over the very
                    batches selffeed drew, as padded tensors built before the clock starts
  plain, padded     the same plain loop over shuffled, unbucketed batches padded to their longest
                    row: what one writes with a DataLoader and a padding collator
  selffeed, 1 bucket  selffeed.training.finetune.train with bucket_batches=1 (no bucketing), for reference
  compiled, cold    with --compile: the plain loop over the same batches on torch.compile(model,
                    dynamic=True), compilation included
  compiled, warm    the same loop run again once every shape has compiled: the most compile can give

Each engine trains a fresh copy of the same model for --steps steps after a short warm-up. Ratios
are selffeed's rate over each engine's, from the same run; on a shared machine rerun and compare
ratios rather than absolute figures.

    python benchmarks/training.py                  # both models, 60 steps of 64 rows (~3 min on 2 cores)
    python benchmarks/training.py --quick          # 10 steps: checks the script
    python benchmarks/training.py --compile        # also torch.compile (does it win here?)
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MODELS = {
    "tiny": dict(n_embd=64, n_layer=3, n_head=4, n_inner=256),
    "small": dict(n_embd=128, n_layer=4, n_head=4, n_inner=512),
}


def examples(n: int, seed: int = 0):
    import pandas as pd

    from selffeed.recipes.arithmetic import CHARS

    rng = random.Random(seed)
    text = lambda: "".join(rng.choice(CHARS) for _ in range(rng.randint(2, 40)))
    return pd.DataFrame({"prompt": [text() for _ in range(n)], "completion": [text() for _ in range(n)]})


def fresh(name: str, tok):
    from selffeed.config import ModelConfig
    from selffeed.training.model import tiny_gpt2

    return tiny_gpt2(ModelConfig(**MODELS[name], n_positions=128, dropout=0.0), tok, seed=0)


def plain_loop(model, batches, cfg) -> tuple[int, float]:
    """A hand-written loop over prebuilt (ids, labels, mask) batches; returns (tokens, seconds)."""
    import torch

    from selffeed.training.finetune import adamw

    opt = adamw(list(model.parameters()), cfg)  # selffeed's optimizer: the ratio measures the loop around it
    model.train()
    tokens = 0
    t0 = time.perf_counter()
    for ids, labels, mask in batches:
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        loss.item()
        tokens += int(mask.sum())
    return tokens, time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="tiny,small")
    p.add_argument("--rows", type=int, default=4096)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--compile", action="store_true", help="also measure the plain loop under torch.compile")
    args = p.parse_args()
    if args.quick:
        args.steps, args.rows = 10, 512

    import torch

    from selffeed.config import TrainConfig
    from selffeed.recipes.arithmetic import CHARS
    from selffeed.training.finetune import batch_order, collate, tokenize_examples, train
    from selffeed.training.model import char_tokenizer

    torch.set_num_threads(args.threads)
    tok = char_tokenizer(CHARS)
    df = examples(args.rows)
    cols = tokenize_examples(df, tok).to_dict()
    ids_, labels_ = cols["input_ids"], cols["labels"]
    lengths = [len(x) for x in ids_]
    cfg = TrainConfig(steps=args.steps, batch_size=args.batch_size, progress=False, warmup_steps=5)
    flat = cfg.model_copy(update={"bucket_batches": 1})
    print(f"{args.rows} examples of {min(lengths)}-{max(lengths)} tokens (mean {sum(lengths) / len(lengths):.1f}), "
          f"batch {args.batch_size}, {args.steps} steps, {args.threads} threads, "
          f"bucket_batches={cfg.bucket_batches}, torch {torch.__version__}\n")
    header = f"{'model':6} {'engine':18} {'tokens':>8} {'seconds':>8} {'tok/s':>8} {'padding':>8} {'selffeed x':>10}"
    print(header)
    print("-" * len(header))
    for name in args.models.split(","):
        train(fresh(name, tok), tok, df, cfg.model_copy(update={"steps": 5}), seed=0)  # warm-up

        def built(order_cfg):
            order = batch_order(lengths, order_cfg, seed=0)
            return [collate(ids_, labels_, next(order), tok.pad_token_id) for _ in range(args.steps)]

        rows = {}
        stats = train(fresh(name, tok), tok, df, cfg, seed=0)
        rows["selffeed"] = (stats.tokens, stats.seconds, None)
        same, shuffled = built(cfg), built(flat)
        pad = lambda bs: 1 - sum(int(m.sum()) for _, _, m in bs) / sum(m.numel() for _, _, m in bs)
        rows["plain, same"] = (*plain_loop(fresh(name, tok), same, cfg), pad(same))
        rows["plain, padded"] = (*plain_loop(fresh(name, tok), shuffled, cfg), pad(shuffled))
        stats = train(fresh(name, tok), tok, df, flat, seed=0)
        rows["selffeed, 1 bucket"] = (stats.tokens, stats.seconds, pad(shuffled))
        rows["selffeed"] = (*rows["selffeed"][:2], pad(same))
        if args.compile:
            compiled = torch.compile(fresh(name, tok), dynamic=True)
            rows["compiled, cold"] = (*plain_loop(compiled, same, cfg), pad(same))
            rows["compiled, warm"] = (*plain_loop(compiled, same, cfg), pad(same))
        ours = rows["selffeed"][0] / rows["selffeed"][1]
        for engine, (n, s, padding) in rows.items():
            print(f"{name:6} {engine:18} {n:8d} {s:8.2f} {n / s:8.0f} {padding:8.1%} {ours / (n / s):10.2f}")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
