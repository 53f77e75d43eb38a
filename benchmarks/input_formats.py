"""What each input format costs to read, next to plain JSONL, on one core.

    python benchmarks/input_formats.py [--copies 40] [--chunk 2048]

Writes the corpus (data/corpus.jsonl, 1,627 paragraphs) --copies times over, with an id
and a source per row, in every format hpcinfer reads, and times per format, in one run:

    index      opening the reader: the line/record index (one pass over the content;
               for a compressed file, a whole decompression), or Parquet's footer
    cached     opening it again with the index from the run's partial folder (what a
               resumed run, status or a dry run pay), compressed files only
    validate   checking every row (what the plan does, split over the ranks)
    read       read_batch over every chunk in order, with the kept columns (a rank's own
               block), as MB/s of JSONL text and as a ratio to plain JSONL
    backward   reading the last chunk, then the one before it: what a steal can cost
               at worst (a compressed stream starts again from the file's first byte)

Figures only: ratios against JSONL measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("OMP_NUM_THREADS", "1")

from hpcinfer.io.inputs import open_input  # noqa: E402
from hpcinfer.job import job_from_dict  # noqa: E402
from tests.formats import write  # noqa: E402

FORMATS = (
    "jsonl", "jsonl.gz", "jsonl.zst", "jsonl.bz2", "json", "json.gz", "csv", "csv.gz",
    "tsv", "parquet", "txt", "txt.gz",
)  # fmt: skip


def corpus_rows(copies: int) -> list[dict]:
    """The corpus `copies` times; each copy after the first has the words of every
    paragraph shuffled, so that no compressor finds whole copies to refer back to (the
    compression ratios are those of text, not of repetition)."""
    with (ROOT / "data" / "corpus.jsonl").open() as f:
        texts = [json.loads(line)["text"] for line in f]
    rng = random.Random(0)
    rows = []
    for i in range(copies * len(texts)):
        text = texts[i % len(texts)]
        if i >= len(texts):
            words = text.split(" ")
            rng.shuffle(words)
            text = " ".join(words)
        rows.append({"id": i, "text": text, "source": f"doc-{i % len(texts)}/{i}"})
    return rows


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def open_reader(folder: Path, fmt: str, index_folder: Path | None = None):
    keep = [] if fmt.startswith("txt") else ["id", "source"]
    job = job_from_dict(
        {
            "model": {"path": "m"},
            "input": {"path": str(folder / f"data.{fmt}")},
            "output": {"path": str(folder / "out.h5"), "keep": keep},
        },
        folder,
    )
    return open_input(job, index_folder)


def measure(folder: Path, fmt: str, chunk: int, text_mb: float) -> dict[str, float]:
    t_index, reader = timed(lambda: open_reader(folder, fmt))
    figures = {"index": t_index}
    cache = None
    if "." in fmt:
        cache = folder / f"cache-{fmt}"
        cache.mkdir(exist_ok=True)
        reader.save_index(cache)
        t_cached, again = timed(lambda: open_reader(folder, fmt, cache))
        assert not again.index_built
        again.close()
        figures["cached"] = t_cached
    n = reader.n_rows
    figures["validate"], _ = timed(lambda: reader.validate(range(n)))
    reader.close()
    reader = open_reader(folder, fmt, cache)  # a fresh one: nothing decompressed yet
    starts = range(0, n, chunk)
    figures["read"], _ = timed(lambda: [reader.read_batch(s, min(n, s + chunk)) for s in starts])
    figures["read_mb_s"] = text_mb / figures["read"]
    last, before = starts[-1], starts[-2]
    figures["backward"], _ = timed(lambda: reader.read_batch(before, last))
    reader.close()
    figures["size_mb"] = (folder / f"data.{fmt}").stat().st_size / 2**20
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--copies", type=int, default=40)
    parser.add_argument("--chunk", type=int, default=2048)
    args = parser.parse_args()
    rows = corpus_rows(args.copies)
    with tempfile.TemporaryDirectory(prefix="hpcinfer-formats-") as tmp:
        folder = Path(tmp)
        for fmt in FORMATS:
            write(folder, fmt, rows, row_group_size=16384)
        text_mb = (folder / "data.jsonl").stat().st_size / 2**20
        print(
            f"{len(rows):,} rows, {text_mb:.1f} MB as JSONL; chunks of {args.chunk}; "
            f"one core; kept columns id, source (not for text)\n"
        )
        header = (
            f"{'format':<10} {'file MB':>8} {'index s':>8} {'cached s':>9} {'validate s':>11} "
            f"{'read s':>7} {'read MB/s':>10} {'read vs jsonl':>14} {'backward s':>11}"
        )
        print(header)
        base = None
        for fmt in FORMATS:
            f = measure(folder, fmt, args.chunk, text_mb)
            base = base or f["read"]
            cached = f"{f['cached']:.3f}" if "cached" in f else "-"
            print(
                f"{fmt:<10} {f['size_mb']:>8.1f} {f['index']:>8.3f} {cached:>9} "
                f"{f['validate']:>11.3f} {f['read']:>7.3f} {f['read_mb_s']:>10.1f} "
                f"{base / f['read']:>13.2f}x {f['backward']:>11.3f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
