"""Content hashes that identify a model's weights in the output's attributes."""

from __future__ import annotations

import hashlib
from pathlib import Path


def file_sha256(path: Path, block: int = 2**20) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        while data := f.read(block):
            h.update(data)
    return h.hexdigest()
