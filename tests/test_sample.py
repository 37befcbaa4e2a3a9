"""Sampling: k completions per prompt, deterministic for a fixed seed, greedy, parsed log-probs."""

import pytest
import torch

from selffeed.config import SampleConfig
from selffeed.sampling.sampler import _process, generate_batches, plan_batches, sample_completions

PROMPTS = ["12+34=", "1+2=", "99+1=", "5+5=", "7+70="]


def run(model, tok, cfg, seed):
    return sample_completions(model, tok, PROMPTS, cfg, seed=seed, max_new_tokens=6)


def test_k_samples_per_prompt_in_order(tiny_model, tokenizer):
    out = run(tiny_model, tokenizer, SampleConfig(k=3, batch_prompts=2), seed=0)
    assert [(c.prompt_index, c.sample_idx) for c in out] == [(i, s) for i in range(5) for s in range(3)]
    for c in out:
        assert 1 <= c.n_tokens <= 6
        assert c.logprob <= 0
        assert "<eos>" not in c.text and "<pad>" not in c.text


def test_same_seed_same_samples_other_seed_differs(tiny_model, tokenizer):
    cfg = SampleConfig(k=4, batch_prompts=2)
    a = run(tiny_model, tokenizer, cfg, seed=5)
    b = run(tiny_model, tokenizer, cfg, seed=5)
    c = run(tiny_model, tokenizer, cfg, seed=6)
    assert a == b
    assert [x.text for x in a] != [x.text for x in c]


def test_greedy_is_one_sample_and_matches_argmax(tiny_model, tokenizer):
    out = run(tiny_model, tokenizer, SampleConfig(greedy=True, k=8), seed=0)
    assert len(out) == len(PROMPTS)
    ids = tokenizer(PROMPTS[0], return_tensors="pt", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        first = int(tiny_model(ids).logits[0, -1].argmax())
    expected = "" if first == tokenizer.eos_token_id else tokenizer.decode([first])
    assert out[0].text[:1] == expected[:1]


def test_low_temperature_agrees_more(tiny_model, tokenizer):
    with torch.no_grad():  # a random init is nearly uniform; sharpen it so temperature matters
        tiny_model.transformer.wte.weight.mul_(40)
    hot = run(tiny_model, tokenizer, SampleConfig(k=8, temperature=3.0), seed=0)
    cold = run(tiny_model, tokenizer, SampleConfig(k=8, temperature=0.05), seed=0)
    distinct = lambda out: sum(len({c.text for c in out if c.prompt_index == i}) for i in range(len(PROMPTS)))
    assert distinct(cold) < distinct(hot)


@pytest.mark.parametrize("top_k, top_p", [(1, 1.0), (0, 0.01)])
def test_truncated_sampling_is_greedy_like(tiny_model, tokenizer, top_k, top_p):
    out = run(tiny_model, tokenizer, SampleConfig(k=4, top_k=top_k, top_p=top_p), seed=0)
    for i in range(len(PROMPTS)):
        assert len({c.text for c in out if c.prompt_index == i}) == 1


def sharpened(model):
    """A random model made confident."""
    with torch.no_grad():
        model.transformer.wte.weight.mul_(6)
    return model


def stops_at(model, eos: int, position: int):
    """``model`` rewired to emit EOS exactly at sequence positions >= ``position`` (greedy): one residual
    dimension carries only a position flag (-10 before, +10 from there on), read by EOS's untied output row."""
    d = 0
    with torch.no_grad():
        head = torch.nn.Linear(model.config.n_embd, model.config.vocab_size, bias=False)
        head.weight.copy_(model.transformer.wte.weight)
        model.lm_head, model.config.tie_word_embeddings = head, False
        model.transformer.wte.weight[:, d] = 0
        model.transformer.wpe.weight[:, d] = -10
        model.transformer.wpe.weight[position:, d] = 10
        for block in model.transformer.h:
            for proj in (block.attn.c_proj, block.mlp.c_proj):
                proj.weight[:, d], proj.bias[d] = 0, 0
        head.weight[:, d] = 0
        head.weight[eos, d] = 100
    return model


MIXED = ["1+2=", "12+34=", "999+999=", "7=", "45+6=", "3+33=", "0+0=", "88+1="]


def test_split_into_shards_gives_the_same_completions(tiny_model, tokenizer):
    cfg = SampleConfig(k=3, batch_prompts=2)
    plan = plan_batches(tokenizer, MIXED, cfg.batch_prompts)
    whole = generate_batches(tiny_model, tokenizer, MIXED, plan, cfg, seed=1, max_new_tokens=6)
    parts = [c for first in (0, 1, 3) for c in generate_batches(
        tiny_model, tokenizer, MIXED, plan[first : {0: 1, 1: 3, 3: 4}[first]], cfg, 1, 6, first_batch=first)]
    assert parts == whole


@pytest.mark.parametrize("position, max_new", [(12, 8), (8, 6)])  # (8, 6): most rows stop, the batch shrinks
def test_greedy_is_identical_to_generate_and_stops_per_row(tiny_model, tokenizer, position, max_new):
    # Prompts of L = 3-8 tokens: the token predicted at `position` (the (position + 2 - L)-th) is EOS.
    model = stops_at(tiny_model, tokenizer.eos_token_id, position)
    out = sample_completions(model, tokenizer, MIXED, SampleConfig(greedy=True, batch_prompts=8), 0, max_new)
    enc = tokenizer(MIXED, return_tensors="pt", padding=True, add_special_tokens=False)
    ref = model.generate(**enc, do_sample=False, max_new_tokens=max_new, pad_token_id=tokenizer.pad_token_id,
                         eos_token_id=tokenizer.eos_token_id)[:, enc["input_ids"].shape[1] :]
    eos = tokenizer.eos_token_id
    for c, row, prompt in zip(out, ref.tolist(), MIXED):
        n = row.index(eos) + 1 if eos in row else len(row)
        assert c.n_tokens == n == min(max_new, position + 2 - len(prompt))
        assert c.text == tokenizer.decode(row[: n - (eos in row)], skip_special_tokens=True)
    assert 0 < sum(c.n_tokens < max_new for c in out) < len(out), "wanted some rows stopped early and some not"


def test_logprob_is_the_sampling_distributions(tiny_model, tokenizer):
    model = sharpened(tiny_model)
    cfg = SampleConfig(k=4, temperature=0.7, top_k=5, top_p=0.9)
    out = sample_completions(model, tokenizer, MIXED[:3], cfg, seed=0, max_new_tokens=5)
    checked = 0
    for c in out:
        gen = tokenizer(c.text, add_special_tokens=False)["input_ids"]
        if len(gen) != c.n_tokens:  # ended in EOS or drew pad/unk (not in the text): skip
            continue
        prompt = tokenizer(MIXED[c.prompt_index], add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logits = model(torch.tensor([prompt + gen])).logits[0, len(prompt) - 1 : -1]
        logp = torch.log_softmax(_process(logits, cfg), -1)
        assert c.logprob == pytest.approx(float(logp.gather(1, torch.tensor(gen)[:, None]).sum()), abs=1e-4)
        checked += 1
    assert checked >= 4


def test_first_tokens_follow_the_model_distribution(tiny_model, tokenizer):
    cfg = SampleConfig(k=256, temperature=1.5)
    out = sample_completions(tiny_model, tokenizer, ["12+3="] * 8, cfg, seed=0, max_new_tokens=1)
    ids = tokenizer(["12+3="], return_tensors="pt", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        probs = torch.softmax(tiny_model(ids).logits[0, -1] / 1.5, -1)
    special = [tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id]  # all decode to ""
    probs = torch.cat([probs[special].sum(0, keepdim=True), probs[3:]])
    seen = torch.zeros_like(probs)
    for c in out:
        seen[0 if c.text == "" else tokenizer.convert_tokens_to_ids(c.text) - 2] += 1
    assert float((seen / seen.sum() - probs).abs().sum()) / 2 < 0.05  # total variation over 2,048 draws


def test_models_without_a_cache_argument_sample_through_generate(tiny_model, tokenizer, monkeypatch):
    # A model whose forward takes no KV cache (no logits_to_keep) goes through model.generate instead of the
    # hand-written decode loop: same greedy text, token counts and log-probs; k seeded samples per prompt.
    import selffeed.sampling.sampler as sample

    greedy = SampleConfig(greedy=True, batch_prompts=8)
    fast = sample_completions(tiny_model, tokenizer, PROMPTS, greedy, 0, 6)
    monkeypatch.setattr(sample, "_cache_argument", lambda model: None)
    slow = sample_completions(tiny_model, tokenizer, PROMPTS, greedy, 0, 6)
    assert [(c.text, c.n_tokens) for c in slow] == [(c.text, c.n_tokens) for c in fast]
    assert [c.logprob for c in slow] == pytest.approx([c.logprob for c in fast], abs=1e-4)
    cfg = SampleConfig(k=3, temperature=1.0, batch_prompts=8)
    drawn = sample_completions(tiny_model, tokenizer, PROMPTS, cfg, 5, 6)
    assert [(c.prompt_index, c.sample_idx) for c in drawn] == [(i, s) for i in range(len(PROMPTS)) for s in range(3)]
    assert all(1 <= c.n_tokens <= 6 and c.logprob <= 0 for c in drawn)
    assert [c.text for c in sample_completions(tiny_model, tokenizer, PROMPTS, cfg, 5, 6)] == [c.text for c in drawn]
