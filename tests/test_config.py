"""Config loading: YAML + overrides, and one-line errors naming the field or file."""

from pathlib import Path

import pytest

from selffeed.config import ConfigError, RunConfig, dump_config, load_config

CONFIGS = sorted((Path(__file__).parents[1] / "data" / "configs").glob("*.yaml"))


def test_defaults_are_valid():
    cfg = load_config()
    assert isinstance(cfg, RunConfig)
    assert cfg.sample.k == 8


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_shipped_configs_load(path):
    load_config(path)


def test_shipped_configs_exist():
    assert CONFIGS, "data/configs/*.yaml must ship at least one config"


def test_yaml_and_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("name: x\nsample:\n  k: 3\n")
    cfg = load_config(p, ["sample.temperature=0.5", "arithmetic.test_digits=[1, 2]", "filter.verifier=a.b:c"])
    assert cfg.name == "x" and cfg.sample.k == 3 and cfg.sample.temperature == 0.5
    assert cfg.arithmetic.test_digits == [1, 2]
    assert cfg.filter.verifier == "a.b:c"


def test_dump_round_trips(tmp_path):
    cfg = load_config(None, ["sample.k=5"])
    p = tmp_path / "c.yaml"
    p.write_text(dump_config(cfg))
    assert load_config(p) == cfg


@pytest.mark.parametrize(
    "overrides, fragment",
    [
        (["sample.kk=3"], "unknown key 'sample.kk'"),
        (["bogus=1"], "unknown key 'bogus'"),
        (["sample.k=many"], "field 'sample.k'"),
        (["sample.k=0"], "field 'sample.k'"),
        (["loop.mix=sometimes"], "field 'loop.mix'"),
        (["name=has space"], "field 'name'"),
        (["sample.k"], "expected key=value"),
        (["sample=3"], "field 'sample'"),
    ],
)
def test_bad_values_are_one_line_errors(overrides, fragment):
    with pytest.raises(ConfigError) as err:
        load_config(None, overrides)
    msg = str(err.value)
    assert fragment in msg
    assert "\n" not in msg


def test_missing_file_names_the_file(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match="nope.yaml: config file not found"):
        load_config(missing)


def test_invalid_yaml_names_the_file(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("sample: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        load_config(p)


def test_unknown_key_in_file_names_the_file(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("filter:\n  min_agreemnt: 0.5\n")
    with pytest.raises(ConfigError, match=r"c.yaml: unknown key 'filter.min_agreemnt'"):
        load_config(p)
