"""Where a GPU stage runs, and why, is logged; a remote result must be visible here or the stage fails.

Prefect's client, ``run_deployment`` and the cache lookup are replaced with fakes, and the stage's
task with a function that records its calls: nothing trains and no server starts.
"""

from __future__ import annotations

import logging
import uuid
from types import SimpleNamespace

import httpx
import pytest
from prefect.states import Completed

import flows.gpu_stages as gs
from selffeed.loop.stages import layout_of
from selffeed.run.manifest import Manifest
from tests.conftest import tiny_run_config

DATA = Manifest(stage="prepare", paths={}, digests={})
MODEL = Manifest(stage="finetune", paths={}, digests={})
REQUEST = httpx.Request("POST", "http://127.0.0.1:8123/api/work_pools/gpu/workers/filter")


class FakeClient:
    """``get_client(sync_client=True)`` answering the workers query with ``answer`` (raised if an exception)."""

    def __init__(self, answer):
        self.answer = answer

    def __call__(self, sync_client=False):
        return self

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def read_workers_for_work_pool(self, pool):
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


@pytest.fixture
def stage(monkeypatch):
    """The finetune task replaced by a recorder; run_deployment must not be called unless a test allows it."""
    calls = []

    def finetune(config, **args):
        calls.append(args)
        return MODEL

    monkeypatch.setattr(gs, "for_run", lambda config: SimpleNamespace(finetune=finetune))
    monkeypatch.setattr(gs, "cached_result", lambda *a: None)
    monkeypatch.setattr(gs, "run_deployment", lambda *a, **k: pytest.fail("shipped to the pool"))
    return calls


def _worker(status: str):
    return SimpleNamespace(status=SimpleNamespace(value=status))


@pytest.mark.parametrize(
    "answer, level, reason",
    [
        (httpx.ConnectError("All connection attempts failed"), logging.WARNING,
         "API error: ConnectError: All connection attempts failed"),
        (httpx.HTTPStatusError("Server error '503'", request=REQUEST, response=httpx.Response(503, request=REQUEST)),
         logging.WARNING, "API error: HTTPStatusError: Server error '503'"),
        (httpx.HTTPStatusError("Not found", request=REQUEST, response=httpx.Response(404, request=REQUEST)),
         logging.INFO, "no work pool 'gpu' on the API"),
        ([_worker("OFFLINE")], logging.INFO, "no worker online in pool 'gpu'"),
    ],
)
def test_pool_unavailable_runs_in_process_and_says_why(answer, level, reason, tmp_path, monkeypatch, stage, caplog):
    monkeypatch.setattr(gs, "get_client", FakeClient(answer))
    with caplog.at_level(logging.INFO, logger=gs.__name__):
        assert gs.run_stage("finetune", tiny_run_config(tmp_path), data=DATA) == MODEL
    assert stage == [{"data": DATA}]
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [(level, f"finetune runs in this process: {reason}")]


def test_local_mode_and_cache_hits_are_logged_and_ask_no_api(tmp_path, monkeypatch, stage, caplog):
    monkeypatch.setattr(gs, "get_client", lambda **k: pytest.fail("asked the API"))
    with caplog.at_level(logging.INFO, logger=gs.__name__):
        gs.run_stage("finetune", tiny_run_config(tmp_path, **{"orchestration.gpu_stages": "local"}), data=DATA)
        monkeypatch.setattr(gs, "cached_result", lambda *a: MODEL)
        gs.run_stage("finetune", tiny_run_config(tmp_path), data=DATA)
    assert [r.getMessage() for r in caplog.records] == [
        "finetune runs in this process: orchestration.gpu_stages=local",
        "finetune runs in this process: cached, nothing to ship",
    ]


def test_workers_mode_without_a_worker_fails_naming_the_pool(tmp_path, monkeypatch, stage):
    monkeypatch.setattr(gs, "get_client", FakeClient([]))
    cfg = tiny_run_config(tmp_path, **{"orchestration.gpu_stages": "workers"})
    with pytest.raises(RuntimeError, match="gpu_stages=workers but no worker online in pool 'gpu'"):
        gs.run_stage("finetune", cfg, data=DATA)
    assert stage == []


def _remote(monkeypatch, cached: list[Manifest | None]) -> uuid.UUID:
    """A worker online, and a deployment run that completes; ``cached`` answers the lookups in turn."""
    run_id = uuid.uuid4()
    monkeypatch.setattr(gs, "get_client", FakeClient([_worker("ONLINE")]))
    monkeypatch.setattr(gs, "run_deployment", lambda name, **k: SimpleNamespace(id=run_id, state=Completed()))
    monkeypatch.setattr(gs, "cached_result", lambda *a: cached.pop(0))
    return run_id


def test_remote_result_not_visible_here_fails_naming_the_path(tmp_path, monkeypatch, stage):
    _remote(monkeypatch, [None, None])
    cfg = tiny_run_config(tmp_path)
    with pytest.raises(RuntimeError, match="not visible here") as err:
        gs.run_stage("finetune", cfg, data=DATA)
    assert f"looked in {layout_of(cfg).results.resolve()}" in str(err.value)
    assert "runs_dir must be storage both machines share" in str(err.value)
    assert stage == []  # never recomputed here


def test_remote_result_is_returned_without_recomputing(tmp_path, monkeypatch, stage, caplog):
    run_id = _remote(monkeypatch, [None, MODEL])
    with caplog.at_level(logging.INFO, logger=gs.__name__):
        assert gs.run_stage("finetune", tiny_run_config(tmp_path), data=DATA) == MODEL
    assert stage == []
    assert [r.getMessage() for r in caplog.records] == [
        "finetune sent to pool 'gpu' (deployment gpu-finetune/gpu-finetune): a worker is online",
        f"finetune ran on pool 'gpu' as flow run {run_id}",
    ]
