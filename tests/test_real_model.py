"""The real path, end to end: SmolLM2-135M-Instruct imported from its GGUF goes through a whole round
(fine-tune, sample, filter, retrain, validate) of the word-problem recipe with tiny counts, so that a
change that breaks pretrained checkpoints, chat templates or bf16 cannot land silently."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from selffeed.config import load_config
from selffeed.loop.rounds import run_rounds
from selffeed.run import schema
from selffeed.run.bookkeeping import read_history
from selffeed.run.layout import RunLayout, read_json
from selffeed.training.precision import cpu_has_bf16

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def test_a_round_on_the_imported_model(smollm2, tmp_path):
    cfg = load_config("data/configs/word_problems.yaml", [
        f"model.path={smollm2}", f"runs_dir={tmp_path}", "name=real", "threads=2",
        "word_problems.seed_size=8", "word_problems.pool_per_round=6", "word_problems.pool_slices=1",
        "word_problems.test_per_steps=2", "word_problems.val_per_steps=1", "word_problems.max_new_tokens=24",
        "finetune.steps=2", "finetune.batch_size=4", "retrain.steps=2", "retrain.batch_size=4",
        "finetune.progress=false", "retrain.progress=false", "sample.k=2", "audit.size=0",
        "filter.min_agreement=0.0", "loop.max_rounds=1",
    ])
    assert cfg.finetune.lr == 5e-5  # the pretrained defaults, not the tiny model's 2e-3
    record = run_rounds(cfg)
    lay = RunLayout.of(cfg.runs_dir, cfg.name)
    history = read_history(lay)
    assert [m["round"] for m in history] == [0, 1] and record["stop_reason"] == "reached max_rounds=1"
    assert set(history[1]["test"]["accuracy_by_difficulty"]) == {"1", "2", "3"}
    samples = schema.read(lay.samples(1), schema.SAMPLES)
    assert len(samples) == 6 * 2 and samples["n_tokens"].between(1, 24 * samples["difficulty"]).all()
    # The config samples step by step (word_problems.stepwise): a 1-step problem in one call of at most 24
    # tokens, a longer one in a call per step, composed into one solution.
    assert samples.loc[samples["difficulty"] == 1, "n_tokens"].le(24).all()
    # Prompts went through the chat template, and the model answers in the assistant turn.
    assert samples["prompt"].str.endswith("<|im_start|>assistant\n").all()
    assert schema.read(lay.kept(1), schema.KEPT)["passed"].str.contains("steps,numbers").all()
    retrain = read_json(lay.round_manifest(1))["stages"]["retrain"]
    assert retrain["meta"]["precision"] == ("bf16" if cpu_has_bf16() else "fp32")
    # Training moved the weights, and the checkpoints on disk stay fp32.
    before, after = load_file(f"{smollm2}/model.safetensors"), load_file(f"{lay.model(1)}/model.safetensors")
    name = "model.layers.0.self_attn.q_proj.weight"
    assert after[name].dtype == torch.float32 and not torch.equal(before[name], after[name])
    # The exported best checkpoint is a plain Hugging Face chat model.
    tok = AutoTokenizer.from_pretrained(lay.best)
    model = AutoModelForCausalLM.from_pretrained(lay.best)
    ids = tok.apply_chat_template([{"role": "user", "content": "Tom has 3 apples. Tom buys 4 more apples. "
                                    "How many apples does Tom have now?"}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)
    out = model.generate(**ids, max_new_tokens=24, do_sample=False)
    reply = tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "7" in reply


def test_greedy_sampling_equals_generate_on_the_imported_model(smollm2):
    # The hand-written decode loop (its KV cache, its per-row stopping at the end-of-turn token) gives
    # generate's greedy tokens on a real Llama-architecture chat model, in fp32.
    from selffeed.config import SampleConfig
    from selffeed.sampling.sampler import sample_completions
    from selffeed.training.model import load_checkpoint

    model, tok = load_checkpoint(smollm2)
    questions = ["What is 3 + 4?", "Name a colour.", "Write one sentence about the sea.", "Say hi."]
    prompts = [tok.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
               for q in questions]
    out = sample_completions(model, tok, prompts, SampleConfig(greedy=True, batch_prompts=4), 0, 24)
    for c, prompt in zip(out, prompts):  # one at a time: generate's own left padding cannot differ
        enc = tok(prompt, return_tensors="pt", add_special_tokens=False)
        row = model.generate(**enc, do_sample=False, max_new_tokens=24, pad_token_id=tok.pad_token_id,
                             eos_token_id=tok.eos_token_id)[0, enc["input_ids"].shape[1]:].tolist()
        n = row.index(tok.eos_token_id) + 1 if tok.eos_token_id in row else len(row)
        assert c.n_tokens == n
        assert c.text == tok.decode(row[: n - (tok.eos_token_id in row)], skip_special_tokens=True)
    assert any(c.n_tokens < 24 for c in out), "wanted a reply that ends at the end-of-turn token"
