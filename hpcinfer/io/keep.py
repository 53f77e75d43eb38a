"""Columns carried through (`output.keep`): input values copied to the output, row-aligned.

Every kept column has one type for the whole input, written as a *kind*:

    "int64", "float64", "bool"    numbers from JSON (a column of ints and floats is float64)
    "str"                         UTF-8 text, stored variable-length
    "<f4", "<i8(3,)", ...         any other numpy dtype (and row shape), from HDF5 or Parquet

Readers note the kinds they meet while they validate (each rank its share); the plan
merges every rank's notes (`merge`) before anything is computed, so a column that mixes
texts and numbers, or holds a null, is refused up front with the rows named.
"""

from __future__ import annotations

import re

import numpy as np

from hpcinfer.errors import JobError
from hpcinfer.io.file_checks import clip

MAX_KEPT_BYTES = 65536  # one kept text: ids, paths, labels; not documents
INT64 = (-(2**63), 2**63 - 1)
_SURROGATE = re.compile("[\ud800-\udfff]")

# kind -> where it was first met: (row index, "file:line" as messages give it)
Kinds = dict[str, tuple[int, str]]


def check_names(keep: tuple[str, ...], where: str) -> None:
    """Kept names are distinct and usable as HDF5 dataset names."""
    for name in keep:
        if not name or "/" in name or name in (".", "..") or name != name.strip():
            raise JobError(f"{where}: output.keep: {name!r} cannot name an output dataset")
    if len(set(keep)) != len(keep):
        raise JobError(f"{where}: output.keep names a column twice: {list(keep)}")


def value_kind(value: object, name: str, where: str) -> str:
    """The kind of one JSON (or CSV) value of kept column `name`, checked."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        if not INT64[0] <= value <= INT64[1]:
            raise JobError(
                f"{where}: kept column {name!r}: {clip(str(value), 30)} does not fit int64"
            )
        return "int64"
    if isinstance(value, float):
        return "float64"
    if isinstance(value, str):
        check_text(value, name, where)
        return "str"
    what = "null (a missing value)" if value is None else f"a {type(value).__name__}"
    raise JobError(
        f"{where}: kept column {name!r} holds {what}; hpcinfer keeps texts, integers, "
        "floats and booleans"
    )


def check_text(text: str, name: str, where: str) -> None:
    if (m := _SURROGATE.search(text)) is not None:
        raise JobError(
            f"{where}: kept column {name!r} holds a lone surrogate (\\u{ord(m.group()):04x})"
        )
    if len(text) * 4 > MAX_KEPT_BYTES and len(text.encode("utf-8")) > MAX_KEPT_BYTES:
        raise JobError(
            f"{where}: kept column {name!r} holds a text of over {MAX_KEPT_BYTES:,} bytes "
            "(keep is for ids, paths and labels)"
        )


def note(kinds: Kinds, kind: str, row: int, where: str) -> None:
    """Remember where `kind` was first met."""
    if kind not in kinds or row < kinds[kind][0]:
        kinds[kind] = (row, where)


def merge(name: str, notes: list[Kinds], strict: bool = True) -> str:
    """One kind for column `name` from every rank's notes; a mix is an error naming the
    first row of each kind met (not `strict`: "str", for a plan the ranks' merged notes
    will check)."""
    kinds: Kinds = {}
    for part in notes:
        for kind, (row, where) in part.items():
            note(kinds, kind, row, where)
    if not kinds:
        return "str"  # no rows: nothing to type
    if set(kinds) == {"int64", "float64"}:
        return "float64"
    if len(kinds) == 1:
        return next(iter(kinds))
    if not strict:
        return "str"
    first = sorted(kinds.items(), key=lambda kv: kv[1][0])[:2]
    seen = " and ".join(f"{_describe(k)} at {w}" for k, (_, w) in first)
    raise JobError(f"kept column {name!r} holds values of different types: {seen}")


def _describe(kind: str) -> str:
    return {"str": "a text", "int64": "an integer", "float64": "a float", "bool": "a boolean"}.get(
        kind, kind
    )


def dtype_kind(dtype: np.dtype, row_shape: tuple[int, ...] = ()) -> str:
    """The kind of a numpy column: its dtype, and its row shape when it has one."""
    text = np.dtype(dtype).str
    return f"{text}{tuple(row_shape)}" if row_shape else text


def kind_spec(kind: str) -> tuple[tuple[int, ...], np.dtype]:
    """(row shape, dtype) of a kind; texts are dtype object (stored as UTF-8)."""
    if kind == "str":
        return (), np.dtype(object)
    named = {"int64": "<i8", "float64": "<f8", "bool": "|b1"}
    if kind in named:
        return (), np.dtype(named[kind])
    base, _, shape = kind.partition("(")
    dims = tuple(int(d) for d in shape.rstrip(")").split(",") if d.strip()) if shape else ()
    return dims, np.dtype(base)
