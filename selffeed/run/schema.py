"""Declared Parquet schemas of a round's corpora, and the only code that reads or writes them.

``samples.parquet`` holds every completion with its provenance (model, sampling parameters, seed);
``kept.parquet`` holds the rows the filters kept, with their score, the vote's agreement and the
filters they passed. Nullable columns (``reference``, ``score``, ...) may be absent from a frame being
written and are then stored as nulls (the arithmetic recipe has no references). Writes are atomic
and cast to the declared schema, so a reader (pandas, pyarrow, datasets, DuckDB) always sees
these exact columns and types.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from selffeed.run.layout import atomic_path

SAMPLES = pa.schema(
    [
        pa.field("round", pa.int32(), nullable=False),
        pa.field("prompt_id", pa.int64(), nullable=False),
        pa.field("sample_idx", pa.int32(), nullable=False),
        pa.field("prompt", pa.string(), nullable=False),
        pa.field("completion", pa.string(), nullable=False),
        pa.field("answer", pa.string(), nullable=True),  # None when the completion is malformed
        pa.field("reference", pa.string(), nullable=True),  # the prompt's reference answer, if the data has one
        pa.field("difficulty", pa.int32(), nullable=False),
        pa.field("n_tokens", pa.int32(), nullable=False),
        pa.field("logprob", pa.float32(), nullable=False),  # sum over generated tokens
        pa.field("model_id", pa.string(), nullable=False),
        pa.field("temperature", pa.float32(), nullable=False),
        pa.field("top_k", pa.int32(), nullable=False),
        pa.field("top_p", pa.float32(), nullable=False),
        pa.field("greedy", pa.bool_(), nullable=False),
        pa.field("seed", pa.int64(), nullable=False),
    ]
)

KEPT = pa.schema(
    list(SAMPLES)
    + [
        pa.field("score", pa.float64(), nullable=True),  # prompts.scorer's score; None when not scored
        pa.field("agreement", pa.float32(), nullable=False),  # majority share of the prompt's k
        pa.field("votes", pa.int32(), nullable=False),  # samples that gave the kept answer
        pa.field("passed", pa.string(), nullable=False),  # comma-separated filters the row passed
    ]
)

# The labelled seed and test splits, and the unlabelled pool.
LABELLED = pa.schema(
    [
        pa.field("prompt", pa.string(), nullable=False),
        pa.field("completion", pa.string(), nullable=False),
        pa.field("difficulty", pa.int32(), nullable=False),
        pa.field("reference", pa.string(), nullable=True),  # what the scorer compares with
    ]
)
POOL = pa.schema(
    [
        pa.field("prompt_id", pa.int64(), nullable=False),
        pa.field("prompt", pa.string(), nullable=False),
        pa.field("difficulty", pa.int32(), nullable=False),
        pa.field("slice", pa.int32(), nullable=False),
        pa.field("reference", pa.string(), nullable=True),
    ]
)


class SchemaError(ValueError):
    """A frame or file does not match a declared schema; the message names the file and column."""


def to_table(df: pd.DataFrame, schema: pa.Schema, what: str = "frame") -> pa.Table:
    """Select and cast ``df``'s columns to ``schema`` (extra columns are dropped, absent nullable ones
    become nulls)."""
    absent = [f.name for f in schema if f.name not in df.columns and f.nullable]
    if absent:
        df = df.assign(**{name: None for name in absent})
    missing = [f.name for f in schema if f.name not in df.columns]
    if missing:
        raise SchemaError(f"{what}: missing column(s) {', '.join(missing)}")
    try:
        return pa.Table.from_pandas(df[schema.names], schema=schema, preserve_index=False)
    except (pa.ArrowInvalid, pa.ArrowTypeError, ValueError) as err:
        raise SchemaError(f"{what}: does not match the declared schema ({err})") from None


def write(df: pd.DataFrame, schema: pa.Schema, path: Path) -> int:
    """Write ``df`` as Parquet with ``schema``, atomically; returns the row count."""
    table = to_table(df, schema, str(path))
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
    return table.num_rows


def read(path: Path, schema: pa.Schema) -> pd.DataFrame:
    """Read a Parquet file and check it carries ``schema``'s columns and types."""
    try:
        table = pq.read_table(path)
    except FileNotFoundError:
        raise SchemaError(f"{path}: file not found") from None
    except (pa.ArrowInvalid, OSError) as err:
        raise SchemaError(f"{path}: not a readable Parquet file ({err})") from None
    for f in schema:
        if f.name not in table.schema.names:
            raise SchemaError(f"{path}: missing column '{f.name}'")
        if not table.schema.field(f.name).type.equals(f.type):
            raise SchemaError(f"{path}: column '{f.name}' is {table.schema.field(f.name).type}, expected {f.type}")
    return table.select(schema.names).to_pandas()
