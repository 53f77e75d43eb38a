"""Generate a large random MLP and input for tensor-parallel runs (too big to commit).

    python data/make_big_mlp.py                       # 4096-12288-4096 F32 (~403 MB), 4096 rows
    python data/make_big_mlp.py --sizes 4096,16384,4096 --rows 8192

Writes data/models/big-mlp/ (config.json, model.safetensors) and data/big-mlp-input.h5
(dataset "x"), both ignored by git. Random weights, scaled like a trained layer
(1/sqrt(fan_in)) so activations stay in range; jobs/big-mlp.toml runs them.
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import h5py
import numpy as np
from safetensors.numpy import save_file

HERE = Path(__file__).resolve().parent


def make_mlp(folder: Path, sizes: list[int], seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for i, (n_in, n_out) in enumerate(itertools.pairwise(sizes)):
        w = rng.standard_normal((n_out, n_in), dtype=np.float32)
        w *= np.float32(1 / np.sqrt(n_in))
        tensors[f"layers.{i}.weight"] = w
        tensors[f"layers.{i}.bias"] = rng.standard_normal(n_out, dtype=np.float32) * 0.1
    save_file(tensors, str(folder / "model.safetensors"))
    del tensors
    config = {
        "model_type": "mlp",
        "layer_sizes": sizes,
        "activation": "relu",
        "output_activation": "identity",
        "source": "random (data/make_big_mlp.py)",
    }
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")


def make_input(path: Path, rows: int, features: int, seed: int = 1) -> None:
    rng = np.random.default_rng(seed)
    with h5py.File(path, "w") as f:
        ds = f.create_dataset("x", shape=(rows, features), dtype=np.float32)
        for start in range(0, rows, 4096):
            stop = min(start + 4096, rows)
            ds[start:stop] = rng.standard_normal((stop - start, features), dtype=np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="4096,12288,4096", help="layer sizes, comma-separated")
    parser.add_argument("--rows", type=int, default=4096)
    parser.add_argument("--model", type=Path, default=HERE / "models" / "big-mlp")
    parser.add_argument("--input", type=Path, default=HERE / "big-mlp-input.h5")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    make_mlp(args.model, sizes)
    make_input(args.input, args.rows, sizes[0])
    mb = (args.model / "model.safetensors").stat().st_size / 2**20
    print(
        f"wrote {args.model} ({'-'.join(map(str, sizes))}, {mb:.0f} MiB) and {args.input} "
        f"({args.rows} rows)"
    )


if __name__ == "__main__":
    main()
