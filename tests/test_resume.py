"""Crash safety: kill -9 mid-sampling and mid-training, re-run, and get byte-identical results.

Each run is a real ``selffeed run`` subprocess (its own Prefect temporary server), killed with
SIGKILL together with its process group, then started again on the same run directory.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from selffeed.loop import stages
from selffeed.run.layout import RunLayout, read_json
from selffeed.run.lock import read_holder
from selffeed.sampling import shards
from tests.conftest import tiny_run_config

pytestmark = [pytest.mark.slow, pytest.mark.integration]

ROOT = Path(__file__).parents[1]
OVERRIDES = [
    "name=crash", "threads=1", "model.n_embd=16", "model.n_layer=1", "model.n_head=2", "model.n_inner=32",
    "model.n_positions=32", "arithmetic.width=2", "arithmetic.seed_digits=[1, 2]", "arithmetic.seed_size=60",
    "arithmetic.pool_digits=[2]", "arithmetic.pool_per_round=1500", "arithmetic.pool_slices=1",
    "arithmetic.test_digits=[2]", "arithmetic.test_per_digits=30", "arithmetic.val_per_digits=30",
    "finetune.steps=30", "finetune.batch_size=32", "finetune.warmup_steps=5", "retrain.steps=600",
    "retrain.batch_size=32", "retrain.warmup_steps=2",
    "sample.k=8", "sample.batch_prompts=8", "sample.shard_batches=1", "filter.min_agreement=0.5",
    "loop.max_rounds=1",
]


def start(runs_dir: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    return subprocess.Popen(
        [sys.executable, "-m", "flows.cli", "run", "data/configs/arithmetic.yaml", f"runs_dir={runs_dir}", *OVERRIDES],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )


def finish(proc: subprocess.Popen) -> str:
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-3000:]
    return out


def kill_when(proc: subprocess.Popen, condition, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, "the run ended before the kill point"
        assert time.monotonic() < deadline, "kill point never reached"
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)  # the CLI and its Prefect server
    proc.wait()


def outputs(runs_dir: Path) -> dict[str, bytes]:
    lay = RunLayout.of(runs_dir, "crash")
    files = {
        "samples1": lay.samples(1), "kept1": lay.kept(1), "metrics0": lay.metrics(0), "metrics1": lay.metrics(1),
        "model1": lay.model(1) / "model.safetensors",
    }
    return {name: path.read_bytes() for name, path in files.items()}


def assert_clean(runs_dir: Path) -> None:
    lay = RunLayout.of(runs_dir, "crash")
    assert not list(lay.root.rglob(".tmp-*")), "temporary files left behind"
    assert not list(lay.root.rglob(".samples-*")), "sample shards left behind"
    assert read_holder(lay.lock) is None


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    runs = tmp_path_factory.mktemp("reference")
    finish(start(runs))
    return outputs(runs)


def test_kill_during_sampling_resumes_from_shards(tmp_path, reference):
    lay = RunLayout.of(tmp_path, "crash")
    proc = start(tmp_path)
    kill_when(proc, lambda: len(list(lay.round_dir(1).glob(".samples-*/shard-*.parquet"))) >= 5)
    assert not lay.samples(1).exists() and lay.lock.exists()
    finish(start(tmp_path))
    manifest = read_json(lay.round_manifest(1))["stages"]["sample"]["meta"]
    assert manifest["shards_resumed"] >= 5
    assert outputs(tmp_path) == reference
    assert_clean(tmp_path)


def test_kill_during_training_reruns_the_stage_identically(tmp_path, reference):
    lay = RunLayout.of(tmp_path, "crash")
    proc = start(tmp_path)
    kill_when(proc, lambda: lay.kept(1).exists())
    time.sleep(0.3)  # well inside the 600 retrain steps
    assert not lay.model(1).exists()
    finish(start(tmp_path))
    assert outputs(tmp_path) == reference
    assert_clean(tmp_path)


def test_second_writer_is_refused_naming_the_holder(tmp_path):
    lay = RunLayout.of(tmp_path, "crash")
    code = (f"import time; from pathlib import Path; from selffeed.run.lock import acquire; "
            f"acquire(Path({str(lay.lock)!r}), owner='x'); print('ready', flush=True); time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "ready\n"
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        proc = subprocess.run(
            [sys.executable, "-m", "flows.cli", "run", "data/configs/arithmetic.yaml", f"runs_dir={tmp_path}", *OVERRIDES],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
        )
        assert proc.returncode == 3
        assert f"locked by pid {holder.pid}" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
        assert not lay.data_dir.exists()
    finally:
        holder.kill()
        holder.wait()


def test_resumed_sampling_equals_uninterrupted(tmp_path, monkeypatch):
    """In-process: a sample stage that dies after two shards resumes to the same bytes."""
    cfg = tiny_run_config(tmp_path, **{"sample.batch_prompts": 4, "sample.shard_batches": 2})
    data = stages.prepare(cfg)
    model = stages.finetune(cfg, data)
    stages.sample(cfg, 1, model, data)
    lay = RunLayout.of(cfg.runs_dir, cfg.name)
    whole = lay.samples(1).read_bytes()
    lay.samples(1).unlink()

    real = shards.generate_batches
    calls = []

    def dies_on_third(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt("simulated crash")
        return real(*args, **kwargs)

    monkeypatch.setattr(shards, "generate_batches", dies_on_third)
    with pytest.raises(KeyboardInterrupt):
        stages.sample(cfg, 1, model, data)
    monkeypatch.setattr(shards, "generate_batches", real)
    assert len(list(lay.round_dir(1).glob(".samples-*/shard-*.parquet"))) == 2
    resumed = stages.sample(cfg, 1, model, data)
    assert resumed.meta["shards_resumed"] == 2 and resumed.meta["shards"] == 5
    assert lay.samples(1).read_bytes() == whole
