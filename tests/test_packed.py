"""oneDNN-packed linear weights: the same logits as the plain layers, every layer restored after the block, and
layers oneDNN cannot take (or a forward that needs gradients) left to their own product."""

import pytest
import torch

from selffeed.config import SampleConfig
from selffeed.sampling import packed
from selffeed.sampling.packed import packed_linears
from selffeed.sampling.sampler import sample_completions

pytestmark = pytest.mark.skipif(not packed.available(), reason="torch built without oneDNN")


@pytest.fixture(autouse=True)
def pack_tiny_layers(monkeypatch):
    """The tiny models' layers are below the size worth packing; these tests pack them anyway."""
    monkeypatch.setattr(packed, "MIN_WEIGHT", 0)


def _linears(model: torch.nn.Module) -> list[torch.nn.Module]:
    return [m for m in model.modules() if type(m) is torch.nn.Linear or type(m).__name__ == "Conv1D"]


@pytest.mark.parametrize("arch", ["tiny_llama", "tiny_model"])  # Linear layers; GPT-2's transposed Conv1D
def test_packed_layers_give_the_plain_logits_and_are_restored(arch, request, tokenizer):
    model = request.getfixturevalue(arch).eval()
    ids = tokenizer(["12+34=", "1+2=", "99+1="], return_tensors="pt", padding=True)["input_ids"]
    layers = _linears(model)
    with torch.inference_mode():
        plain = model(input_ids=ids).logits
        with packed_linears(model) as swapped:
            assert swapped == len(layers) > 0
            assert all("forward" in vars(m) for m in layers)
            ours = model(input_ids=ids).logits
        assert not any("forward" in vars(m) for m in layers)
        again = model(input_ids=ids).logits
    torch.testing.assert_close(ours, plain, rtol=1e-5, atol=1e-5)
    assert torch.equal(again, plain)


def test_a_forward_with_gradients_or_another_dtype_takes_the_plain_product(tiny_llama, tokenizer):
    ids = tokenizer(["12+34="], return_tensors="pt")["input_ids"]
    with packed_linears(tiny_llama):
        loss = tiny_llama(input_ids=ids, labels=ids).loss  # grad mode: the layers' own product, differentiable
        loss.backward()
        assert tiny_llama.lm_head.weight.grad is not None and tiny_llama.lm_head.weight.grad.abs().sum() > 0
        with torch.no_grad():  # the weights move: the packed snapshot is not used while autograd could record
            for p in tiny_llama.parameters():
                p.add_(0.1)
        inside = tiny_llama(input_ids=ids, labels=ids).loss
        x = torch.randn(2, 32, dtype=torch.float64)
        with torch.inference_mode():  # an input of another dtype than the weights: plain product (and its error)
            with pytest.raises(RuntimeError, match="dtype"):
                tiny_llama.lm_head(x)
    assert torch.equal(inside, tiny_llama(input_ids=ids, labels=ids).loss)


def test_layers_onednn_refuses_keep_their_own_forward(tiny_llama, monkeypatch):
    def refuse(module, weight, bias):
        raise RuntimeError("oneDNN's packed product differs from the plain one")

    monkeypatch.setattr(packed, "_product", refuse)
    with packed_linears(tiny_llama) as swapped:
        assert swapped == 0 and not any("forward" in vars(m) for m in _linears(tiny_llama))
    half = torch.nn.Linear(4, 4).half()  # a dtype the packing does not take
    with packed_linears(half) as swapped:
        assert swapped == 0


def test_layers_below_the_size_worth_packing_keep_their_own_forward(tiny_model, monkeypatch):
    monkeypatch.setattr(packed, "MIN_WEIGHT", 1 << 18)
    big = torch.nn.Linear(512, 512)
    with packed_linears(tiny_model) as small, packed_linears(big) as large:
        assert small == 0 and large == 1


def test_sampling_with_packed_weights_draws_what_the_plain_layers_draw(tiny_llama, tokenizer, monkeypatch):
    import contextlib

    import selffeed.sampling.sampler as sampler

    swapped = []

    @contextlib.contextmanager
    def recording(model):
        with packed_linears(model) as n:
            swapped.append(n)
            yield n

    prompts = ["12+34=", "1+2=", "99+1=", "5+5="]
    cfg = SampleConfig(k=4, temperature=1.0, top_k=0, batch_prompts=2)
    monkeypatch.setattr(sampler, "packed_linears", recording)
    ours = sample_completions(tiny_llama, tokenizer, prompts, cfg, seed=3, max_new_tokens=10)
    assert swapped == [len(_linears(tiny_llama))]  # once for all the batches
    monkeypatch.setattr(sampler, "packed_linears", lambda m: contextlib.nullcontext(0))
    plain = sample_completions(tiny_llama, tokenizer, prompts, cfg, seed=3, max_new_tokens=10)
    assert [(c.text, c.n_tokens) for c in ours] == [(c.text, c.n_tokens) for c in plain]
    assert [c.logprob for c in ours] == pytest.approx([c.logprob for c in plain], abs=1e-4)
    assert not any("forward" in vars(m) for m in _linears(tiny_llama))  # restored after sampling
