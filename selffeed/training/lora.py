"""LoRA fine-tuning with peft: wrap a causal LM in adapters before training, merge them after.

Only the adapters train; :func:`merge_lora` folds them back into the base weights
(``merge_and_unload``), so the checkpoint that gets saved is the plain Hugging Face model the rest of
the loop (sampling, validation, ``from_pretrained``) loads unchanged. With ``lora_r == 0`` both
functions return the model untouched::

    model = with_lora(model, cfg)        # cfg: TrainConfig with lora_r=8
    train(model, tokenizer, df, cfg, seed=0)
    model = merge_lora(model)
    save_checkpoint(model, tokenizer, path)
"""

from __future__ import annotations

from typing import Any

from transformers.pytorch_utils import Conv1D

from selffeed.config import TrainConfig


def _peft() -> Any:
    try:
        import peft
    except ImportError:
        raise ImportError(
            "finetune/retrain.lora_r > 0 needs peft: pip install 'selffeed[lora]' (or pip install peft)"
        ) from None
    return peft


def with_lora(model: Any, cfg: TrainConfig) -> Any:
    """``model`` wrapped in LoRA adapters of rank ``cfg.lora_r`` with everything else frozen;
    ``model`` itself when ``cfg.lora_r`` is 0."""
    if cfg.lora_r == 0:
        return model
    peft = _peft()
    config = peft.LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        # None lets peft pick its per-architecture default (GPT-2: c_attn; Llama: q_proj, v_proj).
        target_modules=cfg.lora_target_modules or None,
        task_type=peft.TaskType.CAUSAL_LM,
        # GPT-2 stores its projections as Conv1D (weights transposed); peft needs to be told.
        fan_in_fan_out=any(isinstance(m, Conv1D) for m in model.modules()),
    )
    try:
        return peft.get_peft_model(model, config)
    except ValueError as err:  # unknown architecture or module names: say which field to set
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"lora_target_modules: {first}") from None


def merge_lora(model: Any) -> Any:
    """The base model with the adapters folded into its weights; ``model`` itself if it has none."""
    if not hasattr(model, "merge_and_unload"):
        return model
    merged = model.merge_and_unload()
    merged.eval()
    return merged


def trainable_parameters(model: Any) -> tuple[int, int]:
    """(trainable, total) parameter counts, e.g. to report what share of a model LoRA trains."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)
