"""Where kept labels come from besides the vote, and how right they are.

Equivalent views of prompts to sample (the views filter), greedy answers of an ensemble of earlier
models (the ensemble filter), the oracle control arm's true labels, and the hidden truth that only
reporting and the audit may consult. Plain functions over a config, frames and manifests.
"""

from __future__ import annotations

from collections.abc import Callable

import pandas as pd

from selffeed import schema
from selffeed.config import ConfigError, RunConfig
from selffeed.layout import RunLayout
from selffeed.manifest import Manifest
from selffeed.model import load_checkpoint
from selffeed.recipes import recipe_for
from selffeed.sample import sample_completions


def with_views(pool: pd.DataFrame, views: Callable[[str], list[str]]) -> pd.DataFrame:
    """``pool`` with a ``view`` column (0) followed by each prompt's equivalent views (1, 2, ...) as
    extra rows under the same ``prompt_id``."""
    extra = [
        {**row, "prompt": v, "view": i}
        for row in pool.to_dict("records")
        for i, v in enumerate(views(row["prompt"]), start=1)
    ]
    base = pool.assign(view=0)
    return pd.concat([base, pd.DataFrame(extra, columns=base.columns)], ignore_index=True) if extra else base


def in_prompt_frame(
    samples: pd.DataFrame, k: int, view_answer: Callable[[str, str, str | None], str | None]
) -> tuple[pd.DataFrame, dict[str, str]]:
    """``samples`` with each view's ``answer`` replaced by the answer it implies for its prompt (the
    view with ``sample_idx < k``), so one vote can pool all views; the raw answer moves to
    ``view_answer``. Also returns view prompt -> prompt, to map an ensemble's answers the same way."""
    first = samples.loc[samples["sample_idx"] < k].drop_duplicates("prompt_id").set_index("prompt_id")["prompt"]
    original = samples["prompt_id"].map(first).fillna(samples["prompt"])
    mapped = [
        a if p == o else view_answer(o, p, None if pd.isna(a) else a)
        for o, p, a in zip(original, samples["prompt"], samples["answer"])
    ]
    of = dict(zip(samples["prompt"], original))
    return samples.assign(view_answer=samples["answer"], answer=mapped), of


def ensemble_answers(cfg: RunConfig, prompts: list[str], models: list[Manifest]) -> pd.DataFrame:
    """Greedy answers of each model in ``models`` to ``prompts``: rows (prompt, model_id, answer)."""
    recipe = recipe_for(cfg)
    greedy = cfg.sample.model_copy(update={"greedy": True})
    rows = []
    for m in models if prompts else []:
        lm, tokenizer = load_checkpoint(m.path("model"))
        outs = sample_completions(lm, tokenizer, prompts, greedy, 0, recipe.max_new_tokens)
        model_id = RunLayout.of(cfg.runs_dir, cfg.name).model_id(m.round or 0)
        rows += [(p, model_id, recipe.parse_answer(o.text)) for p, o in zip(prompts, outs)]
    return pd.DataFrame(rows, columns=["prompt", "model_id", "answer"])


def oracle_kept(cfg: RunConfig, samples: pd.DataFrame) -> pd.DataFrame:
    """The oracle control arm's "filter": one row per prompt, labelled with the recipe's true answer.

    Provenance columns are those of the prompt's first sample; ``votes``/``agreement`` count the
    samples that were right. Only ``filter.oracle`` (a control arm) ever calls this.
    """
    recipe = recipe_for(cfg)
    if recipe.true_completion is None:
        raise ConfigError(f"filter.oracle: recipe {cfg.recipe} has no true answers to label the pool with")
    kept = samples.drop_duplicates("prompt_id").reset_index(drop=True)
    kept["completion"] = [recipe.true_completion(p) for p in kept["prompt"]]
    kept["answer"] = [recipe.parse_answer(c) for c in kept["completion"]]
    truth = samples["prompt_id"].map(dict(zip(kept["prompt_id"], kept["answer"])))
    right = samples["answer"].eq(truth).groupby(samples["prompt_id"]).agg(["sum", "size"])
    kept["votes"] = kept["prompt_id"].map(right["sum"]).astype(int)
    kept["agreement"] = (kept["votes"] / kept["prompt_id"].map(right["size"])).astype(float)
    kept["score"] = float("nan")
    kept["passed"] = "oracle"
    return kept


def audit_truth(cfg: RunConfig, data: Manifest, kept: pd.DataFrame) -> tuple[Callable[[str], str | None] | None, pd.DataFrame]:
    """The audit's answer checker and the kept rows it can check: every row when the recipe computes
    answers, else the rows of gold prompts (``prompts.gold``); (None, empty) when neither exists."""
    recipe = recipe_for(cfg)
    if recipe.true_completion is not None:
        true = recipe.true_completion
        return (lambda p: recipe.parse_answer(true(p))), kept
    if "gold" not in data.paths:
        return None, kept.iloc[:0]
    gold = schema.read(data.path("gold"), schema.LABELLED)
    answers = dict(zip(gold["prompt"], (recipe.parse_answer(c) for c in gold["completion"])))
    return answers.get, kept[kept["prompt"].isin(answers)]


def kept_precision(cfg: RunConfig, kept: pd.DataFrame) -> float | None:
    """Share of kept rows whose answer is right, from the recipe's hidden truth (reporting only)."""
    recipe = recipe_for(cfg)
    if kept.empty or recipe.true_completion is None:
        return None
    truth = [recipe.parse_answer(recipe.true_completion(p)) for p in kept["prompt"]]
    return float(sum(a == t for a, t in zip(kept["answer"], truth)) / len(kept))
