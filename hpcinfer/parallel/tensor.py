"""Tensor-parallel kernels (Megatron-style), written once for numpy, JAX and CuPy arrays.

Three tiers, as in Megatron's tensor_parallel package:
  1. collectives on a group            a `Collectives` (below; MPI ones in hpcinfer.parallel.comm)
  2. named region operations           reduce_from_tp_region, gather_from_tp_region
  3. layers                            column_linear, row_linear

A linear layer Y = X A^T + b (A stored as (out, in) in the model file, held in memory
transposed, as W = A^T (in, out), so every backend runs a plain X @ W with no transpose
materialised) is split over a TP group of `tp` ranks:

  column-parallel: W split along `out`. Rank r holds W_r (in, out_r) and b_r;
      Y_r = X W_r + b_r is its slice of the output columns. No communication, unless
      the full Y is needed (all-gather along the last axis).
  row-parallel: W split along `in`. Rank r holds W_r (in_r, out) and gets X_r, the
      matching slice of X's columns: the partial products X_r W_r are summed over the
      group (one all-reduce), then b is added, once.

A column-parallel layer feeding a row-parallel one needs no communication between them
(the column layer's output slice is exactly the row layer's input slice), so an MLP
block of two layers costs one all-reduce. Uneven splits are allowed: a dimension of n
over tp ranks gives the first n % tp ranks one more row (hpcinfer.parallel.partition).
"""

from __future__ import annotations

from typing import Any, Protocol


class Collectives(Protocol):
    """What tensor-parallel kernels need from their group."""

    rank: int  # this rank's place in the group: which slice of every weight it holds
    size: int
    traceable: bool  # may be called inside jax.jit

    def all_reduce(self, x: Any) -> Any:
        """Element-wise sum over the group."""

    def all_gather_last(self, x: Any, counts: tuple[int, ...]) -> Any:
        """Shards (..., counts[r]) from every rank -> (..., sum(counts)), in rank order."""


class Solo:
    """A group of one: nothing to communicate."""

    rank = 0
    size = 1
    traceable = True

    def all_reduce(self, x: Any) -> Any:
        return x

    def all_gather_last(self, x: Any, counts: tuple[int, ...]) -> Any:
        return x


def matmul(x: Any, w: Any) -> Any:
    """x (..., in) @ w (in, out) as one 2-D GEMM: numpy would otherwise loop over the
    leading axes calling a small GEMM for each (B separate (L, in) products for (B, L, in))."""
    if x.ndim == 2:
        return x @ w
    return (x.reshape(-1, x.shape[-1]) @ w).reshape(*x.shape[:-1], w.shape[-1])


def reduce_from_tp_region(x: Any, tp: Collectives) -> Any:
    """Partial sums on every rank -> the full sum on every rank."""
    return tp.all_reduce(x)


def gather_from_tp_region(x: Any, tp: Collectives, counts: tuple[int, ...]) -> Any:
    """Column slices (..., counts[r]) on every rank -> the full (..., sum(counts))."""
    return tp.all_gather_last(x, counts)


def column_linear(
    x: Any,
    w: Any,
    b: Any,
    tp: Collectives,
    gather_counts: tuple[int, ...] | None = None,
) -> Any:
    """x (B, in) @ w_r (in, out_r) + b_r -> (B, out_r); all-gathered to (B, out) if asked."""
    y = matmul(x, w)  # (B, out_r)
    y += b  # in place on numpy/cupy (one (B, out_r) buffer fewer); rebinds on JAX
    return y if gather_counts is None else gather_from_tp_region(y, tp, gather_counts)


def row_linear(x: Any, w: Any, b: Any, tp: Collectives) -> Any:
    """x_r (B, in_r) @ w_r (in_r, out), summed over the group, + b -> (B, out)."""
    partial = matmul(x, w)  # (B, out), this rank's share of the sum
    y = reduce_from_tp_region(partial, tp)
    y += b  # once, after the sum
    return y
