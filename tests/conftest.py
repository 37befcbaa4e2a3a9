"""Shared fixtures: tiny models built locally (nothing is downloaded) and small configs."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

import pytest
import torch

from selffeed.config import ModelConfig, RunConfig, load_config
from selffeed.model import char_tokenizer, tiny_gpt2
from selffeed.recipes.arithmetic import CHARS

torch.set_num_threads(1)


@pytest.fixture
def tokenizer():
    return char_tokenizer(CHARS)


@pytest.fixture
def tiny_model(tokenizer):
    cfg = ModelConfig(n_embd=16, n_layer=1, n_head=2, n_inner=32, n_positions=32, dropout=0.0)
    return tiny_gpt2(cfg, tokenizer, seed=0)


def tiny_run_config(tmp_path, **overrides: object) -> RunConfig:
    """A run config small enough to finish a round in seconds."""
    items = [
        f"runs_dir={tmp_path / 'runs'}",
        "name=tiny",
        "threads=1",
        "model.n_embd=16",
        "model.n_layer=1",
        "model.n_head=2",
        "model.n_inner=32",
        "model.n_positions=32",
        "arithmetic.width=2",
        "arithmetic.seed_digits=[1, 2]",
        "arithmetic.seed_size=60",
        "arithmetic.pool_digits=[2]",
        "arithmetic.pool_per_round=40",
        "arithmetic.pool_slices=2",
        "arithmetic.test_digits=[2]",
        "arithmetic.test_per_digits=30",
        "finetune.steps=30",
        "finetune.batch_size=32",
        "finetune.warmup_steps=5",
        "finetune.progress=false",
        "retrain.steps=10",
        "retrain.batch_size=32",
        "retrain.warmup_steps=2",
        "retrain.progress=false",
        "sample.k=4",
        "filter.min_agreement=0.5",
        "loop.max_rounds=1",
    ]
    items += [f"{k}={v}" for k, v in overrides.items()]
    return load_config(None, items)


@pytest.fixture
def tiny_cfg(tmp_path):
    return tiny_run_config(tmp_path)


@pytest.fixture(scope="session")
def prefect_harness(tmp_path_factory):
    """A throwaway Prefect API for tests that run flows (started once per session)."""
    os.environ["PREFECT_HOME"] = str(tmp_path_factory.mktemp("prefect-home"))
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield
