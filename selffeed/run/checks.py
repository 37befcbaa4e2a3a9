"""Checks of a run's inputs before anything is written, so bad input fails fast with one line."""

from __future__ import annotations

from selffeed.config import ConfigError, RunConfig
from selffeed.filtering.filters import load_verifier
from selffeed.filtering.scorers import load_callable, load_scorer
from selffeed.recipes import recipe_for
from selffeed.recipes.prompts import longest_sequence
from selffeed.recipes.text import longest_tokens as text_longest_tokens
from selffeed.training.model import check_checkpoint


def preflight(cfg: RunConfig) -> None:
    """Raise :class:`ConfigError` (one line, naming the field or file) if ``cfg`` cannot run."""
    try:
        if cfg.model.path:  # first: the prompts recipe reads the checkpoint's chat template
            check_checkpoint(cfg.model.path)
        splits = recipe_for(cfg).make_splits(cfg.seed)
        if cfg.recipe in ("prompts", "word_problems"):
            if cfg.recipe == "prompts":
                load_scorer(cfg.prompts.scorer)
            need = longest_sequence(splits, recipe_for(cfg).max_new_tokens)
            if not cfg.model.path and need > cfg.model.n_positions:
                raise ConfigError(
                    f"model.n_positions={cfg.model.n_positions}: too short for the data, whose longest prompt "
                    f"plus completion (or prompt plus prompts.max_new_tokens) is {need} characters"
                )
        if cfg.recipe == "text":
            if cfg.text.scorer:
                load_callable(cfg.text.scorer, "text.scorer")
            need = text_longest_tokens(splits, cfg.text)
            if not cfg.model.path and need > cfg.model.n_positions:
                raise ConfigError(
                    f"model.n_positions={cfg.model.n_positions}: too short for the corpus, whose longest document "
                    f"(or prompt plus text.max_new_tokens) is {need} {cfg.text.tokenizer} tokens"
                )
        if cfg.filter.verifier:
            load_verifier(cfg.filter.verifier)
    except ValueError as err:  # ModelLoadError, SchemaError, DataError and ScorerError are ValueErrors too
        raise ConfigError(str(err)) from None
