"""Shard tables: what each TP rank reads of each stored tensor, written once per model.

A model's `shard_table(cfg, rank, size)` maps every parameter it holds to a `Part`: the
tensor's name in the file, the row and column ranges of the *stored* tensor this rank
keeps (several ranges are concatenated: GPT-2's fused q|k|v), whether it is held
transposed (nn.Linear stores (out, in); hpcinfer multiplies x @ w with w (in, out)), and
the shape config.json says the stored tensor has. The loader reads exactly that
(`read_table`); `inspect` sums the same table's sizes for each tp without reading a byte
(`table_elements`). Parameter keys are the file's own tensor names.

Layer tensors are named relative to their layer (`attention.self.query.weight`) and
stacked on a leading layer axis, which `scan_layers` walks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from hpcinfer.errors import JobError

ALL = slice(None)


class WeightFile(Protocol):
    """A model file that reads slices of named tensors (safetensors, GGUF, shards)."""

    path: Any

    def __contains__(self, name: str) -> bool: ...

    def info(self, name: str) -> Any: ...

    def read(
        self,
        name: str,
        rows: slice = ALL,
        cols: slice = ALL,
        dtype: Any = None,
        check_finite: bool = False,
    ) -> Any: ...

    def read_transposed(
        self,
        name: str,
        rows: slice = ALL,
        cols: slice = ALL,
        dtype: Any = "float32",
        check_finite: bool = False,
    ) -> Any: ...


@dataclass(frozen=True)
class Part:
    """What one rank reads of one stored tensor."""

    name: str  # the tensor's name in the file
    rows: tuple[slice, ...] = (ALL,)  # ranges of the stored rows, concatenated
    cols: tuple[slice, ...] = (ALL,)  # ranges of the stored columns (2-D only), concatenated
    transpose: bool = False  # hold stored.T (an nn.Linear weight, held as (in, out))
    expect: tuple[int, ...] | None = None  # the stored shape config.json implies

    def shape(self, stored: tuple[int, ...]) -> tuple[int, ...]:
        """The shape this rank holds, given the stored shape."""
        if not stored:
            return ()
        n_rows = sum(len(range(*r.indices(stored[0]))) for r in self.rows)
        if len(stored) == 1:
            return (n_rows,)
        n_cols = sum(len(range(*c.indices(stored[1]))) for c in self.cols)
        held = (n_rows, n_cols, *stored[2:])
        return (held[1], held[0], *held[2:]) if self.transpose else held


@dataclass(frozen=True)
class ShardTable:
    """One rank's parameters: top-level ones, and one dict per layer (stacked on load)."""

    top: dict[str, Part]
    layers: list[dict[str, Part]] = field(default_factory=list)

    def parts(self) -> list[Part]:
        return [*self.top.values(), *(p for layer in self.layers for p in layer.values())]


def column(name: str, part: slice, transpose: bool = True, expect=None) -> Part:
    """An nn.Linear weight or bias split along its outputs (its stored rows)."""
    return Part(name, rows=(part,), transpose=transpose, expect=expect)


def row(name: str, part: slice, transpose: bool = True, expect=None) -> Part:
    """An nn.Linear weight split along its inputs (its stored columns)."""
    return Part(name, cols=(part,), transpose=transpose, expect=expect)


def whole(name: str, expect=None) -> Part:
    return Part(name, expect=expect)


def check_shape(weights: WeightFile, part: Part) -> tuple[int, ...]:
    stored = tuple(weights.info(part.name).shape)
    if part.expect is not None and stored != tuple(part.expect):
        raise JobError(
            f"{weights.path}: {part.name} has shape {stored}, expected {tuple(part.expect)} "
            "from config.json"
        )
    return stored


def read_part(weights: WeightFile, part: Part, dtype: str) -> np.ndarray:
    """This rank's piece of one tensor, in `dtype`, reading only its ranges. A NaN or Inf
    in it (stored, or from the cast) is a JobError naming the tensor: a model must not
    compute silently wrong results from broken weights."""
    stored = check_shape(weights, part)
    cols = part.cols if len(stored) == 2 else (ALL,)
    reader = weights.read_transposed if part.transpose else weights.read
    pieces = [
        [reader(part.name, rows=r, cols=c, dtype=dtype, check_finite=True) for c in cols]
        for r in part.rows
    ]
    col_axis, row_axis = (0, 1) if part.transpose else (1, 0)
    joined = [p[0] if len(p) == 1 else np.concatenate(p, axis=col_axis) for p in pieces]
    return joined[0] if len(joined) == 1 else np.concatenate(joined, axis=row_axis)


def read_table(weights: WeightFile, table: ShardTable, dtype: str) -> dict[str, Any]:
    """{name: array} for the top-level parts, and "layers": {name: (layers, ...)}."""
    params: dict[str, Any] = {k: read_part(weights, p, dtype) for k, p in table.top.items()}
    if table.layers:
        per_layer = [{k: read_part(weights, p, dtype) for k, p in t.items()} for t in table.layers]
        params["layers"] = {k: np.stack([layer[k] for layer in per_layer]) for k in per_layer[0]}
    return params


def table_elements(table: ShardTable, shapes: dict[str, tuple[int, ...]]) -> int:
    """Elements a rank holds under `table`, from stored shapes alone (no data read)."""
    return sum(int(np.prod(p.shape(tuple(shapes[p.name])), dtype=np.int64)) for p in table.parts())
