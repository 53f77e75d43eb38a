"""Where a job stands, decided in one place for `run`, `run --dry-run` and `status`.

    FRESH       no partial run, and no finished output of this job
    RESUME      a partial run of this job: its trusted progress
    COMPLETE    the output already exists, finished, for this job
    FOREIGN     a partial run of another job (model, input or settings differ)
    UNSTARTED   hpcinfer's partial folder, from a run that died before its fingerprint
    DAMAGED     hpcinfer's partial folder whose fingerprint cannot be read
    NOT_OURS    a folder at the partial path that hpcinfer did not make

`resume_state` only reads. hpcinfer deletes only what it provably made: a partial folder
carries a marker file from the moment it is created, and removing one deletes only the
files hpcinfer writes there (a folder holding anything else is kept).
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from hpcinfer.checkpoint.assemble import output_fingerprint
from hpcinfer.checkpoint.chunk_files import fsync_dir
from hpcinfer.checkpoint.identity import differences, fingerprint
from hpcinfer.checkpoint.journal import Progress, read_progress

FINGERPRINT = "fingerprint.json"
MARKER = "hpcinfer-partial-run"
OURS = (
    MARKER, FINGERPRINT, "chunk-*.bin", "journal-*.log", ".*.tmp", ".assembling-*",
    "input-index-*.npz",  # a compressed input's record index (io.index_cache)
)  # fmt: skip


class Start(Enum):
    FRESH = "fresh"
    RESUME = "resume"
    COMPLETE = "complete"
    FOREIGN = "foreign"
    UNSTARTED = "unstarted"
    DAMAGED = "damaged"
    NOT_OURS = "not ours"


@dataclass(frozen=True)
class ResumeState:
    start: Start
    progress: Progress | None = None  # RESUME: what is done (FRESH: nothing)
    differs: tuple[str, ...] = ()  # FOREIGN: which facts of the identity differ
    problem: str = ""  # DAMAGED: what is wrong with the fingerprint


def partial_dir_for(output: Path) -> Path:
    return output.with_name(output.name + ".partial")


def our_partial_dir(output: Path) -> Path | None:
    """The output's partial folder if hpcinfer made it (its marker is there), else None:
    only there may a cached input index be read."""
    folder = partial_dir_for(output)
    try:
        return folder if not folder.is_symlink() and (folder / MARKER).is_file() else None
    except OSError:  # a name too long: no partial folder there
        return None


def resume_state(
    output: Path, identity: dict[str, Any], n_chunks: int, verify_files: bool = True
) -> ResumeState:
    """The state of `output`'s partial run (and of `output`) for a job of `identity`.

    `verify_files` re-reads every finished chunk file to check its CRC (the run does;
    status, which must stay cheap beside a running job, does not).
    """
    folder = partial_dir_for(output)
    if not folder.exists() and not folder.is_symlink():
        if output_fingerprint(output) == fingerprint(identity):
            return ResumeState(Start.COMPLETE)
        return ResumeState(Start.FRESH, Progress({}, ()))
    if folder.is_symlink() or not folder.is_dir():
        return ResumeState(Start.NOT_OURS)
    marked = (folder / MARKER).is_file()
    try:
        previous = json.loads((folder / FINGERPRINT).read_text())
    except FileNotFoundError:
        return ResumeState(Start.UNSTARTED if marked else Start.NOT_OURS)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        problem = f"{folder / FINGERPRINT}: unreadable ({e})"
        return ResumeState(Start.DAMAGED if marked else Start.NOT_OURS, problem=problem)
    if not isinstance(previous, dict) or "fingerprint" not in previous:
        problem = f"{folder / FINGERPRINT}: not an hpcinfer fingerprint"
        return ResumeState(Start.DAMAGED if marked else Start.NOT_OURS, problem=problem)
    if previous["fingerprint"] != fingerprint(identity):
        return ResumeState(Start.FOREIGN, differs=differences(previous.get("identity"), identity))
    return ResumeState(Start.RESUME, read_progress(folder, n_chunks, verify_files))


def write_json_atomically(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    with tmp.open("w") as f:
        json.dump(data, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def start_partial_run(folder: Path, identity: dict, n_chunks: int, n_rows: int) -> None:
    """A new partial folder (owner-only: it may hold results of private data), marked as
    hpcinfer's at once, its fingerprint written atomically before any chunk."""
    folder.mkdir(mode=0o700)
    (folder / MARKER).write_text("made by hpcinfer; removed with the run's other files\n")
    write_json_atomically(
        folder / FINGERPRINT,
        {
            "fingerprint": fingerprint(identity),
            "identity": identity,
            "n_chunks": n_chunks,
            "n_rows": n_rows,
        },
    )


def remove_partial_run(folder: Path) -> bool:
    """Delete the files hpcinfer wrote in `folder`, then the folder if that empties it.
    Returns False (and keeps the folder) when it holds anything else."""
    for pattern in OURS:
        for path in folder.glob(pattern):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
    try:
        folder.rmdir()
    except OSError:
        return not folder.exists()
    return True
