"""The word-problem recipe: deterministic disjoint splits, the truth read back from the text, answers parsed."""

from __future__ import annotations

import random

import pytest

from selffeed.config import WordProblemsConfig, load_config
from selffeed.recipes import recipe_for
from selffeed.recipes.word_problems import make_splits, parse_answer, problem, solution, solve

SMALL = WordProblemsConfig(seed_size=20, pool_per_round=12, pool_slices=2, test_per_steps=15, val_per_steps=5)


def test_problems_solve_to_their_worked_solutions():
    rng = random.Random(0)
    for steps in (1, 2, 3):
        for _ in range(200):
            text, worked = problem(rng, steps, 30)
            assert len(worked) == steps and all(after >= 0 for *_, after in worked)
            assert solve(text) == solution(worked)
            assert parse_answer(solve(text)) == str(worked[-1][3])


def test_splits_are_disjoint_deterministic_and_sized():
    a, b = make_splits(SMALL, seed=0), make_splits(SMALL, seed=0)
    assert all(a[k].equals(b[k]) for k in a)
    sets = {k: set(a[k]["prompt"]) for k in a}
    assert all(not (sets[x] & sets[y]) for x in sets for y in sets if x < y)
    assert sorted(a["seed"]["difficulty"].unique()) == [1, 2]
    assert a["test"].groupby("difficulty").size().to_dict() == {1: 15, 2: 15, 3: 15}
    assert a["pool"].groupby("difficulty").size().to_dict() == {1: 24, 2: 24, 3: 24}
    assert "completion" not in a["pool"]  # the pool carries no answers
    assert all(solve(p) == c for p, c in zip(a["test"]["prompt"], a["test"]["completion"]))
    assert make_splits(SMALL, seed=1)["test"]["prompt"].tolist() != a["test"]["prompt"].tolist()


def test_answers_are_parsed_from_the_sentence_or_the_last_number():
    assert parse_answer("12 + 7 = 19. 19 - 5 = 14. The answer is 14.") == "14"
    assert parse_answer("The answer is 14. Then 3 more.") == "14"
    assert parse_answer("she has 9 left") == "9"
    assert parse_answer("I do not know.") is None


def test_recipe_is_wired_with_an_oracle_and_bad_step_counts_fail_naming_the_field():
    cfg = load_config(None, ["recipe=word_problems", "word_problems.test_per_steps=3", "word_problems.val_per_steps=2",
                             "word_problems.seed_size=4", "word_problems.pool_per_round=3"])
    r = recipe_for(cfg)
    splits = r.make_splits(0)
    assert splits["test"]["prompt"][0].startswith("Q: ") and r.true_completion(splits["test"]["prompt"][0])
    with pytest.raises(ValueError, match="word_problems.pool_steps"):
        make_splits(SMALL.model_copy(update={"pool_steps": [0]}), seed=0)
