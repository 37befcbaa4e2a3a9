"""Optional backends: LoRA trains only adapted weights and saves a plain checkpoint; vLLM sampling is
seeded per prompt (independent of batching); data-parallel training equals plain training in one
process and across two. Each test skips cleanly when its extra (peft, vllm, accelerate) or a GPU is missing."""

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from selffeed.config import ModelConfig, SampleConfig, TrainConfig
from selffeed.training.finetune import train
from selffeed.training.model import load_checkpoint, save_checkpoint, tiny_gpt2
from tests.conftest import free_port, tiny_run_config

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ["12+34=", "1+2=", "99+1=", "5+5=", "7+70=", "10+10=", "3+4="]


def examples(n=48, width=2):
    rows = [(f"{a:0{width}d}+{b:0{width}d}=", f"{a + b:0{width + 1}d}") for a in range(10) for b in range(10)][:n]
    return pd.DataFrame(rows, columns=["prompt", "completion"])


def tiny_llama(tokenizer):
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=2, max_position_embeddings=32, pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.eos_token_id,
    ))


TRAIN = dict(steps=8, batch_size=8, warmup_steps=1, lr=1e-2, progress=False)


# --- LoRA -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch, adapted", [("gpt2", {"c_attn.weight"}), ("llama", {"q_proj.weight", "v_proj.weight"})])
def test_lora_trains_only_adapted_weights_and_saves_plain_checkpoint(tmp_path, tokenizer, tiny_model, arch, adapted):
    pytest.importorskip("peft")
    from selffeed.training.lora import merge_lora, trainable_parameters, with_lora

    model = tiny_model if arch == "gpt2" else tiny_llama(tokenizer)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    cfg = TrainConfig(**TRAIN, lora_r=4)
    wrapped = with_lora(model, cfg)
    trainable, total = trainable_parameters(wrapped)
    assert 0 < trainable < total / 4
    train(wrapped, tokenizer, examples(), cfg, seed=0)
    merged = merge_lora(wrapped)
    assert type(merged) is type(model)
    changed = {n for n, p in merged.named_parameters() if not torch.equal(before[n], p)}
    assert changed and {n.rsplit(".", 2)[-2] + "." + n.rsplit(".", 1)[-1] for n in changed} == adapted
    save_checkpoint(merged, tokenizer, tmp_path / "ckpt")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "ckpt", local_files_only=True)
    assert not [k for k in reloaded.state_dict() if "lora" in k or "base_model" in k]
    for n, p in merged.state_dict().items():
        assert torch.equal(p, reloaded.state_dict()[n]), n


def test_lora_off_leaves_model_alone(tiny_model):
    from selffeed.training.lora import merge_lora, with_lora

    assert with_lora(tiny_model, TrainConfig()) is tiny_model
    assert merge_lora(tiny_model) is tiny_model


def test_lora_without_peft_names_the_field_and_extra(tiny_model, monkeypatch):
    from selffeed.training.lora import with_lora

    monkeypatch.setitem(sys.modules, "peft", None)
    with pytest.raises(ImportError, match=r"lora_r > 0 needs peft: pip install 'selffeed\[lora\]'"):
        with_lora(tiny_model, TrainConfig(lora_r=4))


@pytest.mark.slow
def test_lora_finetune_stage_writes_a_loadable_checkpoint(tmp_path):
    pytest.importorskip("peft")
    from selffeed.loop.stages import _base_model, finetune, prepare

    cfg = tiny_run_config(tmp_path, **{"finetune.lora_r": 4, "finetune.steps": 10})
    data = prepare(cfg)
    start, _ = _base_model(cfg, data)
    model, _ = load_checkpoint(finetune(cfg, data).path("model"))
    assert type(model).__name__ == "GPT2LMHeadModel"
    assert not [k for k in model.state_dict() if "lora" in k]
    before, after = start.state_dict(), model.state_dict()
    assert {n for n in after if not torch.equal(before[n], after[n])} == {"transformer.h.0.attn.c_attn.weight"}


# --- vLLM -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def vllm_engine(tmp_path_factory):
    pytest.importorskip("vllm")
    from selffeed.recipes.arithmetic import CHARS
    from selffeed.sampling.vllm_engine import load_vllm
    from selffeed.training.model import char_tokenizer

    tok = char_tokenizer(CHARS)
    # vLLM's CPU attention kernels take head sizes of 32 and up (16 fails).
    model = tiny_gpt2(ModelConfig(n_embd=64, n_layer=2, n_head=1, n_inner=128, n_positions=32, dropout=0.0), tok)
    path = tmp_path_factory.mktemp("vllm") / "ckpt"
    save_checkpoint(model, tok, path)
    llm, tokenizer = load_vllm(path, seed=0, threads=1, dtype="float32")
    return llm, tokenizer, path


@pytest.mark.slow
def test_vllm_samples_do_not_depend_on_batching(vllm_engine):
    from selffeed.sampling.sampler import plan_batches
    from selffeed.sampling.vllm_engine import generate_batches, sample_completions

    llm, tok, _ = vllm_engine
    cfg = SampleConfig(k=4, batch_prompts=2)
    a = sample_completions(llm, tok, PROMPTS, cfg, seed=5, max_new_tokens=6)
    assert [(c.prompt_index, c.sample_idx) for c in a] == [(i, s) for i in range(len(PROMPTS)) for s in range(4)]
    assert all(1 <= c.n_tokens <= 6 and c.logprob <= 0 and "<eos>" not in c.text for c in a)
    one_pass = sample_completions(llm, tok, PROMPTS, cfg.model_copy(update={"batch_prompts": 7}), seed=5, max_new_tokens=6)
    reversed_singles = [
        c for b in reversed(plan_batches(tok, PROMPTS, 1)) for c in generate_batches(llm, tok, PROMPTS, [b], cfg, 5, 6)
    ]
    assert a == one_pass == sorted(reversed_singles, key=lambda c: (c.prompt_index, c.sample_idx))
    other = sample_completions(llm, tok, PROMPTS, cfg, seed=6, max_new_tokens=6)
    assert [c.text for c in a] != [c.text for c in other]


@pytest.mark.slow
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_vllm_greedy_matches_hf_on_gpu(vllm_engine):
    from selffeed.sampling.sampler import sample_completions as hf_sample
    from selffeed.sampling.vllm_engine import sample_completions as vllm_sample

    llm, tok, path = vllm_engine
    model, hf_tok = load_checkpoint(path)
    cfg = SampleConfig(greedy=True)
    ours = vllm_sample(llm, tok, PROMPTS, cfg, seed=0, max_new_tokens=6)
    theirs = hf_sample(model, hf_tok, PROMPTS, cfg, seed=0, max_new_tokens=6)
    assert [c.text for c in ours] == [c.text for c in theirs]


def test_vllm_backend_without_vllm_names_the_field_and_extra(monkeypatch):
    from selffeed.sampling import vllm_engine

    monkeypatch.setitem(sys.modules, "vllm", None)
    with pytest.raises(ImportError, match=r"sample.backend=vllm needs vLLM: pip install 'selffeed\[vllm\]'"):
        vllm_engine.load_vllm("unused")


# --- data-parallel training -------------------------------------------------------------------------


def test_single_process_training_is_plain_training_without_accelerate(tokenizer, monkeypatch):
    monkeypatch.setitem(sys.modules, "accelerate", None)  # must not be needed in one process
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    distributed = importlib.reload(importlib.import_module("selffeed.training.distributed"))
    cfg = ModelConfig(n_embd=16, n_layer=1, n_head=2, n_inner=32, n_positions=32, dropout=0.1)
    a, b = tiny_gpt2(cfg, tokenizer, seed=0), tiny_gpt2(cfg, tokenizer, seed=0)
    sa = train(a, tokenizer, examples(), TrainConfig(**TRAIN), seed=3)
    sb = distributed.train(b, tokenizer, examples(), TrainConfig(**TRAIN), seed=3)
    assert (sa.tokens, sa.final_loss) == (sb.tokens, sb.final_loss)
    for (n, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(p, q), n
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ImportError, match=r"pip install 'selffeed\[multigpu\]'"):
        distributed.train(b, tokenizer, examples(), TrainConfig(**TRAIN), seed=3)


@pytest.mark.slow
@pytest.mark.integration
def test_two_processes_train_like_one(tmp_path, tokenizer):
    pytest.importorskip("accelerate")
    cfg = ModelConfig(n_embd=16, n_layer=1, n_head=2, n_inner=32, n_positions=32, dropout=0.0)
    save_checkpoint(tiny_gpt2(cfg, tokenizer, seed=0), tokenizer, tmp_path / "start")
    # Mixed lengths: ranks hold different token counts, and the update must still be the full batch's.
    rows = [(f"{a}+{b}=", str(a + b)) for a in range(0, 100, 7) for b in range(0, 1000, 111)]
    pd.DataFrame(rows, columns=["prompt", "completion"]).to_parquet(tmp_path / "train.parquet")
    args = ["--model", str(tmp_path / "start"), "--data", str(tmp_path / "train.parquet"),
            "steps=6", "batch_size=8", "warmup_steps=1", "lr=0.01"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
         "-m", "selffeed.training.distributed", *args, "--out", str(tmp_path / "two")],
        check=True, env=env, cwd=tmp_path, capture_output=True, timeout=300,
    )
    from selffeed.training.distributed import main

    main([*args, "--out", str(tmp_path / "one")])
    start, one, two = (load_checkpoint(tmp_path / d)[0].state_dict() for d in ("start", "one", "two"))
    assert any(not torch.equal(start[n], one[n]) for n in start)
    for n in one:
        torch.testing.assert_close(one[n], two[n], rtol=1e-4, atol=1e-5)


@pytest.mark.slow
@pytest.mark.integration
def test_retrain_stage_launched_on_two_processes_matches_one(tmp_path):
    """retrain.processes=2: the stage itself launches two gloo ranks, and the round's weights are the
    single-process stage's (the update is the same; only float rounding differs)."""
    pytest.importorskip("accelerate")
    from selffeed.loop import stages
    from selffeed.run.layout import RunLayout

    weights = {}
    for n in (1, 2):
        cfg = tiny_run_config(tmp_path / f"p{n}", **{"model.dropout": 0.0, "retrain.steps": 6, "retrain.lr": 0.01,
                                                   "retrain.processes": n})
        data = stages.prepare(cfg)
        model = stages.finetune(cfg, data)
        kept = stages.filter_samples(cfg, 1, stages.sample(cfg, 1, model, data))
        retrained = stages.retrain(cfg, 1, model, data, [kept])
        assert retrained.meta["steps"] == 6 and retrained.meta["train_loss"] > 0 and retrained.meta["processes"] == n
        assert not list(RunLayout.of(cfg.runs_dir, cfg.name).round_dir(1).glob(".tmp-*"))  # scratch removed
        weights[n] = (load_checkpoint(model.path("model"))[0].state_dict(),
                      load_checkpoint(retrained.path("model"))[0].state_dict())
    (start, one), (_, two) = weights[1], weights[2]
    assert any(not torch.equal(start[k], one[k]) for k in start)
    for k in one:
        torch.testing.assert_close(one[k], two[k], rtol=1e-4, atol=1e-5)
