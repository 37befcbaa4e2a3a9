"""One tiny run of the Prefect flow end to end, and what it leaves on disk."""

import pandas as pd
import pyarrow.parquet as pq
import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from selffeed.evaluation.validate import evaluate
from selffeed.recipes.arithmetic import parse_answer
from selffeed.run import schema
from selffeed.run.layout import RunLayout, read_json
from tests.conftest import tiny_run_config

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def test_flow_runs_a_round_and_persists_it(tmp_path, prefect_harness):
    from flows.self_improve import self_improve

    cfg = tiny_run_config(tmp_path)
    record = self_improve(cfg)
    lay = RunLayout.of(cfg.runs_dir, cfg.name)
    assert record["rounds"] == [0, 1] and record["stopped"]
    assert "max_rounds=1" in record["stop_reason"]
    assert read_json(lay.run_json) == record

    samples = pd.read_parquet(lay.samples(1))
    assert len(samples) == 40 * 4  # pool_per_round x k
    assert pq.read_schema(lay.samples(1)).equals(schema.SAMPLES, check_metadata=False)
    assert set(samples.groupby("prompt_id")["sample_idx"].apply(sorted).map(tuple)) == {(0, 1, 2, 3)}
    assert set(samples["model_id"]) == {"tiny/round-000"} and set(samples["round"]) == {1}
    kept = schema.read(lay.kept(1), schema.KEPT)
    assert set(kept["prompt_id"]) <= set(samples["prompt_id"])
    assert (kept["agreement"] >= 0.5).all()

    metrics = read_json(lay.metrics(1))
    assert metrics["kept"] == len(kept)
    assert metrics["train_size"] == 60 + len(kept)
    assert "seconds" not in metrics  # timings live in the round manifest, so metrics are reproducible
    committed = read_json(lay.round_manifest(1))["stages"]
    assert set(committed) == {"prepare", "sample", "filter", "retrain", "validate"}
    assert committed["filter"]["paths"]["kept"] == str(lay.kept(1))

    # Each round's checkpoint reloads with the Auto classes and reproduces its test accuracy.
    test = schema.read(lay.split("test"), schema.LABELLED)
    for r in (0, 1):
        model = AutoModelForCausalLM.from_pretrained(lay.model(r))
        tok = AutoTokenizer.from_pretrained(lay.model(r))
        again = evaluate(model, tok, test, lambda c: parse_answer(c, 2), max_new_tokens=4)
        reported = read_json(lay.metrics(r))["test"]  # the test split's figures, reported only
        assert again["accuracy"] == reported["accuracy"]
        assert again["loss"] == pytest.approx(reported["loss"], rel=1e-5)

    # Retraining continued from round 0 and changed the weights.
    w0 = AutoModelForCausalLM.from_pretrained(lay.model(0)).state_dict()
    w1 = AutoModelForCausalLM.from_pretrained(lay.model(1)).state_dict()
    assert any(not (w0[k] == w1[k]).all() for k in w0)
    assert not list(lay.root.rglob(".tmp-*"))


def test_seed_only_control_skips_generation(tmp_path, prefect_harness):
    from flows.self_improve import self_improve

    cfg = tiny_run_config(tmp_path, **{"loop.mix": "seed_only", "name": "ctl"})
    self_improve(cfg)
    lay = RunLayout.of(cfg.runs_dir, cfg.name)
    assert not lay.samples(1).exists() and lay.model(1).is_dir()
    assert read_json(lay.metrics(1))["train_size"] == 60
