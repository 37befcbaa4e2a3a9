"""The arithmetic recipe: format, parsing, and disjoint splits that hide the pool's answers."""

import doctest
import random

import pytest

from selffeed.config import ArithmeticConfig
from selffeed.recipes import arithmetic as ar


def test_format_round_trip():
    assert ar.encode(123, 45, 3) == "321+540="
    assert ar.decode("321+540=") == (123, 45)
    assert ar.answer_text(168, 3) == "8610"
    assert ar.true_completion("321+540=", 3) == "8610"
    assert ar.true_completion(ar.encode(999, 999, 3), 3) == "8991"  # 1998 reversed


def test_parse_answer_rejects_malformed():
    assert ar.parse_answer("8610", 3) == "8610"
    assert ar.parse_answer("861", 3) is None
    assert ar.parse_answer("86100", 3) is None
    assert ar.parse_answer("86a0", 3) is None
    assert ar.parse_answer("", 3) is None


def test_splits_are_disjoint_and_pool_has_no_answers():
    cfg = ArithmeticConfig(width=3, seed_digits=[1, 2], seed_size=110,
                           pool_per_round=50, pool_slices=3, test_digits=[2, 3], test_per_digits=40, val_per_digits=20)
    s = ar.make_splits(cfg, seed=1)
    seed, pool, val, test = s["seed"], s["pool"], s["val"], s["test"]
    assert len(seed) == 110 and len(val) == 40 and len(test) == 80 and len(pool) == 150
    every = [seed["prompt"], pool["prompt"], val["prompt"], test["prompt"]]
    assert len(set().union(*every)) == sum(len(x) for x in every)  # no problem in two splits
    assert val.groupby("difficulty").size().to_dict() == {2: 20, 3: 20}
    assert "completion" not in pool.columns
    assert sorted(pool["slice"].unique()) == [0, 1, 2]
    assert test.groupby("difficulty").size().to_dict() == {2: 40, 3: 40}
    for p, c in zip(seed["prompt"], seed["completion"]):
        a, b = ar.decode(p)
        assert int(c[::-1]) == a + b
    # Difficulty is the longer operand's digit count.
    for p, d in zip(test["prompt"], test["difficulty"]):
        assert max(len(str(x)) for x in ar.decode(p)) == d


def test_splits_are_deterministic():
    cfg = ArithmeticConfig(pool_per_round=30, test_per_digits=20, seed_size=50)
    a, b = ar.make_splits(cfg, 7), ar.make_splits(cfg, 7)
    assert all(a[k].equals(b[k]) for k in a)


def test_impossible_request_names_the_field():
    cfg = ArithmeticConfig(width=2, seed_digits=[1], seed_size=200, test_digits=[2], test_per_digits=5)
    with pytest.raises(ValueError, match="arithmetic.seed_digits: asks for 200 1-digit problems"):
        ar.make_splits(cfg, 0)
    cfg = ArithmeticConfig(width=2, test_digits=[3])
    with pytest.raises(ValueError, match="arithmetic.test_digits: digit count 3 must be between 1 and width=2"):
        ar.make_splits(cfg, 0)


def test_offset_views_have_the_digit_count_and_map_back_to_the_answer():
    rng = random.Random(0)
    for _ in range(500):
        digits = rng.randint(1, 4)
        a, b = rng.randint(10 ** (digits - 1) if digits > 1 else 0, 10**digits - 1), rng.randint(0, 10**digits - 1)
        prompt = ar.encode(a, b, 4)
        out = ar.views(prompt, offsets=2)
        assert out == ar.views(prompt, offsets=2)  # drawn from the prompt: stable across runs
        assert prompt not in out and len(out) == len(set(out))
        truth = ar.true_completion(prompt, 4)
        for view in out:
            assert ar.digits_of(*ar.decode(view)) == digits
            # the right answer to a view implies the right answer to the prompt, a wrong one a wrong one
            right = ar.true_completion(view, 4)
            assert ar.view_answer(prompt, view, right, 4) == truth
            wrong = ar.answer_text((int(right[::-1]) + 10) % 10**5, 4)
            assert ar.view_answer(prompt, view, wrong, 4) != truth
        assert ar.view_answer(prompt, out[0], None, 4) is None
    assert ar.views("12+34=") == ["34+12="]  # offsets=0: the swap only
    assert ar.view_answer("000+000=", "900+000=", "0000", 3) is None  # implies a negative sum


def test_doctests():
    assert doctest.testmod(ar).failed == 0
