"""Model collapse on the text demo: `replace` without filters vs `accumulate` with filters, same seed.

Both arms start from the same round-0 model (data/configs/text.yaml: a tiny GPT-2 trained on the
generated stories) and run the same rounds, samples and training steps. The first trains each round
on its latest generations alone, unfiltered (Shumailov et al. 2024); the second accumulates filtered
generations with real stories kept at half of every mix (Gerstgrasser et al. 2024). Both run every
round (no stop rule), so the whole curves show; the collapse guard of text.yaml is then applied to
each prefix of the history, exactly as the loop's stop rule would, to show where it would have stopped
and which round the run's best pointer names::

    python benchmarks/collapse.py                          # 5 rounds, 1 thread (as text.yaml)
    python benchmarks/collapse.py --rounds 3 sample.temperature=0.8
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from selffeed.config import load_config  # noqa: E402
from selffeed.loop import rounds, stages  # noqa: E402
from selffeed.loop.policy import best_round, collapse_guard  # noqa: E402
from selffeed.run.bookkeeping import open_run  # noqa: E402

ARMS = {
    "replace, no filters": [
        "loop.mix=replace", "loop.min_real_fraction=0", "filter.dedup=false", "filter.min_chars=0",
        "text.max_repeat_ratio=null", "text.near_dup=null",
    ],
    "accumulate + filters": ["loop.mix=accumulate", "loop.min_real_fraction=0.5"],
}


def run_arm(cfg, model0) -> list[dict]:
    """The loop of every run (:func:`selffeed.loop.rounds.loop`) from the shared round-0 model, with a decide
    that never stops early: the whole curve shows, and :func:`curve` applies the guard afterwards."""
    def decide(cfg, r, history):
        m = history[-1]
        print(f"  round {r}: ppl {m['perplexity']:.3f}  distinct-2 {m['distinct_2']:.3f}", flush=True)
        return {"stopped": r >= cfg.loop.max_rounds, "history": history}

    every_round = dataclasses.replace(rounds.plain(), decide=decide)
    with open_run(cfg, owner=f"benchmark collapse {cfg.name}"):
        first = (stages.prepare(cfg), rounds.adopt_round0(cfg, model0))
        return rounds.loop(cfg, every_round, first)["history"]


def curve(name: str, history: list[dict], cfg) -> str:
    lines = [f"{name}", f"{'round':>5}  {'kept':>5}  {'real':>5}  {'ppl':>6}  {'dist-2':>6}  {'self-bleu':>9}  "
             f"{'wellformed':>10}  guard"]
    stop = None
    for i, m in enumerate(history):
        fired = collapse_guard(history[: i + 1], cfg.loop)
        if fired and stop is None:
            stop = (m["round"], fired)
        kept = "-" if m.get("kept") is None else str(m["kept"])
        real = "-" if m.get("real_fraction") is None else f"{m['real_fraction']:.2f}"
        lines.append(f"{m['round']:>5}  {kept:>5}  {real:>5}  {m['perplexity']:6.3f}  {m['distinct_2']:6.3f}  "
                     f"{m['self_bleu']:9.1f}  {m.get('wellformed', float('nan')):10.3f}  {'STOP' if fired else ''}")
    if stop:
        best = best_round(history[: stop[0] + 1], cfg.loop)
        lines.append(f"guard stops after round {stop[0]} ({stop[1]}); best round {best}")
    else:
        lines.append(f"guard never fires; best round {best_round(history, cfg.loop)}")
    first, last = history[0], history[-1]
    lines.append(f"round 0 -> {last['round']}: perplexity {last['perplexity'] / first['perplexity'] - 1:+.1%}, "
                 f"distinct-2 {last['distinct_2'] / first['distinct_2'] - 1:+.1%}")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--runs-dir", default="runs/collapse")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    args = p.parse_args()
    common = [f"runs_dir={args.runs_dir}", f"threads={args.threads}", f"loop.max_rounds={args.rounds}",
              "finetune.progress=false", "retrain.progress=false", *args.overrides]
    t0 = time.perf_counter()
    base = load_config("data/configs/text.yaml", ["name=base", *common])
    model0 = stages.finetune(base, stages.prepare(base))
    print(f"round 0 (shared): fine-tuned in {time.perf_counter() - t0:.0f} s", flush=True)
    results = []
    for i, (name, extra) in enumerate(ARMS.items()):
        cfg = load_config("data/configs/text.yaml", [f"name=arm{i}", *common, *extra])
        print(f"{name} ...", flush=True)
        results.append((name, run_arm(cfg, model0), cfg))
    print()
    for name, history, cfg in results:
        print(curve(name, history, cfg))
        print()
    print(f"seed {base.seed}, {args.threads} thread(s), {time.perf_counter() - t0:.0f} s in all")


if __name__ == "__main__":
    main()
