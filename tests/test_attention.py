"""Decode attention: the grouped-query path computes what transformers' eager attention computes, and a
grouped-query model samples the same greedy tokens as ``generate`` through it."""

import pytest
import torch
from transformers.models.llama.modeling_llama import eager_attention_forward

from selffeed.config import SampleConfig
from selffeed.sampling.attention import GROUPED, decode_attention, grouped_attention
from selffeed.sampling.sampler import _cache_argument, sample_completions


class _Heads(torch.nn.Module):
    def __init__(self, groups: int):
        super().__init__()
        self.num_key_value_groups = groups
        self.training = False


@pytest.mark.parametrize("q", [1, 3])
@pytest.mark.parametrize("masked", [False, True])
def test_grouped_attention_equals_eager(q, masked):
    g = torch.Generator().manual_seed(0)
    b, h, h_kv, n, d = 3, 6, 2, 7, 8
    query = torch.randn(b, h, q, d, generator=g)
    key, value = torch.randn(b, h_kv, n, d, generator=g), torch.randn(b, h_kv, n, d, generator=g)
    mask = None
    if masked:  # left padding on row 0, a causal block over the last q positions
        mask = torch.zeros(b, 1, q, n)
        mask[0, :, :, :2] = torch.finfo(mask.dtype).min
        mask[:, :, :, n - q :] += torch.triu(torch.full((q, q), torch.finfo(mask.dtype).min), 1)
    ours, _ = grouped_attention(None, query, key, value, mask, scaling=d**-0.5)
    theirs, _ = eager_attention_forward(_Heads(h // h_kv), query, key, value, mask, scaling=d**-0.5)
    assert ours.shape == theirs.shape == (b, q, h, d)
    torch.testing.assert_close(ours, theirs)


def test_grouped_query_model_decodes_through_the_grouped_path(tiny_llama):
    with decode_attention(tiny_llama):
        assert tiny_llama.config._attn_implementation == GROUPED
    assert tiny_llama.config._attn_implementation == "sdpa"
    with decode_attention(tiny_llama, grouped=False):
        assert tiny_llama.config._attn_implementation == "eager"


def test_greedy_on_a_grouped_query_model_equals_generate(tiny_llama, tokenizer):
    prompts = ["12+34=", "1+2=", "99+1=", "5+5="]  # different lengths: left padding in one batch
    out = sample_completions(tiny_llama, tokenizer, prompts, SampleConfig(greedy=True, batch_prompts=4), 0, 12)
    for c, prompt in zip(out, prompts):
        enc = tokenizer(prompt, return_tensors="pt", add_special_tokens=False, return_token_type_ids=False)
        with torch.no_grad():
            row = tiny_llama.generate(**enc, do_sample=False, max_new_tokens=12, pad_token_id=tokenizer.pad_token_id,
                                      eos_token_id=tokenizer.eos_token_id)[0, enc["input_ids"].shape[1] :]
        ids = row.tolist()
        stop = ids.index(tokenizer.eos_token_id) if tokenizer.eos_token_id in ids else len(ids)
        assert c.text == tokenizer.decode(ids[:stop], skip_special_tokens=True)
        assert c.n_tokens == min(stop + 1, 12)


def test_decode_step_logits_equal_a_full_forward(tiny_llama, tokenizer):
    # Prefill with SDPA, then one token through the grouped path, against the whole sequence in one
    # SDPA forward: same logits, for a left-padded batch.
    enc = tokenizer(["12+34=", "1+2="], return_tensors="pt", padding=True, add_special_tokens=False)
    ids, mask = enc["input_ids"], enc["attention_mask"]
    nxt = torch.tensor([[5], [7]])
    arg = _cache_argument(tiny_llama)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        out = tiny_llama(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True)
        full_mask = torch.cat([mask, torch.ones(2, 1, dtype=mask.dtype)], 1)
        with decode_attention(tiny_llama):
            step = tiny_llama(input_ids=nxt, attention_mask=full_mask, position_ids=pos[:, -1:] + 1,
                              use_cache=True, **{arg: out[arg]}).logits[:, -1]
        whole = tiny_llama(input_ids=torch.cat([ids, nxt], 1), attention_mask=full_mask,
                           position_ids=torch.cat([pos, pos[:, -1:] + 1], 1)).logits[:, -1]
    torch.testing.assert_close(step, whole, atol=1e-4, rtol=1e-4)
