"""Validation for free text: held-out perplexity on real documents, and how diverse (and, for the
demo, how well-formed) the model's own continuations are.

Diversity is measured on one sampled continuation (the run's sampling settings, a fixed seed) of
each of the first ``text.diversity_prompts`` held-out prompts, so every round is measured on the same
prompts with the same draw of random numbers::

    m = evaluate_text(model, tok, test, SampleConfig(), seed=0, max_new_tokens=64, n_prompts=64)
    m["perplexity"], m["distinct_2"], m["self_bleu"]
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import pandas as pd
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from selffeed.config import SampleConfig
from selffeed.evaluation.validate import completion_loss
from selffeed.filtering.text import ngrams
from selffeed.sampling.sampler import sample_completions


def distinct_n(texts: Sequence[str], n: int) -> float:
    """Distinct word n-grams over all n-grams of ``texts`` (Li et al. 2016); 0 when there are none.

    >>> distinct_n(["a b a b", "a b"], 1), distinct_n(["a b a b", "a b"], 2)
    (0.3333333333333333, 0.5)
    """
    grams = [g for t in texts for g in ngrams(t, n)]
    return len(set(grams)) / len(grams) if grams else 0.0


def ngram_entropy(texts: Sequence[str], n: int = 2) -> float:
    """Shannon entropy (bits) of the word n-gram distribution of ``texts``.

    >>> ngram_entropy(["a b", "c d"], 1)
    2.0
    """
    counts = Counter(g for t in texts for g in ngrams(t, n))
    total = sum(counts.values())
    return -sum(c / total * math.log2(c / total) for c in counts.values()) if total else 0.0


def self_bleu(texts: Sequence[str]) -> float:
    """Mean sentence BLEU (0..100) of each text against all the others: higher is less diverse.

    >>> round(self_bleu(["the cat sat on the mat", "the cat sat on the mat"]), 6)
    100.0
    """
    from sacrebleu.metrics import BLEU

    if len(texts) < 2:
        return 0.0
    bleu = BLEU(effective_order=True)
    scores = [bleu.sentence_score(t, [*texts[:i], *texts[i + 1 :]]).score for i, t in enumerate(texts)]
    return float(sum(scores) / len(scores))


def diversity(texts: Sequence[str]) -> dict[str, float]:
    """distinct-1, distinct-2, bigram entropy and self-BLEU of ``texts``."""
    return {
        "distinct_1": distinct_n(texts, 1),
        "distinct_2": distinct_n(texts, 2),
        "entropy_2": ngram_entropy(texts, 2),
        "self_bleu": self_bleu(texts),
    }


def evaluate_text(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    test: pd.DataFrame,
    sampling: SampleConfig,
    seed: int,
    max_new_tokens: int,
    n_prompts: int,
    wellformed: Callable[[str], bool] | None = None,
) -> dict[str, Any]:
    """Perplexity of ``model`` on ``test``'s real continuations, and diversity (plus the well-formed
    share, when ``wellformed`` is given) of one sampled continuation per held-out prompt."""
    loss = completion_loss(model, tokenizer, test)
    prompts = list(test["prompt"][:n_prompts])
    one = sampling.model_copy(update={"k": 1, "greedy": False})
    outs = sample_completions(model, tokenizer, prompts, one, seed, max_new_tokens)
    texts = [o.text for o in outs]
    metrics: dict[str, Any] = {
        "n_rows": int(len(test)),
        "loss": loss,
        "perplexity": math.exp(min(loss, 50.0)),
        **diversity(texts),
        "mean_words": sum(len(t.split()) for t in texts) / max(len(texts), 1),
    }
    if wellformed is not None:
        metrics["wellformed"] = sum(wellformed(p + t) for p, t in zip(prompts, texts)) / max(len(texts), 1)
    return metrics
