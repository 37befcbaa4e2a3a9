"""Attention for one-token decode steps on CPU: eager attention that reads a grouped-query KV cache in place.

For a single query, torch's SDPA kernels cost more than the attention itself on CPU (the flash kernel tiles for
long queries, the math kernel scales every cached key each step), so decode steps run eager attention
(matmul, softmax, matmul). transformers' eager attention first copies every key and value head once per query
head that shares it (``repeat_kv``); on a grouped-query model such as Llama, SmolLM2 or Qwen that copy writes
and reads the whole KV cache several times a step, at long contexts more memory traffic than the weights.
:func:`grouped_attention` computes the same products with the query heads of a group stacked as rows against
their one key head, so nothing is copied. The prompt's forward keeps SDPA, and so do GPUs and models set to
another implementation.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from transformers import PreTrainedModel

GROUPED = "selffeed_grouped_eager"


def grouped_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """Llama's eager attention without ``repeat_kv``: query (b, h, q, d), key/value (b, h_kv, n, d), where query
    head ``i`` reads key head ``i // (h / h_kv)``; returns (b, q, h, d) as the eager function does."""
    b, h, q, d = query.shape
    h_kv, n = key.shape[1], key.shape[2]
    g = h // h_kv
    scores = torch.matmul(query.reshape(b, h_kv, g * q, d), key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        # The eager mask is (b, 1, q, n); every head of a group sees the same one.
        scores = (scores.view(b, h_kv, g, q, n) + attention_mask[..., :n].unsqueeze(2)).view(b, h_kv, g * q, n)
    weights = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    out = torch.matmul(weights, value).view(b, h, q, d)
    return out.transpose(1, 2).contiguous(), None


def _register() -> bool:
    """Make :data:`GROUPED` a name transformers dispatches to (with eager's mask); False where it cannot."""
    try:
        from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, eager_mask
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
    except ImportError:
        return False
    ALL_ATTENTION_FUNCTIONS.register(GROUPED, grouped_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(GROUPED, eager_mask)
    return True


def _groups_plainly(config) -> bool:
    """Whether this model's eager attention is the plain grouped-query one :func:`grouped_attention` reproduces:
    fewer key heads than query heads, and no logit soft-capping or attention sinks (Gemma 2, gpt-oss)."""
    heads = getattr(config, "num_attention_heads", None)
    kv_heads = getattr(config, "num_key_value_heads", None)
    if not heads or not kv_heads or kv_heads >= heads or heads % kv_heads:
        return False
    return getattr(config, "attn_logit_softcapping", None) is None and config.model_type not in {"gpt_oss"}


@contextlib.contextmanager
def decode_attention(model: PreTrainedModel, grouped: bool = True) -> Iterator[None]:
    """Run the decode steps inside the block with eager attention on CPU, grouped-query models (with
    ``grouped``) through :func:`grouped_attention`."""
    config = model.config
    if model.device.type != "cpu" or getattr(config, "_attn_implementation", None) != "sdpa":
        yield
        return
    config._attn_implementation = GROUPED if grouped and _groups_plainly(config) and _register() else "eager"
    try:
        yield
    finally:
        config._attn_implementation = "sdpa"
