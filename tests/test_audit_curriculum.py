"""The filter audit's precision estimate, the curriculum's choice of the next pool, and the
audit stop rule."""

import doctest

import pandas as pd
import pytest

from selffeed.config import CurriculumConfig
from selffeed.filtering import audit as audit_mod
from selffeed.filtering.audit import audit, wilson
from selffeed.loop.curriculum import pool_difficulties, round_pool
from selffeed.loop.policy import audit_stop


def test_doctests():
    assert doctest.testmod(audit_mod).failed == 0


def test_audit_estimates_precision_per_difficulty_from_a_sample():
    n = 1000
    kept = pd.DataFrame({
        "prompt_id": range(n), "prompt": [f"p{i}" for i in range(n)],
        "answer": ["ok" if i % 10 else "bad" for i in range(n)],  # 90% right
        "difficulty": [3] * n,
    })
    est = audit(kept, lambda p: "ok", size=400, seed=1)
    assert est["n"] == 400 and est["by_difficulty"]["3"]["n"] == 400
    assert est["low"] < 0.9 < est["high"] and abs(est["precision"] - 0.9) < 0.05
    # Same seed, same sample; a sample as large as the set gives the exact figure.
    assert audit(kept, lambda p: "ok", size=400, seed=1) == est
    assert audit(kept, lambda p: "ok", size=n, seed=0)["precision"] == pytest.approx(0.9)


def test_audit_of_nothing_kept():
    empty = pd.DataFrame({"prompt_id": [], "prompt": [], "answer": [], "difficulty": []})
    assert audit(empty, lambda p: "x", 10, 0)["precision"] is None


def test_wilson_interval_bounds():
    assert wilson(0, 0) == (0.0, 1.0)
    lo, hi = wilson(50, 50)
    assert hi == 1.0 and 0.9 < lo < 1.0


ACC = {"accuracy_by_difficulty": {"3": 1.0, "4": 0.97, "5": 0.6, "6": 0.2}}


@pytest.mark.parametrize(
    "mode, expected",
    [("fixed", [4, 5, 6]), ("next", [5]), ("accelerated", [5])],
)
def test_curriculum_modes(mode, expected):
    assert pool_difficulties([ACC], CurriculumConfig(mode=mode, min_accuracy=0.3), [4, 5, 6]) == expected


def test_accelerated_takes_every_promising_difficulty_else_the_frontier():
    cfg = CurriculumConfig(mode="accelerated", min_accuracy=0.15)
    assert pool_difficulties([ACC], cfg, [4, 5, 6]) == [5, 6]
    weak = {"accuracy_by_difficulty": {"4": 0.1, "5": 0.0}}
    assert pool_difficulties([weak], cfg, [4, 5]) == [4]
    done = {"accuracy_by_difficulty": {"4": 1.0, "5": 0.99}}
    assert pool_difficulties([done], cfg, [4, 5]) == [5]  # all mastered: keep the hardest
    assert pool_difficulties([], cfg, [5, 4]) == [4, 5]  # before any validation: every candidate


def test_round_pool_rotates_slices_and_splits_the_quota():
    pool = pd.DataFrame({
        "prompt_id": range(12), "difficulty": [4] * 6 + [5] * 6, "slice": [0, 0, 0, 1, 1, 1] * 2,
    })
    assert round_pool(pool, 1, [5])["prompt_id"].tolist() == [6, 7, 8]
    assert round_pool(pool, 2, [4, 5], per_round=3)["prompt_id"].tolist() == [3, 4, 9]
    assert round_pool(pool, 3, None)["prompt_id"].tolist() == [0, 1, 2, 6, 7, 8]  # wraps to slice 0


def test_audit_stop_rule():
    assert audit_stop([{"audit_precision": 0.8}], 0.9).startswith("audited precision")
    assert audit_stop([{"audit_precision": 0.95}], 0.9) is None
    assert audit_stop([{"round": 0}], 0.9) is None  # round 0 has nothing to audit
    assert audit_stop([{"audit_precision": 0.1}], None) is None


def test_gold_set_joins_the_pool_unlabelled_and_audits_kept_answers(tmp_path):
    import json

    from selffeed.config import load_config
    from selffeed.loop import stages
    from selffeed.run import schema

    data, gold = tmp_path / "data.jsonl", tmp_path / "gold.jsonl"
    data.write_text("".join(json.dumps({"q": f"q{i}", "a": str(i) if i < 6 else None}) + "\n" for i in range(12)))
    gold.write_text("".join(json.dumps({"q": f"g{i}", "a": str(i)}) + "\n" for i in range(4)))
    cfg = load_config(None, [f"runs_dir={tmp_path / 'runs'}", "recipe=prompts", f"prompts.data={data}",
                             "prompts.prompt_column=q", "prompts.completion_column=a", "prompts.validation_fraction=0.4",
                             f"prompts.gold={gold}", "prompts.chat_template=false"])
    prepared = stages.prepare(cfg)
    pool = schema.read(prepared.path("pool"), schema.POOL)
    assert {"g0", "g1", "g2", "g3"} <= set(pool["prompt"])
    assert pool.loc[pool["prompt"].str.startswith("g"), "reference"].isna().all()  # answers stay hidden
    kept = pd.DataFrame({"prompt_id": [1, 2, 3], "prompt": ["g0", "g1", "q7"], "answer": ["0", "5", "7"], "difficulty": 0})
    truth, audited = stages.audit_truth(cfg, prepared, kept)
    assert audited["prompt"].tolist() == ["g0", "g1"]  # only gold prompts can be checked
    assert audit(audited, truth, 10, 0)["precision"] == 0.5


def test_decide_exports_the_best_round_and_stops_on_a_bad_audit(tmp_path):
    from selffeed.config import load_config
    from selffeed.run import bookkeeping
    from selffeed.run.layout import RunLayout, read_json

    cfg = load_config(None, [f"runs_dir={tmp_path}", "loop.max_rounds=5", "audit.min_precision=0.9"])
    lay = RunLayout.of(cfg.runs_dir, cfg.name)
    for r in range(3):
        lay.model(r).mkdir(parents=True)
        (lay.model(r) / "config.json").write_text(str(r))
    history = [
        {"round": 0, "accuracy_hardest": 0.5, "loss": 1.0},
        {"round": 1, "accuracy_hardest": 0.8, "loss": 0.9, "audit_precision": 0.97},
    ]
    record = bookkeeping.decide(cfg, history)
    assert not record["stopped"] and (lay.best / "config.json").read_text() == "1"
    history.append({"round": 2, "accuracy_hardest": 0.7, "loss": 0.9, "audit_precision": 0.6})
    record = bookkeeping.decide(cfg, history)
    assert record["stopped"] and "audit.min_precision" in record["stop_reason"]
    assert record["best_round"] == 1 and (lay.best / "config.json").read_text() == "1"  # rolled back to round 1
    assert lay.best.is_symlink() and read_json(lay.run_json)["export"] == str(lay.best)
