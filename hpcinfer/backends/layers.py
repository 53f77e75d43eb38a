"""Running a layer body over layers stacked on a leading axis, without compilation."""

from __future__ import annotations

from typing import Any


def loop_layers(fn: Any, x: Any, stacked: dict) -> Any:
    """x = fn(x, layer_i) for i over the leading axis of every tensor in `stacked`."""
    for i in range(len(next(iter(stacked.values())))):
        x = fn(x, {name: value[i] for name, value in stacked.items()})
    return x
