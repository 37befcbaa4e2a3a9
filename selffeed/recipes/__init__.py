"""Task recipes: what the prompts are, how an answer is parsed, and (for validation only) the truth.

A :class:`Recipe` is a bundle of plain functions bound to a run's config. The loop's stages only talk
to this interface, so a new task is a new module plus one branch in :func:`recipe_for`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import pandas as pd

from selffeed.config import RunConfig
from selffeed.recipes import arithmetic


@dataclass(frozen=True)
class Recipe:
    name: str
    chars: str
    """Alphabet of the tiny default tokenizer."""
    make_splits: Callable[[int], dict[str, pd.DataFrame]]
    """seed -> {'seed', 'pool', 'test'} frames."""
    parse_answer: Callable[[str], str | None]
    """Completion -> answer used by the vote, or None when malformed. Never sees the truth."""
    true_completion: Callable[[str], str]
    """Prompt -> correct completion. Only validation and reporting may call this."""
    max_new_tokens: int


def recipe_for(cfg: RunConfig) -> Recipe:
    """The recipe named by ``cfg.recipe``, bound to its config section."""
    if cfg.recipe == "arithmetic":
        a = cfg.arithmetic
        return Recipe(
            name="arithmetic",
            chars=arithmetic.CHARS,
            make_splits=partial(arithmetic.make_splits, a),
            parse_answer=partial(arithmetic.parse_answer, width=a.width),
            true_completion=partial(arithmetic.true_completion, width=a.width),
            max_new_tokens=arithmetic.max_new_tokens(a),
        )
    raise ValueError(f"recipe: unknown recipe '{cfg.recipe}'")
