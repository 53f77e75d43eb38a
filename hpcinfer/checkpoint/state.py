"""Where a job stands, decided in one place for `run`, `run --dry-run` and `status`.

    FRESH       no partial run, and no finished output of this job
    RESUME      a partial run of this job: its trusted progress
    COMPLETE    the output already exists, finished, for this job
    FOREIGN     a partial run of another job (model, input or options differ)
    UNREADABLE  a partial folder without a readable fingerprint

`resume_state` only reads; what to do about each state is the caller's.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from hpcinfer.checkpoint.assemble import output_fingerprint
from hpcinfer.checkpoint.chunk_files import fsync_dir
from hpcinfer.checkpoint.identity import fingerprint
from hpcinfer.checkpoint.journal import Progress, read_progress

FINGERPRINT = "fingerprint.json"


class Start(Enum):
    FRESH = "fresh"
    RESUME = "resume"
    COMPLETE = "complete"
    FOREIGN = "foreign"
    UNREADABLE = "unreadable"


@dataclass(frozen=True)
class ResumeState:
    start: Start
    progress: Progress | None = None  # RESUME: what is done
    differs: tuple[str, ...] = ()  # FOREIGN: which facts of the identity differ


def partial_dir_for(output: Path) -> Path:
    return output.with_name(output.name + ".partial")


def resume_state(
    output: Path, identity: dict[str, Any], n_chunks: int, verify_files: bool = True
) -> ResumeState:
    """The state of `output`'s partial run (and of `output`) for a job of `identity`.

    `verify_files` re-reads every finished chunk file to check its CRC (the run does;
    status, which must stay cheap beside a running job, does not).
    """
    folder = partial_dir_for(output)
    if not folder.exists():
        if output_fingerprint(output) == fingerprint(identity):
            return ResumeState(Start.COMPLETE)
        return ResumeState(Start.FRESH)
    try:
        previous = json.loads((folder / FINGERPRINT).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return ResumeState(Start.UNREADABLE)
    if not isinstance(previous, dict):
        return ResumeState(Start.UNREADABLE)
    if previous.get("fingerprint") != fingerprint(identity):
        recorded = previous.get("identity")
        recorded = recorded if isinstance(recorded, dict) else {}
        differs = tuple(sorted(k for k in identity if recorded.get(k) != identity[k]))
        return ResumeState(Start.FOREIGN, differs=differs)
    return ResumeState(Start.RESUME, read_progress(folder, n_chunks, verify_files))


def write_json_atomically(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("w") as f:
        json.dump(data, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def start_partial_run(folder: Path, identity: dict, n_chunks: int, n_rows: int) -> None:
    """A new partial folder, its fingerprint written (atomically) before any chunk."""
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
