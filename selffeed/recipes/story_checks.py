"""The constrained-story recipe's guards and validation: keep the best story of k that meets its constraints
without degenerating, and measure held-out stories on the constraints and on the guards.

A checker of words and length is easy to win by writing worse text: a word list, a loop, the same story
for every prompt. So every kept story must also pass three guards, each a filter here and a validation
figure in :func:`evaluate_stories`:

- repetition: its share of repeated word 3-grams (a loop) stays below ``max_repeat_ratio``;
- diversity: it is no near-copy of a story kept before (word 3-gram Jaccard below ``near_dup``); the
  validation figure is distinct-2 of the held-out stories, which the collapse guard compares across rounds;
- naturalness: its perplexity under the frozen base model (``model.path``) is at most
  ``max_ref_perplexity``; validation reports the held-out stories' perplexity under it as ``perplexity``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import pandas as pd
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from selffeed.config import RunConfig, SampleConfig
from selffeed.evaluation.text import distinct_n
from selffeed.evaluation.validate import completion_loss, token_nll
from selffeed.filtering.filters import best_of_k, length_ok, score_at_least
from selffeed.filtering.text import near_dedup, repeat_ratio, repetition_ok
from selffeed.recipes.constrained_stories import CONSTRAINTS, checks, score
from selffeed.sampling.sampler import sample_completions

Reference = tuple[PreTrainedModel, PreTrainedTokenizerBase]
"""The frozen base model and its tokenizer, which judge how natural a story is."""


def ref_perplexities(reference: Reference, prompts: Sequence[str], completions: Sequence[str]) -> list[float]:
    """Perplexity of each completion under the frozen reference model: exp(mean NLL per token)."""
    return [math.exp(min(s / max(n, 1), 50.0)) for s, n in token_nll(*reference, prompts, completions)]


def story_filters(
    samples: pd.DataFrame, cfg: RunConfig, earlier: Sequence[str] = (), reference: Reference | None = None
) -> pd.DataFrame:
    """The kept stories of ``samples`` (scored: column ``score``): per prompt, the best-scoring story of those
    that pass ``filter.min_score`` and the guards ``cfg.constrained_stories`` enables, then near-copies of a
    story kept before (``earlier``: the stories kept in earlier rounds, then this round's) dropped. Returns the kept rows with
    ``agreement``, ``votes`` (0: no vote), ``ref_perplexity`` and ``passed`` (the filters applied)."""
    c, f = cfg.constrained_stories, cfg.filter
    passed = ["length"]
    keep = length_ok(samples, f.min_chars, f.max_chars)
    if f.min_score is not None:
        keep &= score_at_least(samples, f.min_score)
        passed.append("min_score")
    if c.max_repeat_ratio is not None:
        keep &= repetition_ok(samples, c.max_repeat_ratio, 3)
        passed.append("repetition")
    samples = samples.assign(ref_perplexity=math.nan)
    if c.max_ref_perplexity is not None:
        if reference is None:
            raise ValueError("constrained_stories.max_ref_perplexity: needs the frozen base model (model.path)")
        # Only the survivors are scored: a forward pass of the base model per story is this stage's cost.
        rows = samples[keep]
        samples.loc[rows.index, "ref_perplexity"] = ref_perplexities(
            reference, list(rows["prompt"]), list(rows["completion"])
        )
        keep &= samples["ref_perplexity"] <= c.max_ref_perplexity
        passed.append("ref_perplexity")
    candidates = samples[keep]
    if f.best_of_k:
        candidates = candidates[best_of_k(candidates)]
        passed.append("best_of_k")
    if c.near_dup is not None:  # stories alone: every prompt shares the request's wording
        candidates = candidates[near_dedup(candidates.assign(prompt=""), c.near_dup, 3, earlier)]
        passed.append("near_dup")
    return candidates.assign(agreement=0.0, votes=0, passed=",".join(passed)).reset_index(drop=True)


def story_metrics(prompts: Sequence[str], stories: Sequence[str]) -> dict[str, Any]:
    """Constraint and guard figures of ``stories`` (one per prompt) that need no model: the share meeting
    every constraint (``constraints_met``), the mean share met (``constraint_score``), each constraint
    group's rate, distinct-1/2 over all stories, mean repeated-3-gram share and mean length in words."""
    n = max(len(stories), 1)
    per = [checks(s, p) for s, p in zip(stories, prompts)]
    return {
        "constraints_met": sum(all(c[k] for k in CONSTRAINTS) for c in per) / n,
        "constraint_score": sum(score(s, p) for s, p in zip(stories, prompts)) / n,
        **{f"met_{k}": sum(c[k] for c in per) / n for k in CONSTRAINTS},
        "distinct_1": distinct_n(stories, 1),
        "distinct_2": distinct_n(stories, 2),
        "repeat_ratio": sum(repeat_ratio(s, 3) for s in stories) / n,
        "mean_words": sum(len(s.split()) for s in stories) / n,
    }


def evaluate_stories(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    held_out: pd.DataFrame,
    max_new_tokens: int,
    reference: Reference | None,
    sampling: SampleConfig,
    seed: int,
    batch_prompts: int = 512,
) -> dict[str, Any]:
    """The constraints met by ``model``'s greedy story for each of ``held_out``'s prompts (the figures of
    :func:`story_metrics`), and the guards measured on one sampled story per prompt (``sampling``'s
    temperature, ``seed``): distinct-1/2, repeated 3-grams, length and, with a ``reference``, perplexity under
    it (``perplexity``, and its log as ``loss``; absent without one).

    The guards read sampled stories because they watch what the loop trains on, and because greedy
    decoding of a small model loops: loops are repetitive but easy to predict, so a greedy round 0 would
    set a perplexity no real story can meet. Three greedy stories are kept under ``examples``."""
    prompts = list(held_out["prompt"])
    greedy = SampleConfig(greedy=True, batch_prompts=batch_prompts)
    stories = [o.text for o in sample_completions(model, tokenizer, prompts, greedy, 0, max_new_tokens)]
    one = sampling.model_copy(update={"k": 1, "greedy": False, "batch_prompts": batch_prompts})
    drawn = [o.text for o in sample_completions(model, tokenizer, prompts, one, seed, max_new_tokens)]
    on_greedy, on_drawn = story_metrics(prompts, stories), story_metrics(prompts, drawn)
    metrics: dict[str, Any] = {
        "metric": "constraints_met",
        "n_rows": len(prompts),
        **{k: on_greedy[k] for k in ("constraints_met", "constraint_score", *(f"met_{c}" for c in CONSTRAINTS))},
        "greedy_repeat_ratio": on_greedy["repeat_ratio"],
        "greedy_words": on_greedy["mean_words"],
        "sampled_constraints_met": on_drawn["constraints_met"],
        **{k: on_drawn[k] for k in ("distinct_1", "distinct_2", "repeat_ratio", "mean_words")},
    }
    if reference is not None:
        loss = completion_loss(*reference, pd.DataFrame({"prompt": prompts, "completion": drawn}))
        metrics |= {"loss": loss, "perplexity": math.exp(min(loss, 50.0))}
    metrics["examples"] = stories[:3]
    return metrics
