"""Which chunks are done, provably: one append-only journal per writing rank and run.

A partial run's folder (`<output>.partial/`) holds

    fingerprint.json          what job this partial run belongs to (written atomically first)
    chunk-<index>.bin         finished chunks (hpcinfer.checkpoint.chunk_files)
    journal-<writer>.log      one line per finished chunk:  {"chunk": i, "rows": r,
                              "crc32": c, "dp": g, "start": t0, "end": t1, "stolen": s}<TAB>crc

A chunk counts as done only when its file is durable (fsync'd, renamed, folder fsync'd)
and *then* its line is appended and fsync'd. On resume a line is trusted only if its own
checksum is right and the chunk file exists with the CRC-32 the line recorded; anything
else (a torn last line, a flipped byte, a missing or damaged chunk file) is reported and
the chunk is computed again. One journal per writer means no two processes ever append
to the same file, on any file system.
"""

from __future__ import annotations

import json
import math
import os
import uuid
import zlib
from dataclasses import dataclass
from pathlib import Path

from hpcinfer.checkpoint.chunk_files import ChunkStore, file_crc32
from hpcinfer.errors import io_error


@dataclass(frozen=True)
class ChunkRun:
    """Who computed a chunk and when (seconds since the run's start), for the run log."""

    dp_rank: int
    start: float
    end: float
    stolen: bool


@dataclass(frozen=True)
class ChunkRecord:
    """A finished chunk as its journal line records it."""

    index: int
    rows: int
    crc32: int  # of the chunk file, as committed
    run: ChunkRun

    def encode(self) -> str:
        body = json.dumps(
            {
                "chunk": self.index,
                "rows": self.rows,
                "crc32": self.crc32,
                "dp": self.run.dp_rank,
                "start": self.run.start,
                "end": self.run.end,
                "stolen": self.run.stolen,
            },
            sort_keys=True,
        )
        return f"{body}\t{zlib.crc32(body.encode()):08x}\n"

    @classmethod
    def decode(cls, line: str) -> ChunkRecord | None:
        """The record on a journal line, or None if the line is torn or damaged."""
        body, tab, check = line.rstrip("\n").rpartition("\t")
        if not tab or f"{zlib.crc32(body.encode()):08x}" != check:
            return None
        try:
            r = json.loads(body)
        except json.JSONDecodeError:
            return None
        if not isinstance(r, dict) or not all(
            type(r.get(k)) is int for k in ("chunk", "rows", "crc32", "dp")
        ):
            return None
        times = (r.get("start"), r.get("end"))
        if not all(type(t) in (int, float) and math.isfinite(t) for t in times):
            return None
        run = ChunkRun(r["dp"], float(times[0]), float(times[1]), r.get("stolen") is True)
        return cls(r["chunk"], r["rows"], r["crc32"], run)


class JournalWriter:
    """This rank's journal for this run: append, flush, fsync, one line per chunk."""

    def __init__(self, folder: Path, rank: int):
        self.path = folder / f"journal-r{rank:05d}-{uuid.uuid4().hex[:8]}.log"
        self._file = self.path.open("a")

    def record(self, record: ChunkRecord) -> None:
        try:
            self._file.write(record.encode())
            self._file.flush()
            os.fsync(self._file.fileno())
        except OSError as e:
            raise io_error(self.path, "append to the journal", e) from None

    def close(self) -> None:
        self._file.close()


@dataclass(frozen=True)
class Progress:
    records: dict[int, ChunkRecord]  # chunk index -> its trusted journal record
    rejected: tuple[str, ...]  # why records were not trusted, one line each

    @property
    def done(self) -> frozenset[int]:
        return frozenset(self.records)

    @property
    def rows(self) -> int:
        return sum(r.rows for r in self.records.values())


def read_progress(folder: Path, n_chunks: int, verify_files: bool = True) -> Progress:
    """Chunks proven done by the journals in `folder` (and, if asked, by their files)."""
    store = ChunkStore(folder)
    done: dict[int, ChunkRecord] = {}
    rejected = []
    for journal in sorted(folder.glob("journal-*.log")):
        with journal.open("r", errors="replace") as f:
            for n, line in enumerate(f, start=1):
                record = ChunkRecord.decode(line)
                where = f"{journal.name}:{n}"
                if record is None:
                    rejected.append(f"{where}: damaged record")
                    continue
                if not 0 <= record.index < n_chunks or record.index in done:
                    continue
                path = store.path(record.index)
                if not path.exists():
                    rejected.append(f"{where}: chunk {record.index}: file missing")
                elif verify_files and file_crc32(path) != record.crc32:
                    rejected.append(
                        f"{where}: chunk {record.index}: file does not match its record"
                    )
                else:
                    done[record.index] = record
    return Progress(done, tuple(rejected))
