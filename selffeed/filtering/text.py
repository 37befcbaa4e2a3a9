"""Filters for free text (the ``text`` recipe): plain functions ``f(samples, **params) -> Series[bool]``.

Each returns one verdict per row of ``samples`` (columns ``prompt``, ``completion``, and for the
perplexity band ``logprob``, the summed log-probability of the completion, and ``n_tokens``).
:func:`apply_text_filters` runs the configured ones; length bounds, exact dedup, the verifier and the
score threshold are shared with :mod:`selffeed.filtering.filters`. Duplicates are judged against what was kept
before: earlier rows of this round and the kept rows of earlier rounds (``earlier``).

>>> import pandas as pd
>>> s = pd.DataFrame({"prompt": ["A", "A", "A"], "completion": [" cat sat.", " cat sat.", " dog ran."]})
>>> exact_dedup(s, earlier=["A dog ran."]).tolist()
[True, False, False]
"""

from __future__ import annotations

import hashlib
import math
from collections import defaultdict
from collections.abc import Sequence

import numpy as np
import pandas as pd

from selffeed.config import RunConfig
from selffeed.filtering.filters import length_ok, load_verifier, score_at_least, verified

_PRIME = (1 << 31) - 1


def documents(samples: pd.DataFrame) -> list[str]:
    """Prompt + completion of each row: the text a kept row adds to the corpus."""
    return [p + c for p, c in zip(samples["prompt"], samples["completion"])]


def ngrams(text: str, n: int) -> list[str]:
    """Word n-grams of ``text`` (lowercased, split on whitespace): ``ngrams("a b c", 2) == ['a b', 'b c']``."""
    words = text.lower().split()
    return [" ".join(words[i : i + n]) for i in range(len(words) - n + 1)]


def repeat_ratio(text: str, n: int = 3) -> float:
    """Share of ``text``'s word n-grams that repeat an earlier one (0 for text shorter than n words).

    >>> repeat_ratio("the cat sat the cat sat", 3), repeat_ratio("a b c", 3)
    (0.25, 0.0)
    """
    grams = ngrams(text, n)
    return 1 - len(set(grams)) / len(grams) if grams else 0.0


def repetition_ok(samples: pd.DataFrame, max_ratio: float = 0.5, n: int = 3) -> pd.Series:
    """Completions whose repeated word n-gram ratio is below ``max_ratio`` (degenerate loops fail).

    >>> repetition_ok(pd.DataFrame({"completion": ["a b c d", "go go go go go go"]}), 0.5, 2).tolist()
    [True, False]
    """
    return pd.Series([repeat_ratio(c, n) < max_ratio for c in samples["completion"]], index=samples.index, dtype=bool)


def exact_dedup(samples: pd.DataFrame, earlier: Sequence[str] = ()) -> pd.Series:
    """The first copy of each document (prompt + completion), unless it was kept in an earlier round.

    >>> exact_dedup(pd.DataFrame({"prompt": ["x", "x"], "completion": ["1", "1"]})).tolist()
    [True, False]
    """
    seen = set(earlier)
    keep = []
    for doc in documents(samples):
        keep.append(doc not in seen)
        seen.add(doc)
    return pd.Series(keep, index=samples.index, dtype=bool)


def perplexity(samples: pd.DataFrame) -> pd.Series:
    """Per-row perplexity of a completion under the model that sampled it: exp(-logprob / n_tokens)."""
    n = samples["n_tokens"].clip(lower=1).astype(float)
    return np.exp(-samples["logprob"].astype(float) / n)


def perplexity_band(samples: pd.DataFrame, low: float | None = None, high: float | None = None) -> pd.Series:
    """Completions whose sampling perplexity lies in ``[low, high]`` (either bound may be None).

    >>> s = pd.DataFrame({"logprob": [-0.1, -2.0, -40.0], "n_tokens": [10, 10, 10]})
    >>> perplexity_band(s, low=1.05, high=20).tolist()  # perplexities 1.01, 1.22, 54.6
    [False, True, False]
    """
    ppl = perplexity(samples)
    ok = pd.Series(True, index=samples.index)
    if low is not None:
        ok &= ppl >= low
    if high is not None:
        ok &= ppl <= high
    return ok.astype(bool)


def _shingle_hashes(text: str, n: int) -> np.ndarray:
    grams = set(ngrams(text, n)) or {text.lower()}
    return np.array(
        [int.from_bytes(hashlib.blake2b(g.encode(), digest_size=8).digest(), "little") % _PRIME for g in grams],
        dtype=np.int64,
    )


def minhash(texts: Sequence[str], n: int = 3, num_perm: int = 64, seed: int = 0) -> np.ndarray:
    """MinHash signatures (``len(texts) x num_perm``) of the texts' word n-gram shingles; the share of
    equal positions of two signatures estimates the Jaccard similarity of their shingle sets."""
    rng = np.random.default_rng(seed)
    a = rng.integers(1, _PRIME, num_perm, dtype=np.int64)[:, None]
    b = rng.integers(0, _PRIME, num_perm, dtype=np.int64)[:, None]
    out = np.empty((len(texts), num_perm), dtype=np.int64)
    for i, t in enumerate(texts):
        out[i] = ((a * _shingle_hashes(t, n)[None, :] + b) % _PRIME).min(axis=1)
    return out


def jaccard(x: set[str], y: set[str]) -> float:
    """|x & y| / |x | y| (1.0 for two empty sets)."""
    return len(x & y) / len(x | y) if x or y else 1.0


def near_dedup(
    samples: pd.DataFrame, threshold: float = 0.9, n: int = 3, earlier: Sequence[str] = (), bands: int = 16
) -> pd.Series:
    """Documents whose word n-gram Jaccard similarity with every document kept before them (earlier
    rows of ``samples`` that passed, then ``earlier``) is below ``threshold``.

    MinHash with banding (LSH) proposes candidate pairs; each is confirmed by its exact Jaccard, so
    a drop is never a hashing accident (a rare missed pair is the price of not comparing all pairs).

    >>> s = pd.DataFrame({"prompt": ["", "", ""], "completion": [
    ...     "the cat sat on the mat and then it slept", "the cat sat on the mat and then it slept well",
    ...     "a dog ran to the park to play with a ball"]})
    >>> near_dedup(s, threshold=0.8, n=2).tolist()
    [True, False, True]
    """
    texts = [*earlier, *documents(samples)]
    if not len(samples):
        return pd.Series([], index=samples.index, dtype=bool)
    sigs = minhash(texts, n)
    rows = sigs.shape[1] // bands
    shingles = [set(ngrams(t, n)) or {t.lower()} for t in texts]
    buckets: dict[tuple[int, bytes], list[int]] = defaultdict(list)
    keep = []
    for i in range(len(texts)):
        keys = [(band, sigs[i, band * rows : (band + 1) * rows].tobytes()) for band in range(bands)]
        candidates = {j for key in keys for j in buckets.get(key, ())}
        dup = i >= len(earlier) and any(jaccard(shingles[i], shingles[j]) >= threshold for j in candidates)
        if not dup:  # earlier rows are all kept; a dropped row cannot make later rows duplicates
            for key in keys:
                buckets[key].append(i)
        if i >= len(earlier):
            keep.append(not dup)
    return pd.Series(keep, index=samples.index, dtype=bool)


def user_scores(samples: pd.DataFrame, spec: str) -> pd.Series:
    """Scores of a user scorer ``'path/to/file.py:function'`` called as ``f(completions, prompts=...)``;
    None (NaN) where it cannot score a row."""
    from selffeed.filtering.scorers import load_callable

    fn = load_callable(spec, "text.scorer")
    got = list(fn(list(samples["completion"]), prompts=list(samples["prompt"])))
    if len(got) != len(samples):
        raise ValueError(f"text.scorer '{spec}': returned {len(got)} scores for {len(samples)} completions")
    return pd.Series([math.nan if v is None else float(v) for v in got], index=samples.index, dtype=float)


def apply_text_filters(samples: pd.DataFrame, cfg: RunConfig, earlier: Sequence[str] = ()) -> pd.DataFrame:
    """Run the text filters ``cfg`` enables; return the kept rows with ``score``, ``agreement``, ``votes``
    (0: no vote for free text) and ``passed`` (the filters each row passed, comma-separated).

    Row-wise filters run first; exact and near-duplicate removal then run over the survivors, in
    order, against ``earlier`` (the documents kept in earlier rounds).
    """
    t, f = cfg.text, cfg.filter
    samples = samples.assign(score=user_scores(samples, t.scorer) if t.scorer else math.nan)
    checks = {"length": length_ok(samples, f.min_chars, f.max_chars)}
    if t.max_repeat_ratio is not None:
        checks["repetition"] = repetition_ok(samples, t.max_repeat_ratio, t.repeat_n)
    if t.min_sample_perplexity is not None or t.max_sample_perplexity is not None:
        checks["perplexity"] = perplexity_band(samples, t.min_sample_perplexity, t.max_sample_perplexity)
    if t.scorer and f.min_score is not None:
        checks["min_score"] = score_at_least(samples, f.min_score)
    if f.verifier:
        checks["verifier"] = verified(samples, load_verifier(f.verifier))
    keep = pd.Series(True, index=samples.index)
    for ok in checks.values():
        keep &= ok
    kept = samples[keep]
    if f.dedup:
        kept = kept[exact_dedup(kept, earlier)]
        checks["dedup"] = None
    if t.near_dup is not None:
        kept = kept[near_dedup(kept, t.near_dup, t.shingle_n, earlier)]
        checks["near_dup"] = None
    return kept.assign(agreement=0.0, votes=0, passed=",".join(checks)).reset_index(drop=True)
