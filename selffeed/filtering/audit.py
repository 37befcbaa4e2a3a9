"""Filter audit: estimate how many kept labels are right from a small sample with known answers.

The filters never see true answers. The audit does, on purpose and only after filtering: it draws up
to ``size`` kept prompts per difficulty (seeded), checks their kept answer against the recipe's
answer checker, and reports the precision with a Wilson 95% interval per difficulty and overall. The
loop may stop on it (``audit.min_precision``): labels that are mostly wrong teach the model errors.

>>> kept = pd.DataFrame({"prompt_id": [0, 0, 1, 2], "prompt": ["a", "a", "b", "c"],
...                      "answer": ["1", "1", "2", "9"], "difficulty": [1, 1, 1, 2]})
>>> truth = {"a": "1", "b": "2", "c": "3"}.get
>>> est = audit(kept, truth, size=10, seed=0)
>>> est["precision"], est["by_difficulty"]["1"]["precision"], est["n"]
(0.6666666666666666, 1.0, 3)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pandas as pd


def wilson(right: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion; (0, 1) when ``n`` is 0.

    >>> [round(x, 3) for x in wilson(95, 100)]
    [0.888, 0.978]
    """
    if n == 0:
        return 0.0, 1.0
    p = right / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def audit(
    kept: pd.DataFrame, truth: Callable[[str], str | None], size: int, seed: int
) -> dict[str, Any]:
    """Precision of kept answers on up to ``size`` kept prompts per difficulty.

    ``truth(prompt)`` gives the right answer of a prompt. One row per audited prompt is checked (all
    kept rows of a prompt carry its one voted answer).
    """
    firsts = kept.drop_duplicates("prompt_id")
    by: dict[str, dict[str, Any]] = {}
    right_all = n_all = 0
    for d, group in firsts.groupby("difficulty"):
        picked = group.sample(n=min(size, len(group)), random_state=seed) if size < len(group) else group
        right = sum(a == truth(p) for p, a in zip(picked["prompt"], picked["answer"]))
        lo, hi = wilson(right, len(picked))
        by[str(int(d))] = {"precision": right / len(picked), "n": len(picked), "low": lo, "high": hi}
        right_all += right
        n_all += len(picked)
    lo, hi = wilson(right_all, n_all)
    return {
        "precision": right_all / n_all if n_all else None,
        "n": n_all,
        "low": lo,
        "high": hi,
        "by_difficulty": by,
    }
