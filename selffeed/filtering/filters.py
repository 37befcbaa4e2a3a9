"""Filters: plain functions over a DataFrame of samples, each returning one verdict per row.

Every filter has the signature ``f(samples: DataFrame, **params) -> Series[bool]`` aligned with
``samples.index``. Filters never see hidden labels: only prompts, completions, parsed answers and,
for the score filters, the ``score`` a scorer gave against the reference the data came with.
:func:`apply_filters` runs the configured ones and returns the kept rows with the filters they passed.

>>> import pandas as pd
>>> s = pd.DataFrame({"prompt_id": [0, 0, 0, 1, 1], "answer": ["5", "5", "6", "7", None]})
>>> majority_vote(s, min_agreement=0.6).tolist()
[True, True, False, False, False]
"""

from __future__ import annotations

from collections.abc import Callable

import pandas as pd

from selffeed.config import FilterConfig
from selffeed.filtering.rationale import steps_true, unused_numbers
from selffeed.filtering.scorers import load_callable

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


def views_agree(samples: pd.DataFrame) -> pd.Series:
    """Rows of prompts whose every view (each distinct prompt text under one ``prompt_id``, e.g. a+b
    and b+a) has a majority, and the same one: a model that answers a problem two ways and gets two
    answers is guessing.

    >>> s = pd.DataFrame({"prompt_id": [0, 0, 0, 0, 1, 1, 1, 1],
    ...                   "prompt": ["a+b", "a+b", "b+a", "b+a", "c+d", "c+d", "d+c", "d+c"],
    ...                   "answer": ["5", "5", "5", "5", "7", "7", "8", "8"]})
    >>> views_agree(s).tolist()
    [True, True, True, True, False, False, False, False]
    """
    if samples.empty:
        return pd.Series([], dtype=bool, index=samples.index)
    view = samples.groupby(["prompt_id", "prompt"], sort=False).ngroup()
    per_view = vote_stats(samples.assign(prompt_id=view)).set_index("prompt_id")["majority"]
    majorities = pd.DataFrame({"prompt_id": samples["prompt_id"], "majority": view.map(per_view)})
    majorities = majorities.drop_duplicates(subset=["prompt_id", "majority"])
    ok = majorities.groupby("prompt_id")["majority"].agg(lambda m: m.notna().all() and m.nunique() == 1)
    return samples["prompt_id"].map(ok).fillna(False).astype(bool)


def confident(samples: pd.DataFrame, min_logprob: float) -> pd.Series:
    """Completions the sampling model gave a sequence log-probability of at least ``min_logprob``.

    >>> confident(pd.DataFrame({"logprob": [-0.1, -2.5]}), -1.0).tolist()
    [True, False]
    """
    return samples["logprob"].ge(min_logprob).astype(bool)


def ensemble_agree(samples: pd.DataFrame, answers: pd.DataFrame, min_share: float = 1.0) -> pd.Series:
    """Rows whose answer at least ``min_share`` of an ensemble's models also give for that prompt.

    ``answers`` has one row per (``prompt``, ``model_id``) with that model's ``answer`` (e.g. greedy
    answers of earlier rounds' models); Lee et al. 2025 keep a label when 4 of 5 models agree.

    >>> s = pd.DataFrame({"prompt": ["p", "q"], "answer": ["5", "6"]})
    >>> a = pd.DataFrame({"prompt": ["p", "p", "q", "q"], "model_id": ["m0", "m1", "m0", "m1"],
    ...                   "answer": ["5", "5", "6", "7"]})
    >>> ensemble_agree(s, a, 1.0).tolist(), ensemble_agree(s, a, 0.5).tolist()
    ([True, False], [True, True])
    """
    n_models = answers.groupby("prompt")["model_id"].nunique()
    agree = answers.merge(samples[["prompt", "answer"]].drop_duplicates(), on=["prompt", "answer"])
    votes = agree.groupby(["prompt", "answer"])["model_id"].nunique()
    key = pd.MultiIndex.from_frame(samples[["prompt", "answer"]])
    got = pd.Series(votes.reindex(key).fillna(0).to_numpy(), index=samples.index)
    total = samples["prompt"].map(n_models).fillna(0)
    return (samples["answer"].notna() & total.gt(0) & got.ge(min_share * total - 1e-9)).astype(bool)


def score_at_least(samples: pd.DataFrame, min_score: float) -> pd.Series:
    """Scored rows whose ``score`` is at least ``min_score`` (an unscored row never passes).

    >>> score_at_least(pd.DataFrame({"score": [0.9, 0.2, None]}), 0.5).tolist()
    [True, False, False]
    """
    return samples["score"].ge(min_score - 1e-9).fillna(False).astype(bool)


def best_of_k(samples: pd.DataFrame) -> pd.Series:
    """The best-scoring row of each prompt (reward-ranked fine-tuning, RAFT); ties go to the first.

    >>> s = pd.DataFrame({"prompt_id": [0, 0, 0, 1], "score": [0.1, 0.7, 0.7, None]})
    >>> best_of_k(s).tolist()
    [False, True, False, False]
    """
    scored = samples[samples["score"].notna()]
    top = scored.groupby("prompt_id")["score"].idxmax()  # idxmax returns the first maximum
    return pd.Series(samples.index.isin(top.to_numpy()), index=samples.index, dtype=bool)


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


def rationale_ok(samples: pd.DataFrame) -> pd.Series:
    """Completions whose every written equation is true (:mod:`selffeed.filtering.rationale`); knows no answer.

    >>> rationale_ok(pd.DataFrame({"completion": ["3 + 4 = 7. The answer is 7.", "3 + 4 = 8."]})).tolist()
    [True, False]
    """
    return pd.Series([steps_true(c) for c in samples["completion"]], index=samples.index, dtype=bool)


def numbers_used(samples: pd.DataFrame) -> pd.Series:
    """Completions whose equations use every number their prompt states (no skipped step); knows no answer.

    >>> s = pd.DataFrame({"prompt": ["Ann has 3. Ann buys 4. Ann buys 5."] * 2,
    ...                   "completion": ["3 + 4 = 7. 7 + 5 = 12.", "3 + 4 = 7. The answer is 7."]})
    >>> numbers_used(s).tolist()
    [True, False]
    """
    return pd.Series([not unused_numbers(p, c) for p, c in zip(samples["prompt"], samples["completion"])],
                     index=samples.index, dtype=bool)


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
    """Import ``'package.module:function'`` or ``'path/to/file.py:function'``; raise a one-line error
    naming ``spec`` when it fails."""
    module_name, _, attr = spec.rpartition(":")
    if not module_name or not attr:
        raise ValueError(f"filter.verifier '{spec}': expected 'module:function'")
    return load_callable(spec, "filter.verifier")


def apply_filters(
    samples: pd.DataFrame,
    cfg: FilterConfig,
    verifier: Verifier | None = None,
    ensemble_answers: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Run the configured filters; return kept rows with ``score``, ``agreement``, ``votes`` and ``passed``.

    Rows the vote judges must also pass the label-free checks configured beside it: agreement across
    views (``views``), confidence (``min_logprob``) and the ensemble (``ensemble_answers``, when given).

    With a score filter (``min_score``, ``best_of_k``) configured, rows with a ``score`` are judged by
    it and rows without one (no reference) by the vote, if enabled; otherwise the vote judges all.
    Best-of-k ranks only rows that passed length and verifier. Dedup runs last over the kept rows, so
    one copy of each kept pair survives.
    """
    if "score" not in samples:
        samples = samples.assign(score=float("nan"))
    common: dict[str, pd.Series] = {"length": length_ok(samples, cfg.min_chars, cfg.max_chars)}
    if verifier is None and cfg.verifier:
        verifier = load_verifier(cfg.verifier)
    if verifier is not None:
        common["verifier"] = verified(samples, verifier)
    if cfg.check_steps:
        common["steps"] = rationale_ok(samples)
    if cfg.check_numbers:
        common["numbers"] = numbers_used(samples)
    voters = samples
    for name in ("steps", "numbers"):  # a sample failing a rationale check loses its vote, still counts in k
        if name in common:
            voters = voters.assign(answer=voters["answer"].where(common[name], None))
    keep = pd.Series(True, index=samples.index)
    for v in common.values():
        keep &= v
    by_score = cfg.min_score is not None or cfg.best_of_k
    # Without the vote an unscored row passes, unless score filters are on: then nothing vouches for it.
    vote = majority_vote(voters, cfg.min_agreement) if cfg.vote else pd.Series(not by_score, index=samples.index)
    checks: dict[str, pd.Series] = {}
    if cfg.views and cfg.vote:  # views agreement is part of the vote; without it views only widen sampling
        checks["views"] = views_agree(samples)
    if cfg.min_logprob is not None:
        checks["confidence"] = confident(samples, cfg.min_logprob)
    if ensemble_answers is not None:
        checks["ensemble"] = ensemble_agree(samples, ensemble_answers, cfg.ensemble_min)
    for v in checks.values():
        vote &= v
    scored = samples["score"].notna() if by_score else pd.Series(False, index=samples.index)
    score_ok = pd.Series(True, index=samples.index)
    score_names = []
    if cfg.min_score is not None:
        score_ok &= score_at_least(samples, cfg.min_score)
        score_names.append("min_score")
    if cfg.best_of_k:
        score_ok &= best_of_k(samples[keep]).reindex(samples.index, fill_value=False)
        score_names.append("best_of_k")
    keep &= scored.where(scored, vote) & score_ok.where(scored, True)
    kept = samples[keep].copy()
    tail = [*common, *(["dedup"] if cfg.dedup else [])]
    if cfg.dedup:
        kept = kept[dedup(kept)]
    stats = vote_stats(voters).set_index("prompt_id")
    kept["agreement"] = kept["prompt_id"].map(stats["agreement"]).fillna(0.0).astype(float)
    kept["votes"] = kept["prompt_id"].map(stats["votes"]).fillna(0).astype(int)
    passed_score = ",".join(score_names + tail)
    passed_vote = ",".join((["vote"] if cfg.vote else []) + list(checks) + tail)
    kept["passed"] = [passed_score if s else passed_vote for s in scored[kept.index]]
    kept["score"] = kept["score"].astype(float)
    return kept.reset_index(drop=True)
