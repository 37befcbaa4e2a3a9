"""Tokenizer and checkpoints round-trip through from_pretrained; training really changes weights."""

import json

import pandas as pd
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from selffeed.config import TrainConfig
from selffeed.training.finetune import IGNORE, lr_at, tokenize_examples, train
from selffeed.training.model import ModelLoadError, check_checkpoint, load_checkpoint, save_checkpoint


def examples(n=64):
    rows = [(f"{a}+{b}=", str(a + b)) for a in range(8) for b in range(8)][:n]
    return pd.DataFrame(rows, columns=["prompt", "completion"])


def test_char_tokenizer_round_trips(tmp_path, tokenizer, tiny_model):
    save_checkpoint(tiny_model, tokenizer, tmp_path / "ckpt")
    tok = AutoTokenizer.from_pretrained(tmp_path / "ckpt")
    text = "321+540=8610"
    assert tok(text, add_special_tokens=False)["input_ids"] == tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(tok(text, add_special_tokens=False)["input_ids"]) == len(text)
    assert tok.decode(tok(text)["input_ids"]) == text
    assert tok.padding_side == "left" and tok.pad_token == "<pad>" and tok.eos_token == "<eos>"
    assert (tmp_path / "ckpt" / "model.safetensors").is_file()
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "ckpt")
    for (n, a), b in zip(tiny_model.state_dict().items(), model.state_dict().values()):
        assert torch.equal(a, b), n


def test_tokenize_masks_the_prompt(tokenizer):
    ds = tokenize_examples(pd.DataFrame({"prompt": ["12+3="], "completion": ["15"]}), tokenizer)
    ids, labels = ds[0]["input_ids"], ds[0]["labels"]
    assert len(ids) == 5 + 2 + 1 and ids[-1] == tokenizer.eos_token_id
    assert labels[:5] == [IGNORE] * 5 and labels[5:] == ids[5:]


def test_training_changes_every_weight_and_lowers_loss(tokenizer, tiny_model):
    before = {n: p.detach().clone() for n, p in tiny_model.named_parameters()}
    stats = train(tiny_model, tokenizer, examples(), TrainConfig(steps=40, batch_size=16, warmup_steps=4, progress=False), seed=0)
    for n, p in tiny_model.named_parameters():
        assert not torch.equal(before[n], p), f"{n} did not change"
    assert stats.final_loss < stats.first_loss
    assert stats.tokens > 0 and stats.steps == 40


def test_training_is_seeded(tokenizer):
    from selffeed.config import ModelConfig
    from selffeed.training.model import tiny_gpt2

    cfg = ModelConfig(n_embd=16, n_layer=1, n_head=2, n_inner=32, n_positions=32)
    a, b = tiny_gpt2(cfg, tokenizer, seed=1), tiny_gpt2(cfg, tokenizer, seed=1)
    tc = TrainConfig(steps=5, batch_size=8, warmup_steps=1, progress=False)
    train(a, tokenizer, examples(), tc, seed=3)
    train(b, tokenizer, examples(), tc, seed=3)
    for x, y in zip(a.parameters(), b.parameters()):
        assert torch.equal(x, y)


def test_lr_schedule():
    cfg = TrainConfig(steps=100, lr=1.0, warmup_steps=10, min_lr_ratio=0.1)
    assert lr_at(0, cfg) == pytest.approx(0.1)
    assert lr_at(9, cfg) == pytest.approx(1.0)
    assert lr_at(99, cfg) == pytest.approx(0.1, abs=1e-3)


def test_training_on_nothing_is_an_error(tokenizer, tiny_model):
    with pytest.raises(ValueError, match="training set is empty"):
        train(tiny_model, tokenizer, examples().iloc[:0], TrainConfig(steps=1, progress=False), seed=0)


def test_bad_checkpoints_are_one_line_errors(tmp_path, tokenizer, tiny_model):
    with pytest.raises(ModelLoadError, match="no such directory"):
        load_checkpoint(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="no config.json"):
        check_checkpoint(tmp_path / "empty")
    enc = tmp_path / "encoder"
    enc.mkdir()
    (enc / "config.json").write_text(json.dumps({"model_type": "t5"}))
    with pytest.raises(ModelLoadError, match="model type 't5' is not a causal LM"):
        check_checkpoint(enc)
    save_checkpoint(tiny_model, tokenizer, tmp_path / "ok")
    (tmp_path / "ok" / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(ModelLoadError) as err:
        load_checkpoint(tmp_path / "ok")
    assert "\n" not in str(err.value)
