"""Curriculum: which difficulties each round's pool draws from, and which pool rows that means.

The candidates are the difficulties present in the prepared pool (arithmetic: ``pool_digits``). The
choice for round ``r`` looks at the validation accuracy per difficulty of the model that will be
sampled (round ``r - 1``):

- ``fixed``: every candidate, every round;
- ``next``: the easiest candidate not yet mastered, i.e. one more digit once the last is mastered;
- ``accelerated``: every candidate the model already solves at least ``min_accuracy`` of without having
  mastered it (Lee et al. 2025 extend several lengths at once this way); the next one when none qualifies.

Self-labels are only as good as the model's accuracy where they are drawn, so the pool follows the
frontier instead of asking for answers the model cannot give yet.

>>> from selffeed.config import CurriculumConfig
>>> hist = [{"accuracy_by_difficulty": {"3": 0.99, "4": 0.6, "5": 0.35, "6": 0.1}}]
>>> pool_difficulties(hist, CurriculumConfig(mode="next"), [4, 5, 6])
[4]
>>> pool_difficulties(hist, CurriculumConfig(mode="accelerated", min_accuracy=0.3), [4, 5, 6])
[4, 5]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd

from selffeed.config import CurriculumConfig


def pool_difficulties(
    history: Sequence[dict[str, Any]], cfg: CurriculumConfig, candidates: Sequence[int]
) -> list[int]:
    """The difficulties the next round samples, from the last validated round's accuracies."""
    cands = sorted(int(d) for d in candidates)
    if cfg.mode == "fixed" or not history or not cands:
        return cands
    acc = history[-1].get("accuracy_by_difficulty") or {}

    def accuracy(d: int) -> float:
        return float(acc.get(str(d), 0.0))

    frontier = next((d for d in cands if accuracy(d) < cfg.mastered), None)
    if frontier is None:  # everything mastered: keep sharpening the hardest
        return [cands[-1]]
    if cfg.mode == "next":
        return [frontier]
    chosen = [d for d in cands if cfg.min_accuracy <= accuracy(d) < cfg.mastered]
    return chosen or [frontier]


def round_pool(
    pool: pd.DataFrame, r: int, difficulties: Sequence[int] | None = None, per_round: int | None = None
) -> pd.DataFrame:
    """Round ``r``'s prompts: slice ``(r - 1) mod slices`` restricted to ``difficulties``, at most
    ``per_round`` rows spread evenly over them (all rows of the slice when ``per_round`` is None).

    >>> pool = pd.DataFrame({"prompt_id": range(8), "difficulty": [2, 2, 3, 3, 2, 2, 3, 3],
    ...                      "slice": [0, 0, 0, 0, 1, 1, 1, 1]})
    >>> round_pool(pool, 2, [3])["prompt_id"].tolist()
    [6, 7]
    >>> round_pool(pool, 1, [2, 3], per_round=2)["prompt_id"].tolist()
    [0, 2]
    """
    n_slices = int(pool["slice"].max()) + 1 if len(pool) else 1
    part = pool[pool["slice"] == (r - 1) % n_slices]
    if difficulties is not None:
        part = part[part["difficulty"].isin(list(difficulties))]
    if per_round is not None:
        ds = sorted(part["difficulty"].unique())
        quota = {d: per_round // len(ds) + (1 if i < per_round % len(ds) else 0) for i, d in enumerate(ds)}
        rank = part.groupby("difficulty").cumcount()
        part = part[rank < part["difficulty"].map(quota)]
    return part.reset_index(drop=True)
