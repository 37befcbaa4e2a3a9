"""Filters on hand-made samples, including ties, empty groups and unparsable answers."""

import pandas as pd
import pytest

from selffeed.config import FilterConfig
from selffeed.filtering.filters import (
    apply_filters,
    dedup,
    length_ok,
    load_verifier,
    majority_vote,
    verified,
    vote_stats,
)


def frame(rows):
    """rows: (prompt_id, completion, answer)"""
    return pd.DataFrame(
        {
            "prompt_id": [r[0] for r in rows],
            "prompt": [f"p{r[0]}" for r in rows],
            "completion": [r[1] for r in rows],
            "answer": [r[2] for r in rows],
        }
    )


def test_majority_vote_threshold():
    s = frame([(0, "5", "5"), (0, "5", "5"), (0, "5", "5"), (0, "6", "6"), (1, "7", "7"), (1, "8", "8"), (1, "7", "7"), (1, "9", "9")])
    assert majority_vote(s, 0.75).tolist() == [True, True, True, False, False, False, False, False]
    assert majority_vote(s, 0.5).tolist() == [True, True, True, False, True, False, True, False]


def test_tie_keeps_nothing():
    s = frame([(0, "1", "1"), (0, "1", "1"), (0, "2", "2"), (0, "2", "2")])
    assert not majority_vote(s, 0.0).any()
    stats = vote_stats(s)
    assert pd.isna(stats.loc[0, "majority"]) and stats.loc[0, "votes"] == 0


def test_unparsable_answers_count_against_agreement_and_never_win():
    s = frame([(0, "x", None), (0, "x", None), (0, "x", None), (0, "4", "4")])
    stats = vote_stats(s).set_index("prompt_id")
    assert stats.loc[0, "majority"] == "4"
    assert stats.loc[0, "agreement"] == pytest.approx(0.25)
    assert majority_vote(s, 0.25).tolist() == [False, False, False, True]
    assert not majority_vote(s, 0.5).any()


def test_all_unparsable_group():
    s = frame([(3, "?", None), (3, "!", None)])
    assert not majority_vote(s, 0.0).any()
    assert vote_stats(s).loc[0, "agreement"] == 0


def test_empty_frame():
    s = frame([])
    assert majority_vote(s, 1.0).empty
    assert vote_stats(s).empty
    kept = apply_filters(s, FilterConfig())
    assert kept.empty and {"agreement", "votes", "passed"} <= set(kept.columns)


def test_length_bounds_inclusive():
    s = frame([(0, "", None), (0, "a", None), (0, "abc", None), (0, "abcd", None)])
    assert length_ok(s, 1, 3).tolist() == [False, True, True, False]


def test_dedup_keeps_first_per_prompt_and_completion():
    s = frame([(0, "a", "a"), (0, "a", "a"), (1, "a", "a"), (0, "b", "b")])
    assert dedup(s).tolist() == [True, False, True, True]


def test_verifier_and_loading():
    s = frame([(0, "12", "12"), (1, "13", "13")])
    assert verified(s, lambda p, c: c.endswith("2")).tolist() == [True, False]
    fn = load_verifier("os.path:isabs")
    assert fn("/x") is True
    with pytest.raises(ValueError, match="filter.verifier 'nope.mod:f': cannot import"):
        load_verifier("nope.mod:f")
    with pytest.raises(ValueError, match="expected 'module:function'"):
        load_verifier("justaname")
    with pytest.raises(ValueError, match="not callable"):
        load_verifier("os:sep")


def test_apply_filters_keeps_one_majority_row_per_prompt():
    s = frame([(0, "5", "5")] * 3 + [(0, "6", "6"), (1, "7", "7"), (1, "8", "8")])
    kept = apply_filters(s, FilterConfig(min_agreement=0.75))
    assert kept["prompt_id"].tolist() == [0]
    assert kept["completion"].tolist() == ["5"]
    assert kept.loc[0, "agreement"] == pytest.approx(0.75)
    assert kept.loc[0, "votes"] == 3
    assert kept.loc[0, "passed"] == "vote,length,dedup"


def test_apply_filters_with_verifier_and_no_vote():
    s = frame([(0, "5", "5"), (0, "6", "6"), (1, "7", "7")])
    cfg = FilterConfig(vote=False, dedup=False)
    kept = apply_filters(s, cfg, verifier=lambda p, c: c != "6")
    assert kept["completion"].tolist() == ["5", "7"]
    assert set(kept["passed"]) == {"length,verifier"}
