"""The SPMD run: every rank runs `run_job`; MPI is the only coordination.

plan      the job validated on every rank (grid, model shard, input), agreed   plan.py
start     rank 0 decides fresh / resume / complete / refused; all ranks learn it
compute   claim chunks (own block first, then steal); per chunk read rows, predict
          in batches (the TP group together), the group's leader streams outputs
          into the chunk file; a writer thread makes it durable, then journals it
gather    every rank's chunk log and metrics, to rank 0
finish    rank 0 checks every chunk is there exactly once, assembles the output
          file and reports; or, stopped by a signal, says how to resume
"""

from __future__ import annotations

import resource
import shutil
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hpcinfer.checkpoint.assemble import assemble_output
from hpcinfer.checkpoint.chunk_files import ChunkFile, ChunkStore
from hpcinfer.checkpoint.identity import job_identity
from hpcinfer.checkpoint.journal import ChunkRecord, ChunkRun, JournalWriter, Progress
from hpcinfer.checkpoint.state import ResumeState, Start, resume_state, start_partial_run
from hpcinfer.checkpoint.writer import ChunkWriter
from hpcinfer.errors import BadRow, JobError, RunError
from hpcinfer.io.inputs import Reader
from hpcinfer.job import Job
from hpcinfer.models import InputKind, Model
from hpcinfer.parallel.runtime import Runtime, agree
from hpcinfer.plan import Plan, validated_plan
from hpcinfer.schedule import stop
from hpcinfer.schedule.balance import GroupClaims
from hpcinfer.schedule.chunks import Chunk
from hpcinfer.tools.dry_run import print_dry_run
from hpcinfer.tools.progress import LiveProgress
from hpcinfer.tools.run_attrs import output_attrs

# One record per chunk, written to the output's run/chunks dataset. Times are seconds
# since the start of the run that computed the chunk; `resumed` marks an earlier run's.
CHUNK_LOG_DTYPE = np.dtype(
    [
        ("index", "<i8"),
        ("dp_rank", "<i4"),
        ("start", "<f8"),
        ("end", "<f8"),
        ("stolen", "?"),
        ("resumed", "?"),
    ]
)


@dataclass(frozen=True)
class RunOptions:
    """How to run, as opposed to what (the job): never changes the output."""

    restart: bool = False  # discard a partial run of this job
    dry_run: bool = False  # validate and print the plan, compute nothing
    quiet: bool = False  # no live progress
    progress_interval: float = 30.0  # seconds between progress lines off a terminal


class Hooks:
    """Seams where tests inject faults (hpcinfer.testing.faults); no-ops in a real run."""

    def before_chunk(self, rank: int, chunks_done: int, chunk: Chunk, n_rows: int) -> None:
        """Before each chunk a rank computes (`chunks_done` by it so far)."""

    def chunk_file_started(self) -> None:
        """After the first rows of a chunk file are written, before it is committed."""


NO_HOOKS = Hooks()


@dataclass(frozen=True)
class RankWork:
    """What one rank did in the compute step, for rank 0's log and report."""

    log: list[tuple[int, ChunkRun]]  # chunks this rank's group finished (leaders only)
    metrics: dict[str, Any]
    epoch: float  # the loop's start (Unix time): chunk times are seconds after it


def run_job(
    job: Job, rt: Runtime, options: RunOptions = RunOptions(), hooks: Hooks = NO_HOOKS
) -> int:
    """Run (or resume) `job` on every rank of `rt`.

    Returns 0 once the complete output file exists, or stop.EXIT_STOPPED when a stop
    signal ended the run early with its progress durable.
    """
    t0 = time.perf_counter()
    plan = validated_plan(job, rt)
    if options.dry_run:
        print_dry_run(plan, rt)
        return 0
    state, identity = agreed_start(plan, rt, options.restart)
    if state.start is Start.COMPLETE:
        return 0
    assert state.progress is not None  # FRESH and RESUME carry progress (maybe empty)
    work = compute_pending(plan, rt, state.progress, options, hooks, t0)
    everyone = rt.comm.gather(work, root=0)
    complete = True
    if rt.rank == 0:
        complete = finish(plan, rt, state.progress, everyone, identity, t0)
    return 0 if rt.comm.bcast(complete, root=0) else stop.EXIT_STOPPED


# -- start ---------------------------------------------------------------------------


def agreed_start(plan: Plan, rt: Runtime, restart: bool) -> tuple[ResumeState, dict]:
    """Rank 0 decides where the job starts; every rank learns it (collective).

    A partial run of another job is a JobError (exit 2, all ranks) unless `restart`.
    """
    error, decided = None, None
    if rt.rank == 0:
        try:
            decided = decide_start(plan, restart)
        except JobError as e:
            error = e
    agree(rt, error)
    return rt.comm.bcast(decided, root=0)


def decide_start(plan: Plan, restart: bool) -> tuple[ResumeState, dict]:
    """Fresh (a new partial folder), resume (its trusted progress) or already complete."""
    identity = job_identity(plan.job, plan.reader)
    folder, out = plan.partial_dir, plan.job.output.path
    if restart:
        shutil.rmtree(folder, ignore_errors=True)
    state = resume_state(out, identity, len(plan.chunks))
    if state.start is Start.UNREADABLE:  # died before its fingerprint: nothing to trust
        shutil.rmtree(folder)
        state = resume_state(out, identity, len(plan.chunks))
    if state.start is Start.COMPLETE and restart:
        state = ResumeState(Start.FRESH)
    if state.start is Start.FOREIGN:
        raise JobError(
            f"{folder}: a partial run of a different job is here ({', '.join(state.differs)} "
            f"differ); rerun with --restart to discard it (job: {plan.job.source})"
        )
    if state.start is Start.COMPLETE:
        print(
            f"hpcinfer: {out} is already complete for this job; nothing to do "
            "(--restart computes it again)",
            flush=True,
        )
    elif state.start is Start.FRESH:
        start_partial_run(folder, identity, len(plan.chunks), plan.n_rows)
        state = ResumeState(Start.FRESH, Progress({}, ()))
    else:
        announce_resume(state.progress, plan)
    return state, identity


def announce_resume(progress: Progress, plan: Plan) -> None:
    print(
        f"hpcinfer: resuming: {len(progress.done)} of {len(plan.chunks)} chunks already "
        f"done ({progress.rows:,} of {plan.n_rows:,} rows)",
        flush=True,
    )
    for reason in progress.rejected[:5]:
        print(f"hpcinfer: not trusted, will be computed again: {reason}", flush=True)
    if len(progress.rejected) > 5:
        print(f"hpcinfer: ... and {len(progress.rejected) - 5} more records not trusted")


# -- compute -------------------------------------------------------------------------


@dataclass
class Timers:
    """Seconds a rank spent, by what it was doing (see rank_metrics)."""

    busy: float = 0.0
    io: float = 0.0
    log: list[tuple[int, ChunkRun]] = field(default_factory=list)


def compute_pending(
    plan: Plan, rt: Runtime, before: Progress, options: RunOptions, hooks: Hooks, t0: float
) -> RankWork:
    """Claim and compute chunks until none is left (or a stop signal); collective."""
    grid, run = plan.grid, plan.job.run
    pending = [i for i in range(len(plan.chunks)) if i not in before.done]
    rss_after_load, load_seconds = peak_rss_mb(), time.perf_counter() - t0
    store = ChunkStore(plan.partial_dir, durable=run.checkpoint)
    writer = None  # only a TP group's leader writes its group's results
    if grid.is_leader:
        writer = ChunkWriter(JournalWriter(plan.partial_dir, rt.rank) if run.checkpoint else None)
    claims = GroupClaims(grid, len(pending), run.balance, should_stop=stop.requested)
    progress = LiveProgress(
        rt.comm, plan.n_rows, before.rows, options.progress_interval, options.quiet
    )
    rt.comm.Barrier()
    epoch = rt.comm.bcast(time.time(), root=0)  # chunk log times are seconds since this
    t_loop, timers = time.perf_counter(), Timers()
    for done, position in enumerate(claims):
        chunk = plan.chunks[pending[position]]
        t_chunk, start = time.perf_counter(), time.time() - epoch
        hooks.before_chunk(rt.rank, done, chunk, plan.n_rows)
        sink = None if writer is None else store.create(chunk.index, chunk.rows, plan.model.outputs)
        timers.io += compute_chunk(plan.model, plan.reader, chunk, run.batch_size, sink, hooks)
        if writer is not None:
            t_write = time.perf_counter()
            finished = ChunkRun(
                grid.dp_rank, start, time.time() - epoch, position in claims.stats.stolen
            )
            writer.submit(sink, finished)
            timers.io += time.perf_counter() - t_write  # only the wait for a free queue slot
            timers.log.append((chunk.index, finished))
            progress.add(chunk.rows)
        timers.busy += time.perf_counter() - t_chunk
    plan.reader.close()
    if writer is not None:
        writer.close()  # every chunk of this rank durable and journalled
    claims.close()
    progress.close()
    rt.comm.Barrier()  # every claimed chunk is done and recorded
    loop_seconds = time.perf_counter() - t_loop
    metrics = rank_metrics(plan, rt, timers, claims, writer, loop_seconds, load_seconds)
    return RankWork(timers.log, metrics | {"peak_rss_mb_after_load": rss_after_load}, epoch)


def compute_chunk(
    model: Model,
    reader: Reader,
    chunk: Chunk,
    batch_size: int,
    sink: ChunkFile | None,
    hooks: Hooks = NO_HOOKS,
) -> float:
    """Compute the chunk's rows `batch_size` at a time, each batch's outputs written into
    `sink` as soon as they exist (None: a TP rank that computes but does not write).
    A failure discards the unfinished file. Returns the seconds spent reading input and
    writing outputs.
    """
    io = Stopwatch()
    try:
        if model.input_kind is InputKind.ITEMS:  # the model batches them by length
            with io:
                items = reader.read(chunk.start, chunk.stop)
            try:
                result = model.predict_items(items, batch_size)
            except BadRow as e:
                raise JobError(f"{reader.where(chunk.start + e.index)}: {e.message}") from None
            if sink is not None:
                with io:
                    sink.write_rows(0, result)
                hooks.chunk_file_started()
            return io.seconds
        for b0 in range(0, chunk.rows, batch_size):
            with io:
                rows = reader.read(chunk.start + b0, chunk.start + min(b0 + batch_size, chunk.rows))
            outputs = model.predict(rows)
            if sink is not None:
                with io:
                    sink.write_rows(b0, outputs)
                if b0 == 0:
                    hooks.chunk_file_started()
            del rows, outputs  # written: the next batch's peak must not include them
    except BaseException:
        if sink is not None:
            sink.discard()
        raise
    return io.seconds


class Stopwatch:
    """Adds up the time spent inside `with stopwatch:` blocks."""

    def __init__(self) -> None:
        self.seconds = 0.0

    def __enter__(self) -> None:
        self._t0 = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        self.seconds += time.perf_counter() - self._t0


def peak_rss_mb() -> float:
    """This process's peak resident memory so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rank_metrics(
    plan: Plan,
    rt: Runtime,
    timers: Timers,
    claims: GroupClaims,
    writer: ChunkWriter | None,
    loop_seconds: float,
    load_seconds: float,
) -> dict[str, Any]:
    grid, stats = plan.grid, claims.stats
    return {
        "rank": rt.rank,
        "dp_rank": grid.dp_rank,
        "tp_rank": grid.tp_rank,
        "chunks": len(timers.log) if grid.is_leader else None,
        "load_seconds": load_seconds,  # start, validation, loading the model shard
        "loop_seconds": loop_seconds,  # first claim to the closing barrier
        "busy_seconds": timers.busy,  # computing chunks (reading, predicting, writing)
        "idle_seconds": loop_seconds - timers.busy,  # claiming, stealing, waiting at the end
        "io_seconds": timers.io,  # reading input, writing outputs, waiting for a writer slot
        "write_seconds": writer.seconds if writer else 0.0,  # writer thread, overlapped
        "collective_seconds": grid.tp_group.seconds,
        "collective_calls": grid.tp_group.calls,
        "stolen_chunks": stats.stolen_chunks,
        "steals": stats.steals,
        "steal_attempts": stats.steal_attempts,
        "steal_seconds": stats.steal_seconds,
        "weight_mb": plan.model.weight_bytes / 2**20,
        "peak_rss_mb": peak_rss_mb(),
        **plan.model.rank_metrics(),
    }


# -- finish (rank 0) -----------------------------------------------------------------


def finish(
    plan: Plan, rt: Runtime, before: Progress, work: list[RankWork], identity: dict, t0: float
) -> bool:
    """Assemble the output if every chunk is done; else say how to resume. Rank 0 only."""
    log = chunk_log([entry for w in work for entry in w.log], before.records)
    if len(log) != len(plan.chunks):
        print(
            f"hpcinfer: stopped by signal with {len(log)} of {len(plan.chunks)} chunks done "
            f"and durable; run the same command again to resume (exit code {stop.EXIT_STOPPED})",
            file=sys.stderr,
            flush=True,
        )
        return False
    check_every_chunk_once(log, len(plan.chunks))
    metrics = [w.metrics for w in work]
    attrs = output_attrs(
        plan, rt, time.perf_counter() - t0, metrics, identity, len(before.done), work[0].epoch
    )
    assemble_output(
        plan.job.output.path,
        ChunkStore(plan.partial_dir),
        plan.chunks,
        plan.n_rows,
        plan.model.outputs,
        attrs,
        {"chunks": log},
    )
    shutil.rmtree(plan.partial_dir)
    report(plan, rt, time.perf_counter() - t0, attrs["balance_summary"])
    return True


def chunk_log(this_run: list[tuple[int, ChunkRun]], earlier: dict[int, ChunkRecord]) -> np.ndarray:
    """run/chunks: every chunk's (index, dp_rank, start, end, stolen, resumed), by index."""
    rows = [(i, r.dp_rank, r.start, r.end, r.stolen, False) for i, r in this_run]
    rows += [
        (i, c.run.dp_rank, c.run.start, c.run.end, c.run.stolen, True) for i, c in earlier.items()
    ]
    return np.array(sorted(rows), CHUNK_LOG_DTYPE)


def check_every_chunk_once(log: np.ndarray, n_chunks: int) -> None:
    """Each chunk exactly once across this run and the runs it resumes."""
    counts = np.bincount(log["index"], minlength=n_chunks)
    if (counts != 1).any():
        missing, repeated = int((counts == 0).sum()), int((counts > 1).sum())
        raise RunError(f"{missing} chunk(s) never computed, {repeated} computed twice")


def report(plan: Plan, rt: Runtime, wall: float, summary: dict[str, float]) -> None:
    shapes = ", ".join(
        f"{name} {(plan.n_rows, *o.shape)} {np.dtype(o.dtype).name}"
        for name, o in plan.model.outputs.items()
    )
    grid = plan.grid
    print(
        f"hpcinfer: wrote {plan.job.output.path}: {shapes}; {plan.n_rows} rows in {wall:.2f} s "
        f"({plan.n_rows / wall:,.0f} rows/s) on {rt.size} rank(s) (dp {grid.dp_size} x "
        f"tp {grid.tp}) x {rt.threads} thread(s)\n"
        f"hpcinfer: balance {plan.job.run.balance}: imbalance {summary['imbalance']:.3f}, "
        f"efficiency {summary['efficiency']:.1%}, {summary['stolen_chunks']} chunk(s) "
        f"stolen in {summary['steals']} steal(s)",
        file=sys.stdout,
        flush=True,
    )
