"""Label accounting: which true labels a round used (seed, references, oracle, audit, validation),
and the strict label-free setting that refuses every way past the seed and the validation split."""

from __future__ import annotations

import pandas as pd
import pytest

from selffeed.config import ConfigError, load_config
from selffeed.filtering.labels import filter_labels, labels_used
from selffeed.recipes.arithmetic import encode, true_completion
from selffeed.run import schema
from selffeed.run.manifest import Manifest, make_manifest
from tests.conftest import tiny_run_config


def _labelled(n: int) -> pd.DataFrame:
    prompts = [encode(i, 1, 2) for i in range(n)]
    return pd.DataFrame({"prompt": prompts, "completion": [true_completion(p, 2) for p in prompts], "difficulty": 2})


def _data(tmp_path, seed: int = 4, val: int | None = 3, test: int = 5) -> Manifest:
    sizes = {"seed": seed, "test": test, **({"val": val} if val is not None else {})}
    paths = {}
    for split, n in sizes.items():
        paths[split] = tmp_path / f"{split}.parquet"
        schema.write(_labelled(n), schema.LABELLED, paths[split])
    return make_manifest("prepare", paths)


def _model(train_size: int, generated: int) -> Manifest:
    return Manifest(stage="retrain", round=1, paths={}, digests={},
                    meta={"train_size": train_size, "generated_rows": generated})


def _frame(prompt_ids: list[int], prompts: list[str], references: list[str | None] | None = None) -> pd.DataFrame:
    n = len(prompt_ids)
    return pd.DataFrame({
        "round": 1, "prompt_id": prompt_ids, "sample_idx": range(n), "prompt": prompts,
        "completion": [true_completion(p, 2) for p in prompts], "answer": [true_completion(p, 2) for p in prompts],
        "reference": references or [None] * n, "difficulty": 2, "n_tokens": 3, "logprob": -1.0, "model_id": "m",
        "temperature": 1.0, "top_k": 0, "top_p": 1.0, "greedy": False, "seed": 0,
        "score": float("nan"), "agreement": 1.0, "votes": 1, "passed": "vote",
    })


def _round(tmp_path, samples: pd.DataFrame, kept: pd.DataFrame, cfg=None) -> list[Manifest]:
    """The round's sample and filter manifests; the filter's records the labels it consumed under ``cfg``,
    as the filter stage does."""
    schema.write(samples, schema.SAMPLES, tmp_path / "samples.parquet")
    schema.write(kept, schema.KEPT, tmp_path / "kept.parquet")
    labels = filter_labels(cfg or tiny_run_config(tmp_path), samples, kept)
    return [make_manifest("sample", {"samples": tmp_path / "samples.parquet"}, round_=1),
            make_manifest("filter", {"kept": tmp_path / "kept.parquet"}, round_=1, rows=len(kept), labels=labels)]


def _arith_round(tmp_path, cfg=None):
    # 5 kept prompts; prompt 0 kept with two views (two rows, one audited answer).
    prompts = [encode(10 + i, 20, 2) for i in range(5)]
    kept = _frame([0, 0, 1, 2, 3, 4], [prompts[0], encode(20, 10, 2), *prompts[1:]])
    return _round(tmp_path, kept, kept, cfg)


def test_round_zero_counts_the_seed_and_the_validation_split(tmp_path):
    cfg = tiny_run_config(tmp_path)
    got = labels_used(cfg, 0, _data(tmp_path), _model(4, 0), None)  # validate passes None in round 0
    assert got == {"seed": 4, "references": 0, "oracle": 0, "audit": 0, "audit_reported": 0, "validation": 3,
                   "total": 7}


def test_seed_rows_repeated_by_min_real_fraction_count_once(tmp_path):
    cfg = tiny_run_config(tmp_path)
    assert labels_used(cfg, 1, _data(tmp_path), _model(4 + 6 + 10, 10), [])["seed"] == 4  # 6 repeats
    assert labels_used(cfg, 1, _data(tmp_path), _model(2 + 10, 10), [])["seed"] == 2  # replace: 2 drawn


def test_an_audit_steers_only_with_min_precision(tmp_path):
    data, upstream = _data(tmp_path), _arith_round(tmp_path)
    reported = labels_used(tiny_run_config(tmp_path, **{"audit.size": 3}), 1, data, _model(10, 6), upstream)
    assert (reported["audit"], reported["audit_reported"], reported["total"]) == (0, 3, 4 + 3)
    steering = tiny_run_config(tmp_path, **{"audit.size": 3, "audit.min_precision": 0.9})
    got = labels_used(steering, 1, data, _model(10, 6), upstream)
    assert (got["audit"], got["audit_reported"], got["total"]) == (3, 0, 4 + 3 + 3)
    assert labels_used(tiny_run_config(tmp_path, **{"audit.size": 0}), 1, data, _model(10, 6), upstream)["audit"] == 0


def test_the_oracle_counts_every_row_it_labelled(tmp_path):
    cfg = tiny_run_config(tmp_path, **{"filter.oracle": "true", "audit.size": 0})
    got = labels_used(cfg, 1, _data(tmp_path), _model(10, 6), _arith_round(tmp_path, cfg))
    assert got["oracle"] == 6 and got["total"] == 4 + 6 + 3


def _prompts_cfg(tmp_path, *items):
    return load_config(None, [f"runs_dir={tmp_path}", "recipe=prompts", "prompts.data=x.jsonl",
                              "prompts.reference_column=a", *items])


def test_score_filters_count_each_scored_prompt_with_a_reference_once(tmp_path):
    # Prompts 0 and 1 have references (3 and 2 samples), prompt 2 has none: 2 references were used.
    samples = _frame([0, 0, 0, 1, 1, 2], [encode(1, 1, 2)] * 3 + [encode(2, 1, 2)] * 2 + [encode(3, 1, 2)],
                     ["02", "02", "02", "03", "03", None])
    data = _data(tmp_path)
    for items in (["filter.min_score=1.0"], ["filter.best_of_k=true"]):
        cfg = _prompts_cfg(tmp_path, *items)
        got = labels_used(cfg, 1, data, _model(5, 1), _round(tmp_path, samples, samples.iloc[:1], cfg))
        assert got["references"] == 2 and got["total"] == 4 + 2 + 3
    # The vote alone never reads a reference.
    cfg = _prompts_cfg(tmp_path)
    assert labels_used(cfg, 1, data, _model(5, 1), _round(tmp_path, samples, samples.iloc[:1], cfg))["references"] == 0


@pytest.mark.parametrize(
    "items, fragment",
    [
        (["filter.oracle=true"], "filter.label_free: filter.oracle labels the pool with true answers"),
        (["audit.min_precision=0.9"], "filter.label_free: audit.min_precision stops the loop on true answers"),
    ],
)
def test_label_free_refuses_settings_that_steer_on_true_labels(items, fragment):
    with pytest.raises(ConfigError) as err:
        load_config(None, ["filter.label_free=true", *items])
    assert fragment in str(err.value) and "\n" not in str(err.value)


def test_label_free_refuses_score_filters_that_judge_by_references(tmp_path):
    for item in ("filter.min_score=1.0", "filter.best_of_k=true"):
        with pytest.raises(ConfigError, match=r"filter.label_free: filter.min_score / filter.best_of_k with "
                                              r"prompts.scorer=exact_match judge samples by their references"):
            _prompts_cfg(tmp_path, "filter.label_free=true", item)
    # A scorer of your own may score without references (the pool has none under label_free).
    assert _prompts_cfg(tmp_path, "filter.label_free=true", "filter.min_score=1.0", "prompts.scorer=my.py:reward")
    assert load_config(None, ["filter.label_free=true", "audit.size=200"]).filter.label_free  # reporting is fine
