"""The text recipe: corpus formats, splits, tokenizer, one round end to end from the tiny default and
from local GPT-2 and Llama checkpoints, and one-line errors for bad checkpoints and data."""

import json

import pandas as pd
import pytest
import torch
from datasets import Dataset, load_dataset
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from selffeed.config import ConfigError, load_config
from selffeed.loop import stages
from selffeed.recipes import recipe_for
from selffeed.recipes.prompts import DataError
from selffeed.recipes.text import read_documents, word_tokenizer
from selffeed.run import bookkeeping
from selffeed.run.checks import preflight
from selffeed.run.report import round_table
from selffeed.training.model import ModelLoadError, load_checkpoint

DOCS = [f"Doc {i} starts here and then goes on for a while." for i in range(12)]
SMALL = [
    "threads=1", "text.demo_docs=60", "text.validation_docs=10", "text.test_docs=10", "text.prompts_per_round=4",
    "text.pool_slices=1",
    "text.max_new_tokens=12", "text.diversity_prompts=4", "sample.k=2", "model.n_embd=16", "model.n_layer=1",
    "model.n_head=2", "model.n_inner=32", "model.n_positions=80", "finetune.steps=4", "finetune.batch_size=8",
    "finetune.warmup_steps=1", "finetune.progress=false", "retrain.steps=2", "retrain.batch_size=8",
    "retrain.warmup_steps=1", "retrain.progress=false", "loop.max_rounds=1",
]


def text_cfg(tmp_path, *items):
    return load_config(None, [f"runs_dir={tmp_path / 'runs'}", "recipe=text", *SMALL, *items])


def write_corpus(tmp_path, fmt):
    if fmt == "txt":
        path = tmp_path / "c.txt"
        path.write_text("\n\n".join(DOCS) + "\n")
    elif fmt == "glob":
        for part in range(2):
            (tmp_path / f"part{part}.txt").write_text("\n".join(DOCS[part * 6 : part * 6 + 6]))
        return str(tmp_path / "part*.txt"), ['text.separator="\\n"']  # YAML double quotes: the escape is a newline
    elif fmt == "jsonl":
        path = tmp_path / "c.jsonl"
        path.write_text("".join(json.dumps({"story": d}) + "\n" for d in DOCS))
    elif fmt == "parquet":
        path = tmp_path / "c.parquet"
        pd.DataFrame({"story": DOCS}).to_parquet(path)
    else:
        path = tmp_path / "c-ds"
        Dataset.from_dict({"story": DOCS}).save_to_disk(str(path))
    return str(path), [] if fmt == "txt" else ["text.text_column=story"]


@pytest.mark.parametrize("fmt", ["txt", "glob", "jsonl", "parquet", "datasets"])
def test_every_corpus_format_reads_the_same_documents(tmp_path, fmt):
    path, extra = write_corpus(tmp_path, fmt)
    cfg = load_config(None, ["recipe=text", f"text.data={path}", *extra])
    assert read_documents(cfg.text) == DOCS


def test_splits_from_a_corpus_and_a_prompt_file(tmp_path):
    path, _ = write_corpus(tmp_path, "txt")
    (tmp_path / "p.txt").write_text("Once upon a time\n\nIn a land\n")
    cfg = load_config(None, ["recipe=text", f"text.data={path}", "text.validation_docs=3", "text.test_docs=3",
                             "text.prompt_words=3",
                             f"text.prompts={tmp_path / 'p.txt'}", "text.prompts_per_round=3", "text.pool_slices=2"])
    s = recipe_for(cfg).make_splits(cfg.seed)
    assert len(s["val"]) == 3 and len(s["test"]) == 3 and len(s["seed"]) == 6
    held = set(s["val"]["prompt"] + s["val"]["completion"]) | set(s["test"]["prompt"] + s["test"]["completion"])
    assert len(held) == 6 and held.isdisjoint(s["seed"]["prompt"] + s["seed"]["completion"])
    assert all(p.startswith("Doc ") and c.startswith(" here and then") for p, c in zip(s["seed"]["prompt"], s["seed"]["completion"]))
    assert s["pool"]["prompt"].tolist() == ["Once upon a time", "In a land"] * 3
    assert s["pool"]["slice"].tolist() == [0, 0, 0, 1, 1, 1]


def test_demo_splits_are_deterministic_and_the_word_tokenizer_round_trips(tmp_path):
    cfg = text_cfg(tmp_path)
    a, b = (recipe_for(cfg).make_splits(0) for _ in range(2))
    assert all(a[k].equals(b[k]) for k in a)
    assert not a["seed"].equals(recipe_for(cfg).make_splits(1)["seed"])
    tok = word_tokenizer(*a.values())
    text = a["seed"]["prompt"][0] + a["seed"]["completion"][0]
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == text and len(ids) < len(text) / 2 and tok.unk_token_id not in ids


@pytest.mark.parametrize("items, message", [
    (["text.data=/nonexistent/c.txt"], "text.data '/nonexistent/c.txt': no such file"),
    (["text.data=data/configs/*.nothing"], "no file matches"),
    (["text.validation_docs=70"], "60 documents, fewer than"),
    (["text.prompts=/nonexistent/p.txt"], "text.prompts '/nonexistent/p.txt': no such file"),
    (["loop.metric=accuracy"], "loop.metric: 'accuracy' is not a validation metric of recipe text"),
    (["model.n_positions=20"], "model.n_positions=20: too short for the corpus"),
    (["text.scorer=nope.py:f"], "text.scorer 'nope.py:f'"),
    (["filter.min_score=1"], "filter.min_score / filter.best_of_k: need a scorer"),
])
def test_bad_text_input_is_one_line(tmp_path, items, message):
    with pytest.raises(ConfigError) as err:
        preflight(text_cfg(tmp_path, *items))
    assert message in str(err.value) and "\n" not in str(err.value)


def test_wrong_column_names_the_field(tmp_path):
    path, _ = write_corpus(tmp_path, "jsonl")
    with pytest.raises(DataError, match=r"no column 'text' \(text.text_column\); columns are story"):
        read_documents(load_config(None, ["recipe=text", f"text.data={path}"]).text)


def test_shipped_text_config_validates():
    cfg = load_config("data/configs/text.yaml")
    assert cfg.recipe == "text" and cfg.loop.metric == "perplexity" and cfg.loop.max_rounds >= 3


def save_family(family: str, tmp_path, tokenizer) -> str:
    ids = dict(bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id,
               pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    if family == "gpt2":
        model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_positions=96, n_embd=16, n_layer=1, n_head=2,
                                           n_inner=32, **ids))
    else:
        model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32,
                                             num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                                             max_position_embeddings=96, **ids))
    path = tmp_path / family
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.mark.parametrize("family", ["tiny", "gpt2", "llama"])
def test_one_round_end_to_end(tmp_path, family):
    cfg = text_cfg(tmp_path, f"name={family}")
    if family != "tiny":  # a local checkpoint with a tokenizer of its own, saved with save_pretrained
        cfg = text_cfg(tmp_path, f"name={family}", f"model.path={save_family(family, tmp_path, word_tokenizer(*recipe_for(cfg).make_splits(0).values()))}")
        preflight(cfg)
    data = stages.prepare(cfg)
    m0 = stages.finetune(cfg, data)
    history = [stages.validate(cfg, 0, m0, data).meta["metrics"]]
    samples = stages.sample(cfg, 1, m0, data)
    kept = stages.filter_samples(cfg, 1, samples)
    m1 = stages.retrain(cfg, 1, m0, data, [kept])
    history.append(stages.validate(cfg, 1, m1, data, [samples, kept]).meta["metrics"])
    record = bookkeeping.decide(cfg, history)

    assert samples.rows == 4 * 2 and 0 < kept.rows <= samples.rows
    got = load_dataset("parquet", data_files=str(stages.layout_of(cfg).round_dir(1) / "kept.parquet"))["train"]
    assert got.num_rows == kept.rows and set(got["passed"]) == {"length,repetition,dedup,near_dup"}
    last = history[-1]
    for key in ("perplexity", "loss", "distinct_1", "distinct_2", "self_bleu", "entropy_2", "kept", "real_fraction"):
        assert last[key] is not None, key
    assert 0 <= last["wellformed"] <= 1  # the demo corpus's grammar is known, whichever model writes
    assert last["train_size"] == history[0]["train_size"] + kept.rows
    before, _ = load_checkpoint(m0.path("model"))
    after, _ = load_checkpoint(m1.path("model"))
    assert any(not torch.equal(p, q) for p, q in zip(before.parameters(), after.parameters()))
    assert type(after).__name__ == {"tiny": "GPT2LMHeadModel", "gpt2": "GPT2LMHeadModel", "llama": "LlamaForCausalLM"}[family]
    assert record["metric"] == "perplexity" and record["best_round"] in (0, 1)
    table = round_table(history)
    assert "ppl" in table.splitlines()[0] and "dist-2" in table.splitlines()[0]


def test_missing_and_encoder_checkpoints_are_one_line_errors(tmp_path):
    from transformers import BertConfig

    BertConfig(vocab_size=30, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
               intermediate_size=32).save_pretrained(tmp_path / "bert")
    for path, message in [(tmp_path / "nope", "no such directory"), (tmp_path / "bert", "'bert' is an encoder")]:
        with pytest.raises(ModelLoadError) as err:
            load_checkpoint(path)
        assert message in str(err.value) and "\n" not in str(err.value)
        with pytest.raises(ConfigError, match=message):
            preflight(text_cfg(tmp_path, f"model.path={path}"))


@pytest.mark.slow
@pytest.mark.integration
def test_cli_runs_the_text_demo_config(tmp_path):
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    proc = subprocess.run(
        [sys.executable, "-m", "flows.cli", "run", "data/configs/text.yaml", f"runs_dir={tmp_path / 'runs'}",
         "name=t", *SMALL, "loop.max_rounds=2"],
        capture_output=True, text=True, env=env, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "run t: 2 rounds" in proc.stdout and "(perplexity)" in proc.stdout
    head = next(line for line in proc.stdout.splitlines() if line.lstrip().startswith("round"))
    assert head.split()[:9] == ["round", "train", "real", "kept", "ppl", "dist-1", "dist-2", "self-bleu", "wellformed"]
    record = json.loads((tmp_path / "runs" / "t" / "run.json").read_text())
    assert record["metric"] == "perplexity" and record["rounds"] == [0, 1, 2]
