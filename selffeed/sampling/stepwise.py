"""Least-to-most sampling: a multi-step problem solved one step at a time, each step a problem of its own.

A small model that solves one-step problems well and three-step problems badly (it skips steps) can
still write a right three-step solution when asked one step at a time (Zhou et al. 2022, least-to-most
prompting). Each of a prompt's k samples is a chain: step 0 is asked as a one-step problem starting
from the stated number, step j from the answer the chain itself gave to step j - 1, and the chain's
completions are composed into one worked solution for the whole prompt. The filters then judge the
composed solutions as they judge direct ones (vote, arithmetic and number checks), and the model is
retrained to solve the whole problem at once. No answer is read anywhere: a step starts from the model's
own answer, and the recipe only cuts its problem text into steps (:class:`Steps`).

A batch's chains are seeded by the plan's seed, the batch's index and the step, so a shard's rows do
not depend on which process writes it or how the plan is cut into shards, as for direct sampling
(:mod:`selffeed.sampling.shards`). Stepwise costs more than sampling whole: every step re-reads its
prompt, and later steps run fewer chains at once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from selffeed.config import SampleConfig
from selffeed.sampling.sampler import Completion, batch_seed, plan_batches


@dataclass(frozen=True)
class Steps:
    """How a recipe cuts a problem into one-step parts (all plain functions over prompt text)."""

    count: Callable[[str], int]
    """Prompt -> its number of steps (0 or 1: sampled whole)."""
    prompt: Callable[[str, int, str | None], str]
    """(prompt, j, start) -> step j alone as a one-step prompt starting from ``start`` (None: the stated start)."""
    compose: Callable[[list[str], str | None], str]
    """(the steps' completions, the last step's answer or None) -> one worked solution."""


def generate_stepwise(
    generate: Callable[..., list[Completion]],
    lm,
    tokenizer,
    prompts: Sequence[str],
    batches: Sequence[Sequence[int]],
    cfg: SampleConfig,
    seed: int,
    max_new_tokens: int,
    first_batch: int,
    steps: Steps,
    parse_answer: Callable[[str], str | None],
) -> list[Completion]:
    """The k chains of every prompt in ``batches`` (batches ``first_batch, ...`` of a plan), one completion
    per chain, ordered as ``generate`` orders direct samples.

    ``generate`` is the engine's ``generate_batches``. A batch's chains advance together, its step-j prompts
    sampled once each in one call seeded by the batch index and j, so any split of a plan into shards gives
    the same chains. A chain whose step gives no answer stops there (its composed solution has no answer and
    loses the vote); a prompt of one step is sampled whole.
    """
    k = 1 if cfg.greedy else cfg.k
    one = cfg.model_copy(update={"k": 1})  # each chain is a prompt of its own
    out: list[Completion] = []
    for b, batch in enumerate(batches, start=first_batch):
        chains = [(i, s) for i in batch for s in range(k)]
        count = {i: max(steps.count(prompts[i]), 1) for i in batch}
        n_steps = [count[i] for i, _ in chains]
        texts: list[list[str]] = [[] for _ in chains]
        answers: list[str | None] = [None] * len(chains)
        tokens, logprobs = [0] * len(chains), [0.0] * len(chains)
        for j in range(max(n_steps)):
            live = [c for c in range(len(chains)) if j < n_steps[c] and (j == 0 or answers[c] is not None)]
            if not live:
                break
            asked = [
                prompts[chains[c][0]] if n_steps[c] == 1 else steps.prompt(prompts[chains[c][0]], j, answers[c] if j else None)
                for c in live
            ]
            plan = plan_batches(tokenizer, asked, len(asked))
            for got in generate(lm, tokenizer, asked, plan, one, batch_seed(seed, b), max_new_tokens, j):
                c = live[got.prompt_index]
                texts[c].append(got.text)
                answers[c] = parse_answer(got.text)
                tokens[c] += got.n_tokens
                logprobs[c] += got.logprob
        for c, (i, s) in enumerate(chains):
            whole = len(texts[c]) == n_steps[c] and answers[c] is not None
            text = texts[c][0] if n_steps[c] == 1 else steps.compose(texts[c], answers[c] if whole else None)
            out.append(Completion(i, s, text, tokens[c], logprobs[c]))
    return out
