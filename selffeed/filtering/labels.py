"""Where kept labels come from besides the vote, how right they are, and how many true labels a round used.

Equivalent views of prompts to sample (the views filter), greedy answers of an ensemble of earlier
models (the ensemble filter), the oracle control arm's true labels, and the hidden truth that only
reporting and the audit may consult. Plain functions over a config, frames and manifests.

:func:`labels_used` counts the true labels a round used, by kind, and which settings use them:

- ``seed``: the labelled seed rows in the round's training mix (every run);
- ``references``: pool prompts whose reference a score filter judged samples by (``filter.min_score``
  or ``best_of_k`` with ``prompts.scorer``): supervised rejection sampling (RAFT, STaR), not label-free;
- ``oracle``: rows labelled with true answers (``filter.oracle``, the oracle control arm);
- ``audit``: answers the audit checked when ``audit.min_precision`` is set (a low estimate stops the
  loop); without it they only inform the report and are counted as ``audit_reported``;
- ``validation``: the labelled rows of the held-out validation split, which picks the best round and
  drives patience and the curriculum (the test split decides nothing and is not counted; prompts whose
  answers a program checks, as the constrained-story recipe's, carry no label).

``total`` adds up every kind that can change training, stopping or the best round (all but
``audit_reported``). ``filter.label_free`` refuses the settings behind ``references``, ``oracle`` and
``audit``, so a label-free round uses seed and validation labels only.
"""

from __future__ import annotations

from collections.abc import Callable

import pandas as pd
import pyarrow.parquet as pq

from selffeed.config import ConfigError, RunConfig
from selffeed.filtering.audit import audit
from selffeed.recipes import recipe_for
from selffeed.run import schema
from selffeed.run.layout import RunLayout
from selffeed.run.manifest import Manifest
from selffeed.sampling.sampler import sample_completions
from selffeed.training.model import load_checkpoint
from selffeed.training.precision import compute_dtype


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
        lm, tokenizer = load_checkpoint(m.path("model"), compute_dtype(cfg))
        outs = sample_completions(lm, tokenizer, prompts, greedy, 0, recipe.max_new_tokens)
        model_id = RunLayout.of(cfg.runs_dir, cfg.name).model_id(m.round or 0)
        rows += [(p, model_id, recipe.parse_answer(o.text)) for p, o in zip(prompts, outs)]
    return pd.DataFrame(rows, columns=["prompt", "model_id", "answer"])


def oracle_kept(cfg: RunConfig, samples: pd.DataFrame) -> pd.DataFrame:
    """The oracle control arm's "filter": one row per prompt and view (each distinct ``prompt`` under a
    ``prompt_id``), labelled with the recipe's true completion of that view's own prompt, so the arm
    trains on the same prompts and views the self arm sampled.

    Provenance columns are those of the view's first sample; ``votes``/``agreement`` count the view's
    samples that were right. Only ``filter.oracle`` (a control arm) ever calls this.
    """
    recipe = recipe_for(cfg)
    if recipe.true_completion is None:
        raise ConfigError(f"filter.oracle: recipe {cfg.recipe} has no true answers to label the pool with")
    kept = samples.drop_duplicates(["prompt_id", "prompt"]).reset_index(drop=True)
    kept["completion"] = [recipe.true_completion(p) for p in kept["prompt"]]
    kept["answer"] = [recipe.parse_answer(c) for c in kept["completion"]]
    right = samples["answer"].eq(samples["prompt"].map(dict(zip(kept["prompt"], kept["answer"]))))
    per_view = right.groupby([samples["prompt_id"], samples["prompt"]]).agg(["sum", "size"])
    at = pd.MultiIndex.from_frame(kept[["prompt_id", "prompt"]])
    kept["votes"] = per_view["sum"].reindex(at).to_numpy().astype(int)
    kept["agreement"] = (per_view["sum"] / per_view["size"]).reindex(at).to_numpy().astype(float)
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


def _stage(upstream: list[Manifest], name: str) -> Manifest | None:
    return next((m for m in upstream if m.stage == name), None)


def _rows(data: Manifest, split: str) -> int:
    return pq.read_metadata(data.path(split)).num_rows


def _labelled_rows(data: Manifest, split: str) -> int:
    """Rows of ``split`` that carry a label: a completion (the constrained-story recipe's held-out prompts
    have none; a program checks their stories) or a reference."""
    df = pq.read_table(data.path(split), columns=["completion", "reference"]).to_pandas()
    return int(((df["completion"] != "") | df["reference"].notna()).sum())


def labels_used(
    cfg: RunConfig, r: int, data: Manifest, model: Manifest, upstream: list[Manifest] | None = None
) -> dict[str, int]:
    """True labels round ``r`` used, by kind (see the module docstring), and their ``total``.

    ``model`` is the round's fine-tuned model (its manifest counts the mix's generated rows);
    ``upstream`` the round's sample and filter manifests (none in round 0). Seed rows repeated to
    reach ``loop.min_real_fraction`` count once; references count once per scored prompt.
    """
    upstream = upstream or []
    seed_in_mix = (model.meta.get("train_size") or 0) - (model.meta.get("generated_rows") or 0)
    counts = {
        "seed": min(seed_in_mix, _rows(data, "seed")),
        "references": 0,
        "oracle": 0,
        "audit": 0,
        "audit_reported": 0,
        "validation": _labelled_rows(data, "val"),
    }
    filtered = _stage(upstream, "filter")
    if filtered is not None:  # the filter stage counted the labels it consumed (filter_labels)
        counts["references"] = filtered.meta.get("labels", {}).get("references", 0)
        counts["oracle"] = filtered.meta.get("labels", {}).get("oracle", 0)
        kept = schema.read(filtered.path("kept"), schema.KEPT)
        steers = cfg.audit.min_precision is not None
        counts["audit" if steers else "audit_reported"] = _audited(cfg, r, data, kept)
    counts["total"] = sum(n for kind, n in counts.items() if kind != "audit_reported")
    return counts


def filter_labels(cfg: RunConfig, samples: pd.DataFrame, kept: pd.DataFrame) -> dict[str, int]:
    """True labels a filter stage consumed: pool prompts whose reference a score filter compared
    samples with, and rows the oracle labelled. Recorded in the filter's manifest, so that validation
    reports them without reading filter settings."""
    by_score = cfg.filter.min_score is not None or cfg.filter.best_of_k
    # Only the prompts recipe's scorer reads references (the text recipe's sees prompts alone), and the
    # oracle arm ignores the score filters.
    scored = by_score and not cfg.filter.oracle and recipe_for(cfg).scorer is not None and "reference" in samples
    references = int(samples.loc[samples["reference"].notna(), "prompt_id"].nunique()) if scored else 0
    return {"references": references, "oracle": len(kept) if cfg.filter.oracle else 0}


def _audited(cfg: RunConfig, r: int, data: Manifest, kept: pd.DataFrame) -> int:
    """How many true answers the round's audit checked (as ``validate`` runs it)."""
    truth, audited = audit_truth(cfg, data, kept)
    if not cfg.audit.size or truth is None or audited.empty:
        return 0
    return audit(audited, truth, cfg.audit.size, cfg.seed * 1000 + r)["n"]
