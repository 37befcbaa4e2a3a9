"""model.precision: which dtype each stage computes in, and bf16 autocast training on a CPU."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from selffeed.config import TrainConfig, load_config
from selffeed.training import precision
from selffeed.training.finetune import train


def test_auto_picks_bf16_for_checkpoints_on_bf16_cpus_and_fp32_for_the_tiny_model(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: True)
    assert precision.resolve("auto", cpu, pretrained=True) is torch.bfloat16
    assert precision.resolve("auto", cpu, pretrained=False) is None
    assert precision.resolve("fp32", cpu, pretrained=True) is None
    assert precision.resolve("bf16", cpu, pretrained=False) is torch.bfloat16
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: False)
    assert precision.resolve("auto", cpu, pretrained=True) is None
    cfg = load_config(None, ["model.path=/somewhere", "model.precision=fp32"])
    assert precision.compute_dtype(cfg, cpu) is None


def test_pretrained_checkpoints_get_fine_tuning_defaults_unless_set():
    tiny = load_config(None, [])
    assert tiny.finetune.lr == 2e-3
    real = load_config(None, ["model.path=/somewhere", "retrain.lr=1e-5"])
    assert real.finetune.lr == 5e-5 and real.finetune.batch_size == 16 and real.retrain.lr == 1e-5
    from selffeed.config import config_warnings

    assert config_warnings(real) == []
    loud = load_config(None, ["model.path=/somewhere", "finetune.lr=2e-3"])
    assert config_warnings(loud) == [
        "finetune.lr=0.002 is high for a pretrained checkpoint (model.path): a from-scratch rate overwrites what "
        "it knows; its default there is 5e-05"
    ]


@pytest.mark.slow
def test_bf16_autocast_trains_like_fp32_and_keeps_fp32_weights(tiny_model, tokenizer):
    rows = pd.DataFrame({"prompt": [f"{a}+{b}=" for a in range(10) for b in range(10)],
                         "completion": [str(a + b) for a in range(10) for b in range(10)]})
    cfg = TrainConfig(steps=40, batch_size=32, warmup_steps=4, lr=3e-3, progress=False)
    twin = type(tiny_model)(tiny_model.config)
    twin.load_state_dict(tiny_model.state_dict())
    fp32 = train(tiny_model, tokenizer, rows, cfg, seed=0)
    bf16 = train(twin, tokenizer, rows, cfg, seed=0, amp=torch.bfloat16)
    assert all(p.dtype == torch.float32 for p in twin.parameters())
    assert bf16.final_loss < 0.8 * bf16.first_loss  # it learns
    assert abs(bf16.final_loss - fp32.final_loss) < 0.1 * fp32.final_loss  # the same curve, within bf16 noise
