"""Where a run starts, decided by rank 0: take the output's lock, then fresh, resume or
already complete; refuse whatever would mix, lose or overwrite someone's data.

    partial run of this job       resume it (its trusted chunks are kept)
    partial run of another job    refused, naming what differs (--restart discards it)
    partial folder not ours       refused: hpcinfer never deletes what it did not make
    damaged fingerprint           refused, naming the file (--restart discards the run)
    output done for this job      nothing to do
    output of something else      refused unless --overwrite
"""

from __future__ import annotations

from dataclasses import dataclass

from hpcinfer.checkpoint.assemble import output_fingerprint
from hpcinfer.checkpoint.identity import fingerprint, job_identity
from hpcinfer.checkpoint.journal import Progress
from hpcinfer.checkpoint.lock import RunLock
from hpcinfer.checkpoint.state import (
    ResumeState,
    Start,
    remove_partial_run,
    resume_state,
    start_partial_run,
)
from hpcinfer.errors import JobError
from hpcinfer.plan import Plan


@dataclass(frozen=True)
class StartOptions:
    restart: bool = False  # discard a partial run of this job (never another's files)
    overwrite: bool = False  # replace an existing output that is not this job's result


def decide_start(plan: Plan, options: StartOptions) -> tuple[ResumeState, dict, RunLock]:
    """Lock the output, then fresh (a new partial folder), resume or already complete.

    JobError for every refusal; the lock is released again when one is raised.
    """
    lock = RunLock(plan.job.output.path, plan.job.source).acquire()
    try:
        identity = job_identity(plan.job, plan.reader, plan.settings.chunk_size)
        state = _state(plan, identity, options)
    except BaseException:
        lock.release()
        raise
    return state, identity, lock


def _state(plan: Plan, identity: dict, options: StartOptions) -> ResumeState:
    folder, out, n = plan.partial_dir, plan.job.output.path, len(plan.chunks)
    state = resume_state(out, identity, n)
    if state.start is Start.NOT_OURS:
        raise JobError(
            f"{folder}: exists, and hpcinfer did not make it (no marker, no fingerprint); "
            "it will not be touched: move it away, or choose another output.path"
        )
    if options.restart and state.start in (Start.RESUME, Start.FOREIGN, Start.DAMAGED):
        if not remove_partial_run(folder):
            raise JobError(f"{folder}: holds files hpcinfer did not make; move them away first")
        state = resume_state(out, identity, n)
    if state.start is Start.DAMAGED:
        raise JobError(
            f"{state.problem}; the partial run cannot be trusted: rerun with --restart to "
            f"discard it (its finished chunks are lost), or restore the file"
        )
    if state.start is Start.UNSTARTED:  # died before its fingerprint: nothing to trust
        remove_partial_run(folder)
        state = resume_state(out, identity, n)
    if state.start is Start.FOREIGN:
        raise JobError(
            f"{folder}: a partial run of a different job is here ({', '.join(state.differs)} "
            f"differ); rerun with --restart to discard it (job: {plan.job.source})"
        )
    if state.start is Start.COMPLETE and options.restart:
        state = ResumeState(Start.FRESH, Progress({}, ()))
    if state.start is Start.COMPLETE:
        print(
            f"hpcinfer: {out} is already complete for this job; nothing to do "
            "(--restart computes it again)",
            flush=True,
        )
        return state
    check_existing_output(plan, identity, options.overwrite)
    if state.start is Start.FRESH:
        start_partial_run(folder, identity, n, plan.n_rows)
    else:
        announce_resume(state, plan)
    plan.reader.save_index(folder)  # a compressed input's index, for the next run to load
    return state


def check_existing_output(plan: Plan, identity: dict, overwrite: bool) -> None:
    out = plan.job.output.path
    if not (out.exists() or out.is_symlink()) or overwrite:
        return
    if output_fingerprint(out) == fingerprint(identity):
        return
    ours = output_fingerprint(out)
    what = "an hpcinfer output of another job" if ours else "not an hpcinfer output"
    raise JobError(
        f"{out}: exists and is {what}; hpcinfer will not replace it: pass --overwrite, "
        "or choose another output.path"
    )


def announce_resume(state: ResumeState, plan: Plan) -> None:
    progress = state.progress
    print(
        f"hpcinfer: resuming: {len(progress.done)} of {len(plan.chunks)} chunks already "
        f"done ({progress.rows:,} of {plan.n_rows:,} rows)",
        flush=True,
    )
    for reason in progress.rejected[:5]:
        print(f"hpcinfer: not trusted, will be computed again: {reason}", flush=True)
    if len(progress.rejected) > 5:
        print(f"hpcinfer: ... and {len(progress.rejected) - 5} more records not trusted")
