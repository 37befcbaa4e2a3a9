"""Benchmark: two runs sharing this machine's cores. Each process trains the demo config's round-0 fine-tune
(200 steps); the script times one alone and two started together under OpenMP's default wait policy, shorter
spins (``GOMP_SPINCOUNT=1000`` is what importing selffeed sets unless the variable is given) and
``OMP_WAIT_POLICY=PASSIVE``.

    python benchmarks/shared_cores.py            # ~5 min on 2 cores

Prints each case's wall seconds per process and the slowdown of two together against one alone (fair share
on 2 cores with 2 threads each: about 2x).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHILD = """
import time, torch
from selffeed.config import load_config
from selffeed.training.finetune import train
from selffeed.training.model import char_tokenizer, tiny_gpt2
from selffeed.recipes import recipe_for
from selffeed.recipes.arithmetic import CHARS
cfg = load_config("data/configs/arithmetic.yaml", ["finetune.steps=200", "finetune.progress=false"])
torch.set_num_threads(cfg.threads)
seed = recipe_for(cfg).make_splits(0)["seed"]
tok = char_tokenizer(CHARS)
model = tiny_gpt2(cfg.model, tok, seed=0)
t0 = time.perf_counter()
train(model, tok, seed, cfg.finetune, seed=0)
print(time.perf_counter() - t0)
"""


CASES = {
    "OpenMP default": {"GOMP_SPINCOUNT": "300000"},  # libgomp's own default, given since selffeed sets one
    "GOMP_SPINCOUNT=1000": {"GOMP_SPINCOUNT": "1000"},
    "GOMP_SPINCOUNT=3000": {"GOMP_SPINCOUNT": "3000"},
    "OMP_WAIT_POLICY=PASSIVE": {"OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": "0"},
}


def run(n: int, setting: dict[str, str]) -> list[float]:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    env.update(setting)
    procs = [subprocess.Popen([sys.executable, "-c", CHILD], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True)
             for _ in range(n)]
    return [float(p.communicate()[0].strip().splitlines()[-1]) for p in procs]


def main() -> None:
    print(f"{os.cpu_count()} cores; each process: 200 fine-tune steps of the demo model, 2 threads")
    for name, setting in [*CASES.items(), *CASES.items()]:  # twice: the first pair of a case runs cold
        alone = run(1, setting)[0]
        together = run(2, setting)
        print(f"  {name:24s} alone {alone:6.1f} s   two together {together[0]:6.1f} s, "
              f"{together[1]:6.1f} s   slowdown {max(together) / alone:5.1f}x", flush=True)


if __name__ == "__main__":
    main()
