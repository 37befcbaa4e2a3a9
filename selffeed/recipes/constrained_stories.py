"""The constrained-story recipe: "Once upon a time" stories that must use given words, checked by a program.

A prompt asks a chat model for a short story with constraints that can be checked without labels
(after TinyStories' required words and AutoIF's checkable instructions)::

    Write a short story for children, 40 to 150 words long, that begins with "Once upon a time" and
    uses the words "lantern", "river" and "cookie".

:func:`checks` reads the constraints back from the prompt, so a story is scored from the prompt alone:
it begins with the opening, uses each required word (a plural counts), stays within the length band and
ends with a full sentence (a story cut off by the token limit does not). :func:`constraint_score` is the
share met, the recipe's scorer. Word sets are drawn from :data:`WORDS`; the held-out splits use word
sets that no pool prompt uses, so validation and test measure the skill, not memorised triples.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from typing import Any

import pandas as pd

from selffeed.config import ConstrainedStoriesConfig
from selffeed.recipes.prompts import chat_tokenizer, user_turn

WORDS = (
    "apple", "river", "lantern", "dragon", "garden", "hat", "boat", "cookie", "moon", "bridge", "kite", "castle",
    "puppy", "rain", "forest", "ball", "candle", "key", "cloud", "shell", "train", "owl", "map", "cake", "drum",
    "frog", "window", "blanket", "star", "tree", "bell", "robot", "flower", "door", "bicycle", "mountain", "fish",
    "box", "sock", "lamp", "pond", "wagon", "balloon", "crown", "feather", "button", "tower", "island", "kitten",
    "snow", "honey", "clock", "ladder", "mirror", "rabbit", "carrot", "boot", "whistle", "nest", "treasure",
)
"""Concrete nouns a small model can write about; each prompt draws ``words_per_story`` of them."""

OPENING = "Once upon a time"
_WORDS_IN_PROMPT = re.compile(r'uses the words? ((?:"[a-z]+"(?:, | and )?)+)')
_QUOTED = re.compile(r'"([a-z]+)"')
_BAND = re.compile(r"(\d+) to (\d+) words long")
_ENDS = re.compile(r"[.!?][\"')\]]*$")
CONSTRAINTS = ("opening", "words", "length", "ending")
"""The constraint groups :func:`checks` reports (``words`` is met when every required word is used)."""


def request(words: Sequence[str], min_words: int, max_words: int) -> str:
    """The user's request for a story with ``words`` in the length band."""
    quoted = [f'"{w}"' for w in words]
    listed = quoted[0] if len(quoted) == 1 else f"{', '.join(quoted[:-1])} and {quoted[-1]}"
    noun = "word" if len(quoted) == 1 else "words"
    return (f"Write a short story for children, {min_words} to {max_words} words long, that begins with "
            f'"{OPENING}" and uses the {noun} {listed}.')


def constraints_of(prompt: str) -> tuple[list[str], int, int]:
    """The required words and the length band stated in ``prompt`` (a request, chat template and all).

    >>> constraints_of(request(["owl", "map"], 40, 150))
    (['owl', 'map'], 40, 150)
    """
    words, band = _WORDS_IN_PROMPT.search(prompt), _BAND.search(prompt)
    if words is None or band is None:
        raise ValueError(f"not a constrained-story prompt: {prompt[:80]!r}")
    return _QUOTED.findall(words.group(1)), int(band.group(1)), int(band.group(2))


def uses(story: str, word: str) -> bool:
    """Whether ``story`` uses ``word`` as a word (any case; a plural counts, "keyboard" is not "key")."""
    return re.search(rf"\b{re.escape(word)}(?:s|es)?\b", story, re.IGNORECASE) is not None


def checks(story: str, prompt: str) -> dict[str, Any]:
    """Each constraint of ``prompt`` for ``story``: ``opening``, ``word:<w>`` per required word, ``words``
    (all used), ``length`` and ``ending``.

    >>> c = checks("Once upon a time an owl lost a map. The end.", request(["owl", "map"], 5, 20))
    >>> c["opening"], c["words"], c["length"], c["ending"]
    (True, True, True, True)
    """
    words, low, high = constraints_of(prompt)
    text = story.strip()
    out: dict[str, Any] = {"opening": text.startswith(OPENING)}
    for w in words:
        out[f"word:{w}"] = uses(text, w)
    out["words"] = all(out[f"word:{w}"] for w in words)
    out["length"] = low <= len(text.split()) <= high
    out["ending"] = _ENDS.search(text) is not None
    return out


def score(story: str, prompt: str) -> float:
    """Share of the prompt's constraints ``story`` meets: the opening, each required word, the length
    band and the ending count one each."""
    c = checks(story, prompt)
    met = [v for k, v in c.items() if k != "words"]
    return sum(met) / len(met)


def constraint_score(samples: Sequence[str], prompts: Sequence[str], **kw: Any) -> list[float]:
    """The recipe's scorer (see :mod:`selffeed.filtering.scorers`): :func:`score` of each completion under its prompt.
    It reads only the prompt, never a reference."""
    return [score(s, p) for s, p in zip(samples, prompts)]


def parse_answer(completion: str) -> str | None:
    """A story has no answer to vote on: the stripped text, or None when it is empty."""
    return completion.strip() or None


def prompt_of(text: str, chat) -> str:
    """The chat template's user turn for ``text`` (the bare request plus a newline without one)."""
    if chat is None:
        return f"{text}\n"
    return user_turn(chat, text)


def _word_sets(rng: random.Random, words: Sequence[str], per: int, n: int, taken: set[frozenset[str]], field: str):
    out = []
    for _ in range(50 * n + 1000):
        if len(out) == n:
            return out
        ws = rng.sample(list(words), per)
        if frozenset(ws) not in taken:
            taken.add(frozenset(ws))
            out.append(ws)
    raise ValueError(f"constrained_stories.{field}: cannot draw {n} distinct word sets of {per} from "
                     f"{len(words)} words (add words or lower words_per_story)")


def make_splits(
    cfg: ConstrainedStoriesConfig, seed: int, tokenizer_path: str | None = None
) -> dict[str, pd.DataFrame]:
    """``test`` and ``val`` (held-out prompts), the unlabelled ``pool`` (``pool_per_round * pool_slices``
    prompts with a ``slice`` column) and an empty ``seed``: no story is ever labelled. No two prompts share
    a word set, so the held-out word sets are never used in training."""
    words = list(cfg.words or WORDS)
    if len(set(words)) < cfg.words_per_story or any(not re.fullmatch(r"[a-z]+", w) for w in words):
        raise ValueError(f"constrained_stories.words: need at least {cfg.words_per_story} distinct lowercase words")
    rng, taken = random.Random(seed), set()
    chat = chat_tokenizer(tokenizer_path)

    def frame(n: int, field: str) -> pd.DataFrame:
        sets = _word_sets(rng, words, cfg.words_per_story, n, taken, field)
        text = [request(ws, cfg.min_words, cfg.max_words) for ws in sets]
        return pd.DataFrame({"prompt": [prompt_of(t, chat) for t in text], "completion": "", "difficulty": 0})

    test = frame(cfg.test_prompts, "test_prompts")
    val = frame(cfg.val_prompts, "val_prompts")
    pool = frame(cfg.pool_per_round * cfg.pool_slices, "pool_per_round").drop(columns="completion")
    pool["slice"] = [i // cfg.pool_per_round for i in range(len(pool))]
    pool.insert(0, "prompt_id", range(len(pool)))
    return {"seed": test.iloc[:0], "pool": pool, "val": val, "test": test}
