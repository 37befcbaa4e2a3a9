"""Causal LMs and tokenizers: build a tiny GPT-2 offline, or load any local Hugging Face checkpoint.

The tiny default uses a character-level ``tokenizers`` model wrapped in ``PreTrainedTokenizerFast``,
so a checkpoint written by :func:`save_checkpoint` reloads with ``AutoTokenizer.from_pretrained`` and
``AutoModelForCausalLM.from_pretrained`` like any other.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import safe_open
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    GPT2Config,
    GPT2LMHeadModel,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES, MODEL_FOR_MASKED_LM_MAPPING_NAMES

from selffeed.config import ModelConfig
from selffeed.run.layout import atomic_path

PAD, EOS, UNK = "<pad>", "<eos>", "<unk>"


class ModelLoadError(ValueError):
    """A checkpoint path is missing or is not a causal LM; the message names the path."""


def char_tokenizer(chars: str) -> PreTrainedTokenizerFast:
    """A character-level tokenizer over ``chars`` (plus pad/eos/unk), left-padding for generation."""
    vocab = {PAD: 0, EOS: 1, UNK: 2}
    for ch in dict.fromkeys(chars):  # keeps first occurrence order
        vocab.setdefault(ch, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), "isolated")
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token=PAD,
        eos_token=EOS,
        unk_token=UNK,
        padding_side="left",
    )


def tiny_gpt2(cfg: ModelConfig, tokenizer: PreTrainedTokenizerBase, seed: int = 0) -> GPT2LMHeadModel:
    """A randomly initialised GPT-2 sized by ``cfg`` whose special ids match ``tokenizer``."""
    # GPT2Config defaults bos/eos to 50256, which is out of range for a small vocabulary.
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=cfg.n_positions,
        n_embd=cfg.n_embd,
        n_layer=cfg.n_layer,
        n_head=cfg.n_head,
        n_inner=cfg.n_inner,
        resid_pdrop=cfg.dropout,
        embd_pdrop=cfg.dropout,
        attn_pdrop=cfg.dropout,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    return GPT2LMHeadModel(config)


def check_checkpoint(path: str | Path) -> None:
    """Raise :class:`ModelLoadError` unless ``path`` holds a causal-LM config (weights not loaded)."""
    p = Path(path)
    if not p.is_dir():
        raise ModelLoadError(f"model.path '{p}': no such directory (expected a save_pretrained checkpoint)")
    if not (p / "config.json").is_file():
        raise ModelLoadError(f"model.path '{p}': no config.json (expected a save_pretrained checkpoint)")
    try:
        config = AutoConfig.from_pretrained(p, local_files_only=True)
    except (OSError, ValueError, KeyError) as err:
        raise ModelLoadError(f"model.path '{p}': unreadable config.json ({_first_line(err)})") from None
    model_type = config.model_type
    if model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise ModelLoadError(f"model.path '{p}': model type '{model_type}' is not a causal LM")
    # BERT-like encoders have a causal-LM class too, but only act as one when configured as a decoder.
    if model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES and not getattr(config, "is_decoder", False):
        raise ModelLoadError(
            f"model.path '{p}': model type '{model_type}' is an encoder (is_decoder is false), not a causal LM"
        )
    for weights in sorted(p.glob("*.safetensors")):
        try:  # reads only the header: catches truncated or overwritten weight files cheaply
            with safe_open(weights, framework="pt") as fh:
                fh.keys()
        except Exception as err:
            raise ModelLoadError(f"model.path '{p}': {weights.name} is corrupt ({_first_line(err)})") from None


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def end_of_turn(tokenizer: PreTrainedTokenizerBase) -> str | None:
    """The special token the chat template closes an assistant turn with (``<|im_end|>``, ``<|eot_id|>``,
    ...), or None without a template or when it closes turns with no special token."""
    if not getattr(tokenizer, "chat_template", None):
        return None
    marker = "Xq7Zv"
    try:
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": "hi"}, {"role": "assistant", "content": marker}], tokenize=False
        )
    except Exception:  # a template that insists on other roles or fields: leave EOS as it is
        return None
    after = text[text.rfind(marker) + len(marker) :]
    ids = tokenizer(after, add_special_tokens=False)["input_ids"]
    special = set(tokenizer.all_special_ids) | {i for i, t in tokenizer.added_tokens_decoder.items() if t.special}
    return tokenizer.convert_ids_to_tokens(ids[0]) if ids and ids[0] in special else None


def use_end_of_turn(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
    """Make a chat model's end-of-turn token its EOS: training completions end with it and sampling stops
    at it, as the template expects, rather than at a bare EOS the template never emits. ``generate``
    stops at either."""
    eot = end_of_turn(tokenizer)
    if eot is None or eot == tokenizer.eos_token:
        return
    old = tokenizer.eos_token_id
    tokenizer.eos_token = eot
    stop = model.generation_config.eos_token_id
    stop = [stop] if isinstance(stop, int) else list(stop or [])
    model.generation_config.eos_token_id = [tokenizer.eos_token_id, *(i for i in [*stop, old] if i is not None
                                                                      and i != tokenizer.eos_token_id)]


def load_checkpoint(
    path: str | Path, dtype: torch.dtype | None = None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM and its tokenizer from a local directory (never from a hub), in fp32 or cast to
    ``dtype`` (sampling and validation, see :mod:`selffeed.training.precision`)."""
    p = Path(path)
    check_checkpoint(p)
    try:
        model = AutoModelForCausalLM.from_pretrained(p, local_files_only=True)
        tokenizer = load_tokenizer(p)
    except Exception as err:  # torn weights raise SafetensorError, odd configs TypeError, ...
        raise ModelLoadError(f"model.path '{p}': not a loadable causal LM checkpoint ({_first_line(err)})") from None
    model = model.float()  # a checkpoint saved in half precision still trains in fp32
    use_end_of_turn(model, tokenizer)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return model.to(default_device(), dtype=dtype), tokenizer


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerBase:
    """The tokenizer of a local checkpoint (never from a hub)."""
    return AutoTokenizer.from_pretrained(Path(path), local_files_only=True)


def default_device() -> torch.device:
    """The first CUDA device when there is one (a GPU worker), else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def save_checkpoint(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, path: Path) -> None:
    """``save_pretrained`` model (safetensors) and tokenizer into ``path``, atomically."""
    with atomic_path(path) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)


def param_count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
