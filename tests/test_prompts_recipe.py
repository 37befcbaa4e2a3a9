"""The prompts recipe: data formats, column mapping, splits, templates, and one-line data errors."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from datasets import Dataset, DatasetDict

from selffeed.config import ConfigError, load_config
from selffeed.recipes import recipe_for
from selffeed.recipes.examples import write_examples
from selffeed.recipes.prompts import DataError, chars_of, make_splits
from selffeed.run.checks import preflight
from selffeed.training.model import char_tokenizer, save_checkpoint, tiny_gpt2

ROWS = [
    {"q": f"what is {i}?", "a": str(i), "sol": f"it is {i}" if i < 4 else None, "part": "test" if i >= 8 else "train"}
    for i in range(10)
]


def cfg_for(tmp_path, data, *items):
    return load_config(None, [f"runs_dir={tmp_path / 'runs'}", "recipe=prompts", f"prompts.data={data}",
                              "prompts.prompt_column=q", "prompts.reference_column=a", "prompts.completion_column=sol",
                              *items])


def splits(cfg):
    return recipe_for(cfg).make_splits(cfg.seed)


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet", "datasets"])
def test_every_format_gives_the_same_splits(tmp_path, fmt):
    df = pd.DataFrame(ROWS)
    path = tmp_path / f"d.{fmt}"
    if fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    elif fmt == "csv":
        df.to_csv(path, index=False)
    elif fmt == "parquet":
        df.to_parquet(path)
    else:
        Dataset.from_pandas(df).save_to_disk(str(path))
    got = splits(cfg_for(tmp_path, path, "prompts.split_column=part", "prompts.validation_value=test",
                         "prompts.test_value=none", "prompts.template=\"Q: {prompt} ({part})\\nA:\""))
    held = pd.concat([got["val"], got["test"]]).sort_values("prompt")  # no "none" rows: half of them are test
    assert len(got["val"]) == len(got["test"]) == 1
    assert held["prompt"].tolist() == ["Q: what is 8? (test)\nA:", "Q: what is 9? (test)\nA:"]
    assert held["reference"].tolist() == ["8", "9"] and held["completion"].tolist() == ["8", "9"]
    assert got["seed"]["completion"].tolist() == [f"it is {i}" for i in range(4)]
    assert got["pool"]["reference"].tolist() == ["4", "5", "6", "7"]
    assert got["pool"]["prompt_id"].tolist() == [0, 1, 2, 3] and set(got["pool"]["slice"]) == {0}


def test_datasetdict_splits_become_a_split_column(tmp_path):
    df = pd.DataFrame(ROWS).drop(columns="part")
    DatasetDict({"train": Dataset.from_pandas(df[:8]), "validation": Dataset.from_pandas(df[8:])}).save_to_disk(
        str(tmp_path / "dd"))
    got = splits(cfg_for(tmp_path, tmp_path / "dd", "prompts.split_column=split"))
    # No "test" rows: a seeded half of the validation rows is the test split.
    assert sorted(got["val"]["reference"].tolist() + got["test"]["reference"].tolist()) == ["8", "9"]
    assert len(got["val"]) == len(got["test"]) == 1 and len(got["seed"]) == 4


def test_fraction_split_draws_validation_from_rows_with_a_reference(tmp_path):
    rows = [dict(r, a=None) if i in (5, 6) else r for i, r in enumerate(ROWS)]
    pd.DataFrame(rows).to_parquet(tmp_path / "d.parquet")
    cfg = cfg_for(tmp_path, tmp_path / "d.parquet", "prompts.validation_fraction=0.25", "prompts.test_fraction=0.125")
    got = splits(cfg)
    assert (len(got["val"]), len(got["test"])) == (2, 1)  # 25% and 12.5% of the 8 rows with a reference
    assert got["val"]["reference"].notna().all() and got["test"]["reference"].notna().all()
    assert got["pool"]["reference"].isna().sum() == 2  # documented: these are left to the vote
    assert splits(cfg)["test"].equals(got["test"]) and splits(cfg)["val"].equals(got["val"])  # seeded, so repeatable
    every = pd.concat([got["seed"], got["pool"], got["val"], got["test"]])["prompt"]
    assert sorted(every) == sorted(r["q"] for r in rows)


def test_references_serve_as_completions_and_vice_versa(tmp_path):
    rows = [dict(r, a=None) if i in (5, 6) else r for i, r in enumerate(ROWS)]
    pd.DataFrame(rows).to_parquet(tmp_path / "d.parquet")
    split = ["prompts.split_column=part", "prompts.validation_value=test", "prompts.test_value=none"]
    # No completion column: training rows with a reference are the seed, the rest the pool.
    got = splits(cfg_for(tmp_path, tmp_path / "d.parquet", "prompts.completion_column=null", *split))
    assert got["seed"]["completion"].tolist() == ["0", "1", "2", "3", "4", "7"]
    assert got["pool"]["prompt"].tolist() == ["what is 5?", "what is 6?"] and got["pool"]["reference"].isna().all()
    # No reference column: completions are the references.
    got = splits(cfg_for(tmp_path, tmp_path / "d.parquet", "prompts.reference_column=null", "prompts.validation_fraction=0.5"))
    assert got["test"]["reference"].tolist() == got["test"]["completion"].tolist() and len(got["val"]) == 2
    with pytest.raises(DataError, match="every training row has a completion, so the pool of prompts is empty"):
        splits(cfg_for(tmp_path, tmp_path / "d.parquet", "prompts.completion_column=q", *split))


def test_chat_template_wraps_prompts(tmp_path):
    tok = char_tokenizer("abcdefghijklmnopqrstuvwxyz0123456789 ?<>|:\n")
    tok.chat_template = "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}{% endfor %}<|assistant|>"
    from selffeed.config import ModelConfig

    save_checkpoint(tiny_gpt2(ModelConfig(n_embd=8, n_layer=1, n_head=2, n_inner=8), tok), tok, tmp_path / "ckpt")
    pd.DataFrame(ROWS).to_parquet(tmp_path / "d.parquet")
    cfg = cfg_for(tmp_path, tmp_path / "d.parquet", f"model.path={tmp_path / 'ckpt'}")
    assert splits(cfg)["test"]["prompt"].str.fullmatch(r"<\|user\|>what is \d\?<\|assistant\|>").all()
    plain = cfg_for(tmp_path, tmp_path / "d.parquet", f"model.path={tmp_path / 'ckpt'}", "prompts.chat_template=false")
    assert splits(plain)["test"]["prompt"].str.fullmatch(r"what is \d\?").all()


def test_tiny_tokenizer_alphabet_comes_from_the_data(tmp_path):
    paths = write_examples(tmp_path)
    cfg = load_config(None, ["recipe=prompts", f"prompts.data={paths['translation']}", "prompts.prompt_column=english",
                             "prompts.reference_column=french", "prompts.completion_column=target",
                             "prompts.split_column=split"])
    got = splits(cfg)
    chars = chars_of(*got.values())
    assert "é" not in chars and set("la grande voiture") <= set(chars) and chars == "".join(sorted(chars))
    tok = char_tokenizer(chars)
    text = got["seed"]["prompt"][0] + got["seed"]["completion"][0]
    assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text


@pytest.mark.parametrize(
    "setup, items, fragment",
    [
        (lambda p: pd.DataFrame(ROWS).to_parquet(p / "d.parquet"), ["prompts.prompt_column=question"],
         "no column 'question' (prompts.prompt_column); columns are q, a, sol, part"),
        (lambda p: pd.DataFrame(ROWS).to_parquet(p / "d.parquet"), ["prompts.reference_column=answer"],
         "no column 'answer' (prompts.reference_column)"),
        (lambda p: (p / "d.jsonl").write_text(""), [], "the file is empty"),
        (lambda p: (p / "d.csv").write_text("q,a,sol\n"), [], "no rows"),
        (lambda p: (p / "d.jsonl").write_text("{not json\n"), [], "cannot read it"),
        (lambda p: (p / "d.txt").write_text("x"), [], "unknown format '.txt'"),
        (lambda p: None, [], "no such file or directory"),
        (lambda p: pd.DataFrame([dict(r, q="  ") if i == 3 else r for i, r in enumerate(ROWS)]).to_parquet(p / "d.parquet"),
         [], "1 row(s) have an empty 'q' (first: row 3)"),
        (lambda p: pd.DataFrame(ROWS).assign(a=None).to_parquet(p / "d.parquet"), [],
         "fewer than 2 rows have a reference, so no validation and test split can be held out"),
        (lambda p: pd.DataFrame(ROWS).assign(a=lambda d: d["a"].where(d.index < 9)).to_parquet(p / "d.parquet"),
         ["prompts.split_column=part", "prompts.validation_value=test", "prompts.test_value=none"],
         "1 held-out row(s) have no reference (first: row 9)"),
        (lambda p: pd.DataFrame(ROWS).to_parquet(p / "d.parquet"),
         ["prompts.split_column=part", "prompts.validation_value=test"], "must not be the one reported"),
        (lambda p: pd.DataFrame(ROWS).to_parquet(p / "d.parquet"), ["prompts.split_column=part"],
         "no row has part == 'validation'"),
        (lambda p: pd.DataFrame(ROWS).assign(sol=None).to_parquet(p / "d.parquet"), [], "no labelled seed"),
        (lambda p: pd.DataFrame(ROWS).to_parquet(p / "d.parquet"), ["prompts.template='{prompt} {nope}'"],
         "prompts.template: no column 'nope'"),
    ],
)
def test_bad_data_is_a_one_line_error_naming_it(tmp_path, setup, items, fragment):
    setup(tmp_path)
    found = sorted(tmp_path.glob("d.*"))
    data = found[0] if found else tmp_path / "d.parquet"
    cfg = cfg_for(tmp_path, data, *items)
    with pytest.raises(ConfigError) as err:  # the CLI's preflight: exit status 2 and this line
        preflight(cfg)
    msg = str(err.value)
    assert fragment in msg and "\n" not in msg
    assert not (tmp_path / "runs").exists()  # nothing written


def test_preflight_names_a_bad_scorer(tmp_path):
    pd.DataFrame(ROWS).to_parquet(tmp_path / "d.parquet")
    (tmp_path / "s.py").write_text("def f(x, y, z):\n    return []\n")
    for spec, fragment in [(f"{tmp_path}/gone.py:f", "gone.py not found"), (f"{tmp_path}/s.py:f", "wrong signature f(x, y, z)")]:
        with pytest.raises(ConfigError) as err:
            preflight(cfg_for(tmp_path, tmp_path / "d.parquet", f"prompts.scorer={spec}"))
        assert fragment in str(err.value) and spec in str(err.value) and "\n" not in str(err.value)


def test_label_free_refuses_a_reference_in_the_pool_naming_file_and_column(tmp_path):
    # Rows 4-7 (no solution) are the pool; 8 and 9 are held out.
    rows = [dict(r, part="validation" if i == 8 else r["part"]) for i, r in enumerate(ROWS)]
    pd.DataFrame(rows).to_parquet(tmp_path / "d.parquet")
    cfg = cfg_for(tmp_path, tmp_path / "d.parquet", "prompts.split_column=part", "filter.label_free=true")
    with pytest.raises(DataError) as err:
        make_splits(cfg.prompts, cfg.seed, label_free=True)
    msg = str(err.value)
    assert msg == (f"prompts.data '{tmp_path / 'd.parquet'}': 4 pool row(s) have a reference in column 'a' "
                   "(first: row 4); filter.label_free refuses them (empty them, or turn it off)")
    assert make_splits(cfg.prompts, cfg.seed)["pool"]["reference"].notna().all()  # off: the score filters may use them
    stripped = [dict(r, a=None) if 4 <= i < 8 else r for i, r in enumerate(rows)]
    pd.DataFrame(stripped).to_parquet(tmp_path / "d.parquet")
    got = make_splits(cfg.prompts, cfg.seed, label_free=True)
    assert len(got["pool"]) == 4 and got["pool"]["reference"].isna().all()


def test_config_rules():
    with pytest.raises(ConfigError, match="prompts.data: required when recipe is prompts"):
        load_config(None, ["recipe=prompts"])
    with pytest.raises(ConfigError, match="filter.min_score / filter.best_of_k: need a scorer"):
        load_config(None, ["filter.best_of_k=true"])
    with pytest.raises(ConfigError, match=r"loop.metric: 'chrf' is not a validation metric of recipe prompts \(choose rougeL\)"):
        load_config(None, ["recipe=prompts", "prompts.data=x.csv", "prompts.scorer=rougeL", "loop.metric=chrf"])
    assert load_config(None, ["recipe=prompts", "prompts.data=x.csv", "prompts.scorer=my.py:reward"]).loop.metric == "reward"
    assert load_config(None, ["loop.metric=accuracy"]).loop.metric == "accuracy"
    with pytest.raises(ConfigError, match="not a validation metric of recipe arithmetic"):
        load_config(None, ["loop.metric=chrf"])


def test_tiny_model_too_short_for_the_data_is_named(tmp_path):
    pd.DataFrame(ROWS).to_parquet(tmp_path / "d.parquet")
    cfg = cfg_for(tmp_path, tmp_path / "d.parquet", "model.n_positions=16", "prompts.max_new_tokens=8")
    # "what is 0?" + "it is 0" + EOS and "what is 9?" + 8 new tokens are both 18 characters.
    with pytest.raises(ConfigError, match=r"model.n_positions=16: too short .* is 18 characters"):
        preflight(cfg)
    preflight(cfg_for(tmp_path, tmp_path / "d.parquet", "model.n_positions=18", "prompts.max_new_tokens=8"))


@pytest.mark.parametrize("name", ["qa", "translation", "summarization"])
def test_shipped_examples_pass_preflight_and_match_the_generator(tmp_path, monkeypatch, name):
    root = Path(__file__).parents[1]
    fresh = write_examples(tmp_path)[name]
    shipped = root / "data" / "examples" / fresh.name
    if name == "summarization":  # Parquet files embed library versions; compare their rows instead
        pd.testing.assert_frame_equal(pd.read_parquet(shipped), pd.read_parquet(fresh))
    else:
        assert shipped.read_bytes() == fresh.read_bytes()
    monkeypatch.chdir(root)  # the shipped configs name their data relative to the repository root
    preflight(load_config(root / "data" / "configs" / f"{name}.yaml", [f"runs_dir={tmp_path / 'runs'}"]))
