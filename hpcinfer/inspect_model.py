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
from hpcinfer.models.gpt2 import Gpt2Config
from hpcinfer.models.mlp import MLPConfig, collectives_per_batch, shard_weight_elements
from hpcinfer.parallel import shard_range

CANDIDATE_TP = (1, 2, 3, 4, 6, 8, 12, 16)
HEADROOM = 1.25  # weights x this must fit: activations, buffers, the interpreter
COLUMN_SPLIT = (
    "attention.self.query",
    "attention.self.key",
    "attention.self.value",
    "intermediate.dense",
)
ROW_SPLIT = ("attention.output.dense", "output.dense")


class MlpSpec:
    unit = "row"

    def __init__(self, folder: Path, raw: dict, header: SafetensorsFile):
        self.config = MLPConfig.from_json(raw, folder / "config.json")
        c = self.config
        self.title = (
            f"mlp {'-'.join(map(str, c.layer_sizes))}, activation {c.activation}, "
            f"output {c.output_activation}"
        )

    def misfit(self, tp: int) -> str | None:
        try:
            self.config.check_tp(tp, Path("config.json"))
        except JobError:
            return "a hidden layer narrower than tp"
        return None

    def weight_elements(self, tp: int) -> int:
        return max(shard_weight_elements(self.config.layer_sizes, tp, r) for r in range(tp))

    def collectives(self, tp: int) -> dict[str, int]:
        return collectives_per_batch(self.config.layer_sizes, tp)


class BertSpec:
    unit = "token"

    def __init__(self, folder: Path, raw: dict, header: SafetensorsFile):
        self.heads, self.layers = int(raw["num_attention_heads"]), int(raw["num_hidden_layers"])
        self.hidden = int(raw["hidden_size"])
        self.title = (
            f"bert, {self.layers} layers, hidden {self.hidden}, {self.heads} heads, "
            f"intermediate {raw['intermediate_size']}"
        )
        self.tensors = {
            name.removeprefix("bert."): info.shape
            for name, info in header.tensors.items()
            if name.removeprefix("bert.").startswith(("embeddings.", "encoder."))
            and not name.endswith("position_ids")
        }

    def misfit(self, tp: int) -> str | None:
        return None if self.heads % tp == 0 else f"tp does not divide the {self.heads} heads"

    def weight_elements(self, tp: int) -> int:
        total = 0
        for name, shape in self.tensors.items():
            size = int(np.prod(shape, dtype=np.int64))
            if any(f".{part}." in name for part in COLUMN_SPLIT):
                total += size // shape[0] * len(shard_range(shape[0], 0, tp))
            elif any(f".{part}.weight" in name for part in ROW_SPLIT):
                total += shape[0] * len(shard_range(shape[1], 0, tp))
            else:
                total += size
        return total

    def collectives(self, tp: int) -> dict[str, int]:
        reduces = 0 if tp == 1 else 2 * self.layers
        return {"all_reduce": reduces, "all_gather": 0, "values_per_row": reduces * self.hidden}


class Gpt2Spec:
    """GPT-2 as read_gpt2_shard splits it: heads, MLP and vocabulary over tp ranks."""

    unit = "token"

    def __init__(self, folder: Path, raw: dict, header: SafetensorsFile):
        self.c = Gpt2Config.from_json(raw, folder / "config.json")
        c = self.c
        self.title = (
            f"gpt2, {c.layers} layers, hidden {c.hidden}, {c.heads} heads, vocabulary "
            f"{c.vocab}, {c.positions} positions"
        )

    def misfit(self, tp: int) -> str | None:
        return None if self.c.heads % tp == 0 else f"tp does not divide the {self.c.heads} heads"

    def weight_elements(self, tp: int) -> int:
        """Rank 0's share: the largest where a split is uneven."""
        c = self.c
        h_r, i_r = len(shard_range(c.hidden, 0, tp)), len(shard_range(c.inner, 0, tp))
        vocab = len(shard_range(c.vocab, 0, tp)) * c.hidden * (1 if c.tied else 2)
        per_layer = (
            3 * (c.hidden + 1) * h_r  # q, k, v columns and biases
            + (h_r + 1) * c.hidden  # attention output rows, bias
            + (c.hidden + 1) * i_r  # MLP in
            + (i_r + 1) * c.hidden  # MLP out
            + 4 * c.hidden  # two layer norms
            + 1  # attention scale
        )
        return vocab + c.positions * c.hidden + 2 * c.hidden + c.layers * per_layer

    def collectives(self, tp: int) -> dict[str, int]:
        if tp == 1:
            return {"all_reduce": 0, "all_gather": 0, "values_per_row": 0}
        reduces = 2 * self.c.layers + 1  # per layer two, and the vocab-parallel embedding
        return {
            "all_reduce": reduces,
            "all_gather": 1,  # log-sum-exp and target logit of each position's vocab slice
            "values_per_row": reduces * self.c.hidden + 2 * tp,
        }


SPECS = {"mlp": MlpSpec, "bert": BertSpec, "gpt2": Gpt2Spec}


def recommend(spec, ranks: int, mem_per_rank: float, itemsize: int) -> str:
    """The smallest tp dividing `ranks` whose weights (with headroom) fit in a rank."""
    for tp in range(1, ranks + 1):
        if ranks % tp or spec.misfit(tp):
            continue
        need = spec.weight_elements(tp) * itemsize * HEADROOM
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
    kind = SPECS.get(raw.get("model_type"))
    if kind is None:
        raise JobError(
            f"{folder / 'config.json'}: inspect knows model_type "
            f"{', '.join(SPECS)}, not {raw.get('model_type')!r}"
        )
    header = SafetensorsFile(folder / "model.safetensors")
    spec = kind(folder, raw, header)
    params = sum(int(np.prod(t.shape, dtype=np.int64)) for t in header.tensors.values())
    by_dtype = Counter()
    for t in header.tensors.values():
        by_dtype[t.dtype] += t.nbytes
    itemsize = np.dtype(dtype).itemsize
    lines = [
        f"{folder}: {spec.title}",
        f"  parameters   {params:,} in {len(header.tensors)} tensors; stored "
        + ", ".join(f"{d} {human_bytes(b)}" for d, b in sorted(by_dtype.items()))
        + f"; in memory as {dtype}: {human_bytes(params * itemsize)}",
        f"  {'tp':>4} {'weights/rank':>14} {'all-reduces':>12} {'all-gathers':>12} "
        f"{'values/' + spec.unit:>12}   (per forward pass)",
    ]
    for t in [tp] if tp else CANDIDATE_TP:
        if reason := spec.misfit(t):
            lines.append(f"  {t:>4} does not fit: {reason}")
            continue
        c = spec.collectives(t)
        lines.append(
            f"  {t:>4} {human_bytes(spec.weight_elements(t) * itemsize):>14} "
            f"{c['all_reduce']:>12} {c['all_gather']:>12} {c['values_per_row']:>12}"
        )
    if ranks:
        if not mem_per_rank_gb:
            raise JobError("--ranks needs --mem-per-rank GB")
        lines.append("  " + recommend(spec, ranks, mem_per_rank_gb * 2**30, itemsize))
    return "\n".join(lines)
