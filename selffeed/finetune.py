"""Fine-tuning: AdamW on cross-entropy of the completion tokens, for a fixed number of steps.

Examples go through ``datasets`` (an Arrow-backed ``Dataset`` tokenized with ``map``); batches are
drawn by a seeded generator, so the same data, config, seed and thread count give the same weights.

::

    stats = train(model, tokenizer, df[["prompt", "completion"]], TrainConfig(steps=200), seed=0)
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
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


def train(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    examples: pd.DataFrame,
    cfg: TrainConfig,
    seed: int,
    desc: str = "train",
    progress: Callable[[float], None] | None = None,
) -> TrainStats:
    """Train ``model`` in place on ``examples`` (columns ``prompt``, ``completion``).

    ``progress(fraction)`` is called about every 5% of the steps.
    """
    ds = tokenize_examples(examples, tokenizer)
    # Pull the tokenized columns out of Arrow once (ds[col] is a lazy column in datasets >= 4);
    # per-row Arrow indexing in every step costs as much as the step itself.
    columns = ds.to_dict()
    all_ids, all_labels = columns["input_ids"], columns["labels"]
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(
        model.parameters(), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay
    )
    model.train()
    losses: list[float] = []
    tokens = 0
    order = torch.randperm(len(ds), generator=gen).tolist()
    cursor = 0
    start = time.perf_counter()
    bar = tqdm(range(cfg.steps), desc=desc, disable=None if cfg.progress else True, leave=False, mininterval=1.0)
    for step in bar:
        if cursor + cfg.batch_size > len(order):
            # Reshuffle each epoch; a batch never spans two epochs so rows are not repeated within it.
            order = torch.randperm(len(ds), generator=gen).tolist()
            cursor = 0
        idx = order[cursor : cursor + cfg.batch_size]
        cursor += cfg.batch_size
        ids, labels, mask = collate(all_ids, all_labels, idx, tokenizer.pad_token_id)
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg)
        extra = {}
        if cfg.position_offset:
            # Random per-sequence shifts: the model sees every position index in use, so answers
            # longer than the training data do not land on untrained position embeddings.
            shift = torch.randint(0, cfg.position_offset + 1, (ids.shape[0], 1), generator=gen)
            extra["position_ids"] = torch.arange(ids.shape[1]).unsqueeze(0) + shift
        out = model(input_ids=ids, attention_mask=mask, labels=labels, **extra)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        losses.append(out.loss.item())
        tokens += int(mask.sum())
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
    )
