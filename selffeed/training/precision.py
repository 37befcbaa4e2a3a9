"""Which arithmetic a stage runs in (``model.precision``): bf16 or fp16 where the hardware does it natively.

Training autocasts (weights, optimizer state and checkpoints stay fp32); sampling and validation cast
the loaded weights once, which saves re-casting them at every decode step. ``auto`` picks bf16 on GPUs
that support it (fp16 on older ones) and, for a pretrained checkpoint, on CPUs with bf16 matrix units
(Intel AMX or AVX512-BF16), where a real model's matrix products run much faster than in fp32
(benchmarks/precision.py). The tiny from-scratch model stays fp32 on CPUs: its small matrices leave
nothing for bf16 to speed up.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import torch

from selffeed.config import RunConfig

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}


@cache
def cpu_has_bf16() -> bool:
    """Whether this CPU multiplies bf16 matrices natively (AMX-BF16 or AVX512-BF16 in /proc/cpuinfo)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return "amx_bf16" in flags or "avx512_bf16" in flags


def resolve(precision: str, device: torch.device, pretrained: bool) -> torch.dtype | None:
    """The compute dtype for ``precision`` on ``device`` (None: fp32). ``pretrained``: a checkpoint at
    model.path rather than the tiny model built from the config."""
    if precision != "auto":
        return DTYPES[precision]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and pretrained and cpu_has_bf16():
        return torch.bfloat16
    return None


def compute_dtype(cfg: RunConfig, device: torch.device | None = None) -> torch.dtype | None:
    """The compute dtype of ``cfg``'s stages on ``device`` (default: where models load, see
    :func:`selffeed.training.model.default_device`)."""
    from selffeed.training.model import default_device

    return resolve(cfg.model.precision, device or default_device(), bool(cfg.model.path))


def name(dtype: torch.dtype | None) -> str:
    return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, "fp32")
