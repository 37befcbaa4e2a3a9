"""Persisted, cacheable stages: a re-run executes exactly the failed stage and what follows it.

Stage executions are counted by wrapping the functions of ``selffeed.loop.stages`` that the Prefect tasks
call; a cached task never calls them. Prefect's own task-run states are checked too.
"""

from __future__ import annotations

import functools

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

from selffeed.loop import stages
from selffeed.run.layout import RunLayout
from tests.conftest import tiny_run_config

pytestmark = [pytest.mark.slow, pytest.mark.integration]

STAGE_FUNCTIONS = ["prepare", "finetune", "sample", "filter_samples", "retrain", "validate"]
ALL = [
    ("prepare", 0), ("finetune", 0), ("validate", 0),
    ("sample", 1), ("filter_samples", 1), ("retrain", 1), ("validate", 1),
    ("sample", 2), ("filter_samples", 2), ("retrain", 2), ("validate", 2),
]


class Recorder:
    """Counts stage executions and raises once where a failure is injected."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[tuple[str, int]] = []
        self.fail_at: tuple[str, int] | None = None
        for name in STAGE_FUNCTIONS:
            monkeypatch.setattr(stages, name, self._wrap(name, getattr(stages, name)))

    def _wrap(self, name, real):
        @functools.wraps(real)
        def wrapper(*args, **kwargs):
            r = args[1] if len(args) > 1 and isinstance(args[1], int) else 0
            self.calls.append((name, r))
            if self.fail_at == (name, r):
                self.fail_at = None
                raise RuntimeError(f"injected failure in {name} r{r}")
            return real(*args, **kwargs)

        return wrapper

    def take(self) -> list[tuple[str, int]]:
        out, self.calls = self.calls, []
        return out


@pytest.fixture
def rec(monkeypatch, prefect_harness):
    return Recorder(monkeypatch)


def run(cfg):
    from flows.self_improve import self_improve

    return self_improve(cfg, return_state=True)


def task_states(state) -> dict[str, str]:
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id])))
    return {t.name: t.state.name for t in runs}


@pytest.mark.parametrize(
    "stage, r",
    [("sample", 2), ("filter_samples", 2), ("retrain", 2), ("validate", 2), ("finetune", 0)],
)
def test_rerun_after_failure_executes_only_failed_stage_and_after(tmp_path, rec, stage, r):
    cfg = tiny_run_config(tmp_path, **{"loop.max_rounds": 2, "loop.patience": 5})
    rec.fail_at = (stage, r)
    assert run(cfg).is_failed()
    first = rec.take()
    assert first[-1] == (stage, r)

    state = run(cfg)
    assert state.is_completed()
    again = rec.take()
    assert again == ALL[ALL.index((stage, r)) :]
    # Everything that completed before the failure is reported Cached by Prefect.
    states = task_states(state)
    names = {"prepare": "prepare", "finetune": "finetune-r0", "sample": "sample-r{}", "filter_samples": "filter-r{}",
             "retrain": "retrain-r{}", "validate": "validate-r{}"}
    for name, rr in ALL[: ALL.index((stage, r))]:
        assert states[names[name].format(rr)] == "Cached", (name, rr)
    assert states[names[stage].format(r)] == "Completed"
    assert not list(RunLayout.of(cfg.runs_dir, cfg.name).root.rglob(".tmp-*"))


def test_missing_or_corrupted_output_is_recomputed_and_nothing_else(tmp_path, rec):
    cfg = tiny_run_config(tmp_path, **{"loop.max_rounds": 2, "loop.patience": 5})
    assert run(cfg).is_completed()
    assert rec.take() == ALL
    lay = RunLayout.of(cfg.runs_dir, cfg.name)
    original = lay.kept(1).read_bytes()

    lay.kept(1).unlink()
    assert run(cfg).is_completed()
    # The recomputed file is byte-identical, so everything downstream keeps its key and stays cached.
    assert rec.take() == [("filter_samples", 1)]
    assert lay.kept(1).read_bytes() == original

    lay.kept(1).write_bytes(b"PAR1 torn write")
    assert run(cfg).is_completed()
    assert rec.take() == [("filter_samples", 1)]
    assert lay.kept(1).read_bytes() == original

    # A changed checkpoint is detected by its digest, and rebuilding it invalidates what read it.
    (lay.model(1) / "model.safetensors").write_bytes(b"garbage")
    assert run(cfg).is_completed()
    assert rec.take() == [("retrain", 1)]


def test_changing_a_filter_parameter_recomputes_filter_and_downstream_only(tmp_path, rec):
    cfg = tiny_run_config(tmp_path, **{"loop.max_rounds": 2, "loop.patience": 5})
    assert run(cfg).is_completed()
    rec.take()
    kept_before = RunLayout.of(cfg.runs_dir, cfg.name).kept(1).read_bytes()

    cfg.filter.vote = False  # keep every well-sized completion: the kept corpus changes
    assert run(cfg).is_completed()
    assert RunLayout.of(cfg.runs_dir, cfg.name).kept(1).read_bytes() != kept_before
    assert rec.take() == [
        ("filter_samples", 1), ("retrain", 1), ("validate", 1),
        ("sample", 2), ("filter_samples", 2), ("retrain", 2), ("validate", 2),
    ]  # round 2 samples from round 1's retrained model, which changed

    cfg.loop.patience = 9  # a stop-rule setting changes no stage output
    assert run(cfg).is_completed()
    assert rec.take() == []


def test_round_artifacts_and_status(tmp_path, rec, capsys):
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from flows.cli import main

    cfg = tiny_run_config(tmp_path, **{"loop.max_rounds": 2, "loop.patience": 5, "name": "Obs_Run"})
    state = run(cfg)
    with get_client(sync_client=True) as client:
        arts = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["obs-run-metrics", "obs-run-report"])))
        progress = client.read_artifacts(artifact_filter=ArtifactFilter(type={"any_": ["progress"]}))
    by_key = {}
    for a in arts:
        by_key.setdefault(a.key, []).append(a)
    assert len(by_key["obs-run-metrics"]) == 3 and len(by_key["obs-run-report"]) == 3  # one version per round
    assert any("round 2" in a.data for a in by_key["obs-run-report"])
    assert {a.description.split()[0] for a in progress} >= {"fine-tune", "sample", "retrain"}
    assert all(a.data == 100 for a in progress if a.flow_run_id == state.state_details.flow_run_id)

    lay = RunLayout.of(cfg.runs_dir, cfg.name)
    assert main(["status", str(lay.root)]) == 0
    out = capsys.readouterr().out
    assert out.count("committed") == 3 and "stale" not in out and "missing" not in out

    lay.kept(1).unlink()
    (lay.model(2) / "model.safetensors").write_bytes(b"x")
    lay.round_manifest(2).rename(lay.round_dir(2) / "manifest.json.bak")
    assert main(["status", str(lay.root)]) == 0
    out = capsys.readouterr().out
    assert "needs recompute" in out and "filter    missing" in out
    assert "round   2  partial" in out
    assert main(["status", str(tmp_path / "nothing")]) == 2


def test_orchestrator_sees_cached_stages_and_runs_gpu_stages_locally_without_workers(tmp_path, rec):
    from flows.gpu_stages import gpu_workers_online
    from selffeed.run.layout import read_json
    from selffeed.run.manifest import Manifest
    from tasks.cache import cached_result

    cfg = tiny_run_config(tmp_path)
    assert not gpu_workers_online(cfg)  # the embedded server has no gpu pool: stages ran in-process
    assert run(cfg).is_completed()
    lay = RunLayout.of(cfg.runs_dir, cfg.name)
    m = {k: Manifest.model_validate(v) for k, v in read_json(lay.round_manifest(1))["stages"].items()}
    m0 = {k: Manifest.model_validate(v) for k, v in read_json(lay.round_manifest(0))["stages"].items()}
    store = lay.results.resolve()
    assert cached_result("finetune", cfg, {"data": m["prepare"]}, store) == m0["finetune"]
    assert cached_result("validate", cfg, {"r": 0, "model": m0["finetune"], "data": m["prepare"]}, store) == m0["validate"]
    assert cached_result("sample", cfg, {"r": 1, "model": m0["finetune"], "data": m["prepare"]}, store) == m["sample"]
    args = {"r": 1, "previous": m0["finetune"], "data": m["prepare"], "kept": [m["filter"]]}
    assert cached_result("retrain", cfg, args, store) == m["retrain"]
    args = {"r": 1, "model": m["retrain"], "data": m["prepare"], "upstream": [m["sample"], m["filter"]]}
    assert cached_result("validate", cfg, args, store) == m["validate"]
    assert cached_result("sample", cfg, {"r": 2, "model": m["retrain"], "data": m["prepare"]}, store) is None
    lay.samples(1).unlink()
    assert cached_result("sample", cfg, {"r": 1, "model": m0["finetune"], "data": m["prepare"]}, store) is None
