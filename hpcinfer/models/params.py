"""Parameter trees: nested dicts of arrays, as loaders build them and forwards read them."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any


def tree_leaves(tree: Any) -> Iterator[Any]:
    if isinstance(tree, dict):
        for v in tree.values():
            yield from tree_leaves(v)
    else:
        yield tree


def tree_map(fn: Callable[[Any], Any], tree: Any) -> Any:
    if isinstance(tree, dict):
        return {k: tree_map(fn, v) for k, v in tree.items()}
    return fn(tree)


def tree_nbytes(tree: Any) -> int:
    """Bytes of every array in the tree (a rank's share of the weights)."""
    return sum(a.nbytes for a in tree_leaves(tree))
