"""Fine-tuning: length-bucketed batches, gradient accumulation, weights that move."""

import itertools
import random

import pandas as pd
import pytest
import torch

from selffeed.config import TrainConfig
from selffeed.training.finetune import batch_order, train


def examples(n: int = 48) -> pd.DataFrame:
    rng = random.Random(0)
    prompts = [f"{rng.randint(0, 10 ** rng.randint(1, 6))}+{rng.randint(0, 99)}=" for _ in range(n)]
    return pd.DataFrame({"prompt": prompts, "completion": [str(eval(p[:-1])) for p in prompts]})


@pytest.mark.parametrize("bucket_batches", [1, 4])
def test_every_row_once_per_epoch_and_same_for_a_seed(bucket_batches):
    lengths = [random.Random(i).randint(3, 30) for i in range(50)]
    cfg = TrainConfig(batch_size=8, bucket_batches=bucket_batches)
    batches = list(itertools.islice(batch_order(lengths, cfg, seed=3), 14))  # two epochs of 7 batches
    for epoch in (batches[:7], batches[7:]):
        assert sorted(i for b in epoch for i in b) == list(range(50))
        assert all(len(b) == 8 for b in epoch if len(b) != 2)
    assert batches == list(itertools.islice(batch_order(lengths, cfg, seed=3), 14))
    assert batches != list(itertools.islice(batch_order(lengths, cfg, seed=4), 14))


def test_bucketing_cuts_padding():
    lengths = [random.Random(i).randint(3, 60) for i in range(512)]
    padding = lambda cfg: sum(
        len(b) * max(lengths[i] for i in b) - sum(lengths[i] for i in b)
        for b in itertools.islice(batch_order(lengths, cfg, seed=0), 16)
    )
    assert padding(TrainConfig(batch_size=32, bucket_batches=8)) < padding(TrainConfig(batch_size=32, bucket_batches=1)) / 3


def test_training_changes_every_weight_and_lowers_loss(tiny_model, tokenizer):
    before = {n: p.clone() for n, p in tiny_model.named_parameters()}
    cfg = TrainConfig(steps=30, batch_size=16, warmup_steps=2, lr=5e-3, progress=False, position_offset=3)
    stats = train(tiny_model, tokenizer, examples(), cfg, seed=0)
    for n, p in tiny_model.named_parameters():
        assert not torch.equal(before[n], p), f"{n} did not change"
    assert stats.final_loss < stats.first_loss
    assert stats.tokens > 30 * 16 * 4


def test_gradient_accumulation_gives_the_same_update(tokenizer):
    from selffeed.config import ModelConfig
    from selffeed.training.model import tiny_gpt2

    small = ModelConfig(n_embd=16, n_layer=1, n_head=2, n_inner=32, n_positions=32, dropout=0.0)
    cfg = TrainConfig(steps=4, batch_size=12, warmup_steps=1, progress=False)
    one, split = tiny_gpt2(small, tokenizer), tiny_gpt2(small, tokenizer)
    a = train(one, tokenizer, examples(), cfg, seed=0)
    b = train(split, tokenizer, examples(), cfg.model_copy(update={"grad_accum": 3}), seed=0)
    assert a.tokens == b.tokens and a.first_loss == pytest.approx(b.first_loss, rel=1e-5)
    for (n, p), q in zip(one.named_parameters(), split.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5, msg=n)
