"""Filters: plain functions over a DataFrame of samples, each returning one verdict per row.

Every filter has the signature ``f(samples: DataFrame, **params) -> Series[bool]`` aligned with
``samples.index``. Filters never see true labels: only prompts, completions and parsed answers.
:func:`apply_filters` runs the configured ones and returns the kept rows with the filters they passed.

>>> import pandas as pd
>>> s = pd.DataFrame({"prompt_id": [0, 0, 0, 1, 1], "answer": ["5", "5", "6", "7", None]})
>>> majority_vote(s, min_agreement=0.6).tolist()
[True, True, False, False, False]
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

import pandas as pd

from selffeed.config import FilterConfig

Verifier = Callable[[str, str], bool]


def vote_stats(samples: pd.DataFrame) -> pd.DataFrame:
    """Per prompt: the majority answer, its vote count, the group size k and the agreement share.

    Malformed answers (None) count towards k but never win. A tie for first place has no majority
    (``majority`` is None): a coin flip between two answers is not evidence for either.
    """
    cols = ["prompt_id", "majority", "votes", "k", "agreement"]
    if samples.empty:
        return pd.DataFrame(columns=cols)
    k = samples.groupby("prompt_id").size().rename("k")
    counts = (
        samples.dropna(subset=["answer"])
        .groupby(["prompt_id", "answer"])
        .size()
        .rename("votes")
        .reset_index()
        .sort_values(["prompt_id", "votes"], ascending=[True, False], kind="stable")
    )
    top = counts.groupby("prompt_id").head(2)
    first = top.groupby("prompt_id").nth(0).set_index("prompt_id")
    second = top.groupby("prompt_id").nth(1).set_index("prompt_id")["votes"]
    stats = pd.DataFrame({"k": k})
    stats["majority"] = first["answer"]
    stats["votes"] = first["votes"].reindex(stats.index).fillna(0).astype(int)
    tied = second.reindex(stats.index).eq(stats["votes"]) & stats["votes"].gt(0)
    stats.loc[tied, "majority"] = None
    stats.loc[tied | stats["majority"].isna(), "votes"] = 0
    stats["agreement"] = stats["votes"] / stats["k"]
    return stats.reset_index()[cols]


def majority_vote(samples: pd.DataFrame, min_agreement: float = 1.0) -> pd.Series:
    """Label-free self-consistency: keep rows giving their prompt's majority answer, when that answer
    won at least ``min_agreement`` of the prompt's samples.

    >>> s = pd.DataFrame({"prompt_id": [0, 0], "answer": ["1", "2"]})  # a tie keeps nothing
    >>> majority_vote(s, min_agreement=0.0).tolist()
    [False, False]
    """
    if samples.empty:
        return pd.Series([], dtype=bool, index=samples.index)
    stats = vote_stats(samples).set_index("prompt_id")
    majority = samples["prompt_id"].map(stats["majority"])
    agreement = samples["prompt_id"].map(stats["agreement"])
    ok = samples["answer"].notna() & majority.notna() & samples["answer"].eq(majority)
    return (ok & agreement.ge(min_agreement - 1e-9)).astype(bool)


def length_ok(samples: pd.DataFrame, min_chars: int = 1, max_chars: int = 10_000) -> pd.Series:
    """Completions whose length in characters lies in ``[min_chars, max_chars]``.

    >>> length_ok(pd.DataFrame({"completion": ["", "12", "12345"]}), 1, 4).tolist()
    [False, True, False]
    """
    n = samples["completion"].astype("string").str.len()
    return n.between(min_chars, max_chars).astype(bool)


def dedup(samples: pd.DataFrame) -> pd.Series:
    """First occurrence of each exact (prompt, completion) pair.

    >>> dedup(pd.DataFrame({"prompt": ["a", "a", "b"], "completion": ["x", "x", "x"]})).tolist()
    [True, False, True]
    """
    return ~samples.duplicated(subset=["prompt", "completion"], keep="first")


def verified(samples: pd.DataFrame, verifier: Verifier) -> pd.Series:
    """Rows for which ``verifier(prompt, completion)`` is true (a reward model, a checker, ...).

    >>> verified(pd.DataFrame({"prompt": ["a"], "completion": ["b"]}), lambda p, c: c == "b").tolist()
    [True]
    """
    return pd.Series(
        [bool(verifier(p, c)) for p, c in zip(samples["prompt"], samples["completion"])],
        index=samples.index,
        dtype=bool,
    )


def load_verifier(spec: str) -> Verifier:
    """Import ``'package.module:function'``; raise a one-line error naming ``spec`` when it fails."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ValueError(f"filter.verifier '{spec}': expected 'module:function'")
    try:
        fn = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"filter.verifier '{spec}': cannot import ({err})") from None
    if not callable(fn):
        raise ValueError(f"filter.verifier '{spec}': not callable")
    return fn


def apply_filters(
    samples: pd.DataFrame, cfg: FilterConfig, verifier: Verifier | None = None
) -> pd.DataFrame:
    """Run the configured filters; return kept rows with ``agreement``, ``votes`` and ``passed``.

    Dedup runs last over the rows the other filters kept, so one copy of each kept pair survives.
    """
    verdicts: dict[str, pd.Series] = {}
    if cfg.vote:
        verdicts["vote"] = majority_vote(samples, cfg.min_agreement)
    verdicts["length"] = length_ok(samples, cfg.min_chars, cfg.max_chars)
    if verifier is None and cfg.verifier:
        verifier = load_verifier(cfg.verifier)
    if verifier is not None:
        verdicts["verifier"] = verified(samples, verifier)
    keep = pd.Series(True, index=samples.index)
    for v in verdicts.values():
        keep &= v
    kept = samples[keep].copy()
    names = list(verdicts)
    if cfg.dedup:
        kept = kept[dedup(kept)]
        names.append("dedup")
    stats = vote_stats(samples).set_index("prompt_id")
    kept["agreement"] = kept["prompt_id"].map(stats["agreement"]).fillna(0.0).astype(float)
    kept["votes"] = kept["prompt_id"].map(stats["votes"]).fillna(0).astype(int)
    kept["passed"] = ",".join(names)
    return kept.reset_index(drop=True)
