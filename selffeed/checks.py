"""Checks of a run's inputs before anything is written, so bad input fails fast with one line."""

from __future__ import annotations

from selffeed.config import ConfigError, RunConfig
from selffeed.filters import load_verifier
from selffeed.model import check_checkpoint
from selffeed.recipes import recipe_for


def preflight(cfg: RunConfig) -> None:
    """Raise :class:`ConfigError` (one line, naming the field or file) if ``cfg`` cannot run."""
    try:
        recipe_for(cfg).make_splits(cfg.seed)
        if cfg.filter.verifier:
            load_verifier(cfg.filter.verifier)
        if cfg.model.path:
            check_checkpoint(cfg.model.path)
    except ValueError as err:  # ModelLoadError and SchemaError are ValueErrors too
        raise ConfigError(str(err)) from None
