"""`python -m hpcinfer status JOB.toml`: how far a run got, without MPI.

Reads only the job file, the input's shape, the partial run's fingerprint and journals
(it never writes, never takes a lock, and does not re-read chunk files), so it can be run
beside a running job, as often as one likes.
"""

from __future__ import annotations

from pathlib import Path

from hpcinfer.checkpoint.identity import job_identity
from hpcinfer.checkpoint.lock import lock_path_for, read_holder
from hpcinfer.checkpoint.state import (
    ResumeState,
    Start,
    our_partial_dir,
    partial_dir_for,
    resume_state,
)
from hpcinfer.errors import JobError
from hpcinfer.io.inputs import open_input
from hpcinfer.job import Job
from hpcinfer.schedule.chunks import make_chunks
from hpcinfer.settings import chunk_size_of


def job_status(job: Job) -> str:
    reader = open_input(job, our_partial_dir(job.output.path))
    try:
        chunk_size = chunk_size_of(job, reader.n_rows, reader.items)
        n_rows, n_chunks = reader.n_rows, len(make_chunks(reader.n_rows, chunk_size))
        identity = job_identity(job, reader, chunk_size)
    finally:
        reader.close()
    out, folder = job.output.path, partial_dir_for(job.output.path)
    state = resume_state(out, identity, n_chunks, verify_files=False)
    running = ""
    holder = read_holder(lock_path_for(out))
    if holder is not None:
        running = f"; {'stale lock of ' if holder.stale() else 'running: '}{holder.describe()}"
    return describe(job, state, folder, n_chunks, n_rows) + running


def describe(job: Job, state: ResumeState, folder: Path, n_chunks: int, n_rows: int) -> str:
    out = job.output.path
    if state.start is Start.NOT_OURS:
        return f"{folder}: exists and hpcinfer did not make it (a run would refuse it)"
    if state.start is Start.DAMAGED:
        return f"{state.problem} (a run refuses it; --restart discards it)"
    if state.start is Start.UNSTARTED:
        return f"{folder}: a partial run that never started properly (it will be discarded)"
    if state.start is Start.FOREIGN:
        return (
            f"{folder}: a partial run of a different job ({', '.join(state.differs)} "
            "differ); `run --restart` discards it"
        )
    if state.start is Start.RESUME:
        progress = state.progress
        line = (
            f"{job.source}: partial run, {len(progress.done)} / {n_chunks} chunks done, "
            f"{progress.rows:,} / {n_rows:,} rows ({progress.rows / max(1, n_rows):.1%})"
        )
        if progress.rejected:
            line += f"; {len(progress.rejected)} journal record(s) not trusted (redone on resume)"
        return line
    if state.start is Start.COMPLETE:
        return f"{job.source}: complete: {out}"
    line = f"{job.source}: not started ({n_chunks} chunks, {n_rows:,} rows)"
    if out.exists():
        line += f"; {out} exists but is not this job's finished output"
    return line


def main(job: Job) -> int:
    try:
        print(job_status(job))
    except JobError as e:
        print(f"hpcinfer: error: {e}")
        return e.exit_code
    return 0
