"""What checking the input before compute costs, next to what computing it costs.

    python benchmarks/input_validation.py [--lines 1000000] [--huge-mb 200]

Writes a JSONL of --lines short rows (the corpus's sentences, ~60-120 bytes each) and
times, on one core: the line index (TextRows()), validate() over every row (what plan
does, split over the ranks), and all-MiniLM-L6-v2 (numpy, batch 32) embedding a sample
of the same rows, extrapolated to all of them. Then the constant-memory scanner on one
--huge-mb line: a text value (memchr path), a \\u-escaped text (regex path) and a list of
token ids (regex path), in MB/s. Figures only; ratios against compute in the same run.
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
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("RAYON_NUM_THREADS", "1")

from hpcinfer.io.json_scan import scan_line  # noqa: E402
from hpcinfer.io.text_input import TextRows  # noqa: E402


def sentences() -> list[str]:
    out = []
    with (ROOT / "data" / "corpus.jsonl").open() as f:
        for line in f:
            out += [
                s.strip() + "." for s in json.loads(line)["text"].split(". ") if 40 < len(s) < 110
            ]
    return out


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def compute_rate(texts: list[str]) -> float:
    """Rows/s of MiniLM on one core, numpy, batch 32, tokenizing included."""
    from hpcinfer.backends import get_backend
    from hpcinfer.models import load_model

    model = load_model(
        ROOT / "data" / "models" / "all-MiniLM-L6-v2", get_backend("numpy", "float32"), "float32"
    )
    model.predict_items(texts[:64], 32)  # warm up
    seconds = timed(lambda: model.predict_items(texts, 32))
    return len(texts) / seconds


def scanner_rate(tmp: Path, name: str, value: bytes, mb: int) -> float:
    path = tmp / f"{name}.jsonl"
    with path.open("wb") as f:
        f.write(b'{"x": [' if name == "ids" else b'{"text": "')
        for _ in range(mb):
            f.write(value)
        f.write(b"1]}" if name == "ids" else b'"}')
    size = path.stat().st_size
    field = "x" if name == "ids" else "text"
    with path.open("rb") as f:
        seconds = timed(lambda: scan_line(f, 0, size, field, 4096, 513))
    path.unlink()
    return size / 2**20 / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--huge-mb", type=int, default=200)
    parser.add_argument("--sample", type=int, default=512, help="rows embedded to time compute")
    args = parser.parse_args()
    rng = random.Random(0)
    pool = sentences()
    with tempfile.TemporaryDirectory(prefix="hpcinfer-bench-") as tmp_name:
        tmp = Path(tmp_name)
        path = tmp / "rows.jsonl"
        with path.open("w") as f:
            for i in range(args.lines):
                f.write(json.dumps({"id": i, "text": rng.choice(pool)}) + "\n")
        mb = path.stat().st_size / 2**20
        t_index = timed(lambda: TextRows(path, "jsonl"))
        rows = TextRows(path, "jsonl")
        t_validate = timed(lambda: rows.validate(range(rows.n_rows)))
        sample = rows.read(0, args.sample)
        rate = compute_rate(sample)
        t_compute = args.lines / rate
        lines = [
            f"{args.lines:,} JSONL rows ({mb:,.0f} MB), one core:",
            f"  line index      {t_index:8.2f} s  ({mb / t_index:,.0f} MB/s)",
            (
                f"  validate()      {t_validate:8.2f} s  ({args.lines / t_validate:,.0f} rows/s, "
                f"{mb / t_validate:,.0f} MB/s)"
            ),
            f"  MiniLM compute  {t_compute:8.0f} s  ({rate:,.0f} rows/s, from {args.sample} rows)",
            f"  validate / compute = {t_validate / t_compute:.2%} (each rank validates 1/ranks)",
        ]
        print("\n".join(lines), flush=True)
        units = {
            "text": b"word ",
            "escaped": json.dumps("日本語のテキスト ")[1:-1].encode(),
            "ids": b"123456, ",
        }
        for name, unit in units.items():
            value = unit * (2**20 // len(unit))
            rate = scanner_rate(tmp, name, value, args.huge_mb)
            print(f"  scanner, a {args.huge_mb} MB line of {name:8s} {rate:8,.0f} MB/s", flush=True)


if __name__ == "__main__":
    main()
