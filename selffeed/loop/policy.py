"""Loop logic: the training mix of each round, the stop rules, and the best round.

Pure functions over frames and metric histories, so the same decisions hold in the Prefect flow,
in a notebook and in tests.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from selffeed.config import LoopConfig


def training_mix(
    seed: pd.DataFrame, kept_by_round: Sequence[pd.DataFrame], cfg: LoopConfig, one_answer_per_prompt: bool = True
) -> pd.DataFrame:
    """The (prompt, completion) pairs to train on after a round, by ``cfg.mix``.

    ``accumulate``: seed + kept of every round so far; ``latest``: seed + the last round's kept;
    ``seed_only``: the seed alone (the control arm); ``replace``: the last round's kept alone (the
    seed when nothing was kept). With ``one_answer_per_prompt`` (a prompt has one right answer),
    generated rows never duplicate a seed prompt and a prompt kept in several rounds keeps its latest
    label; free text keeps every kept row. Then seed rows are repeated, in an order seeded by the
    round, until they are at least ``cfg.min_real_fraction`` of the mix.
    """
    if cfg.mix == "seed_only" or not kept_by_round:
        generated: list[pd.DataFrame] = []
    elif cfg.mix in ("latest", "replace"):
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
    if one_answer_per_prompt:
        gen = gen[~gen["prompt"].isin(set(seed["prompt"]))]
        # Vote labels can change as the model improves: the latest round that kept a prompt wins.
        # Several rows of one prompt from that round (no vote) are all kept.
        gen = gen[gen["part"] == gen.groupby("prompt")["part"].transform("max")]
    gen = gen.drop(columns="part")
    real = seed_rows if cfg.mix != "replace" or gen.empty else seed_rows.iloc[:0]
    real = top_up_real(real, seed_rows, len(gen), cfg.min_real_fraction, salt=len(kept_by_round))
    return pd.concat([real, gen], ignore_index=True)


def top_up_real(
    real: pd.DataFrame, seed_rows: pd.DataFrame, n_generated: int, fraction: float, salt: int = 0
) -> pd.DataFrame:
    """``real`` plus seed rows (cycled in an order seeded by ``salt``) until real rows are at least
    ``fraction`` of real + ``n_generated``.

    >>> s = pd.DataFrame({"prompt": ["a", "b"], "completion": ["1", "2"]})
    >>> len(top_up_real(s.iloc[:0], s, n_generated=6, fraction=0.5))
    6
    """
    if fraction <= 0 or n_generated == 0 or seed_rows.empty:
        return real
    need = math.ceil(fraction * n_generated / (1 - fraction) - 1e-9) - len(real)
    if need <= 0:
        return real
    order = np.random.default_rng(salt).permutation(len(seed_rows))
    extra = seed_rows.iloc[[int(order[i % len(order)]) for i in range(need)]]
    return pd.concat([real, extra], ignore_index=True)


LOWER_IS_BETTER = ("loss", "perplexity", "self_bleu")
"""Metrics for which ``direction: auto`` means lower is better."""


def higher_is_better(cfg: LoopConfig) -> bool:
    return cfg.direction == "higher" or (cfg.direction == "auto" and cfg.metric not in LOWER_IS_BETTER)


def score(metrics: dict[str, Any], cfg: LoopConfig) -> float:
    """The metric, negated when lower is better, so a higher score is always better."""
    value = float(metrics[cfg.metric])
    return value if higher_is_better(cfg) else -value


def best_round(history: Sequence[dict[str, Any]], cfg: LoopConfig) -> int:
    """Round with the best validation score (highest, or lowest for loss-like metrics, see
    ``cfg.direction``); earlier rounds win ties and need ``min_delta`` to lose."""
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
    collapse = collapse_guard(history, cfg)
    if collapse is not None:
        return collapse
    if last["round"] >= cfg.max_rounds:
        return f"reached max_rounds={cfg.max_rounds}"
    since_best = last["round"] - best_round(history, cfg)
    if since_best >= cfg.patience:
        return f"no improvement of {cfg.metric} for {since_best} rounds (patience={cfg.patience})"
    return None


def audit_stop(history: Sequence[dict[str, Any]], min_precision: float | None) -> str | None:
    """Why to stop when the last round's audited precision of kept labels is below ``min_precision``."""
    est = history[-1].get("audit_precision")
    if min_precision is None or est is None or est >= min_precision:
        return None
    return f"audited precision of kept labels {est:.3f} < audit.min_precision {min_precision}"


def degradation(earlier: Sequence[dict[str, Any]], m: dict[str, Any], cfg: LoopConfig) -> str | None:
    """How round ``m`` degraded against the best of the ``earlier`` rounds beyond the guard's
    tolerances (perplexity up, distinct-2 down), or None."""
    if cfg.max_perplexity_rise is not None and "perplexity" in m:
        best = min(e["perplexity"] for e in earlier)
        if m["perplexity"] > best * (1 + cfg.max_perplexity_rise):
            return f"perplexity {m['perplexity']:.3f} > best {best:.3f} + {cfg.max_perplexity_rise:.0%}"
    if cfg.max_diversity_drop is not None and "distinct_2" in m:
        best = max(e["distinct_2"] for e in earlier)
        if m["distinct_2"] < best * (1 - cfg.max_diversity_drop):
            return f"distinct-2 {m['distinct_2']:.3f} < best {best:.3f} - {cfg.max_diversity_drop:.0%}"
    return None


def collapse_guard(history: Sequence[dict[str, Any]], cfg: LoopConfig) -> str | None:
    """Why to stop when each of the last ``cfg.guard_patience`` (default ``cfg.patience``) rounds
    degraded (see :func:`degradation`) against the rounds before it, or None. The best round stays the
    run's best pointer."""
    k = cfg.guard_patience or cfg.patience
    if cfg.max_perplexity_rise is None and cfg.max_diversity_drop is None or len(history) <= k:
        return None
    found = [degradation(history[:i], history[i], cfg) for i in range(len(history) - k, len(history))]
    if not all(found):
        return None
    return f"collapse guard: {found[-1]} for {k} round(s) in a row"
