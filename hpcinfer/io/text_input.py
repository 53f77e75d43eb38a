"""Text input: JSONL (one JSON object per line; in `field` a text, or a list of token
ids) or plain text (one item per line). Each rank reads only the lines of its chunks,
found through a line index.

The index (the byte offset of every line) is built once per rank by scanning the file
for newlines with numpy, a block at a time, 8 bytes per line of memory; a corpus of
10^8 lines needs an index of 800 MB per rank, the point where a shared, precomputed
index would pay off.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from hpcinfer.errors import JobError
from hpcinfer.io.file_checks import clip

INDEX_BLOCK_BYTES = 64 * 2**20


def line_ends(path: Path) -> np.ndarray:
    """Byte offset one past every line's end (a last line without a newline counts),
    found reading the file a block at a time: memory is the index, not the file."""
    parts, offset = [], 0
    with path.open("rb") as f:
        while block := f.read(INDEX_BLOCK_BYTES):
            data = np.frombuffer(block, dtype=np.uint8)
            parts.append(np.flatnonzero(data == ord("\n")) + 1 + offset)
            offset += len(block)
    ends = np.concatenate(parts) if parts else np.zeros(0, np.int64)
    if offset and (not len(ends) or ends[-1] != offset):
        ends = np.append(ends, offset)
    return ends.astype(np.int64)


def is_token_ids(value: object) -> bool:
    """A list of integers (whether each is in the vocabulary is the model's to check)."""
    return isinstance(value, list) and all(
        isinstance(v, int) and not isinstance(v, bool) for v in value
    )


def _brief(value: object) -> str:
    text = "nothing (no such field)" if value is None else json.dumps(value)
    return clip(text, 60)


class TextRows:
    items = True  # rows are texts or token-id lists, not arrays of numbers
    row_shape: tuple[int, ...] = ()
    dtype = np.dtype(object)

    def __init__(self, path: Path, kind: str, field: str = "text"):
        self.path, self.kind, self.dataset = Path(path), kind, field
        if not self.path.is_file():
            raise JobError(f"{self.path}: input file not found (input.path)")
        ends = line_ends(self.path)
        self._starts = np.concatenate([[0], ends[:-1]]).astype(np.int64)
        self._ends = ends
        self.n_rows = len(ends)
        if self.n_rows and kind == "jsonl":
            self.read(0, 1)  # the first line tells a wrong field early

    def where(self, i: int) -> str:
        """Row i as a user finds it: file and line number."""
        return f"{self.path}:{i + 1}"

    def sources(self) -> list[Path]:
        return [self.path.resolve()]

    def _parse(self, i: int, raw: bytes) -> str | list[int]:
        text = raw.decode("utf-8", errors="replace").rstrip("\r\n")
        if self.kind == "text":
            return text
        try:
            record = json.loads(text)
        except json.JSONDecodeError as e:
            raise JobError(f"{self.where(i)}: not valid JSON ({e.msg})") from None
        value = record.get(self.dataset) if isinstance(record, dict) else None
        if isinstance(value, str) or is_token_ids(value):
            return value
        raise JobError(
            f"{self.where(i)}: field {self.dataset!r} (input.field) must be a text or a list "
            f"of token ids (integers); got {_brief(value)}"
        )

    def read(self, start: int, stop: int) -> list[str | list[int]]:
        if start >= stop:
            return []
        with self.path.open("rb") as f:
            f.seek(self._starts[start])
            blob = f.read(self._ends[stop - 1] - self._starts[start])
        base = self._starts[start]
        return [
            self._parse(i, blob[self._starts[i] - base : self._ends[i] - base])
            for i in range(start, stop)
        ]

    def close(self) -> None:
        pass
