"""Durable progress: which chunks are done, provably, so a rerun does only the rest.

A run's partial folder (`<output>.partial/`) holds

    fingerprint.json          what job this partial run belongs to (written atomically first)
    chunk-<index>.bin         finished chunks (hpcinfer.io.chunk_store: whole or absent)
    journal-<writer>.log      one append-only file per writing rank and run, one line per
                              finished chunk:  {"chunk": i, "rows": r, "crc32": c}<TAB>crc

A chunk counts as done only when its file is durable (fsync'd, renamed, folder fsync'd)
and *then* its line is appended and fsync'd. On resume a line is trusted only if its own
checksum is right and the chunk file exists with the CRC-32 the line recorded; anything
else (a torn last line, a flipped byte, a missing or damaged chunk file) is reported and
the chunk is simply computed again. One journal per writer means no two processes ever
append to the same file, on any file system.

The fingerprint decides whether a partial run may be resumed: the model's weights and
config, the input (path, dataset, shape, dtype, size, modification time), chunk_size
(it defines the chunks) and dtype. Backend, batch size, threads, balance and the DP x TP
layout are deliberately left out: a run may resume on another layout; results then agree
within float tolerance (bit-identical when those stay the same).
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hpcinfer.errors import JobError
from hpcinfer.io.chunk_store import ChunkStore, file_crc32, fsync_dir
from hpcinfer.io.digest import file_sha256
from hpcinfer.job import Job

FINGERPRINT = "fingerprint.json"


def partial_dir_for(output: Path) -> Path:
    return output.with_name(output.name + ".partial")


def job_identity(job: Job, reader: Any) -> dict:
    """The facts that decide the output's content (see hpcinfer.journal): a partial run
    is resumed only by a job with the same identity."""
    stat = reader.path.stat()
    return {
        "model_sha256": file_sha256(job.model.path / "model.safetensors"),
        "model_config_sha256": file_sha256(job.model.path / "config.json"),
        "input_path": str(reader.path),
        "input_dataset": reader.dataset,
        "input_shape": [reader.n_rows, *reader.row_shape],
        "input_dtype": str(reader.dtype),
        "input_bytes": stat.st_size,
        "input_mtime_ns": stat.st_mtime_ns,
        "chunk_size": job.run.chunk_size,
        "dtype": job.run.dtype,
    }


def fingerprint(identity: dict) -> str:
    """A short hash of the facts that decide the output's content."""
    text = json.dumps(identity, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def write_json_atomically(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("w") as f:
        json.dump(data, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def encode_record(chunk: int, rows: int, crc: int, **facts) -> str:
    """One journal line; `facts` (timing, who computed it) ride along for the run report."""
    body = json.dumps({"chunk": chunk, "rows": rows, "crc32": crc, **facts}, sort_keys=True)
    return f"{body}\t{zlib.crc32(body.encode()):08x}\n"


def decode_record(line: str) -> dict | None:
    """The record on a journal line, or None if the line is torn or damaged."""
    body, tab, check = line.rstrip("\n").rpartition("\t")
    if not tab or f"{zlib.crc32(body.encode()):08x}" != check:
        return None
    try:
        record = json.loads(body)
    except json.JSONDecodeError:
        return None
    if not isinstance(record, dict) or not all(
        isinstance(record.get(k), int) for k in ("chunk", "rows", "crc32")
    ):
        return None
    return record


class JournalWriter:
    """This rank's journal for this run: append, flush, fsync, one line per chunk."""

    def __init__(self, folder: Path, rank: int, durable: bool = True):
        self.path = folder / f"journal-r{rank:05d}-{uuid.uuid4().hex[:8]}.log"
        self.durable = durable
        self._file = self.path.open("a")

    def record(self, chunk: int, rows: int, crc: int, **facts) -> None:
        self._file.write(encode_record(chunk, rows, crc, **facts))
        self._file.flush()
        if self.durable:
            os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()


@dataclass(frozen=True)
class Progress:
    records: dict[int, dict]  # chunk index -> its trusted journal record
    rejected: tuple[str, ...]  # why records were not trusted, one line each

    @property
    def done(self) -> frozenset[int]:
        return frozenset(self.records)

    @property
    def rows(self) -> int:
        return sum(r["rows"] for r in self.records.values())


def read_progress(folder: Path, n_chunks: int, verify_files: bool = True) -> Progress:
    """Chunks proven done by the journals in `folder` (and, if asked, by their files)."""
    store = ChunkStore(folder)
    done: dict[int, dict] = {}
    rejected = []
    for journal in sorted(folder.glob("journal-*.log")):
        with journal.open("r", errors="replace") as f:
            for n, line in enumerate(f, start=1):
                record = decode_record(line)
                where = f"{journal.name}:{n}"
                if record is None:
                    rejected.append(f"{where}: damaged record")
                    continue
                index = record["chunk"]
                if not 0 <= index < n_chunks or index in done:
                    continue
                path = store.path(index)
                if not path.exists():
                    rejected.append(f"{where}: chunk {index}: file missing")
                elif verify_files and file_crc32(path) != record["crc32"]:
                    rejected.append(f"{where}: chunk {index}: file does not match its record")
                else:
                    done[index] = record
    return Progress(done, tuple(rejected))


def check_partial_run(folder: Path, identity: dict, source: Path) -> str:
    """'fresh', 'resume' or 'stale' for the partial folder; JobError if it is another job's.

    'stale' is a folder without a readable fingerprint: a run that died before it wrote
    one, so it holds nothing that could be trusted.
    """
    if not folder.exists():
        return "fresh"
    try:
        previous = json.loads((folder / FINGERPRINT).read_text())
    except (OSError, json.JSONDecodeError):
        return "stale"
    if previous.get("fingerprint") == fingerprint(identity):
        return "resume"
    differs = sorted(
        key for key in identity if previous.get("identity", {}).get(key) != identity[key]
    )
    raise JobError(
        f"{folder}: a partial run of a different job is here ({', '.join(differs)} differ); "
        f"rerun with --restart to discard it (job: {source})"
    )


def start_partial_run(folder: Path, identity: dict, n_chunks: int, n_rows: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    write_json_atomically(
        folder / FINGERPRINT,
        {
            "fingerprint": fingerprint(identity),
            "identity": identity,
            "n_chunks": n_chunks,
            "n_rows": n_rows,
        },
    )
