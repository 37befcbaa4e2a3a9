"""Loop logic: the training mix of each round, the stop rules, and the best round.

Pure functions over frames and metric histories, so the same decisions hold in the Prefect flow,
in a notebook and in tests.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd

from selffeed.config import LoopConfig


def training_mix(seed: pd.DataFrame, kept_by_round: Sequence[pd.DataFrame], cfg: LoopConfig) -> pd.DataFrame:
    """The (prompt, completion) pairs to train on after a round, by ``cfg.mix``.

    ``accumulate``: seed + kept of every round so far; ``latest``: seed + the last round's kept;
    ``seed_only``: the seed alone (the control arm). Generated rows never duplicate a seed prompt,
    and a prompt kept in several rounds keeps its latest label.
    """
    if cfg.mix == "seed_only" or not kept_by_round:
        generated: list[pd.DataFrame] = []
    elif cfg.mix == "latest":
        generated = [kept_by_round[-1]]
    else:
        generated = list(kept_by_round)
    seed_rows = seed[["prompt", "completion"]].assign(source="seed")
    if not generated:
        return seed_rows.reset_index(drop=True)
    gen = pd.concat(
        [k[["prompt", "completion"]].assign(source="generated", part=i) for i, k in enumerate(generated)],
        ignore_index=True,
    )
    gen = gen[~gen["prompt"].isin(set(seed["prompt"]))]
    # Vote labels can change as the model improves: the latest round that kept a prompt wins.
    # Several rows of one prompt from that round (no vote) are all kept.
    gen = gen[gen["part"] == gen.groupby("prompt")["part"].transform("max")]
    return pd.concat([seed_rows, gen.drop(columns="part")], ignore_index=True)


def score(metrics: dict[str, Any], cfg: LoopConfig) -> float:
    return float(metrics[cfg.metric])


def best_round(history: Sequence[dict[str, Any]], cfg: LoopConfig) -> int:
    """Round with the highest validation score; earlier rounds win ties and need ``min_delta`` to lose."""
    best, best_score = history[0]["round"], score(history[0], cfg)
    for m in history[1:]:
        if score(m, cfg) > best_score + cfg.min_delta:
            best, best_score = m["round"], score(m, cfg)
    return best


def stop_reason(history: Sequence[dict[str, Any]], cfg: LoopConfig) -> str | None:
    """Why the loop should stop after the last round in ``history``, or None to go on."""
    last = history[-1]
    if cfg.loss_threshold is not None and last["loss"] <= cfg.loss_threshold:
        return f"validation loss {last['loss']:.4f} <= loss_threshold {cfg.loss_threshold}"
    if last["round"] >= cfg.max_rounds:
        return f"reached max_rounds={cfg.max_rounds}"
    since_best = last["round"] - best_round(history, cfg)
    if since_best >= cfg.patience:
        return f"no improvement of {cfg.metric} for {since_best} rounds (patience={cfg.patience})"
    return None
