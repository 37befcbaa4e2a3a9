"""The selffeed command: one-line errors before anything is written, and a real run end to end."""

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

