"""The word-problem recipe: generated add/subtract stories of 1-3 steps, solved with a worked solution.

A problem states a start and then one sentence per step, and asks for the result::

    Mia has 12 shells. Mia finds 7 more shells. Mia gives 5 shells to Leo. How many shells does Mia have now?

Its worked solution writes each step as arithmetic and ends with the answer, the format the seed teaches::

    12 + 7 = 19. 19 - 5 = 14. The answer is 14.

Difficulty is the number of steps. Problems are drawn from a seeded generator, so a seed gives the same
splits everywhere. The recipe reads a problem's truth back from its own text (:func:`solve`), but the loop
asks for it only to validate and to report the precision of kept labels; pool rows carry no answers.
"""

from __future__ import annotations

import random
import re

import pandas as pd

from selffeed.config import WordProblemsConfig
from selffeed.recipes.prompts import chat_tokenizer, user_turn

NAMES = ("Mia", "Leo", "Ava", "Ben", "Zoe", "Sam", "Ivy", "Max", "Lily", "Omar", "Nora", "Eli", "Ruby", "Finn",
         "Ada", "Hugo", "Tess", "Jack", "Maya", "Owen")
ITEMS = ("apples", "marbles", "stickers", "shells", "cards", "books", "coins", "pencils", "cookies", "stamps",
         "beads", "balloons", "candies", "toy cars", "flowers", "rocks")
ADD = ("buys {n} more {item}", "finds {n} more {item}", "gets {n} more {item} from {other}")
SUB = ("gives {n} {item} to {other}", "loses {n} {item}", "sells {n} {item}")
VERBS = {"buys": "+", "finds": "+", "gets": "+", "gives": "-", "loses": "-", "sells": "-"}

_START = re.compile(r"([A-Z][a-z]+) has (\d+) ([a-z ]+?)\.")
_STEP = re.compile(r"\b(buys|finds|gets|gives|loses|sells) (\d+)\b")
_QUESTION = "How many {item} does {name} have now?"
_ANSWER = re.compile(r"answer is\s*\$?(-?\d+)", re.IGNORECASE)
_LAST_NUMBER = re.compile(r"-?\d+")


def problem(rng: random.Random, steps: int, max_number: int) -> tuple[str, list[tuple[int, str, int, int]]]:
    """A problem of ``steps`` steps and its steps as ``(before, op, amount, after)``; every number stated is
    at most ``max_number`` and the count never goes below zero."""
    name, other = rng.sample(NAMES, 2)
    item = rng.choice(ITEMS)
    total = rng.randint(2, max_number)
    sentences, worked = [f"{name} has {total} {item}."], []
    for _ in range(steps):
        if total >= 1 and rng.random() < 0.5:
            n, op, form = rng.randint(1, min(total, max_number)), "-", rng.choice(SUB)
        else:
            n, op, form = rng.randint(1, max_number), "+", rng.choice(ADD)
        after = total + n if op == "+" else total - n
        sentences.append(f"{name} {form.format(n=n, item=item, other=other)}.")
        worked.append((total, op, n, after))
        total = after
    sentences.append(_QUESTION.format(item=item, name=name))
    return " ".join(sentences), worked


def solution(worked: list[tuple[int, str, int, int]]) -> str:
    """``[(12, '+', 7, 19)]`` -> ``'12 + 7 = 19. The answer is 19.'``"""
    steps = " ".join(f"{a} {op} {n} = {b}." for a, op, n, b in worked)
    return f"{steps} The answer is {worked[-1][3]}."


def solve(text: str) -> str:
    """The true worked solution of the problem in ``text`` (a prompt, chat template and all), read from its
    sentences.

    >>> solve("Ben has 30 cards. Ben gives 24 cards to Mia. How many cards does Ben have now?")
    '30 - 24 = 6. The answer is 6.'
    """
    start = _START.search(text)
    if start is None:
        raise ValueError(f"not a word problem of this recipe: {text[:80]!r}")
    total, worked = int(start.group(2)), []
    for verb, n in _STEP.findall(text[start.end() :]):
        after = total + int(n) if VERBS[verb] == "+" else total - int(n)
        worked.append((total, VERBS[verb], int(n), after))
        total = after
    return solution(worked)


def parse_answer(completion: str) -> str | None:
    """The final answer: the number after "The answer is", else the last number; None when there is none.

    >>> parse_answer("3 + 4 = 7. The answer is 7."), parse_answer("so 12 left"), parse_answer("no idea")
    ('7', '12', None)
    """
    m = _ANSWER.search(completion)
    if m:
        return str(int(m.group(1)))
    found = _LAST_NUMBER.findall(completion)
    return str(int(found[-1])) if found else None


_PROBLEM = re.compile(r"([A-Z][a-z]+) has (\d+) ([a-z ]+?)\.((?: [^.?]+\.)*) (How many \3 does \1 have now\?)")
_SOLVED = re.compile(r"\s*The answer is.*$", re.IGNORECASE | re.DOTALL)


def substeps(prompt: str) -> list[str]:
    """The step sentences of the problem in ``prompt`` (chat template and all), in order; [] when it is not
    one of this recipe's problems. Reads only the text's shape, never what a verb does.

    >>> substeps("Mia has 12 shells. Mia finds 7 more shells. Mia gives 5 shells to Leo. How many shells does Mia have now?")
    ['Mia finds 7 more shells.', 'Mia gives 5 shells to Leo.']
    """
    m = _PROBLEM.search(prompt)
    return [] if m is None else [s.strip() + "." for s in m.group(4).split(".") if s.strip()]


def substep_prompt(prompt: str, j: int, start: str | None = None) -> str:
    """``prompt`` with its problem cut down to step ``j`` alone, starting from ``start`` (the answer the
    model gave for the steps before it; None: the number the problem states): a one-step problem in the
    same template, for least-to-most sampling (:mod:`selffeed.sampling.stepwise`). No truth is read.

    >>> substep_prompt("<user>Mia has 12 shells. Mia finds 7 more shells. Mia gives 5 shells to Leo. "
    ...                "How many shells does Mia have now?</user>", 1, "19")
    '<user>Mia has 19 shells. Mia gives 5 shells to Leo. How many shells does Mia have now?</user>'
    """
    m = _PROBLEM.search(prompt)
    if m is None:
        raise ValueError(f"not a word problem of this recipe: {prompt[:80]!r}")
    name, stated, item, _, question = m.groups()
    text = f"{name} has {stated if start is None else start} {item}. {substeps(prompt)[j]} {question}"
    return prompt[: m.start()] + text + prompt[m.end() :]


def compose(parts: list[str], answer: str | None) -> str:
    """One worked solution from the completions of a problem's one-step parts: each part's working, then
    the last part's answer, in the seed's format.

    >>> compose(["12 + 7 = 19. The answer is 19.", "19 - 5 = 14. The answer is 14."], "14")
    '12 + 7 = 19. 19 - 5 = 14. The answer is 14.'
    """
    work = " ".join(w for w in (_SOLVED.sub("", p).strip() for p in parts) if w)
    return work if answer is None else f"{work} The answer is {answer}.".strip()


def prompt_of(text: str, chat) -> str:
    """The model's prompt for problem ``text``: the chat template's user turn, or ``Q: ... A:`` without one."""
    if chat is None:
        return f"Q: {text}\nA: "
    return user_turn(chat, text)


def _problems(
    rng: random.Random, steps: list[int], n: int, max_number: int, taken: set[str], field: str
) -> pd.DataFrame:
    """``n`` distinct problems spread evenly over ``steps``, none of them in ``taken``."""
    if not steps or any(not 1 <= s <= 6 for s in steps):
        raise ValueError(f"word_problems.{field}: step counts must be between 1 and 6 (got {steps})")
    rows = []
    for i, s in enumerate(steps):
        quota = n // len(steps) + (1 if i < n % len(steps) else 0)
        got, tries = 0, 0
        while got < quota:
            tries += 1
            if tries > 50 * quota + 1000:
                raise ValueError(f"word_problems.{field}: cannot draw {quota} distinct {s}-step problems "
                                 f"(raise word_problems.max_number)")
            text, worked = problem(rng, s, max_number)
            if text in taken:
                continue
            taken.add(text)
            rows.append({"text": text, "completion": solution(worked), "difficulty": s})
            got += 1
    return pd.DataFrame(rows, columns=["text", "completion", "difficulty"])


def make_splits(cfg: WordProblemsConfig, seed: int, tokenizer_path: str | None = None) -> dict[str, pd.DataFrame]:
    """Disjoint ``seed`` (worked solutions), ``pool`` (unlabelled), ``val`` and ``test`` (held out) frames.

    The pool has ``pool_per_round * pool_slices`` problems per step count of ``pool_steps`` and a ``slice``
    column; test is drawn first, so no held-out problem is ever in the seed or the pool."""
    rng = random.Random(seed)
    taken: set[str] = set()
    test = _problems(rng, cfg.test_steps, cfg.test_per_steps * len(cfg.test_steps), cfg.max_number, taken, "test_steps")
    val = _problems(rng, cfg.test_steps, cfg.val_per_steps * len(cfg.test_steps), cfg.max_number, taken, "val_per_steps")
    seed_df = _problems(rng, cfg.seed_steps, cfg.seed_size, cfg.max_number, taken, "seed_steps")
    per = cfg.pool_per_round * cfg.pool_slices
    pool = _problems(rng, cfg.pool_steps, per * len(cfg.pool_steps), cfg.max_number, taken, "pool_steps")
    pool["slice"] = pool.groupby("difficulty").cumcount() // cfg.pool_per_round
    chat = chat_tokenizer(tokenizer_path, cfg.chat_template)
    for df in (test, val, seed_df, pool):
        df.insert(0, "prompt", [prompt_of(t, chat) for t in df.pop("text")])
    pool = pool.drop(columns="completion")
    pool.insert(0, "prompt_id", range(len(pool)))
    return {"seed": seed_df, "pool": pool, "val": val, "test": test}
