"""Benchmark: sampling tokens/s of selffeed's sampler against the loops a user would write.

For each model (tiny: the default 64-dim 3-layer GPT-2, ~155k params, 15-token arithmetic vocabulary;
small: 128-dim 4-layer GPT-2, ~0.85M params, 194-token character vocabulary) and each case
(short: 8 new tokens, long: 64 new tokens), k=8 samples for each of --prompts prompts (8-12 tokens),
it measures generated tokens / wall time of:

  selffeed        selffeed.sampling.sampler.sample_completions (batches of --batch-prompts prompts x k)
  batched         model.generate on the same batches (num_return_sequences=k)
  per-prompt      model.generate once per prompt with num_return_sequences=k
  single          model.generate once per sample (batch 1, one sequence)
  vllm            vLLM (CPU) with n=k, when importable (else skipped with a message)

per-prompt and single run on the first --subset prompts only (their rate is per token, so a subset
measures it; the table says so). Weights are random, and every row runs to exactly the token budget:
the tokenizer's EOS is a token outside the model's vocabulary, so no engine can stop early and all
engines generate the same number of tokens. selffeed and batched run --repeats times, interleaved,
and the fastest run of each counts. Ratios are selffeed's rate over each engine's, from the same run;
on a shared machine, rerun and compare ratios rather than absolute figures.

    python benchmarks/sampling.py                          # both models, both cases (~5 min on 2 cores)
    python benchmarks/sampling.py --quick                  # 128 prompts: checks the script
    LD_PRELOAD=libtcmalloc_minimal.so.4 python benchmarks/sampling.py   # the same under tcmalloc
    python benchmarks/sampling.py --vllm-python /path/to/vllm-venv/bin/python   # vLLM in its own venv
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MODELS = {
    "tiny": dict(n_embd=64, n_layer=3, n_head=4, n_inner=256),
    "small": dict(n_embd=128, n_layer=4, n_head=4, n_inner=512),
}
CASES = {"short": 8, "long": 64}
SMALL_CHARS = "".join(chr(c) for c in range(32, 223))  # 191 characters + pad/eos/unk = 194 tokens


def build(name: str, seed: int = 0):
    """A random-weight GPT-2 and a tokenizer whose EOS the model can never emit."""
    from selffeed.config import ModelConfig
    from selffeed.recipes.arithmetic import CHARS
    from selffeed.training.model import char_tokenizer, tiny_gpt2

    tok = char_tokenizer(CHARS if name == "tiny" else SMALL_CHARS)
    model = tiny_gpt2(ModelConfig(**MODELS[name], n_positions=128, dropout=0.0), tok, seed=seed).eval()
    tok.add_special_tokens({"eos_token": "<never>"})  # id == model vocab size: never sampled
    return model, tok


def make_prompts(tok, n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    chars = [c for c in tok.get_vocab() if len(c) == 1 and c.isprintable()]
    return ["".join(rng.choice(chars) for _ in range(rng.randint(8, 12))) for _ in range(n)]


def run_selffeed(model, tok, prompts, k, new, batch_prompts):
    from selffeed.config import SampleConfig
    from selffeed.sampling.sampler import sample_completions

    cfg = SampleConfig(k=k, batch_prompts=batch_prompts, top_k=0)
    t0 = time.perf_counter()
    out = sample_completions(model, tok, prompts, cfg, seed=0, max_new_tokens=new)
    dt = time.perf_counter() - t0
    assert all(c.n_tokens == new for c in out), "a row stopped early: counts would not be comparable"
    return sum(c.n_tokens for c in out), dt


def _generate(model, tok, batch, k, new):
    import torch

    enc = tok(batch, return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.inference_mode():
        out = model.generate(**enc, do_sample=True, top_k=0, num_return_sequences=k, max_new_tokens=new,
                             pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    return (out.shape[1] - enc["input_ids"].shape[1]) * out.shape[0]


def run_batched(model, tok, prompts, k, new, batch_prompts):
    from selffeed.sampling.sampler import plan_batches

    t0 = time.perf_counter()
    n = sum(_generate(model, tok, [prompts[i] for i in idx], k, new) for idx in plan_batches(tok, prompts, batch_prompts))
    return n, time.perf_counter() - t0


def run_per_prompt(model, tok, prompts, k, new):
    t0 = time.perf_counter()
    n = sum(_generate(model, tok, [p], k, new) for p in prompts)
    return n, time.perf_counter() - t0


def run_single(model, tok, prompts, k, new):
    t0 = time.perf_counter()
    n = sum(_generate(model, tok, [p], 1, new) for p in prompts for _ in range(k))
    return n, time.perf_counter() - t0


def run_vllm(checkpoint: str, prompts: list[str], k: int, new: int, threads: int,
             dtype: str = "float32") -> tuple[int, float]:
    """vLLM CPU as tuned in ../shared/notes/sampling-throughput.md: in-process engine, large batches."""
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", f"0-{threads - 1}")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    from vllm import LLM, SamplingParams

    llm = LLM(model=checkpoint, tokenizer=checkpoint, dtype=dtype, max_num_seqs=1024, enforce_eager=True, seed=0)
    params = SamplingParams(n=k, max_tokens=new, ignore_eos=True, temperature=1.0, top_k=-1)
    llm.generate(prompts[:8], params, use_tqdm=False)  # warm-up
    t0 = time.perf_counter()
    outs = llm.generate(prompts, params, use_tqdm=False)
    dt = time.perf_counter() - t0
    return sum(len(c.token_ids) for o in outs for c in o.outputs), dt


def vllm_figures(args, name: str, prompts: list[str], new: int) -> tuple[int, float] | str:
    """(tokens, seconds) from vLLM, in this interpreter or --vllm-python; a reason string when skipped."""
    from selffeed.training.model import save_checkpoint

    python = args.vllm_python or sys.executable
    if args.vllm_python is None:
        try:
            import vllm  # noqa: F401
        except ImportError:
            return "skipped: vllm is not importable (pass --vllm-python /path/to/venv/bin/python)"
    model, tok = build(name)
    ckpt = Path(tempfile.mkdtemp(prefix="selffeed-bench-vllm-")) / "model"
    save_checkpoint(model, tok, ckpt)
    return vllm_worker(python, dict(checkpoint=str(ckpt), prompts=prompts, k=args.k, new=new, threads=args.threads))


def vllm_worker(python: str, spec: dict) -> tuple[int, float] | str:
    """(tokens, seconds) of this script's --vllm-worker run by ``python`` on ``spec``; a reason when it failed."""
    proc = subprocess.run([python, __file__, "--vllm-worker", json.dumps(spec)], capture_output=True, text=True)
    if proc.returncode != 0:
        return "failed: " + (proc.stderr.strip().splitlines() or ["no output"])[-1][:100]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    return result["tokens"], result["seconds"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="tiny,small")
    p.add_argument("--cases", default="short,long")
    p.add_argument("--prompts", type=int, default=1024)
    p.add_argument("--k", type=int, default=8)
    p.add_argument("--batch-prompts", type=int, default=128, help="prompts per batch (x k rows)")
    p.add_argument("--subset", type=int, default=32, help="prompts measured for per-prompt and single")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=2, help="selffeed and batched run this often, interleaved; best kept")
    p.add_argument("--engines", default="selffeed,batched,per-prompt,single,vllm")
    p.add_argument("--vllm-python", default=None, help="interpreter of a venv with vllm (vllm-cpu)")
    p.add_argument("--vllm-worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--quick", action="store_true", help="128 prompts, subset 8: checks the script")
    args = p.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    if args.vllm_worker:
        spec = json.loads(args.vllm_worker)
        tokens, seconds = run_vllm(spec["checkpoint"], spec["prompts"], spec["k"], spec["new"], spec["threads"],
                                   spec.get("dtype", "float32"))
        print(json.dumps({"tokens": tokens, "seconds": seconds}))
        return
    if args.quick:
        args.prompts, args.subset = 128, 8
    engines = args.engines.split(",")
    preload = os.environ.get("LD_PRELOAD", "") or "none"
    print(f"k={args.k}, {args.prompts} prompts, batches of {args.batch_prompts} prompts, "
          f"{args.threads} threads, LD_PRELOAD={preload}, torch {torch.__version__}")
    print(f"per-prompt and single: first {args.subset} prompts; selffeed and batched: best of {args.repeats}; "
          "fixed-length outputs (EOS unreachable)\n")
    header = f"{'model':6} {'case':6} {'engine':11} {'tokens':>8} {'seconds':>8} {'tok/s':>9} {'selffeed x':>10}"
    print(header)
    print("-" * len(header))
    for name in args.models.split(","):
        model, tok = build(name)
        prompts = make_prompts(tok, args.prompts)
        sub = prompts[: args.subset]
        run_selffeed(model, tok, prompts[:16], args.k, 4, args.batch_prompts)  # warm-up
        for case in args.cases.split(","):
            new = CASES[case]
            rows: dict[str, tuple[int, float] | str] = {}

            def keep(engine: str, r: tuple[int, float]) -> None:
                if engine not in rows or r[1] < rows[engine][1]:
                    rows[engine] = r

            for _ in range(args.repeats):  # interleaved, so a busy spell on a shared machine hits both
                for engine in engines:
                    if engine == "selffeed":
                        keep(engine, run_selffeed(model, tok, prompts, args.k, new, args.batch_prompts))
                    elif engine == "batched":
                        keep(engine, run_batched(model, tok, prompts, args.k, new, args.batch_prompts))
            for engine in engines:
                if engine in ("selffeed", "batched"):
                    continue
                elif engine == "per-prompt":
                    rows[engine] = run_per_prompt(model, tok, sub, args.k, new)
                elif engine == "single":
                    rows[engine] = run_single(model, tok, sub, args.k, new)
                elif engine == "vllm":
                    rows[engine] = vllm_figures(args, name, prompts, new)
            ours = rows["selffeed"][0] / rows["selffeed"][1] if "selffeed" in rows else None
            for engine, r in rows.items():
                if isinstance(r, str):
                    print(f"{name:6} {case:6} {engine:11} {r}")
                    continue
                rate = r[0] / r[1]
                ratio = f"{ours / rate:10.2f}" if ours else ""
                print(f"{name:6} {case:6} {engine:11} {r[0]:8d} {r[1]:8.2f} {rate:9.0f} {ratio}")
            sys.stdout.flush()


if __name__ == "__main__":
    main()
