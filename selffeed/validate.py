"""Validation on held-out labelled data: greedy exact-match accuracy (overall and per difficulty),
or the mean of a scorer over greedy completions, plus teacher-forced loss and perplexity on the
true completions.

::

    m = evaluate(model, tok, test_df, parse_answer, max_new_tokens=5)
    m["accuracy"], m["accuracy_by_difficulty"]["3"], m["perplexity"]
    m = evaluate_scored(model, tok, test_df, "chrf", max_new_tokens=40)
    m["chrf"], m["loss"]
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pandas as pd
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from selffeed.config import SampleConfig
from selffeed.finetune import IGNORE, collate, tokenize_examples
from selffeed.sample import sample_completions
from selffeed.scorers import metric_name, score_rows


@torch.inference_mode()
def completion_loss(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, df: pd.DataFrame, batch_size: int = 256
) -> float:
    """Mean cross-entropy per completion token (EOS included) of ``df``'s true completions."""
    ds = tokenize_examples(df, tokenizer)
    model.eval()
    total, count = 0.0, 0
    columns = ds.to_dict()
    ids_all, labels_all = columns["input_ids"], columns["labels"]
    for start in range(0, len(ds), batch_size):
        idx = list(range(start, min(start + batch_size, len(ds))))
        ids, labels, mask = (t.to(model.device) for t in collate(ids_all, labels_all, idx, tokenizer.pad_token_id))
        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1]
        target = labels[:, 1:]
        loss = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]).float(), target.reshape(-1), ignore_index=IGNORE, reduction="sum"
        )
        total += float(loss)
        count += int((target != IGNORE).sum())
    return total / max(count, 1)


def exact_match(
    predicted: list[str | None], truth: list[str | None]
) -> list[bool]:
    """Element-wise equality of parsed answers; a malformed prediction (None) is never right."""
    return [p is not None and p == t for p, t in zip(predicted, truth)]


def evaluate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    test: pd.DataFrame,
    parse_answer: Callable[[str], str | None],
    max_new_tokens: int,
    batch_prompts: int = 512,
) -> dict[str, Any]:
    """Metrics of ``model`` on ``test`` (columns ``prompt``, ``completion``, ``difficulty``)."""
    greedy = SampleConfig(greedy=True, batch_prompts=batch_prompts)
    outs = sample_completions(model, tokenizer, list(test["prompt"]), greedy, 0, max_new_tokens)
    predicted = [parse_answer(o.text) for o in outs]
    truth = [parse_answer(c) for c in test["completion"]]
    right = pd.Series(exact_match(predicted, truth), index=test.index)
    by = right.groupby(test["difficulty"]).mean()
    loss = completion_loss(model, tokenizer, test)
    return {
        "accuracy": float(right.mean()),
        "accuracy_by_difficulty": {str(int(d)): float(a) for d, a in by.items()},
        "accuracy_hardest": float(by.iloc[-1]) if len(by) else 0.0,
        "n_rows": int(len(test)),
        "loss": loss,
        "perplexity": math.exp(min(loss, 50.0)),
    }


def evaluate_scored(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    test: pd.DataFrame,
    scorer: str,
    max_new_tokens: int,
    batch_prompts: int = 512,
) -> dict[str, Any]:
    """Mean score of greedy completions of ``test`` (``prompt``, ``completion``, ``reference``) under
    ``scorer``, named by :func:`~selffeed.scorers.metric_name`, plus loss on the true completions.

    Rows the scorer leaves unscored (None) are left out of the mean; ``n_scored`` counts the others.
    """
    greedy = SampleConfig(greedy=True, batch_prompts=batch_prompts)
    outs = sample_completions(model, tokenizer, list(test["prompt"]), greedy, 0, max_new_tokens)
    scores = score_rows(scorer, [o.text for o in outs], list(test["reference"]), list(test["prompt"]))
    got = [x for x in scores if x is not None]
    loss = completion_loss(model, tokenizer, test)
    return {
        "metric": metric_name(scorer),
        metric_name(scorer): float(sum(got) / len(got)) if got else 0.0,
        "n_rows": int(len(test)),
        "n_scored": len(got),
        "loss": loss,
        "perplexity": math.exp(min(loss, 50.0)),
    }
