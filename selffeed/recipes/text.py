"""The ``text`` recipe: continue prompts such as "Once upon a time", train on the continuations.

The corpus (``text.data``) is plain text (documents split on ``text.separator``; a glob such as
``corpus/*.txt`` reads several files), JSONL, Parquet or a ``datasets`` ``save_to_disk`` directory
(documents in ``text.text_column``). Without ``text.data`` the offline demo corpus is generated from
the seed by :mod:`selffeed.recipes.stories`, whose grammar lets validation measure how many
generated stories are well-formed.

Every document becomes a training row: the prompt is its first ``text.prompt_words`` words and the
completion the rest (leading space included), so the loss covers what a continuation must produce.
The documents are shuffled with the seed and split into ``val`` and ``test`` (held-out perplexity and
the prompts of the diversity check; ``val`` picks the best round, ``test`` is only reported), prompt documents (the pool: their first words, unless
``text.prompts`` names a file of prompts, one per line), and the real training corpus (``seed``).

The tiny default model uses a word-level tokenizer over the corpus (:func:`word_tokenizer`): words and
punctuation with their leading spaces are tokens, so a story is ~50 tokens instead of ~170 characters.
"""

from __future__ import annotations

import glob
import random
import re
from collections import Counter
from pathlib import Path

import pandas as pd
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from selffeed.config import TextConfig
from selffeed.recipes import stories
from selffeed.recipes.prompts import DataError, read_table
from selffeed.training.model import EOS, PAD, UNK

PIECES = r"\s*\w+|\s*[^\w\s]|\s+"
MAX_WORDS = 10_000
"""Word-level vocabulary cap; rarer pieces become ``<unk>`` (the demo corpus has ~110 pieces)."""


def read_documents(cfg: TextConfig) -> list[str]:
    """The corpus: non-empty documents of ``cfg.data``, in file order."""
    where = f"text.data '{cfg.data}'"
    paths = sorted(glob.glob(cfg.data)) if any(ch in cfg.data for ch in "*?[") else [cfg.data]
    if not paths:
        raise DataError(f"{where}: no file matches the pattern")
    docs: list[str] = []
    for path in paths:
        p = Path(path)
        if p.suffix.lower() == ".txt":
            if not p.is_file():
                raise DataError(f"text.data '{p}': no such file")
            docs += p.read_text(encoding="utf-8").split(cfg.separator)
            continue
        try:  # .parquet/.jsonl/.csv/datasets directory, with the prompts recipe's one-line errors
            df = read_table(p)
        except DataError as err:
            raise DataError(str(err).replace("prompts.data", "text.data", 1)) from None
        if cfg.text_column not in df.columns:
            raise DataError(f"text.data '{p}': no column '{cfg.text_column}' (text.text_column); "
                            f"columns are {', '.join(map(str, df.columns))}")
        docs += [str(v) for v in df[cfg.text_column] if isinstance(v, str)]
    docs = [d.strip() for d in docs if d.strip()]
    if not docs:
        raise DataError(f"{where}: no documents")
    return docs


def split_prompt(doc: str, words: int) -> tuple[str, str]:
    """First ``words`` words and the rest, which keeps its leading space.

    >>> split_prompt("Once upon a time, there was a cat.", 4)
    ('Once upon a time,', ' there was a cat.')
    """
    m = re.match(rf"\s*(?:\S+\s+){{{words - 1}}}\S+", doc)
    return (doc, "") if m is None else (m.group(0), doc[m.end():])


def _rows(docs: list[str], words: int) -> pd.DataFrame:
    pairs = [split_prompt(d, words) for d in docs]
    pairs = [(p, c) for p, c in pairs if c.strip()]  # a document of only prompt words teaches nothing
    return pd.DataFrame({"prompt": [p for p, _ in pairs], "completion": [c for _, c in pairs], "difficulty": 0})


def read_prompts(path: str) -> list[str]:
    """Non-empty lines of a prompt file."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"text.prompts '{p}': no such file")
    lines = [line.strip() for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not lines:
        raise DataError(f"text.prompts '{p}': no prompts")
    return lines


def make_splits(cfg: TextConfig, seed: int) -> dict[str, pd.DataFrame]:
    """``seed`` (real corpus rows), ``pool`` (prompts, with a ``slice`` column), ``val`` and ``test`` frames."""
    docs = read_documents(cfg) if cfg.data else stories.corpus(cfg.demo_docs, seed)
    order = list(range(len(docs)))
    random.Random(seed).shuffle(order)
    docs = [docs[i] for i in order]
    n_prompts = 0 if cfg.prompts else cfg.prompts_per_round * cfg.pool_slices
    where = f"text.data '{cfg.data}'" if cfg.data else "text.demo_docs"
    n_held = cfg.validation_docs + cfg.test_docs
    if len(docs) < n_held + n_prompts + 1:
        raise DataError(f"{where}: {len(docs)} documents, fewer than text.validation_docs + text.test_docs + the prompt "
                        f"documents (text.prompts_per_round x text.pool_slices = {n_prompts}) + 1 for training")
    val = _rows(docs[: cfg.validation_docs], cfg.prompt_words)
    test = _rows(docs[cfg.validation_docs : n_held], cfg.prompt_words)
    held = docs[n_held : n_held + n_prompts]
    train = _rows(docs[n_held + n_prompts :], cfg.prompt_words)
    if cfg.prompts:
        prompts = read_prompts(cfg.prompts)
        per = [prompts[i % len(prompts)] for i in range(cfg.prompts_per_round * cfg.pool_slices)]
    else:
        per = [split_prompt(d, cfg.prompt_words)[0] for d in held]
    pool = pd.DataFrame({
        "prompt_id": range(len(per)), "prompt": per, "difficulty": 0,
        "slice": [i // cfg.prompts_per_round for i in range(len(per))],
    })
    if train.empty or val.empty or test.empty:
        raise DataError(f"{where}: no document is longer than text.prompt_words={cfg.prompt_words} words")
    return {"seed": train, "pool": pool, "val": val, "test": test}


def word_tokenizer(*frames: pd.DataFrame) -> PreTrainedTokenizerFast:
    """A word-level tokenizer over the frames' text: words and punctuation marks, each with the
    whitespace before it, are tokens (most frequent first, at most :data:`MAX_WORDS`).

    >>> tok = word_tokenizer(pd.DataFrame({"prompt": ["Once upon"], "completion": [" a time."]}))
    >>> tok.convert_ids_to_tokens(tok("Once upon a time.")["input_ids"])
    ['Once', ' upon', ' a', ' time', '.']
    """
    counts: Counter[str] = Counter()
    for df in frames:
        for col in ("prompt", "completion"):
            if col in df:
                for text in df[col]:
                    if isinstance(text, str):
                        counts.update(re.findall(PIECES, text))
    vocab = {PAD: 0, EOS: 1, UNK: 2}
    for piece, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:MAX_WORDS]:
        vocab[piece] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(PIECES), "isolated")
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=PAD, eos_token=EOS, unk_token=UNK,
                                   padding_side="left")


def longest_tokens(splits: dict[str, pd.DataFrame], cfg: TextConfig) -> int:
    """Tokens of the tiny default model (``cfg.tokenizer``) in the longest training or held-out document
    plus EOS, or pool prompt plus ``cfg.max_new_tokens``."""
    count = (lambda t: len(re.findall(PIECES, t))) if cfg.tokenizer == "word" else len
    docs = [count(p + c) + 1 for df in (splits["seed"], splits["val"], splits["test"]) for p, c in zip(df["prompt"], df["completion"])]
    prompts = [count(p) + cfg.max_new_tokens for df in (splits["pool"], splits["val"], splits["test"]) for p in df["prompt"]]
    return max(docs + prompts)


def parse_answer(completion: str) -> str | None:
    """A continuation has no answer to vote on: the stripped text, or None when it is empty."""
    return completion.strip() or None
