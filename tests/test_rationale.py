"""The rationale checks on hand-made solutions, and how they compose with the vote."""

from __future__ import annotations

import pandas as pd

from selffeed.config import FilterConfig
from selffeed.filtering.filters import apply_filters
from selffeed.filtering.rationale import false_steps, steps_true, unused_numbers

PROBLEM = "Ben has 30 cards. Ben gives 24 cards to Mia. Ben finds 5 more cards. How many cards does Ben have now?"


def test_true_steps_pass_and_false_ones_are_named():
    assert steps_true("30 - 24 = 6. 6 + 5 = 11. The answer is 11.")
    assert steps_true("The answer is 11.")  # nothing written, nothing false
    assert steps_true("2 × 3 + 1 = 7, and 12/4=3, and 3 x 4 = 12, and 10 − 4 = 6")
    assert false_steps("30 - 24 = 7. 7 + 5 = 12. The answer is 12.") == ["30 - 24 = 7"]
    assert false_steps("30 -24 = 6. 6 + 5 = 12.") == ["6 + 5 = 12"]
    assert false_steps("1 + 2 * 3 = 9") == ["1 + 2 * 3 = 9"]  # precedence: 7
    assert false_steps("5 / 0 = 1") == ["5 / 0 = 1"]


def test_numbers_check_catches_a_skipped_step():
    assert unused_numbers(PROBLEM, "30 - 24 = 6. 6 + 5 = 11. The answer is 11.") == []
    assert unused_numbers(PROBLEM, "30 - 24 = 6. The answer is 6.") == ["5"]
    twice = "Ann has 9 pens. Ann buys 9 more pens."
    assert unused_numbers(twice, "9 + 9 = 18.") == []
    assert unused_numbers(twice, "9 + 1 = 10.") == ["9"]  # each stated number must be used as often


def _samples(completions: list[str]) -> pd.DataFrame:
    from selffeed.recipes.word_problems import parse_answer

    return pd.DataFrame({
        "prompt_id": 0, "prompt": PROBLEM, "completion": completions, "logprob": -1.0,
        "answer": [parse_answer(c) for c in completions],
    })


def test_a_false_rationale_loses_its_vote_but_counts_towards_k():
    right = "30 - 24 = 6. 6 + 5 = 11. The answer is 11."
    wrong_math = "30 - 24 = 7. 7 + 5 = 12. The answer is 12."
    skipped = "30 - 24 = 6. The answer is 6."
    # Without the checks 12 wins 3 to 1; with them, only the one sound sample votes.
    s = _samples([wrong_math, wrong_math, wrong_math, right])
    assert set(apply_filters(s, FilterConfig(min_agreement=0.5))["answer"]) == {"12"}
    assert apply_filters(s, FilterConfig(min_agreement=0.5, check_steps=True)).empty  # 1 of 4 < 0.5
    kept = apply_filters(s, FilterConfig(min_agreement=0.25, check_steps=True))
    assert list(kept["answer"]) == ["11"] and kept["passed"][0] == "vote,length,steps,dedup"
    assert kept["agreement"][0] == 0.25
    # Samples that all skip the same step agree with each other; the numbers check refuses them.
    s = _samples([skipped, skipped, skipped, right])
    assert set(apply_filters(s, FilterConfig(min_agreement=0.5, check_steps=True))["answer"]) == {"6"}
    kept = apply_filters(s, FilterConfig(min_agreement=0.25, check_steps=True, check_numbers=True))
    assert list(kept["answer"]) == ["11"] and "numbers" in kept["passed"][0]
