"""`python -m hpcinfer inspect MODEL`: what a model is and which layouts fit it.

Reads config.json and the safetensors *header* only (never the weights), or a GGUF
file's header (metadata and tensor table), so it is instant on a model of any size and
needs no MPI.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from hpcinfer.errors import JobError
from hpcinfer.io.file_checks import human_bytes
from hpcinfer.models import family_of, open_model_weights, read_config
from hpcinfer.models.shards import check_shape, table_elements

CANDIDATE_TP = (1, 2, 3, 4, 6, 8, 12, 16)
MAX_LISTED_TP = 64  # "valid tp" lists the fitting values up to this
HEADROOM = 1.25  # weights x this must fit: activations, buffers, the interpreter


def weight_elements(arch: Any, tp: int, shapes: dict[str, tuple[int, ...]]) -> int:
    """The largest share any rank of a TP group of `tp` holds, from the shard table the
    loader reads (so inspect and the loader cannot disagree), plus what every rank holds
    whole outside the main weight file (a sentence embedder's Dense modules)."""
    extra = getattr(arch, "replicated_elements", 0)
    return max(table_elements(arch.shard_table(r, tp), shapes) for r in range(tp)) + extra


def valid_tp(arch: Any) -> str:
    """The tp values up to MAX_LISTED_TP the model can be split over, as runs ("1-9")."""
    fits = [t for t in range(1, MAX_LISTED_TP + 1) if not arch.misfit(t)]
    runs: list[list[int]] = []
    for t in fits:
        if runs and t == runs[-1][-1] + 1:
            runs[-1].append(t)
        else:
            runs.append([t])
    text = ", ".join(f"{r[0]}-{r[-1]}" if len(r) > 2 else ", ".join(map(str, r)) for r in runs)
    return text + (" (and more)" if fits and fits[-1] == MAX_LISTED_TP else "")


def recommend(arch: Any, shapes: dict, ranks: int, mem_per_rank: float, itemsize: int) -> str:
    """The smallest tp dividing `ranks` whose weights (with headroom) fit in a rank."""
    for tp in range(1, ranks + 1):
        if ranks % tp or arch.misfit(tp):
            continue
        need = weight_elements(arch, tp, shapes) * itemsize * HEADROOM
        if need <= mem_per_rank:
            return (
                f"recommended layout for {ranks} ranks with {human_bytes(mem_per_rank)} "
                f"each: --tp {tp} ({ranks // tp} DP group(s) of {tp}; weights "
                f"{human_bytes(need / HEADROOM)} per rank, x{HEADROOM} headroom "
                f"{human_bytes(need)})"
            )
    return (
        f"no layout of {ranks} ranks fits {human_bytes(mem_per_rank)} per rank: even the "
        f"largest tp that divides {ranks} needs more; use more ranks or more memory"
    )


def inspect_model(
    folder: Path,
    tp: int | None = None,
    ranks: int | None = None,
    mem_per_rank_gb: float | None = None,
    dtype: str = "float32",
) -> str:
    raw = read_config(folder)
    header = open_model_weights(folder, raw)  # the header only
    arch = family_of(folder, raw).load_module().architecture(folder, raw, header)
    for part in arch.shard_table(0, 1).parts():  # what the loader would refuse, refused
        check_shape(header, part)
    shapes = {name: t.shape for name, t in header.tensors.items()}
    params = sum(int(np.prod(t.shape, dtype=np.int64)) for t in header.tensors.values())
    by_dtype = Counter()
    for t in header.tensors.values():
        by_dtype[t.dtype] += t.nbytes
    itemsize = np.dtype(dtype).itemsize
    extra = getattr(arch, "replicated_elements", 0)
    dense = f" (+ {extra:,} in Dense modules)" if extra else ""
    lines = [
        f"{folder}: {arch.title}",
        f"  parameters   {params:,} in {len(header.tensors)} tensors{dense}; stored "
        + ", ".join(f"{d} {human_bytes(b)}" for d, b in sorted(by_dtype.items()))
        + f"; in memory as {dtype}: {human_bytes(params * itemsize)}",
        f"  valid tp     {valid_tp(arch)}",
        (
            f"  {'tp':>4} {'weights/rank':>14} {'all-reduces':>12} {'all-gathers':>12} "
            f"{'values/' + arch.unit:>12}   (per forward pass)"
        ),
    ]
    for t in [tp] if tp else CANDIDATE_TP:
        if reason := arch.misfit(t):
            lines.append(f"  {t:>4} does not fit: {reason}")
            continue
        c = arch.collectives(t)
        lines.append(
            f"  {t:>4} {human_bytes(weight_elements(arch, t, shapes) * itemsize):>14} "
            f"{c['all_reduce']:>12} {c['all_gather']:>12} {c['values_per_row']:>12}"
        )
    if ranks:
        if not mem_per_rank_gb:
            raise JobError("--ranks needs --mem-per-rank GB")
        lines.append("  " + recommend(arch, shapes, ranks, mem_per_rank_gb * 2**30, itemsize))
    return "\n".join(lines)
