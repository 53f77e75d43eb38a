"""A JSON array file (`[{"text": ...}, {"text": ...}]`), plain or compressed: each element
is a row, read exactly as a JSONL line is (the same field, token ids, kept keys, checks,
and long elements streamed through json_scan). The index holds every element's byte
span (record_index.json_array_index), so a rank reads only its own elements.
"""

from __future__ import annotations

from hpcinfer.errors import JobError
from hpcinfer.io.record_index import RecordError, RecordIndex, json_array_index
from hpcinfer.io.text_input import TextRows


class JsonArrayRows(TextRows):
    index_kind = "json-array"
    line_records = False  # an element may span lines, or share one with others

    def __init__(self, path, field="text", keep=(), codec=None, index=None):
        super().__init__(path, "json", field, keep, codec, index)

    def build_index(self) -> RecordIndex:
        try:
            with self.source.scan() as f:
                index = json_array_index(f)
        except RecordError as e:
            raise JobError(f"{self.path}: {e.message}") from None
        self.source.scanned(index.total)
        return index

    def where(self, i: int) -> str:
        return f"{self.path}:{self.index.line(i)} (element {i + 1})"
