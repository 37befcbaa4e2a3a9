"""Chat models: completions end with the template's end-of-turn token, and sampling stops there."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from selffeed.config import ModelConfig, SampleConfig, TrainConfig
from selffeed.sampling.sampler import sample_completions
from selffeed.training.finetune import tokenize_examples, train
from selffeed.training.model import char_tokenizer, end_of_turn, load_checkpoint, save_checkpoint, tiny_gpt2

TEMPLATE = (
    "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


@pytest.fixture
def chat_checkpoint(tmp_path):
    """A tiny chat model whose template closes turns with <|end|>, while its EOS is <eos>."""
    tok = char_tokenizer("abcdefgh +=0123456789")
    tok.add_special_tokens({"additional_special_tokens": ["<|user|>", "<|assistant|>", "<|end|>"]})
    tok.chat_template = TEMPLATE
    model = tiny_gpt2(ModelConfig(n_embd=32, n_layer=2, n_head=2, n_inner=64, n_positions=48, dropout=0.0), tok)
    save_checkpoint(model, tok, tmp_path / "chat")
    return tmp_path / "chat"


def test_end_of_turn_is_read_from_the_template(chat_checkpoint):
    model, tok = load_checkpoint(chat_checkpoint)
    assert end_of_turn(tok) == "<|end|>" and tok.eos_token == "<|end|>"
    assert tok.convert_tokens_to_ids("<eos>") in model.generation_config.eos_token_id  # generate stops at either
    assert end_of_turn(char_tokenizer("ab")) is None  # no template: EOS stays


@pytest.mark.slow
def test_training_ends_completions_with_end_of_turn_and_sampling_stops_there(chat_checkpoint):
    model, tok = load_checkpoint(chat_checkpoint)
    end = tok.convert_tokens_to_ids("<|end|>")
    prompts = [tok.apply_chat_template([{"role": "user", "content": f"{a}+{a}"}], tokenize=False,
                                       add_generation_prompt=True) for a in range(10)]
    df = pd.DataFrame({"prompt": prompts, "completion": [f"{2 * a}" for a in range(10)]})
    labels = tokenize_examples(df, tok)["labels"]
    assert all(row[-1] == end for row in labels)
    torch.manual_seed(0)
    train(model, tok, df, TrainConfig(steps=150, batch_size=10, lr=3e-3, warmup_steps=5, progress=False), seed=0)
    outs = sample_completions(model, tok, prompts, SampleConfig(greedy=True), seed=0, max_new_tokens=12)
    # It learned to close its turn: every answer stops at <|end|> (counted in n_tokens), well before the cap.
    assert [o.text for o in outs] == list(df["completion"])
    assert [o.n_tokens for o in outs] == [len(c) + 1 for c in df["completion"]]
