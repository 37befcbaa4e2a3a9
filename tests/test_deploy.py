"""Deployments end to end on a real Prefect server: pools, workers, `prefect deploy`, a parameterised
run of `self-improve` whose GPU stages execute on the `gpu` pool's worker, schema validation by the
server, the nightly schedule, and nightly runs that continue a run round by round.

Everything it starts (server, one worker per pool) it stops by PID, workers before the server.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
from pathlib import Path

import pytest

from selffeed.config import load_config
from selffeed.run.layout import RunLayout
from tests.conftest import api, stop_group, tiny_overrides

pytestmark = [pytest.mark.slow, pytest.mark.integration]

ROOT = Path(__file__).parents[1]
GPU_FLOWS = {"gpu-finetune", "gpu-sample", "gpu-retrain", "gpu-validate"}


def prefect(env, *args, timeout=120):
    proc = subprocess.run([sys.executable, "-m", "prefect", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, f"prefect {' '.join(args)}:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    return proc.stdout


def wait_for(url, run_id, timeout=600):
    deadline = time.monotonic() + timeout
    while True:
        run = api(url, f"/flow_runs/{run_id}")
        if run["state_type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
            return run
        assert time.monotonic() < deadline, f"flow run {run_id} still {run['state_type']}"
        time.sleep(1)


def deployment(url, name):
    return api(url, f"/deployments/name/{name}")


def create_run(url, dep, parameters):
    return api(url, f"/deployments/{dep['id']}/create_flow_run", {"parameters": parameters})


def child_runs(url, parent_id):
    """GPU-stage flow runs started by a parent run (run_deployment links them as subflows)."""
    task_runs = api(url, "/task_runs/filter", {"flow_runs": {"id": {"any_": [parent_id]}}})
    ids = [t["id"] for t in task_runs]
    runs = api(url, "/flow_runs/filter", {"flow_runs": {"parent_task_run_id": {"any_": ids}}}) if ids else []
    flows = {f["id"]: f["name"] for f in api(url, "/flows/filter", {})}
    return [(flows[r["flow_id"]], r) for r in runs]


@pytest.fixture
def workers(prefect_server, tmp_path):
    url, env = prefect_server
    env = dict(env, PREFECT_API_URL=url, SELFFEED_HOME=str(ROOT), PREFECT_WORKER_QUERY_SECONDS="2",
               PREFECT_WORKER_PREFETCH_SECONDS="4")
    subprocess.run(["bash", "deployments/setup.sh"], cwd=ROOT, env=env, check=True, capture_output=True, timeout=120)
    procs = []
    for pool in ("cpu", "gpu"):
        log = open(tmp_path / f"worker-{pool}.log", "w")
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "prefect", "worker", "start", "--pool", pool, "--name", f"{pool}-worker-1"],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        ))
    try:
        yield url, env
    finally:
        for p in procs:  # workers first, while the server still answers (it stops after this fixture)
            stop_group(p, signal.SIGINT)


def test_deploy_trigger_and_continue_nightly(workers, tmp_path):
    url, env = workers
    prefect(env, "--no-prompt", "deploy", "--prefect-file", "deployments/prefect.yaml", "--all", timeout=300)

    # The UI's form is generated from this schema: typed fields with descriptions, defaults and bounds.
    dep = deployment(url, "self-improve/self-improve")
    assert dep["work_pool_name"] == "cpu"
    schema = dep["parameter_openapi_schema"]
    defs = schema.get("definitions") or schema.get("$defs")
    k = defs["SampleConfig"]["properties"]["k"]
    assert k["type"] == "integer" and k["default"] == 8 and k["minimum"] == 1 and k["description"]
    assert defs["RunConfig"]["properties"]["name"]["description"]
    assert {d["work_pool_name"] for d in map(lambda n: deployment(url, f"{n}/{n}"), GPU_FLOWS)} == {"gpu"}
    assert deployment(url, "experiment/experiment")["work_pool_name"] == "cpu"

    # The server rejects invalid parameters before any run exists.
    with pytest.raises(urllib.error.HTTPError) as err:
        create_run(url, dep, {"config": {"sample": {"k": 0}}})
    assert err.value.code in (409, 422)
    assert api(url, "/flow_runs/filter", {"flow_runs": {"deployment_id": {"any_": [dep["id"]]}}}) == []

    # What the UI's "Custom run" form submits: the deployment's parameters, changed.
    runs_dir = tmp_path / "runs"
    cfg = load_config(None, tiny_overrides(runs_dir, name="served", **{"sample.k": 3}))
    run = wait_for(url, create_run(url, dep, {"config": cfg.model_dump(mode="json")})["id"])
    assert run["state_type"] == "COMPLETED", run["state"]
    assert run["work_pool_name"] == "cpu" and run["parameters"]["config"]["sample"]["k"] == 3
    children = child_runs(url, run["id"])
    assert {name for name, _ in children} == GPU_FLOWS
    for name, child in children:  # read from the API: where each GPU stage ran
        assert child["work_pool_name"] == "gpu" and child["state_type"] == "COMPLETED", (name, child["state"])
    lay = RunLayout.of(runs_dir, "served")
    assert lay.kept(1).is_file() and lay.metrics(1).is_file() and lay.round_manifest(1).is_file()
    assert len(json.loads(lay.metrics(1).read_text())) > 5

    # Nightly: the cron from the YAML is stored on the server; a trigger adds a round to the run.
    nightly = deployment(url, "nightly/nightly")
    sched = nightly["schedules"][0]["schedule"]
    assert sched["cron"] == "0 2 * * *" and sched["timezone"] == "Europe/Berlin"
    before = {p: p.read_bytes() for p in [lay.kept(1), lay.metrics(0), lay.metrics(1)]}
    n = wait_for(url, create_run(url, nightly, {"run_name": "served", "runs_dir": str(runs_dir), "rounds": 1})["id"])
    assert n["state_type"] == "COMPLETED", n["state"]
    assert max(r for r in lay.rounds() if lay.round_manifest(r).exists()) == 2
    assert {p: p.read_bytes() for p in before} == before  # earlier rounds untouched


@pytest.fixture
def cpu_worker(prefect_server, tmp_path):
    url, env = prefect_server
    env = dict(env, PREFECT_API_URL=url, SELFFEED_HOME=str(ROOT), PREFECT_WORKER_QUERY_SECONDS="1")
    subprocess.run(["bash", "deployments/setup.sh"], cwd=ROOT, env=env, check=True, capture_output=True, timeout=120)
    prefect(env, "--no-prompt", "deploy", "--prefect-file", "deployments/prefect.yaml", "--all", timeout=300)
    log = open(tmp_path / "worker-cpu.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "prefect", "worker", "start", "--pool", "cpu"], cwd=ROOT, env=env,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield url, env
    finally:
        stop_group(proc, signal.SIGINT)


def _browser_missing() -> str | None:
    try:
        import playwright  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install -e '.[ui]')"
    if not Path("/usr/bin/chromium").exists():
        return "Chromium is not installed (apt-get install chromium)"
    return None


@pytest.mark.ui
def test_ui_form_starts_a_custom_run(cpu_worker, tmp_path):
    missing = _browser_missing()
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the UI check: {missing}")
        pytest.skip(missing)
    url, env = cpu_worker
    base = url.removesuffix("/api")
    overrides = [o for o in tiny_overrides(tmp_path / "runs") if not o.startswith("name=")]
    proc = subprocess.run(
        [sys.executable, "deployments/ui_check.py", "--url", base, "--screenshots", str(tmp_path), "--timeout", "300",
         *overrides, "sample.k=3", "orchestration.gpu_stages=local"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "COMPLETED" in proc.stdout and "sample.k" in proc.stdout
    assert (tmp_path / "ui-form.png").stat().st_size > 10_000 and (tmp_path / "ui-submitted.png").is_file()
    run_dirs = list((tmp_path / "runs").glob("ui-*"))
    assert len(run_dirs) == 1 and (run_dirs[0] / "round-001" / "kept.parquet").is_file()
