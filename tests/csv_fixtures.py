"""Helpers shared by test modules that edit dataset files in place (the contract,
validate and pipeline CLI tests): change one cell, hash every file of a directory."""

from __future__ import annotations

import hashlib
from pathlib import Path

import polars as pl


def set_cell(path: Path, row: int, column: str, value: str) -> None:
    """Replace the text of data row ``row`` (1 = first row after the header) in a CSV."""
    df = pl.read_csv(path, infer_schema=False)
    df = df.with_columns(pl.when(pl.int_range(pl.len()) == row - 1).then(pl.lit(value))
                         .otherwise(pl.col(column)).alias(column))
    df.write_csv(path)


def digests(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in directory.iterdir()}
