"""The sample stage split into parts: any split, in any order, re-sent or not, merges to the same bytes."""

from __future__ import annotations

import pytest

from selffeed.loop import stages
from selffeed.run.layout import RunLayout
from selffeed.sampling import shards
from tests.conftest import tiny_run_config

SHARDED = {"sample.batch_prompts": 4, "sample.shard_batches": 1, "arithmetic.pool_per_round": 14}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    cfg = tiny_run_config(tmp_path_factory.mktemp("whole"), **SHARDED)
    data = stages.prepare(cfg)
    model = stages.finetune(cfg, data)
    whole = stages.sample(cfg, 1, model, data)
    return cfg, data, model, RunLayout.of(cfg.runs_dir, cfg.name).samples(1).read_bytes(), whole


def test_parts_merge_to_the_bytes_of_one_process(trained, monkeypatch):
    cfg, data, model, whole_bytes, whole = trained
    lay = RunLayout.of(cfg.runs_dir, cfg.name)
    lay.samples(1).unlink()
    assert len(stages.missing_sample_shards(cfg, 1, model, data)) == whole.meta["shards"] == 4

    # Part 1 of 2 first (parts finish in any order), then part 0: each writes only its own shards.
    assert stages.sample_part(cfg, 1, model, data, part=1, parts=2) == {"written": 2, "skipped": 0}
    assert [p.name for p in stages.missing_sample_shards(cfg, 1, model, data)] == ["shard-00000.parquet",
                                                                                  "shard-00002.parquet"]
    assert stages.sample_part(cfg, 1, model, data, part=0, parts=2) == {"written": 2, "skipped": 0}
    # A part sent again (its worker was lost after writing) samples nothing it already wrote.
    assert stages.sample_part(cfg, 1, model, data, part=0, parts=2) == {"written": 0, "skipped": 2}

    # The merge loads no model: every shard is on disk.
    monkeypatch.setattr(shards, "load_checkpoint", lambda *a: pytest.fail("merge loaded the model"))
    merged = stages.sample(cfg, 1, model, data)
    assert lay.samples(1).read_bytes() == whole_bytes
    assert merged.meta["shards_resumed"] == 4 and merged.rows == whole.rows > 0
    assert not list(lay.round_dir(1).glob(".samples-*"))


def test_merge_of_missing_shards_fails_naming_one(trained):
    cfg, data, model, _, _ = trained
    plan = shards.plan(cfg, 1, model, data)
    shards.write_shards(plan, part=0, parts=3)
    with pytest.raises(FileNotFoundError, match=r"sample shard .*shard-00001.parquet: missing \(2 of 4\)"):
        shards.merge(plan, 0.0, 0)
    with pytest.raises(ValueError, match="part 3 of 3"):
        shards.write_shards(plan, part=3, parts=3)
