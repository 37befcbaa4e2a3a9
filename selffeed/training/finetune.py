"""Fine-tuning: AdamW on cross-entropy of the completion tokens, for a fixed number of steps.

Examples go through ``datasets`` (an Arrow-backed ``Dataset`` tokenized with ``map``); batches are
drawn by a seeded generator, so the same data, config, seed and thread count give the same weights.
Batches are length-bucketed (rows of similar length train together, so little compute goes to
padding), a step can be split into micro-batches (gradient accumulation), and the forward can run
under bf16/fp16 autocast (``amp``; see :mod:`selffeed.training.precision`; benchmarks/training.py measures the
speed-ups).

::

    stats = train(model, tokenizer, df[["prompt", "completion"]], TrainConfig(steps=200), seed=0)
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pandas as pd
import torch
from datasets import Dataset
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from selffeed.config import TrainConfig

IGNORE = -100


@dataclass
class TrainStats:
    steps: int
    examples: int
    tokens: int
    """Non-padding tokens seen."""
    first_loss: float
    final_loss: float
    """Mean loss of the last 10% of steps."""
    seconds: float
    losses: list[float] | None = None
    """Every step's loss, in order."""


def tokenize_examples(df: pd.DataFrame, tokenizer: PreTrainedTokenizerBase) -> Dataset:
    """A ``Dataset`` with ``input_ids`` and ``labels`` (prompt positions masked with -100).

    The sequence is prompt + completion + EOS; loss is taken on the completion and the EOS.
    """
    if df.empty:
        raise ValueError("training set is empty")
    eos = tokenizer.eos_token_id

    def encode(batch: dict[str, list[str]]) -> dict[str, list[list[int]]]:
        prompts = tokenizer(batch["prompt"], add_special_tokens=False)["input_ids"]
        completions = tokenizer(batch["completion"], add_special_tokens=False)["input_ids"]
        ids, labels = [], []
        for p, c in zip(prompts, completions):
            ids.append(p + c + [eos])
            labels.append([IGNORE] * len(p) + c + [eos])
        return {"input_ids": ids, "labels": labels}

    ds = Dataset.from_pandas(df[["prompt", "completion"]].reset_index(drop=True), preserve_index=False)
    return ds.map(encode, batched=True, remove_columns=ds.column_names)


def collate(
    all_ids: list[list[int]], all_labels: list[list[int]], idx: list[int], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded ``input_ids``, ``labels`` and ``attention_mask`` of rows ``idx``."""
    width = max(len(all_ids[i]) for i in idx)
    n = len(idx)
    ids = torch.full((n, width), pad_id, dtype=torch.long)
    labels = torch.full((n, width), IGNORE, dtype=torch.long)
    mask = torch.zeros((n, width), dtype=torch.long)
    # Right padding: positions then match the unpadded sequence, as in generation after the prompt.
    for i, j in enumerate(idx):
        x, y = all_ids[j], all_labels[j]
        ids[i, : len(x)] = torch.tensor(x)
        labels[i, : len(y)] = torch.tensor(y)
        mask[i, : len(x)] = 1
    return ids, labels, mask


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up to ``cfg.lr`` then cosine decay to ``cfg.lr * cfg.min_lr_ratio``."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    span = max(1, cfg.steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    floor = cfg.lr * cfg.min_lr_ratio
    return floor + (cfg.lr - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def adamw(params: list[torch.nn.Parameter], cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW with ``cfg``'s rate, betas and decay; the fused kernel where torch has one for the device.
    Without it, AdamW on CPU updates tensor by tensor in Python (HF ``Trainer`` defaults to fused too)."""
    fused = params[0].device.type in ("cpu", "cuda")
    return torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay, fused=fused)


def batch_order(lengths: list[int], cfg: TrainConfig, seed: int) -> Iterator[list[int]]:
    """Row indices of each step's batch, forever, epoch after epoch; the same for the same seed.

    Each epoch is a seeded shuffle in which every row appears once (the last batch may be short). With
    ``cfg.bucket_batches`` > 1 the shuffle is cut into chunks of that many batches, each chunk is sorted
    by length before it is cut into batches, and the epoch's batches are then shuffled: rows in a batch
    have similar lengths, so little of each step is padding, while batches still mix over the epoch.
    """
    gen = torch.Generator().manual_seed(seed)
    n, size = len(lengths), cfg.batch_size
    chunk = size * max(1, cfg.bucket_batches)
    while True:
        order = torch.randperm(n, generator=gen).tolist()
        batches = []
        for c in range(0, n, chunk):
            rows = order[c : c + chunk]
            if cfg.bucket_batches > 1:
                rows = sorted(rows, key=lengths.__getitem__)
            batches.extend(rows[i : i + size] for i in range(0, len(rows), size))
        if cfg.bucket_batches > 1:
            batches = [batches[i] for i in torch.randperm(len(batches), generator=gen).tolist()]
        yield from batches


def position_shifts(cfg: TrainConfig, n: int, gen: torch.Generator) -> torch.Tensor | None:
    """Random per-sequence position shifts (0..``cfg.position_offset``) for a batch of ``n`` rows, or None
    when off: the model sees every position index in use, so answers longer than the training data do
    not land on untrained position embeddings."""
    if not cfg.position_offset:
        return None
    return torch.randint(0, cfg.position_offset + 1, (n, 1), generator=gen)


def model_inputs(
    all_ids: torch.Tensor,
    all_labels: torch.Tensor,
    row_len: torch.Tensor,
    rows: torch.Tensor,
    shift: torch.Tensor | None,
    device: torch.device,
) -> dict[str, torch.Tensor]:
    """The forward's inputs for ``rows`` of the padded tensors, trimmed to the longest of them, on
    ``device``; ``shift`` (those rows' position shifts, or None) offsets their position ids."""
    width = int(row_len[rows].max())
    inputs = {
        "input_ids": all_ids[rows, :width].to(device),
        "attention_mask": (torch.arange(width).unsqueeze(0) < row_len[rows].unsqueeze(1)).long().to(device),
        "labels": all_labels[rows, :width].to(device),
    }
    if shift is not None:
        inputs["position_ids"] = (torch.arange(width).unsqueeze(0) + shift).to(device)
    return inputs


def train(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    examples: pd.DataFrame,
    cfg: TrainConfig,
    seed: int,
    desc: str = "train",
    progress: Callable[[float], None] | None = None,
    amp: torch.dtype | None = None,
) -> TrainStats:
    """Train ``model`` in place on ``examples`` (columns ``prompt``, ``completion``), its forward under
    ``amp`` autocast (bf16/fp16; None: fp32). Weights and optimizer state stay in their own dtype.

    A step's batch is cut into ``cfg.grad_accum`` micro-batches, each padded only to its own longest
    row; the loss is the sum over the step's completion tokens divided by their count, so the update
    does not depend on the split. Batches and tensors go to the model's device.
    ``progress(fraction)`` is called about every 5% of the steps.
    """
    ds = tokenize_examples(examples, tokenizer)
    # Pull the tokenized columns out of Arrow once (ds[col] is a lazy column in datasets >= 4) into
    # one padded tensor each, so a batch is an index and a slice rather than a Python loop.
    columns = ds.to_dict()
    lengths = [len(x) for x in columns["input_ids"]]
    all_ids, all_labels, _ = collate(columns["input_ids"], columns["labels"], list(range(len(ds))), tokenizer.pad_token_id)
    row_len = torch.tensor(lengths)
    device = next(model.parameters()).device
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    batches = batch_order(lengths, cfg, seed)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = adamw(params, cfg)
    scaler = torch.amp.GradScaler(device.type) if amp == torch.float16 else None  # fp16 gradients underflow unscaled
    model.train()
    losses: list[float] = []
    tokens = 0
    start = time.perf_counter()
    bar = tqdm(range(cfg.steps), desc=desc, disable=None if cfg.progress else True, leave=False, mininterval=1.0)
    for step in bar:
        idx = torch.tensor(next(batches))
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg)
        shift = position_shifts(cfg, len(idx), gen)
        # Targets are the labels shifted left by one; their count normalizes the whole step's loss.
        targets = (all_labels[idx, 1:] != IGNORE).sum().to(device)
        opt.zero_grad(set_to_none=True)
        step_loss = torch.zeros((), device=device)
        for part in torch.arange(len(idx)).tensor_split(min(cfg.grad_accum, len(idx))):
            rows = idx[part]
            inputs = model_inputs(all_ids, all_labels, row_len, rows, None if shift is None else shift[part], device)
            with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                loss = model(**inputs, num_items_in_batch=targets).loss
            (scaler.scale(loss) if scaler else loss).backward()
            step_loss += loss.detach()
            tokens += int(row_len[rows].sum())
        if scaler:
            scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        if scaler:
            scaler.step(opt)
            scaler.update()
        else:
            opt.step()
        losses.append(float(step_loss))
        if step % 50 == 0:
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
        if progress is not None and (step + 1) % max(1, cfg.steps // 20) == 0:
            progress((step + 1) / cfg.steps)
    model.eval()
    tail = losses[-max(1, len(losses) // 10) :]
    return TrainStats(
        steps=cfg.steps,
        examples=len(ds),
        tokens=tokens,
        first_loss=losses[0],
        final_loss=sum(tail) / len(tail),
        seconds=time.perf_counter() - start,
        losses=losses,
    )
