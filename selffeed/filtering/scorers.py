"""Scorers: plain callables ``score(samples, **kw) -> list[float]``, one float per completion.

``samples`` is a list of completions; keyword arguments carry what a scorer may need, aligned with
it: ``references`` (the reference answers) and ``prompts``. The same scorer serves validation (its
mean over the held-out split is a metric of that name) and filtering (``filter.min_score``,
``filter.best_of_k``). Built-in scorers compare with a reference and are only called on rows that
have one; a user scorer (``'path/to/file.py:function'`` or ``'module:function'``) sees every row, with
``None`` where a reference is missing, and may return ``None`` for a row it cannot score.

>>> exact_match(["The Paris."], references=["paris"])
[1.0]
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import re
import string
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

Scorer = Callable[..., list[float]]

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")
_HASHES = re.compile(r"####\s*(-?[\d,]*\.?\d+)")


def normalize(text: str) -> str:
    """SQuAD-style normalization: lowercase, no punctuation, no articles, single spaces.

    >>> normalize("  The  Eiffel-Tower! ")
    'eiffeltower'
    """
    text = text.lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def exact_match(samples: Sequence[str], references: Sequence[str], **kw: Any) -> list[float]:
    """1.0 where the normalized completion equals the normalized reference, else 0.0.

    >>> exact_match(["an apple", "pear"], references=["Apple", "plum"])
    [1.0, 0.0]
    """
    return [float(normalize(s) == normalize(r)) for s, r in zip(samples, references)]


def extract_final(text: str) -> str | None:
    """The final answer of a worked solution: the number after ``####``, else the last number.

    Commas and a trailing ``.0`` are dropped so ``1,000`` and ``1000.0`` compare equal to ``1000``.

    >>> extract_final("3 + 4 = 7\\n#### 7"), extract_final("so 1,200 in total."), extract_final("none")
    ('7', '1200', None)
    """
    m = _HASHES.search(text)
    found = m.group(1) if m else (_NUMBER.findall(text) or [None])[-1]
    if found is None:
        return None
    value = found.replace(",", "").rstrip(".")
    if "." in value:
        value = value.rstrip("0").rstrip(".")
    return value or None


def final_answer(samples: Sequence[str], references: Sequence[str], **kw: Any) -> list[float]:
    """1.0 where the completion's final answer (see :func:`extract_final`) equals the reference's.

    >>> final_answer(["2 + 2 = 4\\n#### 4", "it is 5"], references=["4", "#### 6"])
    [1.0, 0.0]
    """
    out = []
    for s, r in zip(samples, references):
        got, want = extract_final(s), extract_final(r)
        out.append(float(got is not None and got == want))
    return out


def bleu(samples: Sequence[str], references: Sequence[str], **kw: Any) -> list[float]:
    """Sentence BLEU (sacrebleu defaults, 0..100) of each completion against its reference.

    >>> [round(x, 2) for x in bleu(["the cat sat on the mat"], references=["the cat sat on the mat"])]
    [100.0]
    """
    from sacrebleu.metrics import BLEU

    metric = BLEU(effective_order=True)  # sentence-level BLEU needs effective order
    return [float(metric.sentence_score(s, [r]).score) for s, r in zip(samples, references)]


def chrf(samples: Sequence[str], references: Sequence[str], **kw: Any) -> list[float]:
    """Sentence chrF (sacrebleu defaults: char 6-grams, beta 2; 0..100) against the reference.

    >>> [round(x, 2) for x in chrf(["le chat", "xyz"], references=["le chat", "le chien"])]
    [100.0, 0.0]
    """
    from sacrebleu.metrics import CHRF

    metric = CHRF()
    return [float(metric.sentence_score(s, [r]).score) for s, r in zip(samples, references)]


def rouge_l(samples: Sequence[str], references: Sequence[str], **kw: Any) -> list[float]:
    """ROUGE-L F-measure (``rouge-score``, Porter stemming; 0..1) of each completion.

    >>> rouge_l(["the cat sat"], references=["the cat sat"])
    [1.0]
    """
    from rouge_score.rouge_scorer import RougeScorer

    metric = RougeScorer(["rougeL"], use_stemmer=True)
    return [float(metric.score(r, s)["rougeL"].fmeasure) for s, r in zip(samples, references)]


# Built-in scorers by config name; each is also the name of its validation metric.
BUILTIN: dict[str, Scorer] = {
    "exact_match": exact_match,
    "final_answer": final_answer,
    "bleu": bleu,
    "chrf": chrf,
    "rougeL": rouge_l,
}


class ScorerError(ValueError):
    """A scorer cannot be loaded or returned something unusable; the message is one line naming it."""


def metric_name(spec: str) -> str:
    """The validation metric a scorer spec reports: a built-in's name, or a user function's name.

    >>> metric_name("chrf"), metric_name("my_scores.py:brevity")
    ('chrf', 'brevity')
    """
    return spec if spec in BUILTIN else spec.rpartition(":")[2]


def load_callable(spec: str, label: str, error: type[ValueError] = ValueError) -> Callable[..., Any]:
    """Import ``'path/to/file.py:function'`` or ``'package.module:function'``; any failure raises
    ``error`` with one line starting ``label 'spec':``. Shared by scorers and filter verifiers."""
    module, _, attr = spec.rpartition(":")
    if module.endswith(".py") or "/" in module:
        path = Path(module).expanduser()
        if not path.is_file():
            raise error(f"{label} '{spec}': file {path} not found")
        name = f"selffeed_user_{path.stem}"
        loader = importlib.util.spec_from_file_location(name, path)
        mod = importlib.util.module_from_spec(loader)
        sys.modules[name] = mod  # lets the user's file use dataclasses, pickling, ...
        try:
            loader.loader.exec_module(mod)
        except Exception as err:
            sys.modules.pop(name, None)
            raise error(f"{label} '{spec}': importing {path} failed ({type(err).__name__}: {err})") from None
    else:
        try:
            mod = importlib.import_module(module)
        except ImportError as err:
            raise error(f"{label} '{spec}': cannot import module '{module}' ({err})") from None
    fn = getattr(mod, attr, None)
    if fn is None:
        raise error(f"{label} '{spec}': '{module}' has no attribute '{attr}'")
    if not callable(fn):
        raise error(f"{label} '{spec}': '{attr}' is not callable")
    return fn


def load_scorer(spec: str) -> Scorer:
    """A built-in scorer by name, or ``'path/to/file.py:function'`` / ``'package.module:function'``.

    A user function must accept ``(samples, references=..., prompts=...)``, e.g. ``def f(samples, **kw)``.
    """
    if spec in BUILTIN:
        return BUILTIN[spec]
    module, _, attr = spec.rpartition(":")
    if not module or not attr:
        raise ScorerError(
            f"scorer '{spec}': expected one of {', '.join(BUILTIN)} or 'path/to/file.py:function'"
        )
    fn = load_callable(spec, "scorer", ScorerError)
    try:
        inspect.signature(fn).bind(["x"], references=["x"], prompts=["x"])
    except TypeError as err:
        raise ScorerError(
            f"scorer '{spec}': wrong signature {attr}{inspect.signature(fn)} ({err}); "
            f"expected {attr}(samples, **kw) -> list[float]"
        ) from None
    except ValueError:  # builtins without a signature: trust them
        pass
    return fn


def score_rows(
    spec: str, samples: Sequence[str], references: Sequence[str | None], prompts: Sequence[str]
) -> list[float | None]:
    """Scores of ``samples`` by the scorer ``spec``; ``None`` where it cannot score a row.

    Built-ins score only rows with a reference; a user scorer is called once on every row.

    >>> score_rows("exact_match", ["4", "5"], ["4", None], ["2+2=", "2+3="])
    [1.0, None]
    """
    fn = load_scorer(spec)
    # pandas hands missing strings over as None or NaN; both mean "no reference".
    references = [None if r is None or (isinstance(r, float) and r != r) else r for r in references]
    if spec in BUILTIN:
        idx = [i for i, r in enumerate(references) if r is not None]
        got = fn([samples[i] for i in idx], references=[references[i] for i in idx]) if idx else []
        out: list[float | None] = [None] * len(samples)
        for i, v in zip(idx, got):
            out[i] = float(v)
        return out
    got = fn(list(samples), references=list(references), prompts=list(prompts))
    if not isinstance(got, Sequence) or isinstance(got, str) or len(got) != len(samples):
        size = len(got) if isinstance(got, Sequence) else type(got).__name__
        raise ScorerError(f"scorer '{spec}': returned {size} for {len(samples)} samples; expected a list of floats")
    try:
        return [None if v is None else float(v) for v in got]
    except (TypeError, ValueError):
        raise ScorerError(f"scorer '{spec}': returned a non-number; expected a list of floats") from None
