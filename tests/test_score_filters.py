"""Score filters (min_score, best-of-k) and how they share a round with the self-consistency vote."""

import doctest

import pandas as pd

from selffeed.config import FilterConfig
from selffeed.filtering import filters
from selffeed.filtering.filters import apply_filters, best_of_k, score_at_least


def frame():
    # prompt 0 and 1 have references (scores); prompt 2 has none (score NaN) and is left to the vote.
    rows = [
        (0, "a", "a", 0.2), (0, "b", "b", 0.9), (0, "c", "c", 0.9),
        (1, "x", "x", 0.1), (1, "y", "y", 0.3),
        (2, "7", "7", None), (2, "7", "7", None), (2, "8", "8", None),
    ]
    return pd.DataFrame({
        "prompt_id": [r[0] for r in rows], "prompt": [f"p{r[0]}" for r in rows],
        "completion": [r[1] for r in rows], "answer": [r[2] for r in rows], "score": [r[3] for r in rows],
    })


def test_doctests():
    assert doctest.testmod(filters).failed == 0


def test_min_score_and_best_of_k():
    s = frame()
    assert score_at_least(s, 0.3).tolist() == [False, True, True, False, True, False, False, False]
    assert best_of_k(s).tolist() == [False, True, False, False, True, False, False, False]


def test_scored_rows_by_score_unscored_rows_by_vote():
    kept = apply_filters(frame(), FilterConfig(min_score=0.5, min_agreement=0.6))
    assert kept[["prompt_id", "completion"]].values.tolist() == [[0, "b"], [0, "c"], [2, "7"]]  # dedup: one "7"
    assert kept["passed"].tolist() == ["min_score,length,dedup"] * 2 + ["vote,length,dedup"]
    assert kept["score"].iloc[:2].tolist() == [0.9, 0.9] and pd.isna(kept["score"].iloc[2])
    kept = apply_filters(frame(), FilterConfig(best_of_k=True, min_score=0.25, vote=False))
    assert kept[["prompt_id", "completion"]].values.tolist() == [[0, "b"], [1, "y"]]  # nothing vouches for 2
    assert set(kept["passed"]) == {"min_score,best_of_k,length,dedup"}


def test_best_of_k_ranks_only_rows_that_pass_length():
    kept = apply_filters(frame(), FilterConfig(best_of_k=True, vote=False, max_chars=1).model_copy())
    assert kept["completion"].tolist() == ["b", "y"]
    s = frame().assign(completion=["a", "bbbb", "c", "x", "y", "7", "7", "8"])
    kept = apply_filters(s, FilterConfig(best_of_k=True, vote=False, max_chars=1))
    assert kept["completion"].tolist() == ["c", "y"]  # "bbbb" is too long, so the next best 0.9 wins


def test_without_score_filters_the_vote_judges_every_row():
    kept = apply_filters(frame(), FilterConfig(min_agreement=0.6))
    assert kept["completion"].tolist() == ["7"] and kept["passed"].tolist() == ["vote,length,dedup"]
