"""Least-to-most sampling: each chain asks a problem's steps one at a time, from its own previous answer."""

from __future__ import annotations

import re

import pandas as pd

from selffeed.config import FilterConfig, SampleConfig, load_config
from selffeed.filtering.filters import apply_filters
from selffeed.loop import stages
from selffeed.recipes import recipe_for
from selffeed.recipes.word_problems import compose, parse_answer, solve, substep_prompt, substeps
from selffeed.run.layout import RunLayout
from selffeed.sampling.sampler import Completion
from selffeed.sampling.stepwise import generate_stepwise
from tests.conftest import tiny_run_config

PROBLEMS = [
    "Q: Mia has 12 shells. Mia finds 7 more shells. Mia gives 5 shells to Leo. Mia loses 3 shells. "
    "How many shells does Mia have now?\nA: ",
    "Q: Ben has 30 cards. Ben gives 24 cards to Ava. How many cards does Ben have now?\nA: ",
    "Q: Ivy has 9 toy cars. Ivy buys 4 more toy cars. Ivy sells 2 toy cars. How many toy cars does Ivy have now?\nA: ",
]


class OneStepSolver:
    """A stand-in engine that solves one-step problems (true arithmetic, or a slip on one start number) and
    records every prompt it was asked; the chaining logic is what is under test, not a model."""

    def __init__(self, slip_at: str | None = None, silent_at: str | None = None):
        self.asked: list[list[str]] = []
        self.slip_at, self.silent_at = slip_at, silent_at

    def __call__(self, lm, tok, prompts, batches, cfg, seed, max_new_tokens, first_batch=0):
        assert cfg.k == 1  # every chain is its own prompt
        self.asked.append(list(prompts))
        out = []
        for b in batches:
            for i in b:
                start = re.search(r"has (-?\d+) ", prompts[i]).group(1)
                text = solve(prompts[i])
                if start == self.silent_at:
                    text = "I do not know."
                elif start == self.slip_at:
                    first, rest = text.split(" = ", 1)
                    wrong = int(rest.split(".")[0]) + 1
                    text = f"{first} = {wrong}. The answer is {wrong}."
                out.append(Completion(i, 0, text, 5, -0.5))
        return out


def chars(texts, add_special_tokens=False):  # a tokenizer as far as batch planning needs one
    return {"input_ids": [list(t) for t in texts]}


def chains(engine, k=2):
    steps = recipe_for(load_config(None, ["recipe=word_problems", "word_problems.stepwise=true"])).steps
    cfg = SampleConfig(k=k, batch_prompts=2)
    return generate_stepwise(engine, None, chars, PROBLEMS, [[0, 1], [2]], cfg, 7, 64, 0, steps, parse_answer)


def test_problem_text_is_cut_into_one_step_problems_without_reading_an_answer():
    assert substeps(PROBLEMS[0]) == ["Mia finds 7 more shells.", "Mia gives 5 shells to Leo.", "Mia loses 3 shells."]
    assert substep_prompt(PROBLEMS[2], 0) == "Q: Ivy has 9 toy cars. Ivy buys 4 more toy cars. How many toy cars does Ivy have now?\nA: "
    assert substep_prompt(PROBLEMS[2], 1, "77") == "Q: Ivy has 77 toy cars. Ivy sells 2 toy cars. How many toy cars does Ivy have now?\nA: "
    assert compose(["12 + 7 = 19. The answer is 19.", "19 - 5 = 14. The answer is 14."], None) == "12 + 7 = 19. 19 - 5 = 14."
    assert substeps("not a word problem") == []


def test_chains_ask_each_step_from_their_own_answer_and_compose_the_worked_solution():
    engine = OneStepSolver()
    out = chains(engine)
    assert [(c.prompt_index, c.sample_idx) for c in out] == [(i, s) for i in range(3) for s in range(2)]
    assert [c.text for c in out] == [solve(p) for p in PROBLEMS for _ in range(2)]
    assert [c.n_tokens for c in out] == [15, 15, 5, 5, 10, 10] and out[0].logprob == -1.5
    assert len(engine.asked) == 3 + 2  # per batch, one call a step: as many as its longest problem has
    assert PROBLEMS[1] in engine.asked[0]  # a one-step problem is asked whole
    assert engine.asked[1].count(substep_prompt(PROBLEMS[0], 1, "19")) == 2  # from the chain's own answer, 12 + 7
    assert engine.asked[2] == [substep_prompt(PROBLEMS[0], 2, "14")] * 2


def test_a_slip_carries_into_later_steps_and_a_silent_step_ends_the_chain():
    out = chains(OneStepSolver(slip_at="19"))  # Mia's second step writes 19 - 5 = 15
    assert out[0].text == "12 + 7 = 19. 19 - 5 = 15. 15 - 3 = 12. The answer is 12."
    engine = OneStepSolver(silent_at="19")  # Mia's second step answers nothing ...
    out = chains(engine)
    assert out[0].text == "12 + 7 = 19. I do not know." and parse_answer(out[0].text) != "11"
    assert len(engine.asked) == 2 + 2  # ... and her third is never asked


def test_the_rationale_checks_drop_a_composed_slip_and_the_vote_keeps_the_true_chain():
    right, slip = chains(OneStepSolver(), k=3), chains(OneStepSolver(slip_at="19"), k=1)
    rows = [(0, s, c.text) for s, c in enumerate(right[:2] + slip[:1])]
    df = pd.DataFrame(rows, columns=["prompt_id", "sample_idx", "completion"]).assign(prompt=PROBLEMS[0])
    df["answer"] = [parse_answer(t) for t in df["completion"]]
    kept = apply_filters(df, FilterConfig(check_steps=True, check_numbers=True, min_agreement=0.5))
    assert kept["completion"].tolist() == [solve(PROBLEMS[0])]  # dedup keeps one copy; the slip lost its vote


def test_stepwise_sample_stage_is_the_same_however_it_is_sharded(tmp_path):
    over = {"recipe": "word_problems", "word_problems.stepwise": "true", "word_problems.seed_size": 8,
            "word_problems.pool_per_round": 6, "word_problems.test_per_steps": 2, "word_problems.val_per_steps": 2,
            "word_problems.max_new_tokens": 8, "model.n_positions": 256, "finetune.steps": 2, "sample.k": 2,
            "sample.batch_prompts": 2}
    a = tiny_run_config(tmp_path / "a", **over)
    b = tiny_run_config(tmp_path / "b", **over, **{"sample.shard_batches": 1})
    frames = []
    for cfg in (a, b):
        data = stages.prepare(cfg)
        manifest = stages.sample(cfg, 1, stages.finetune(cfg, data), data)
        frames.append(pd.read_parquet(RunLayout.of(cfg.runs_dir, cfg.name).samples(1)))
        assert manifest.rows == 6 * 2
    assert frames[0].drop(columns="model_id").equals(frames[1].drop(columns="model_id"))
