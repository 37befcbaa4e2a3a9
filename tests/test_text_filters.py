"""Text filters, diversity metrics and the demo story grammar, on hand-made cases."""

import doctest
import random

import pandas as pd
import pytest

from selffeed.config import load_config
from selffeed.evaluation.text import distinct_n, diversity, ngram_entropy, self_bleu
from selffeed.filtering.text import (
    apply_text_filters,
    exact_dedup,
    near_dedup,
    perplexity_band,
    repeat_ratio,
    repetition_ok,
    user_scores,
)
from selffeed.recipes import stories

STORY = ("Once upon a time, there was a shy fox named Mia. Mia lived on a farm. One day, Mia lost her hat. "
         "She was sad. Then, Mia met an old owl. They became friends. The end.")


def frame(completions, prompts=None, **cols):
    prompts = prompts or [""] * len(completions)
    return pd.DataFrame({"prompt": prompts, "completion": completions, **cols})


def test_repetition_catches_loops_not_stories():
    loop = " She was sad. She was sad. She was sad. She was sad."
    assert repeat_ratio(loop, 3) > 0.5
    assert repeat_ratio(STORY, 3) < 0.2
    assert repetition_ok(frame([STORY, loop, ""]), max_ratio=0.5, n=3).tolist() == [True, False, True]


def test_exact_dedup_within_round_and_against_earlier_rounds():
    s = frame([" a.", " b.", " a.", " c."], prompts=["X", "X", "X", "Y"])
    assert exact_dedup(s).tolist() == [True, True, False, True]
    assert exact_dedup(s, earlier=["X b."]).tolist() == [True, False, False, True]


def test_near_dedup_drops_near_copies_keeps_different_stories():
    other = stories.generate(random.Random(5))
    near = STORY.replace("old owl", "eager owl")  # one word changed
    s = frame([STORY, near, other])
    assert near_dedup(s, threshold=0.7, n=3).tolist() == [True, False, True]
    assert near_dedup(s, threshold=0.99, n=3).tolist() == [True, True, True]  # not similar enough
    assert near_dedup(frame([near, other]), threshold=0.7, n=3, earlier=[STORY]).tolist() == [False, True]
    assert near_dedup(frame([]), threshold=0.7).tolist() == []


def test_perplexity_band_from_logprob_and_tokens():
    s = pd.DataFrame({"logprob": [-1.0, -10.0, -100.0], "n_tokens": [10, 10, 10]})  # ppl 1.105, 2.72, 22026
    assert perplexity_band(s, low=1.2).tolist() == [False, True, True]
    assert perplexity_band(s, high=100).tolist() == [True, True, False]
    assert perplexity_band(s).tolist() == [True, True, True]


def test_user_scorer_hook_and_min_score(tmp_path):
    (tmp_path / "sc.py").write_text(
        "def words(samples, prompts=None, **kw):\n    return [None if not s else len(s.split()) for s in samples]\n"
    )
    spec = f"{tmp_path / 'sc.py'}:words"
    s = frame([" one two three", " one", ""], logprob=[-1.0] * 3, n_tokens=[3] * 3)
    assert user_scores(s, spec).fillna(-1).tolist() == [3.0, 1.0, -1.0]
    cfg = load_config(None, ["recipe=text", f"text.scorer={spec}", "filter.min_score=2", "filter.min_chars=0"])
    kept = apply_text_filters(s, cfg)
    assert kept["completion"].tolist() == [" one two three"] and kept["score"].tolist() == [3.0]
    assert kept["passed"].iloc[0].split(",") == ["length", "repetition", "min_score", "dedup", "near_dup"]


def test_apply_text_filters_records_passed_and_uses_earlier_rounds():
    loop = " go go go go go go go go"
    s = frame([STORY, STORY, loop, "x" * 50], logprob=[-5.0] * 4, n_tokens=[10] * 4)
    short = load_config(None, ["recipe=text", "filter.max_chars=40"])
    assert apply_text_filters(s, short).empty  # stories and "x" * 50 too long, the loop repeats itself
    cfg = load_config(None, ["recipe=text", "text.max_sample_perplexity=5"])
    kept = apply_text_filters(s, cfg)
    assert kept["completion"].tolist() == [STORY, "x" * 50]  # copy and loop dropped
    assert set(kept["passed"]) == {"length,repetition,perplexity,dedup,near_dup"}
    assert (kept["votes"] == 0).all()
    assert apply_text_filters(s, cfg, earlier=[STORY])["completion"].tolist() == ["x" * 50]
    assert apply_text_filters(s, load_config(None, ["recipe=text", "text.max_sample_perplexity=1.5"])).empty


def test_diversity_metrics():
    same = ["the cat sat on the mat"] * 4
    varied = ["the cat sat on the mat", "a dog ran in the park", "two birds sang at dawn", "my fish swam all day"]
    assert distinct_n(same, 2) == 0.25 and distinct_n(varied, 2) == 1.0
    assert ngram_entropy(varied, 2) > ngram_entropy(same, 2)
    assert self_bleu(same) > 99 and self_bleu(varied) < 20
    assert set(diversity(varied)) == {"distinct_1", "distinct_2", "entropy_2", "self_bleu"}


def test_story_generator_is_deterministic_and_well_formed():
    a, b = stories.corpus(300, seed=3), stories.corpus(300, seed=3)
    assert a == b and a != stories.corpus(300, seed=4)
    assert all(map(stories.is_wellformed, a))
    assert len(set(a)) > 290


@pytest.mark.parametrize("broken, why", [
    (STORY.replace("lost her hat", "lost his hat"), "does not match"),
    (STORY.replace("Mia lived", "Tom lived"), "sentence 2"),
    (STORY.replace(" The end.", ""), "ending"),
    (STORY.replace("She was sad.", "She was happy."), "reaction"),
    (STORY.replace("an old owl", "a old owl"), "article"),
    (STORY.replace("Then, Mia met", "One day, Mia met"), "lead"),
    (STORY.replace("there was a shy", "there was the shy"), "introduction"),
    ("Once upon a time, there", "sentences"),
])
def test_story_checker_rejects_each_kind_of_error(broken, why):
    assert stories.is_wellformed(STORY)
    assert why in stories.problem(broken)
    assert not stories.verify(broken[:17], broken[17:])


def test_doctests():
    from selffeed.evaluation import text as text_metrics
    from selffeed.filtering import text as text_filters
    from selffeed.loop import policy
    from selffeed.recipes import text

    for module in (text_filters, text_metrics, stories, text, policy):
        assert doctest.testmod(module).failed == 0, module.__name__
