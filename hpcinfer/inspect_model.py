"""`python -m hpcinfer inspect MODEL_FOLDER`: what a model is and which layouts fit it.

Reads config.json and the safetensors *header* only (never the weights), so it is
instant on a model of any size and needs no MPI.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from hpcinfer.dry_run import human_bytes
from hpcinfer.errors import JobError
from hpcinfer.io.safetensors_file import SafetensorsFile
from hpcinfer.models import read_config
from hpcinfer.models.mlp import MLPConfig, collectives_per_batch, shard_weight_elements

CANDIDATE_TP = (1, 2, 3, 4, 6, 8, 12, 16)
HEADROOM = 1.25  # weights x this must fit: activations, buffers, the interpreter


def fits(config: MLPConfig, tp: int) -> bool:
    try:
        config.check_tp(tp, Path("config.json"))
    except JobError:
        return False
    return True


def weight_bytes_per_rank(config: MLPConfig, tp: int, itemsize: int) -> int:
    return max(shard_weight_elements(config.layer_sizes, tp, r) for r in range(tp)) * itemsize


def recommend(config: MLPConfig, ranks: int, mem_per_rank: float, itemsize: int) -> str:
    """The smallest tp dividing `ranks` whose weights (with headroom) fit in a rank."""
    for tp in range(1, ranks + 1):
        if ranks % tp or not fits(config, tp):
            continue
        need = weight_bytes_per_rank(config, tp, itemsize) * HEADROOM
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
    if raw.get("model_type") != "mlp":
        raise JobError(
            f"{folder / 'config.json'}: inspect knows model_type mlp, not {raw.get('model_type')!r}"
        )
    config = MLPConfig.from_json(raw, folder / "config.json")
    header = SafetensorsFile(folder / "model.safetensors")
    params = sum(int(np.prod(t.shape, dtype=np.int64)) for t in header.tensors.values())
    by_dtype = Counter()
    for t in header.tensors.values():
        by_dtype[t.dtype] += t.nbytes
    itemsize = np.dtype(dtype).itemsize
    lines = [
        f"{folder}: mlp {'-'.join(map(str, config.layer_sizes))}, activation "
        f"{config.activation}, output {config.output_activation}",
        f"  parameters   {params:,} in {len(header.tensors)} tensors; stored "
        + ", ".join(f"{d} {human_bytes(b)}" for d, b in sorted(by_dtype.items()))
        + f"; in memory as {dtype}: {human_bytes(params * itemsize)}",
        f"  {'tp':>4} {'weights/rank':>14} {'all-reduces':>12} {'all-gathers':>12} "
        f"{'values/row':>11}   (per forward pass)",
    ]
    for t in [tp] if tp else CANDIDATE_TP:
        if not fits(config, t):
            lines.append(f"  {t:>4} does not fit: a hidden layer narrower than tp")
            continue
        c = collectives_per_batch(config.layer_sizes, t)
        lines.append(
            f"  {t:>4} {human_bytes(weight_bytes_per_rank(config, t, itemsize)):>14} "
            f"{c['all_reduce']:>12} {c['all_gather']:>12} {c['values_per_row']:>11}"
        )
    if ranks:
        if not mem_per_rank_gb:
            raise JobError("--ranks needs --mem-per-rank GB")
        lines.append("  " + recommend(config, ranks, mem_per_rank_gb * 2**30, itemsize))
    return "\n".join(lines)
