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
from collections.abc import Callable, Sequence
from typing import Any

import pandas as pd
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from selffeed.config import SampleConfig
from selffeed.filtering.scorers import metric_name, score_rows
from selffeed.sampling.packed import packed_linears
from selffeed.sampling.sampler import sample_completions
from selffeed.training.finetune import IGNORE, collate, tokenize_examples


@torch.inference_mode()
def token_nll(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str], completions: Sequence[str],
    batch_size: int = 16,
) -> list[tuple[float, int]]:
    """(summed cross-entropy, token count) of each completion (EOS included) after its prompt under ``model``."""
    if not len(prompts):
        return []
    ds = tokenize_examples(pd.DataFrame({"prompt": list(prompts), "completion": list(completions)}), tokenizer)
    columns = ds.to_dict()
    ids_all, labels_all = columns["input_ids"], columns["labels"]
    # Longest first, so a batch pads little; results go back to their rows.
    order = sorted(range(len(ids_all)), key=lambda i: -len(ids_all[i]))
    out: list[tuple[float, int]] = [(0.0, 0)] * len(ids_all)
    model.eval()
    vocab = model.get_output_embeddings().weight.shape[0]
    with packed_linears(model):  # CPU: 1.09-1.14x on SmolLM2-135M, 128 rows, packing included
        for idx in logit_batches(order, [len(ids) for ids in ids_all], vocab, batch_size):
            batch = collate(ids_all, labels_all, idx, tokenizer.pad_token_id)
            ids, labels, mask = (t.to(model.device) for t in batch)
            logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
            target = labels[:, 1:]
            nll = torch.nn.functional.cross_entropy(
                logits.transpose(1, 2), target, ignore_index=IGNORE, reduction="none"
            ).sum(dim=1)
            counts = (target != IGNORE).sum(dim=1)
            for j, i in enumerate(idx):
                out[i] = (float(nll[j]), int(counts[j]))
    return out


# Logits (rows x positions x vocabulary) one forward of token_nll may hold: 256 MB in fp32. A real model's
# vocabulary makes each row large (SmolLM2: 49,152 x ~130 positions, 25 MB a row), so a fixed row count
# that suits a tiny model took 20 GB for 256 rows.
LOGITS_BUDGET = 2**26


def logit_batches(order: Sequence[int], lengths: Sequence[int], vocab: int, batch_size: int) -> list[list[int]]:
    """``order`` cut into runs of at most ``batch_size`` rows whose padded logits stay within
    :data:`LOGITS_BUDGET` elements (one row at least, however long)."""
    batches: list[list[int]] = []
    longest = 0
    for i in order:
        longest = max(longest, lengths[i])
        if batches and len(batches[-1]) < batch_size and (len(batches[-1]) + 1) * longest * vocab <= LOGITS_BUDGET:
            batches[-1].append(i)
        else:
            batches.append([i])
            longest = lengths[i]
    return batches


def completion_loss(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, df: pd.DataFrame, batch_size: int = 256
) -> float:
    """Mean cross-entropy per completion token (EOS included) of ``df``'s true completions."""
    nll = token_nll(model, tokenizer, list(df["prompt"]), list(df["completion"]), batch_size)
    return sum(s for s, _ in nll) / max(sum(n for _, n in nll), 1)


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
    ``scorer``, named by :func:`~selffeed.filtering.scorers.metric_name`, plus loss on the true completions.

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
