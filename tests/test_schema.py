"""Parquet corpora round-trip with the declared schemas, through pandas and pyarrow."""

import pandas as pd
import pyarrow.parquet as pq
import pytest

from selffeed.config import FilterConfig, SampleConfig
from selffeed.filtering.filters import apply_filters
from selffeed.run import schema
from selffeed.sampling.sampler import Completion, samples_frame


@pytest.fixture
def samples():
    pool = pd.DataFrame({"prompt_id": [10, 11], "prompt": ["12+34=", "56+78="], "difficulty": [2, 2], "slice": [0, 0]})
    comps = [Completion(0, 0, "464", 4, -1.5), Completion(0, 1, "464", 4, -1.0), Completion(1, 0, "x", 2, -9.0)]
    return samples_frame(pool, comps, lambda c: c if c.isdigit() else None, round_=3, model_id="r/round-002",
                         cfg=SampleConfig(temperature=0.7, top_k=5), seed=42)


def test_samples_round_trip(tmp_path, samples):
    path = tmp_path / "samples.parquet"
    assert schema.write(samples, schema.SAMPLES, path) == 3
    assert pq.read_schema(path).equals(schema.SAMPLES, check_metadata=False)
    back = schema.read(path, schema.SAMPLES)
    assert back["prompt_id"].tolist() == [10, 10, 11]
    assert back["answer"].isna().tolist() == [False, False, True]
    assert back["round"].unique().tolist() == [3]
    assert back["temperature"].iloc[0] == pytest.approx(0.7)
    assert set(back["model_id"]) == {"r/round-002"} and set(back["seed"]) == {42}
    assert pd.read_parquet(path).shape == (3, len(schema.SAMPLES))


def test_kept_round_trip(tmp_path, samples):
    kept = apply_filters(samples, FilterConfig(min_agreement=0.5))
    path = tmp_path / "kept.parquet"
    schema.write(kept, schema.KEPT, path)
    assert pq.read_schema(path).equals(schema.KEPT, check_metadata=False)
    back = schema.read(path, schema.KEPT)
    assert back[["prompt_id", "completion", "votes"]].values.tolist() == [[10, "464", 2]]
    assert back["agreement"].tolist() == [1.0]


def test_wrong_frames_and_files_are_named(tmp_path, samples):
    with pytest.raises(schema.SchemaError, match="missing column"):
        schema.write(samples.drop(columns="seed"), schema.SAMPLES, tmp_path / "s.parquet")
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"not parquet")
    with pytest.raises(schema.SchemaError, match="bad.parquet: not a readable Parquet file"):
        schema.read(bad, schema.SAMPLES)
    with pytest.raises(schema.SchemaError, match="gone.parquet: file not found"):
        schema.read(tmp_path / "gone.parquet", schema.SAMPLES)
    other = tmp_path / "other.parquet"
    pq.write_table(schema.to_table(samples, schema.SAMPLES).drop(["logprob"]), other)
    with pytest.raises(schema.SchemaError, match="missing column 'logprob'"):
        schema.read(other, schema.SAMPLES)
    samples.to_parquet(other)  # pandas writes int64 where the schema says int32
    with pytest.raises(schema.SchemaError, match="column 'round' is int64, expected int32"):
        schema.read(other, schema.SAMPLES)


def test_failed_write_leaves_nothing(tmp_path, samples):
    path = tmp_path / "s.parquet"
    with pytest.raises(schema.SchemaError):
        schema.write(samples.assign(round="x"), schema.SAMPLES, path)
    assert list(tmp_path.iterdir()) == []
