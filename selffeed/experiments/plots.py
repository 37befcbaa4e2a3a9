"""The experiment report's figure: test accuracy vs round, one line per arm, error bars = sd.

One panel per test difficulty plus one for all of them (or one for a scored recipe's metric). The
figures are the test split's (see :func:`selffeed.experiments.arms.summarize`), which picked nothing::

    accuracy_plot(summary, Path("runs/arith-demo-experiment/accuracy.png"))  # summary: experiment.summarize
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers and workers

import matplotlib.pyplot as plt  # noqa: E402

from selffeed.run.layout import atomic_path  # noqa: E402

PANEL_INCHES = (4.5, 3.6)
DPI = 100
# One colour per arm, whatever arms a report has, so figures compare at a glance.
COLORS = {"self": "tab:blue", "seed_only": "tab:orange", "unfiltered": "tab:red", "oracle": "tab:green"}


def figure_pixels(summary: dict[str, Any]) -> tuple[int, int]:
    """Width and height in pixels of the figure :func:`accuracy_plot` writes for ``summary``."""
    n = len(summary["keys"])
    return round(PANEL_INCHES[0] * n * DPI), round(PANEL_INCHES[1] * DPI)


def accuracy_plot(summary: dict[str, Any], path: Path) -> Path:
    """Write the accuracy-vs-round PNG of an experiment summary to ``path`` (atomically)."""
    keys = summary["keys"]
    fig, axes = plt.subplots(
        1, len(keys), figsize=(PANEL_INCHES[0] * len(keys), PANEL_INCHES[1]), dpi=DPI, sharey=True, squeeze=False
    )
    arms = summary["arms"]
    for ax, key in zip(axes[0], keys):
        for i, arm in enumerate(arms):
            rounds = summary["per_arm"][arm]["rounds"]
            pts = [(r["round"], r["accuracy"][key]) for r in rounds if r["accuracy"][key]["mean"] is not None]
            # Nudge each arm sideways a little so overlapping error bars stay readable.
            x = [r + (i - (len(arms) - 1) / 2) * 0.06 for r, _ in pts]
            ax.errorbar(x, [s["mean"] for _, s in pts], yerr=[s["sd"] for _, s in pts], marker="o", markersize=4,
                        capsize=3, linewidth=1.5, label=arm, color=COLORS.get(arm))
        title = "all difficulties" if key == "all" else (f"difficulty {key}" if key.isdigit() else key)
        ax.set_title(title + (" (hardest)" if key == summary["hardest"] else ""))
        ax.set_xlabel("round")
        ax.set_xticks(summary["rounds"])
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("test accuracy" if "all" in keys else f"test {keys[0]}")
    axes[0][-1].legend(title="arm", fontsize="small")
    n = len(summary["seeds"])
    fig.suptitle(f"{summary['name']}: mean over {n} seed(s), error bars = sd", fontsize="medium")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI)
    plt.close(fig)
    return path
