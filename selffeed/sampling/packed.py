"""Linear layers with their weights packed once for oneDNN, for the forwards of a sampling pass on CPU.

``torch.nn.functional.linear`` on CPU hands a plain row-major weight to the BLAS on every call, which
packs it for its kernel each time, which a decode-sized input (a few hundred rows or fewer) pays on every
step. oneDNN can block a weight once (``mkldnn._reorder_linear_weight``) and multiply against the
blocked copy (``mkldnn._linear_pointwise``, what inductor's frozen graphs call, and what vLLM's CPU
backend does for its GEMMs). On SmolLM2-135M's shapes, 2 AVX2 cores, fp32, the 49,152-wide LM head runs
1.2-1.5x at 256 rows, 1.8-2.2x at 64 and 3.4-3.9x at 9, the other products gain mostly below 256 rows, and
sampling runs 1.21x at 64 rows, 1.05x at 256 (benchmarks/packed.py, benchmarks/README.md).

:func:`packed_linears` swaps the forward of every ``nn.Linear`` (and GPT-2's ``Conv1D``) of a model with at
least :data:`MIN_WEIGHT` weights for the packed product inside a ``with`` block, for inference only: the
packed copy is a snapshot (the block must not train the model) and holds a second copy of the weights while it
lasts. Where oneDNN is missing or refuses a weight (a dtype this CPU lacks: bf16 needs AVX-512 or
AVX-NE-CONVERT), or its product on a probe differs from the plain one, that layer keeps its own forward.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

# Rows the packing is tuned for (a hint only: any row count multiplies correctly): a decode batch.
ROWS_HINT = 256
# Smallest weight (in x out) worth packing: oneDNN's call costs ~30-40 us more than the BLAS's, which small products
# do not win back (64x256 at 64 rows: 0.63x; 256x1024: 1.09-1.31x; the demo's 3-layer GPT-2 sampled at 0.93x).
MIN_WEIGHT = 1 << 18


def _product(module: torch.nn.Module, weight: torch.Tensor, bias: torch.Tensor | None):
    """A forward for ``module`` computing ``x @ weight.T + bias`` against a once-packed ``weight`` (out, in)."""
    packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach().contiguous(), ROWS_HINT)
    bias = None if bias is None else bias.detach()
    # A probe against the plain product, once: a CPU whose oneDNN build mis-handles this dtype keeps the plain one.
    probe = torch.linspace(-1, 1, 3 * weight.shape[1], dtype=weight.dtype).view(3, -1)
    with torch.no_grad():
        want = torch.nn.functional.linear(probe, weight, bias)
    got = torch.ops.mkldnn._linear_pointwise(probe, packed, bias, "none", [None], "")
    if not torch.allclose(got, want, rtol=1e-2, atol=1e-2 * float(want.abs().max()) + 1e-6):
        raise RuntimeError("oneDNN's packed product differs from the plain one")
    own, dtype = type(module).forward, weight.dtype

    def forward(x: torch.Tensor) -> torch.Tensor:
        # Autocast's dtype, or autograd recording: the layer's own product on its live weights.
        if x.dtype != dtype or (torch.is_grad_enabled() and (x.requires_grad or module.weight.requires_grad)):
            return own(module, x)
        return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [None], "")

    return forward


def _packable(module: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    """(weight as (out, in), bias) of a plain linear layer on CPU in fp32 or bf16, else None."""
    if type(module) is torch.nn.Linear:
        weight = module.weight
    elif type(module).__name__ == "Conv1D" and hasattr(module, "nf"):  # GPT-2: weight is (in, out)
        weight = module.weight.t()
    else:
        return None
    if weight.device.type != "cpu" or weight.dtype not in (torch.float32, torch.bfloat16):
        return None
    if weight.numel() < MIN_WEIGHT:
        return None
    return weight, module.bias


def available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


@contextlib.contextmanager
def packed_linears(model: torch.nn.Module) -> Iterator[int]:
    """Run ``model``'s linear layers on oneDNN-packed weights inside the block (CPU, inference); yields how
    many layers were swapped (0 where oneDNN is unavailable)."""
    swapped = []
    if available():
        for module in model.modules():
            found = _packable(module)
            if found is None:
                continue
            try:
                module.forward = _product(module, *found)
            except RuntimeError:  # oneDNN refused this weight: the layer keeps its own forward
                continue
            swapped.append(module)
    try:
        yield len(swapped)
    finally:
        for module in swapped:
            del module.forward
