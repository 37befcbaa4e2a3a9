"""The selffeed command: one-line errors before anything is written, and a real run end to end."""

import json
import os
import subprocess
import sys

import pytest

from flows.cli import main
from tests.conftest import tiny_overrides

CONFIG = "data/configs/arithmetic.yaml"


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["run", "nope.yaml"], "nope.yaml: config file not found"),
        (["run", CONFIG, "sample.k=0"], "field 'sample.k'"),
        (["run", CONFIG, "sample.kk=1"], "unknown key 'sample.kk'"),
        (["run", CONFIG, "model.path=/no/such/ckpt"], "model.path '/no/such/ckpt': no such directory"),
        (["run", CONFIG, "filter.verifier=no_such_mod:f"], "filter.verifier 'no_such_mod:f'"),
        (["run", CONFIG, "arithmetic.test_digits=[9]"], "arithmetic.test_digits"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(argv, fragment, capsys, tmp_path):
    argv = argv[:2] + [f"runs_dir={tmp_path / 'runs'}"] + argv[2:] if len(argv) > 1 and argv[1] == CONFIG else argv
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("selffeed: error: ") and fragment in err
    assert len(err.splitlines()) == 1
    assert not (tmp_path / "runs").exists()


def test_help_lists_run():
    out = subprocess.run([sys.executable, "-m", "flows.cli", "--help"], capture_output=True, text=True, check=True)
    assert "run" in out.stdout


def _table(stdout: str, name: str) -> str:
    """The round table the command printed for run ``name``, up to its best-model line."""
    after = stdout.split(f"run {name}: ", 1)[1]
    return after.split("\n", 1)[1].split("best model:")[0]


@pytest.mark.slow
@pytest.mark.integration
def test_cli_runs_the_flow_with_its_own_prefect_home(tmp_path):
    overrides = tiny_overrides(tmp_path / "runs")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    proc = subprocess.run(
        [sys.executable, "-m", "flows.cli", "run", CONFIG, *overrides, "--control"],
        capture_output=True, text=True, env=env, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "run tiny: 1 rounds" in proc.stdout and "run tiny-seed-only: 1 rounds" in proc.stdout
    assert "precision" in proc.stdout and "acc@2" in proc.stdout and "self-improve" in proc.stdout
    runs = tmp_path / "runs"
    assert (runs / ".prefect" / "prefect.db").is_file()  # PREFECT_HOME kept inside the run area
    assert (runs / "tiny" / "round-001" / "kept.parquet").is_file()
    assert (runs / "tiny-seed-only" / "round-001" / "model" / "model.safetensors").is_file()
    # The control's round 0 is the run's own, copied, with its figures: fine-tuned once, validated once.
    r0 = {name: json.loads((runs / name / "round-000" / "manifest.json").read_text())["stages"]
          for name in ("tiny", "tiny-seed-only")}
    assert r0["tiny-seed-only"]["finetune"]["digests"] == r0["tiny"]["finetune"]["digests"]
    assert r0["tiny-seed-only"]["validate"]["meta"]["measured_by"] == "tiny/round-000"

    # A re-run of the finished runs is answered from their cache: no Prefect server, no flow run, same tables.
    again = subprocess.run(
        [sys.executable, "-m", "flows.cli", "run", CONFIG, *overrides, "--control"],
        capture_output=True, text=True, env=env, timeout=600,
    )
    assert again.returncode == 0, again.stderr[-3000:]
    # Printed only when the replay answered (no flow ran): for the run and for its control.
    assert again.stdout.count("(every stage cached, nothing ran)") == 2
    assert _table(again.stdout, "tiny") == _table(proc.stdout, "tiny")
    assert _table(again.stdout, "tiny-seed-only") == _table(proc.stdout, "tiny-seed-only")
    assert (runs / "tiny" / "run.json").is_file()


@pytest.mark.slow
def test_replay_misses_on_a_changed_setting_or_a_lost_file(tmp_path, monkeypatch):
    """Only a run whose every stage is cached under its current key, files intact, is replayed; a miss
    writes nothing, so the flow runs and records the work."""
    from flows.replay import replay
    from selffeed.config import load_config
    from selffeed.run.layout import RunLayout
    from tests.conftest import tiny_overrides as tiny

    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "runs" / ".prefect"))
    cfg = load_config(CONFIG, tiny(tmp_path / "runs"))
    assert replay(cfg) is None  # nothing ran yet
    assert main(["run", CONFIG, *tiny(tmp_path / "runs")]) == 0
    lay = RunLayout.of(cfg.runs_dir, cfg.name)
    record = replay(cfg)
    assert record is not None and record["rounds"] == [0, 1]
    stamp = lay.run_json.stat().st_mtime_ns
    changed = load_config(CONFIG, tiny(tmp_path / "runs", **{"retrain.steps": 3}))
    assert replay(changed) is None and lay.run_json.stat().st_mtime_ns == stamp
    (lay.kept(1)).unlink()
    assert replay(cfg) is None
