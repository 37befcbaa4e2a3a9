"""The generic ``prompts`` recipe: any prompt file, any scorer, configured in YAML (``prompts:`` section).

Rows come from Parquet, JSONL, CSV or a ``datasets`` ``save_to_disk`` directory; ``prompts.*_column``
map the columns. Held-out validation rows (they pick the best round) and test rows (only reported) are
picked by ``split_column`` or, without one, as seeded ``validation_fraction`` and ``test_fraction`` shares
of the rows that have a reference. Of the remaining (training) rows, those
with a completion form the labelled seed and the others the unlabelled pool. Without a
``completion_column`` the references serve as completions (seed = training rows with a reference);
without a ``reference_column`` the completions serve as references. Pool rows with a reference are
judged by the score filters against it (supervised rejection sampling: true labels, counted by
:func:`selffeed.filtering.labels.labels_used`; ``filter.label_free`` refuses them). Pool rows without one cannot
be scored by a built-in scorer, so only the self-consistency vote can keep them.

Every prompt is ``template.format(**row)``, wrapped in the tokenizer's chat template when the model
at ``model.path`` has one. Bad data raises :class:`DataError` with one line naming the file and column.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pandas as pd

from selffeed.config import PromptsConfig
from selffeed.filtering.scorers import extract_final, normalize


class DataError(ValueError):
    """The prompt data cannot be used as configured; the message is one line naming file and column."""


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and value != value) or str(value).strip() == ""


def read_table(path: str | Path) -> pd.DataFrame:
    """Rows of a ``.parquet``/``.jsonl``/``.csv`` file or a ``datasets`` directory (all splits, with a
    ``split`` column naming each row's split when it is a ``DatasetDict``)."""
    p = Path(path)
    where = f"prompts.data '{p}'"
    if not p.exists():
        raise DataError(f"{where}: no such file or directory")
    try:
        if p.is_dir():
            from datasets import Dataset, load_from_disk

            ds = load_from_disk(str(p))
            if isinstance(ds, Dataset):
                return ds.to_pandas()
            return pd.concat([d.to_pandas().assign(split=name) for name, d in ds.items()], ignore_index=True)
        suffix = p.suffix.lower()
        if p.stat().st_size == 0:
            raise DataError(f"{where}: the file is empty")
        if suffix == ".parquet":
            return pd.read_parquet(p)
        if suffix in (".jsonl", ".json"):
            return pd.read_json(p, lines=suffix == ".jsonl", dtype=False)
        if suffix == ".csv":
            # Everything as text: "007" stays "007"; empty cells become "" and count as missing.
            return pd.read_csv(p, dtype=str, keep_default_na=False)
    except DataError:
        raise
    except Exception as err:  # each reader raises its own types; report the first line only
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise DataError(f"{where}: cannot read it ({first})") from None
    raise DataError(f"{where}: unknown format '{suffix}' (expected .parquet, .jsonl, .csv or a datasets directory)")


def _column(df: pd.DataFrame, name: str | None, field: str, where: str) -> list[Any] | None:
    if name is None:
        return None
    if name not in df.columns:
        raise DataError(f"{where}: no column '{name}' (prompts.{field}); columns are {', '.join(map(str, df.columns))}")
    return [None if _missing(v) else str(v) for v in df[name]]


def _format(template: str, row: dict[str, Any], index: int) -> str:
    try:
        return template.format(**row)
    except KeyError as err:
        raise DataError(f"prompts.template: no column {err} in the data (row {index})") from None
    except (IndexError, ValueError) as err:
        raise DataError(f"prompts.template: cannot format '{template}' ({err})") from None


def chat_tokenizer(tokenizer_path: str | None, use: bool = True):
    """The tokenizer at ``tokenizer_path`` when ``use`` is set and it has a chat template, else None."""
    if not tokenizer_path or not use:
        return None
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_path, local_files_only=True)
    return tok if tok.chat_template else None


def user_turn(chat, text: str) -> str:
    """``text`` as the user's turn of ``chat``'s template, ready for the assistant's reply."""
    return chat.apply_chat_template([{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True)


def load_rows(cfg: PromptsConfig, tokenizer_path: str | None = None) -> pd.DataFrame:
    """The data as columns ``prompt`` (templated), ``completion``, ``reference`` and ``split``."""
    df = read_table(cfg.data)
    where = f"prompts.data '{cfg.data}'"
    if df.empty:
        raise DataError(f"{where}: no rows")
    raw = _column(df, cfg.prompt_column, "prompt_column", where)
    completion = _column(df, cfg.completion_column, "completion_column", where)
    reference = _column(df, cfg.reference_column, "reference_column", where)
    split = _column(df, cfg.split_column, "split_column", where)
    empty = [i for i, v in enumerate(raw) if v is None]
    if empty:
        raise DataError(f"{where}: {len(empty)} row(s) have an empty '{cfg.prompt_column}' (first: row {empty[0]})")
    completion = completion or reference or [None] * len(df)
    reference = reference or completion
    tok = chat_tokenizer(tokenizer_path, cfg.chat_template)
    records = df.to_dict("records")
    prompts = []
    for i, (row, text) in enumerate(zip(records, raw)):
        text = _format(cfg.template, {**row, "prompt": text}, i)
        if tok is not None:
            text = user_turn(tok, text)
        prompts.append(text)
    return pd.DataFrame({"prompt": prompts, "completion": completion, "reference": reference, "split": split})


def make_splits(
    cfg: PromptsConfig, seed: int, tokenizer_path: str | None = None, label_free: bool = False
) -> dict[str, pd.DataFrame]:
    """``seed`` (labelled), ``pool`` (unlabelled, with references where known), ``val`` and ``test`` frames.

    With ``label_free`` (``filter.label_free``) a pool row with a reference is an error: a reference in
    the pool is a true label within reach of the filters."""
    rows = load_rows(cfg, tokenizer_path)
    where = f"prompts.data '{cfg.data}'"
    has_ref = rows["reference"].notna()
    if cfg.split_column:
        if cfg.validation_value == cfg.test_value:
            raise DataError(f"{where}: prompts.validation_value and prompts.test_value are both '{cfg.test_value}'; "
                            "the split that picks the best round must not be the one reported")
        is_val, is_test = rows["split"].eq(cfg.validation_value), rows["split"].eq(cfg.test_value)
        if not is_val.any():
            raise DataError(f"{where}: no row has {cfg.split_column} == '{cfg.validation_value}' (prompts.validation_value)")
        unscored = rows.index[(is_val | is_test) & ~has_ref].tolist()
        if unscored:
            raise DataError(f"{where}: {len(unscored)} held-out row(s) have no reference (first: row {unscored[0]})")
        val_rows, test_rows = rows.index[is_val].tolist(), rows.index[is_test].tolist()
        if not test_rows:  # no test rows marked: a seeded half of the validation rows is the test split
            if len(val_rows) < 2:
                raise DataError(f"{where}: needs 2 or more '{cfg.validation_value}' rows to hold out both a "
                                f"validation and a test split (or rows with {cfg.split_column} == '{cfg.test_value}')")
            random.Random(seed).shuffle(val_rows)
            test_rows, val_rows = val_rows[: len(val_rows) // 2], val_rows[len(val_rows) // 2 :]
    else:
        candidates = rows.index[has_ref].tolist()
        if len(candidates) < 2:
            raise DataError(f"{where}: fewer than 2 rows have a reference, so no validation and test split can be "
                            "held out (prompts.reference_column)")
        random.Random(seed).shuffle(candidates)
        n_val = max(1, round(cfg.validation_fraction * len(candidates)))
        n_test = max(1, round(cfg.test_fraction * len(candidates)))
        val_rows, test_rows = candidates[:n_val], candidates[n_val : n_val + n_test]
    held = rows.index.isin(val_rows + test_rows)
    train = rows[~held]
    labelled = train["completion"].notna()
    seed_df = train[labelled]
    pool = train[~labelled].reset_index(drop=True)
    if seed_df.empty:
        raise DataError(f"{where}: no training row has a completion, so there is no labelled seed")
    if pool.empty:
        raise DataError(f"{where}: every training row has a completion, so the pool of prompts is empty")
    referenced = train.index[~labelled & train["reference"].notna()].tolist()
    if label_free and referenced:
        raise DataError(f"{where}: {len(referenced)} pool row(s) have a reference in column '{cfg.reference_column}' "
                        f"(first: row {referenced[0]}); filter.label_free refuses them (empty them, or turn it off)")
    labelled_held = rows.assign(completion=rows["completion"].fillna(rows["reference"]))
    val, test = labelled_held.loc[sorted(val_rows)], labelled_held.loc[sorted(test_rows)]
    cols = ["prompt", "completion", "reference"]
    gold = _gold(cfg, tokenizer_path)
    if gold is not None:  # gold prompts are sampled and filtered like any other, their answers hidden
        pool = pd.concat([pool, gold[["prompt"]].assign(reference=None)], ignore_index=True)
    pool = pool[["prompt", "reference"]].assign(
        prompt_id=range(len(pool)), slice=[i % cfg.pool_slices for i in range(len(pool))]
    )
    splits = {
        "seed": seed_df[cols].assign(difficulty=0).reset_index(drop=True),
        "pool": pool.assign(difficulty=0),
        "val": val[cols].assign(difficulty=0).reset_index(drop=True),
        "test": test[cols].assign(difficulty=0).reset_index(drop=True),
    }
    if gold is not None:
        splits["gold"] = gold[cols].assign(difficulty=0)
    return splits


def _gold(cfg: PromptsConfig, tokenizer_path: str | None) -> pd.DataFrame | None:
    """The audit's gold rows (templated like the data), or None without ``prompts.gold``."""
    if not cfg.gold:
        return None
    rows = load_rows(cfg.model_copy(update={"data": cfg.gold, "split_column": None}), tokenizer_path)
    missing = rows.index[rows["completion"].isna()].tolist()
    if missing:
        raise DataError(f"prompts.gold '{cfg.gold}': {len(missing)} row(s) have no completion (first: row {missing[0]})")
    return rows.reset_index(drop=True)


def chars_of(*frames: pd.DataFrame) -> str:
    """Every character of the frames' text columns, sorted: the tiny default tokenizer's alphabet."""
    seen: set[str] = set()
    for df in frames:
        for col in ("prompt", "completion", "reference"):
            if col in df:
                seen.update("".join(v for v in df[col] if isinstance(v, str)))
    return "".join(sorted(seen))


def longest_sequence(splits: dict[str, pd.DataFrame], max_new_tokens: int) -> int:
    """Characters in the longest training/validation sequence or pool prompt plus a sampled completion,
    EOS included (the tiny default tokenizer has one token per character)."""
    labelled = [len(p) + len(c) + 1 for df in (splits["seed"], splits["val"], splits["test"]) for p, c in zip(df["prompt"], df["completion"])]
    sampled = [len(p) + max_new_tokens for df in (splits["pool"], splits["val"], splits["test"]) for p in df["prompt"]]
    return max(labelled + sampled)


def parse_answer(completion: str, answer: str) -> str | None:
    """What the self-consistency vote compares: the final number, or the normalized text.

    >>> parse_answer("so 3 + 4 = 7\\n#### 7", "final"), parse_answer("The Cat.", "text"), parse_answer(" ", "text")
    ('7', 'cat', None)
    """
    if answer == "final":
        return extract_final(completion)
    return normalize(completion) or None
