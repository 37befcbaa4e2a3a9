"""Task recipes: what the prompts are, how an answer is parsed, and (for validation only) the truth.

A :class:`Recipe` is a bundle of plain functions bound to a run's config. The loop's stages only talk
to this interface, so a new task is a new module plus one branch in :func:`recipe_for`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import pandas as pd
from transformers import PreTrainedTokenizerBase

from selffeed.config import RunConfig
from selffeed.recipes import arithmetic, constrained_stories, prompts, stories, text, word_problems
from selffeed.sampling.stepwise import Steps


@dataclass(frozen=True)
class Recipe:
    name: str
    chars: str | None
    """Alphabet of the tiny default tokenizer; None: the characters of the prepared data."""
    make_splits: Callable[[int], dict[str, pd.DataFrame]]
    """seed -> {'seed', 'pool', 'val', 'test'} frames (and 'gold' for an audit gold set)."""
    parse_answer: Callable[[str], str | None]
    """Completion -> answer used by the vote, or None when malformed. Never sees the truth."""
    true_completion: Callable[[str], str] | None
    """Prompt -> correct completion. Only reporting may call this; None when the recipe has no oracle."""
    max_new_tokens: int
    scorer: str | None = None
    """Scorer spec (see :mod:`selffeed.filtering.scorers`) for validation and score filters; None: exact match."""
    views: Callable[[str], list[str]] | None = None
    """Prompt -> views whose answers are tied to its answer (filter.views); None when the recipe has none."""
    view_answer: Callable[[str, str, str | None], str | None] | None = None
    """(prompt, view, the view's answer) -> the answer it implies for the prompt; None: views share the answer."""
    make_tokenizer: Callable[..., PreTrainedTokenizerBase] | None = None
    """Prepared frames -> the tiny default model's tokenizer; None: characters (see ``chars``)."""
    wellformed: Callable[[str], bool] | None = None
    """Prompt + completion -> whether it parses under a known grammar (the text demo); validation reports the rate."""
    one_answer_per_prompt: bool = True
    """A prompt has one right completion (the training mix keeps the latest label of each prompt and never
    relabels a seed prompt); False for free text, where every kept row is a document of its own."""
    steps: Steps | None = None
    """How to cut a problem into one-step parts when the pool is sampled step by step; None: sampled whole."""


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
            views=partial(arithmetic.views, offsets=a.offset_views),
            view_answer=partial(arithmetic.view_answer, width=a.width),
        )
    if cfg.recipe == "word_problems":
        w = cfg.word_problems
        return Recipe(
            name="word_problems",
            chars=None,
            # Reads model.path (its chat template) only when splitting, in prepare.
            make_splits=lambda seed: word_problems.make_splits(w, seed, tokenizer_path=cfg.model.path),
            parse_answer=word_problems.parse_answer,
            true_completion=word_problems.solve,
            max_new_tokens=w.max_new_tokens,
            steps=Steps(
                count=lambda prompt: len(word_problems.substeps(prompt)),
                prompt=word_problems.substep_prompt,
                compose=word_problems.compose,
            ) if w.stepwise else None,
        )
    if cfg.recipe == "constrained_stories":
        c = cfg.constrained_stories
        return Recipe(
            name="constrained_stories",
            chars=None,
            make_splits=lambda seed: constrained_stories.make_splits(c, seed, tokenizer_path=cfg.model.path),
            parse_answer=constrained_stories.parse_answer,
            true_completion=None,
            max_new_tokens=c.max_new_tokens,
            scorer="selffeed.recipes.constrained_stories:constraint_score",
            one_answer_per_prompt=False,
        )
    if cfg.recipe == "prompts":
        p = cfg.prompts
        return Recipe(
            name="prompts",
            chars=None,
            # Read model.path only when splitting (prepare), the one stage whose output depends on it.
            make_splits=lambda seed: prompts.make_splits(
                p, seed, tokenizer_path=cfg.model.path, label_free=cfg.filter.label_free
            ),
            parse_answer=partial(prompts.parse_answer, answer=p.answer),
            true_completion=None,
            max_new_tokens=p.max_new_tokens,
            scorer=p.scorer,
        )
    if cfg.recipe == "text":
        t = cfg.text
        return Recipe(
            name="text",
            chars=None,
            make_splits=partial(text.make_splits, t),
            parse_answer=text.parse_answer,
            true_completion=None,
            max_new_tokens=t.max_new_tokens,
            make_tokenizer=text.word_tokenizer if t.tokenizer == "word" else None,
            wellformed=None if t.data else stories.is_wellformed,
            one_answer_per_prompt=False,
        )
    raise ValueError(f"recipe: unknown recipe '{cfg.recipe}'")
