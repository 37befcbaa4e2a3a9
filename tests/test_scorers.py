"""Scorers against their reference implementations, and user scorers loaded from a file."""

from __future__ import annotations

import doctest

import pytest
from rouge_score.rouge_scorer import RougeScorer
from sacrebleu.metrics import BLEU, CHRF

from selffeed.filtering import scorers
from selffeed.filtering.scorers import ScorerError, load_scorer, metric_name, score_rows

PAIRS = [
    ("le chat noir", "le chat noir"),
    ("la maison rouge", "la grande maison rouge"),
    ("un chien", "le chat"),
    ("The quick brown fox jumps", "A quick brown dog jumped over it"),
    ("", "nothing was said"),
    ("Ann bought maps at the market.", "Ann bought bread at the market."),
]


def test_doctests():
    assert doctest.testmod(scorers).failed == 0


def test_chrf_and_bleu_match_sacrebleu():
    hyps, refs = zip(*PAIRS)
    assert scorers.chrf(hyps, references=refs) == pytest.approx([CHRF().sentence_score(h, [r]).score for h, r in PAIRS])
    bleu = BLEU(effective_order=True)
    assert scorers.bleu(hyps, references=refs) == pytest.approx([bleu.sentence_score(h, [r]).score for h, r in PAIRS])
    got = scorers.chrf(hyps, references=refs)
    assert got[0] == pytest.approx(100.0) and got[2] < 20 and all(0 <= x <= 100 for x in got)


def test_rouge_l_matches_rouge_score():
    hyps, refs = zip(*PAIRS)
    ref = RougeScorer(["rougeL"], use_stemmer=True)
    want = [ref.score(r, h)["rougeL"].fmeasure for h, r in PAIRS]
    assert scorers.rouge_l(hyps, references=refs) == pytest.approx(want)
    # "jumps"/"jumped" share a stem: 3 of 5 and 3 of 7 tokens in common -> F = 2PR/(P+R) = 0.5
    assert want[3] == pytest.approx(0.5)


def test_exact_match_and_final_answer():
    assert scorers.exact_match(["  The Answer!", "answers", ""], references=["answer", "answer", ""]) == [1.0, 0.0, 1.0]
    sols = ["3+4=7\n#### 7", "so 1,200 apples", "#### 12.0", "no idea", "7 then 8"]
    refs = ["7", "1200", "12", "3", "#### 7"]
    assert scorers.final_answer(sols, references=refs) == [1.0, 1.0, 1.0, 0.0, 0.0]
    assert scorers.extract_final("#### -3") == "-3"


def test_builtins_skip_rows_without_reference():
    assert score_rows("chrf", ["le chat", "x"], [None, "x"], ["p", "q"]) == [None, pytest.approx(100.0)]
    assert score_rows("final_answer", ["#### 2"], [float("nan")], ["p"]) == [None]


def write(tmp_path, body: str):
    path = tmp_path / "my_scores.py"
    path.write_text(body)
    return path


def test_user_scorer_from_a_file(tmp_path):
    path = write(
        tmp_path,
        "def brevity(samples, references=None, prompts=None, **kw):\n"
        "    return [1.0 / (1 + len(s)) if p else None for s, p in zip(samples, prompts)]\n",
    )
    spec = f"{path}:brevity"
    assert metric_name(spec) == "brevity"
    # A user scorer sees every row, references or not, and may leave rows unscored.
    assert score_rows(spec, ["a", "abc", "z"], [None, "x", None], ["p", "q", ""]) == [0.5, 0.25, None]


@pytest.mark.parametrize(
    "body, spec_tail, fragment",
    [
        ("def f(samples, **kw):\n    return [1.0] * len(samples)\n", ":g", "has no attribute 'g'"),
        ("def f():\n    return []\n", ":f", "wrong signature f()"),
        ("def f(samples, references):\n    return []\n", ":f", "expected f(samples, **kw) -> list[float]"),
        ("f = 3\n", ":f", "'f' is not callable"),
        ("import no_such_module_xyz\n", ":f", "importing"),
    ],
)
def test_bad_user_scorers_are_one_line_errors(tmp_path, body, spec_tail, fragment):
    spec = f"{write(tmp_path, body)}{spec_tail}"
    with pytest.raises(ScorerError) as err:
        load_scorer(spec)
    assert fragment in str(err.value) and spec in str(err.value) and "\n" not in str(err.value)


def test_missing_files_modules_and_bad_returns(tmp_path):
    with pytest.raises(ScorerError, match=r"scorer 'nope/x.py:f': file nope/x.py not found"):
        load_scorer("nope/x.py:f")
    with pytest.raises(ScorerError, match="cannot import module 'no_such_mod_xyz'"):
        load_scorer("no_such_mod_xyz:f")
    with pytest.raises(ScorerError, match="expected one of exact_match"):
        load_scorer("chrff")
    spec = f"{write(tmp_path, 'def f(samples, **kw):' + chr(10) + '    return [1.0]' + chr(10))}:f"
    with pytest.raises(ScorerError, match="returned 1 for 2 samples"):
        score_rows(spec, ["a", "b"], [None, None], ["p", "q"])
