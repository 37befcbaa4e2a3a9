"""bf16 against fp32 on this machine for a real checkpoint: the loss curve of a short fine-tune, and the stage
times of one round of the word-problem loop in each precision (``model.precision``).

    python benchmarks/precision.py models/smollm2-135m-instruct

Prints the fine-tune's loss every 5 steps and its tokens/s in both precisions (same rows, seed and batches),
then each stage's seconds of a one-round run (small counts, 2 threads) in both.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch

from selffeed.config import TrainConfig, load_config
from selffeed.loop.rounds import run_rounds
from selffeed.recipes.word_problems import make_splits
from selffeed.run.bookkeeping import read_history
from selffeed.run.layout import RunLayout
from selffeed.training.finetune import train
from selffeed.training.model import load_checkpoint

ROUND = [
    "word_problems.pool_per_round=24", "word_problems.pool_slices=1", "word_problems.val_per_steps=10",
    "word_problems.test_per_steps=20", "finetune.steps=20", "retrain.steps=20", "finetune.progress=false",
    "retrain.progress=false", "loop.max_rounds=1", "audit.size=0", "threads=2",
]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", help="checkpoint directory (e.g. from selffeed import-gguf)")
    p.add_argument("--steps", type=int, default=30)
    args = p.parse_args()
    torch.set_num_threads(2)
    cfg = load_config("data/configs/word_problems.yaml", [f"model.path={args.model}"])
    seed = make_splits(cfg.word_problems, 0, tokenizer_path=args.model)["seed"]
    tcfg = cfg.finetune.model_copy(update={"steps": args.steps, "progress": False})
    print(f"fine-tune: {args.steps} steps x {tcfg.batch_size} of the word-problem seed, lr {tcfg.lr:g}, 2 threads")
    curves = {}
    for name, amp in (("fp32", None), ("bf16", torch.bfloat16)):
        model, tok = load_checkpoint(args.model)
        stats = train(model, tok, seed, tcfg, seed=0, amp=amp)
        curves[name] = stats.losses
        print(f"  {name}: {stats.tokens / stats.seconds:6.0f} tok/s, {stats.seconds:6.1f} s, "
              f"loss {stats.first_loss:.3f} -> {stats.final_loss:.3f}", flush=True)
    print("  step   fp32    bf16")
    for i in range(0, args.steps, 5):
        print(f"  {i + 1:4d}  {curves['fp32'][i]:.3f}  {curves['bf16'][i]:.3f}")
    print("\none round (prepare, fine-tune, validate r0, sample, filter, retrain, validate r1), seconds per stage:")
    rows = {}
    for name in ("fp32", "bf16"):
        with tempfile.TemporaryDirectory() as tmp:
            rcfg = load_config("data/configs/word_problems.yaml",
                               [f"model.path={args.model}", f"runs_dir={tmp}", f"model.precision={name}", *ROUND])
            t0 = time.perf_counter()
            run_rounds(rcfg)
            wall = time.perf_counter() - t0
            h = read_history(RunLayout.of(rcfg.runs_dir, rcfg.name))
            s0, s1 = h[0]["seconds"], h[1]["seconds"]
            rows[name] = {"finetune": s0["finetune"], "validate r0": s0["validate"], "sample": s1["sample"],
                          "filter": s1["filter"], "retrain": s1["retrain"], "validate r1": s1["validate"], "wall": wall}
            print(f"  {name} done: {wall:.0f} s", flush=True)
    print(f"  {'stage':12s} {'fp32':>8s} {'bf16':>8s} {'ratio':>6s}")
    for k in rows["fp32"]:
        print(f"  {k:12s} {rows['fp32'][k]:8.1f} {rows['bf16'][k]:8.1f} {rows['fp32'][k] / rows['bf16'][k]:6.2f}")


if __name__ == "__main__":
    main()
