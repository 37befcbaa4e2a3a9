"""Validation's teacher-forced loss: batches bounded by the logits they hold, same figures however cut."""

import pandas as pd
import pytest
import torch

import selffeed.evaluation.validate as validate
from selffeed.evaluation.validate import completion_loss, logit_batches, token_nll


def test_logit_batches_keep_order_and_stay_within_the_budget(monkeypatch):
    monkeypatch.setattr(validate, "LOGITS_BUDGET", 100)
    lengths = [10, 9, 9, 5, 5, 5, 2, 30]
    order = [7, 0, 1, 2, 3, 4, 5, 6]  # longest first, as token_nll sorts them
    batches = logit_batches(order, lengths, vocab=4, batch_size=3)
    assert [i for b in batches for i in b] == order
    assert batches[0] == [7]  # a row over the budget still goes through, alone
    for b in batches[1:]:
        assert len(b) <= 3 and len(b) * max(lengths[i] for i in b) * 4 <= 100
    assert batches[1:] == [[0, 1], [2, 3], [4, 5, 6]]


def test_loss_is_the_same_under_a_tight_budget(monkeypatch, tiny_model, tokenizer):
    df = pd.DataFrame({"prompt": ["12+34=", "1+2=", "99+1=", "5+5=", "7+70="],
                       "completion": ["46", "3", "100", "10", "77"]})
    wide = token_nll(tiny_model, tokenizer, df["prompt"].tolist(), df["completion"].tolist(), batch_size=256)
    seen = []
    hook = tiny_model.register_forward_pre_hook(lambda m, a, kw: seen.append(kw["input_ids"].shape), with_kwargs=True)
    vocab = tiny_model.get_output_embeddings().weight.shape[0]
    monkeypatch.setattr(validate, "LOGITS_BUDGET", 2 * 9 * vocab)  # two rows of at most 9 tokens a forward
    try:
        tight = token_nll(tiny_model, tokenizer, df["prompt"].tolist(), df["completion"].tolist(), batch_size=256)
        loss = completion_loss(tiny_model, tokenizer, df)
    finally:
        hook.remove()
    assert max(rows for rows, _ in seen) == 2 and all(rows * n * vocab <= 2 * 9 * vocab for rows, n in seen)
    for (a, n), (b, m) in zip(wide, tight):
        assert n == m and a == pytest.approx(b, rel=1e-5)
    assert loss == pytest.approx(sum(s for s, _ in wide) / sum(n for _, n in wide), rel=1e-5)
    assert torch.isfinite(torch.tensor(loss))
