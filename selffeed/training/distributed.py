"""Data-parallel training over several processes (GPUs) with accelerate; plain training otherwise.

:func:`train` has :func:`selffeed.training.finetune.train`'s signature. In one process it *is* that function,
so results are identical. Launched with more than one process (``accelerate launch``, ``torchrun``),
every rank draws the trainer's seeded batch order, trains on its share of each batch (rows
``rank::world``), and the model and optimizer are wrapped by ``accelerate.Accelerator`` so gradients are
combined across ranks (DDP) before each step. Each rank divides its summed token loss by the whole batch's
target count, as the trainer does, so a step's update is the single-process one (up to float rounding
and dropout masks). Autocast as ``amp`` asks (bf16; fp16 is refused); one micro-batch per rank
(``grad_accum`` is not applied: more ranks already split the batch).

A stage with ``finetune.processes`` / ``retrain.processes`` > 1 launches this module's command itself
(:func:`launch`). By hand, train a checkpoint across GPUs, then point ``model.path`` at the output::

    accelerate launch --multi_gpu --num_processes 4 -m selffeed.training.distributed \\
        --model runs/demo/round-001/model --data runs/demo/round-001/kept.parquet --out /tmp/r1-ddp \\
        steps=400 batch_size=256
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import yaml

from selffeed.config import TrainConfig
from selffeed.training import finetune


def world_size() -> int:
    """Processes in this launch (``WORLD_SIZE``, set by accelerate launch and torchrun); 1 otherwise."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def _accelerate() -> Any:
    try:
        import accelerate
    except ImportError:
        raise ImportError(
            f"WORLD_SIZE={world_size()}: multi-process training needs accelerate: pip install 'selffeed[multigpu]'"
        ) from None
    return accelerate


def train(
    model: Any,
    tokenizer: Any,
    examples: pd.DataFrame,
    cfg: TrainConfig,
    seed: int,
    desc: str = "train",
    progress: Callable[[float], None] | None = None,
    amp: torch.dtype | None = None,
) -> finetune.TrainStats:
    """Train ``model`` in place; across all ranks of a multi-process launch, else exactly
    :func:`selffeed.training.finetune.train`. ``cfg.batch_size`` is the global batch (all ranks together)."""
    if world_size() <= 1:
        return finetune.train(model, tokenizer, examples, cfg, seed, desc=desc, progress=progress, amp=amp)
    acc = _accelerate().Accelerator()
    rank, world = acc.process_index, acc.num_processes
    if cfg.batch_size < world:
        raise ValueError(f"batch_size: {cfg.batch_size} is smaller than the {world} processes (need >= 1 row each)")
    if amp == torch.float16:
        raise ValueError("model.precision: fp16 needs a gradient scaler, which the multi-process path lacks; use bf16")
    columns = finetune.tokenize_examples(examples, tokenizer).to_dict()
    lengths = [len(x) for x in columns["input_ids"]]
    n = len(lengths)
    all_ids, all_labels, _ = finetune.collate(columns["input_ids"], columns["labels"], list(range(n)), tokenizer.pad_token_id)
    row_len = torch.tensor(lengths)
    torch.manual_seed(seed)
    # The trainer's own seeded batch order, identical on every rank: ranks agree on each step's batch.
    batches = finetune.batch_order(lengths, cfg, seed)
    gen = torch.Generator().manual_seed(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = finetune.adamw(params, cfg)
    wrapped, opt = acc.prepare(model, opt)
    wrapped.train()
    losses: list[float] = []
    tokens = 0
    start = time.perf_counter()
    for step in range(cfg.steps):
        idx = torch.tensor(next(batches))
        for group in opt.param_groups:
            group["lr"] = finetune.lr_at(step, cfg)
        shift = finetune.position_shifts(cfg, len(idx), gen)
        # As in the trainer, the step's loss is its summed token losses over the whole batch's target
        # count; DDP averages gradients over ranks, hence the factor ``world``.
        targets = (all_labels[idx, 1:] != finetune.IGNORE).sum().to(acc.device)
        mine = torch.arange(len(idx))[rank::world]
        rows = idx[mine]
        inputs = finetune.model_inputs(
            all_ids, all_labels, row_len, rows, None if shift is None else shift[mine], acc.device
        )
        opt.zero_grad(set_to_none=True)
        with torch.autocast(acc.device.type, dtype=amp, enabled=amp is not None):
            loss = wrapped(**inputs, num_items_in_batch=targets).loss
        acc.backward(loss * world)
        acc.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        losses.append(float(acc.reduce(loss.detach(), "sum")))
        tokens += int(acc.reduce(row_len[rows].sum().to(acc.device), "sum"))
        if progress is not None and acc.is_main_process and (step + 1) % max(1, cfg.steps // 20) == 0:
            progress((step + 1) / cfg.steps)
    acc.wait_for_everyone()
    # ``model`` is the module DDP wrapped, so it holds the trained weights; this drops the autocast
    # forward that accelerate patched onto it.
    acc.unwrap_model(wrapped, keep_fp32_wrapper=False).eval()
    tail = losses[-max(1, len(losses) // 10) :]
    return finetune.TrainStats(
        steps=cfg.steps,
        examples=n,
        tokens=tokens,
        first_loss=losses[0] if losses else math.nan,
        final_loss=sum(tail) / len(tail) if tail else math.nan,
        seconds=time.perf_counter() - start,
    )


def launch(model: Any, tokenizer: Any, examples: pd.DataFrame, cfg: TrainConfig, seed: int, precision: str,
           workdir: Path, threads: int = 1) -> tuple[Any, Any, finetune.TrainStats]:
    """Train ``model`` on ``examples`` in ``cfg.processes`` processes (``torch.distributed.run`` of this
    module) and return the trained model, its tokenizer and the statistics. ``workdir`` holds the
    starting checkpoint, the rows and the result; the caller removes it."""
    from selffeed.training.model import load_checkpoint, save_checkpoint

    save_checkpoint(model, tokenizer, workdir / "start")
    examples[["prompt", "completion"]].to_parquet(workdir / "rows.parquet")
    fields = cfg.model_dump(mode="json", exclude={"progress", "processes"})
    with socket.socket() as s:  # a free port for the ranks' rendezvous
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(cfg.processes),
        "--master_addr", "127.0.0.1", "--master_port", str(port), "-m", "selffeed.training.distributed",
        "--model", str(workdir / "start"), "--data", str(workdir / "rows.parquet"), "--out", str(workdir / "out"),
        "--stats", str(workdir / "stats.json"), "--seed", str(seed), "--precision", precision,
        *(f"{k}={json.dumps(v)}" for k, v in fields.items()),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, threads // cfg.processes))}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
        raise RuntimeError(f"{cfg.processes}-process training exited {done.returncode}: " + " | ".join(tail))
    trained, tok = load_checkpoint(workdir / "out")
    return trained, tok, finetune.TrainStats(**json.loads((workdir / "stats.json").read_text()))


def main(argv: list[str] | None = None) -> None:
    from selffeed.training.lora import merge_lora, with_lora
    from selffeed.training.model import load_checkpoint, save_checkpoint
    from selffeed.training.precision import resolve

    p = argparse.ArgumentParser(description="Train a checkpoint on prompt/completion rows across all launched ranks.")
    p.add_argument("--model", required=True, help="checkpoint directory to start from")
    p.add_argument("--data", required=True, help="Parquet file with prompt and completion columns")
    p.add_argument("--out", required=True, help="directory for the trained checkpoint (written by rank 0)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"], help="as model.precision")
    p.add_argument("--stats", help="also write the training statistics to this JSON file (rank 0)")
    p.add_argument("overrides", nargs="*", help="TrainConfig fields as key=value, e.g. steps=400 lora_r=8")
    args = p.parse_args(argv)
    # Values parse as YAML, as in run config overrides: "lr=0.01", "betas=[0.9, 0.95]".
    cfg = TrainConfig(progress=False, **{k: yaml.safe_load(v) for k, v in (kv.split("=", 1) for kv in args.overrides)})
    model, tokenizer = load_checkpoint(args.model)
    if torch.cuda.is_available():
        # One GPU per rank (accelerate would move it too; doing it first keeps peft's adapters on it).
        model.to(f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}")
    model = with_lora(model, cfg)
    amp = resolve(args.precision, next(model.parameters()).device, pretrained=True)
    stats = train(model, tokenizer, pd.read_parquet(args.data), cfg, seed=args.seed, amp=amp)
    model = merge_lora(model)
    if int(os.environ.get("RANK", "0")) == 0:
        save_checkpoint(model.cpu(), tokenizer, Path(args.out))
        if args.stats:
            Path(args.stats).write_text(json.dumps(dataclasses.asdict(stats)))
        print(f"{args.out}: {stats.steps} steps on {world_size()} processes, {stats.tokens / stats.seconds:.0f} "
              f"tokens/s, loss {stats.first_loss:.3f} -> {stats.final_loss:.3f}")


if __name__ == "__main__":
    main()
