"""Small, deterministic data files for the worked examples of docs/bring-your-own-task.md (and the tests).

Three toy tasks, one file format each, all with references on only some rows:

- ``qa.jsonl``: arithmetic word problems; a worked solution ending in ``#### <answer>`` on seed rows,
  the bare answer as reference on most others (scorer ``final_answer``);
- ``translation.csv``: English noun phrases to French with a ``split`` column (scorer ``chrf``);
- ``summarization.parquet``: three-sentence stories to one-line summaries (scorer ``rougeL``).

Regenerate the shipped copies with ``python -m selffeed.recipes.examples data/examples``.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import pandas as pd

NAMES = ["Ann", "Ben", "Cal", "Dee", "Eva", "Finn", "Gus", "Ida"]
THINGS = ["apples", "pens", "cards", "shells", "stamps", "coins"]

NOUNS = {"cat": ("chat", "m"), "dog": ("chien", "m"), "book": ("livre", "m"), "tree": ("arbre", "m"),
         "house": ("maison", "f"), "car": ("voiture", "f"), "flower": ("fleur", "f"), "door": ("porte", "f")}
ADJECTIVES = {"red": ("rouge", "rouge"), "big": ("grand", "grande"), "small": ("petit", "petite"),
              "green": ("vert", "verte"), "black": ("noir", "noire"), "white": ("blanc", "blanche")}

PLACES = ["market", "park", "library", "harbor", "bakery"]
DAYS = ["Monday", "Tuesday", "Friday", "Sunday"]
ITEMS = ["bread", "maps", "fish", "books", "tea"]
WEATHER = ["sunny", "cold", "rainy", "windy"]


def qa_rows(n: int = 60, seed: int = 0) -> list[dict]:
    """Word problems: 30 with a worked solution, 20 with only the answer, the rest with neither."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        a, b = rng.randint(1, 9), rng.randint(1, 9)
        name, thing = rng.choice(NAMES), rng.choice(THINGS)
        row = {"question": f"{name} has {a} {thing} and gets {b} more. How many now?"}
        if i < n // 2:
            row["solution"] = f"{a}+{b}={a + b}\n#### {a + b}"
        if i < n * 5 // 6:
            row["answer"] = str(a + b)
        rows.append(row)
    return rows


def translation_rows(seed: int = 0) -> pd.DataFrame:
    """Every adjective-noun phrase, shuffled: 12 validation rows, 18 seed rows (``target``), the rest pool."""
    rows = []
    for noun, (fr_noun, gender) in NOUNS.items():
        for adj, (masc, fem) in ADJECTIVES.items():
            article = "le" if gender == "m" else "la"
            fr_adj = masc if gender == "m" else fem
            # French puts most adjectives after the noun, but "grand" and "petit" before it.
            phrase = f"{fr_adj} {fr_noun}" if adj in ("big", "small") else f"{fr_noun} {fr_adj}"
            rows.append({"english": f"the {adj} {noun}", "french": f"{article} {phrase}"})
    random.Random(seed).shuffle(rows)
    df = pd.DataFrame(rows)
    df["split"] = ["validation" if i < 12 else "train" for i in range(len(df))]
    df["target"] = [f if 12 <= i < 30 else "" for i, f in enumerate(df["french"])]
    return df


def summarization_rows(n: int = 48, seed: int = 0) -> pd.DataFrame:
    """Stories and summaries: 10 validation rows, 20 seed rows (``highlight``), the rest pool."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        name, place, day = rng.choice(NAMES), rng.choice(PLACES), rng.choice(DAYS)
        item, weather = rng.choice(ITEMS), rng.choice(WEATHER)
        story = f"On {day} {name} went to the {place}. It was {weather}. {name} bought {item} there."
        summary = f"{name} bought {item} at the {place}."
        split = "validation" if i < 10 else "train"
        rows.append({"story": story, "summary": summary, "split": split, "highlight": summary if 10 <= i < 30 else None})
    return pd.DataFrame(rows)


def write_examples(out_dir: str | Path) -> dict[str, Path]:
    """Write ``qa.jsonl``, ``translation.csv`` and ``summarization.parquet`` into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"qa": out / "qa.jsonl", "translation": out / "translation.csv", "summarization": out / "summarization.parquet"}
    paths["qa"].write_text("".join(json.dumps(r) + "\n" for r in qa_rows()))
    translation_rows().to_csv(paths["translation"], index=False)
    summarization_rows().to_parquet(paths["summarization"], index=False)
    return paths


if __name__ == "__main__":
    for name, path in write_examples(sys.argv[1] if len(sys.argv) > 1 else "data/examples").items():
        print(f"{name}: {path}")
