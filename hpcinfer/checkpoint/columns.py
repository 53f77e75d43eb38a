"""The output file's datasets: the model's outputs, named and stored as the job asks, and
the input columns it keeps.

    output.datasets   the model's name -> yours ({embeddings = "vectors"}); unnamed
                      outputs keep the model's names
    output.dtype      how floating-point outputs are stored: auto (as computed), float32,
                      float16, or bfloat16 (its raw bits as uint16: the top half of the
                      float32, rounded to nearest even; the dataset's attribute
                      `hpcinfer_dtype = "bfloat16"` says so). Integer outputs never change.
    output.keep       input columns, each a dataset of its kind (io.keep): numbers as
                      their dtype, texts as UTF-8 variable-length strings

A Column is one dataset; chunk files and the output use the same names. Values are cast
(and bfloat16 rounded) before they go into a chunk file, so chunk files are as small
as the output, and assembly only copies.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from hpcinfer.errors import JobError
from hpcinfer.io.file_checks import bf16_to_f32
from hpcinfer.models.base import OutputSpec

TEXT = np.dtype(object)  # a column of texts: UTF-8, variable length
BFLOAT16 = "bfloat16"
RESERVED = ("run",)  # the group of the run's own records (run/chunks)


@dataclass(frozen=True)
class Column:
    """One output dataset."""

    name: str  # in chunk files and in the output
    spec: OutputSpec  # as stored: uint16 for bfloat16, TEXT for texts
    source: str  # the model's output, or the kept input column
    kept: bool = False  # an input column, not a model output
    encoding: str = ""  # "bfloat16": raw bits in uint16

    @property
    def text(self) -> bool:
        return np.dtype(self.spec.dtype) == TEXT


def output_columns(
    outputs: dict[str, OutputSpec],
    datasets: dict[str, str],
    dtype: str,
    kept: dict[str, OutputSpec],
    where: str,
) -> dict[str, Column]:
    """Every dataset of the output, by name: model outputs first, then kept columns."""
    unknown = sorted(set(datasets) - set(outputs))
    if unknown:
        raise JobError(
            f"{where}: output.datasets names {', '.join(map(repr, unknown))}, but the model "
            f"writes {', '.join(outputs)}"
        )
    columns: dict[str, Column] = {}
    for source, spec in outputs.items():
        column = stored_output(datasets.get(source, source), source, spec, dtype)
        _add(columns, column, where)
    for source, spec in kept.items():
        _add(columns, Column(source, spec, source, kept=True), where)
    return columns


def stored_output(name: str, source: str, spec: OutputSpec, dtype: str) -> Column:
    if dtype == "auto" or not np.issubdtype(spec.dtype, np.floating):
        return Column(name, spec, source)
    if dtype == BFLOAT16:
        return Column(name, OutputSpec(spec.shape, np.dtype("uint16")), source, encoding=BFLOAT16)
    return Column(name, OutputSpec(spec.shape, np.dtype(dtype)), source)


def _add(columns: dict[str, Column], column: Column, where: str) -> None:
    name = column.name
    if not name or "/" in name or name in (".", "..") or name in RESERVED:
        raise JobError(f"{where}: {name!r} cannot name an output dataset (output.datasets)")
    if name in columns:
        what = "a kept column" if column.kept else "an output"
        raise JobError(
            f"{where}: two datasets would be named {name!r} ({what} and an output "
            f"{columns[name].source!r}): rename one with output.datasets"
        )
    columns[name] = column


def stored_type(column: Column) -> str:
    """The dataset's type as a user reads it: "float32", "bfloat16", "utf-8 text"."""
    if column.encoding:
        return column.encoding
    return "utf-8 text" if column.text else np.dtype(column.spec.dtype).name


def specs(columns: dict[str, Column]) -> dict[str, OutputSpec]:
    """What a chunk file holds: each column's stored shape and dtype."""
    return {name: c.spec for name, c in columns.items()}


def stored(
    columns: dict[str, Column], outputs: dict[str, Any], kept: dict[str, Any]
) -> dict[str, Any]:
    """One batch's values by column name, as stored (cast, bfloat16 bits)."""
    out = {}
    for name, c in columns.items():
        if c.kept:
            out[name] = kept[c.source]
        elif c.encoding == BFLOAT16:
            out[name] = bfloat16_bits(outputs[c.source])
        else:
            out[name] = np.asarray(outputs[c.source]).astype(c.spec.dtype, copy=False)
    return out


def bfloat16_bits(values: Any) -> np.ndarray:
    """float values -> bfloat16 bits (uint16), rounded to nearest even; NaN stays NaN.
    (float64 values are rounded to float32 first.)"""
    x = np.asarray(values, dtype=np.float32)
    bits = x.view(np.uint32).astype(np.uint64)
    rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
    nan = np.isnan(x)
    if nan.any():
        rounded[nan] = ((bits[nan] >> 16) | 0x0040).astype(np.uint16)  # a quiet NaN
    return rounded


def bfloat16_values(bits: np.ndarray) -> np.ndarray:
    """bfloat16 bits (uint16) -> float32, exactly."""
    return bf16_to_f32(np.asarray(bits, dtype=np.uint16))


def nonfinite_rows(values: np.ndarray, encoding: str = "") -> int:
    """Rows holding a NaN or an infinity (bfloat16 bits: exponent all ones)."""
    if encoding == BFLOAT16:
        bad = (values.reshape(len(values), -1) & 0x7F80) == 0x7F80
        return int(bad.any(axis=1).sum())
    if values.dtype == TEXT or not np.issubdtype(values.dtype, np.floating):
        return 0
    return int((~np.isfinite(values.reshape(len(values), -1)).all(axis=1)).sum())
