"""The SPMD loop: every rank runs this; MPI is the only coordination.

grid (DP x TP) and plan, validated on every rank and agreed
  -> claim chunks (own block first; steal when it runs dry, hpcinfer.balance)
  -> per chunk: read rows, predict in batches (the TP group computes together),
     the group's leader writes the chunk file durably
  -> closing barrier: every chunk is done somewhere
  -> rank 0 checks every chunk is there and assembles the final HDF5 file
  -> every rank exits 0 only once that file exists.
"""

from __future__ import annotations

import resource
import shutil
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np

from hpcinfer import __version__, faults, stop
from hpcinfer.balance import GroupClaims
from hpcinfer.dry_run import print_dry_run
from hpcinfer.errors import BadRow, JobError, RunError
from hpcinfer.grid import Grid, check_tp
from hpcinfer.io.chunk_store import ChunkFile, ChunkStore
from hpcinfer.io.chunk_writer import ChunkWriter
from hpcinfer.io.inputs import Reader
from hpcinfer.io.output import assemble_output, output_fingerprint
from hpcinfer.job import Job
from hpcinfer.journal import (
    JournalWriter,
    Progress,
    check_partial_run,
    fingerprint,
    job_identity,
    read_progress,
    start_partial_run,
)
from hpcinfer.models import Model
from hpcinfer.plan import Plan, make_plan
from hpcinfer.progress import LiveProgress
from hpcinfer.runtime import Runtime, agree
from hpcinfer.schedule import Chunk

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


def peak_rss_mb() -> float:
    """This process's peak resident memory so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def predict_chunk(
    model: Model, reader: Reader, chunk: Chunk, batch_size: int, sink: ChunkFile | None
) -> float:
    """Compute the chunk's rows `batch_size` at a time, each batch's outputs written into
    `sink` as soon as they exist (None: a TP rank that computes but does not write).

    Returns the seconds spent reading input and writing outputs.
    """
    io = Stopwatch()
    if model.row_shape is None:  # texts or token ids: the model batches them by length
        with io:
            items = reader.read(chunk.start, chunk.stop)
        try:
            result = model.predict_items(items, batch_size)
        except BadRow as e:
            raise JobError(f"{reader.where(chunk.start + e.index)}: {e.message}") from None
        if sink is not None:
            with io:
                sink.write(result)
        return io.seconds
    for b0 in range(0, chunk.rows, batch_size):
        with io:
            rows = reader.read(chunk.start + b0, chunk.start + min(b0 + batch_size, chunk.rows))
        outputs = model.predict(rows)
        if sink is not None:
            with io:
                sink.write_rows(b0, outputs)
        del rows, outputs  # written: the next batch's peak must not include them
    return io.seconds


class Stopwatch:
    """Adds up the time spent inside `with stopwatch:` blocks."""

    def __init__(self) -> None:
        self.seconds = 0.0

    def __enter__(self) -> None:
        self._t0 = time.perf_counter()

    def __exit__(self, *exc) -> None:
        self.seconds += time.perf_counter() - self._t0


def balance_summary(metrics: list[dict[str, Any]], wall: float) -> dict[str, float]:
    """Imbalance = max busy / mean busy; efficiency = total busy / (ranks x wall)."""
    busy = [m["busy_seconds"] for m in metrics]
    mean = sum(busy) / len(busy)
    return {
        "wall_seconds": wall,
        "imbalance": max(busy) / mean if mean > 0 else 1.0,
        "efficiency": sum(busy) / (len(busy) * wall) if wall > 0 else 1.0,
        "stolen_chunks": sum(m["stolen_chunks"] for m in metrics),
        "steals": sum(m["steals"] for m in metrics),
    }


def validated_plan(job: Job, rt: Runtime) -> Plan:
    """Layout first (tp must divide the ranks), then model and input; agreed by all."""
    error = None
    try:
        check_tp(rt.size, job.run.tp)
    except JobError as e:
        error = e
    agree(rt, error)
    grid = Grid.build(rt.comm, job.run.tp)
    plan = None
    try:
        plan = make_plan(job, grid, rt.local_rank)
    except JobError as e:
        error = e
    agree(rt, error)
    assert plan is not None  # agree() raised otherwise
    return plan


def output_attrs(
    plan: Plan,
    rt: Runtime,
    compute_seconds: float,
    metrics: list[dict],
    identity: dict,
    resumed_chunks: int,
    epoch: float,
) -> dict:
    job = plan.job
    return {
        "hpcinfer_version": __version__,
        "job_fingerprint": fingerprint(identity),
        "resumed_chunks": resumed_chunks,  # chunks computed by earlier, interrupted runs
        "model_path": str(job.model.path),
        "model_sha256": identity["model_sha256"],
        "model": plan.model.describe(),
        "input_path": str(job.input.path),
        "input_dataset": job.input.dataset,
        "n_rows": plan.n_rows,
        "job_file": str(job.source.resolve()),
        "job": job.options(),
        "layout": {
            "ranks": rt.size,
            "dp": plan.grid.dp_size,
            "tp": plan.grid.tp,
            "tp_comm": plan.tp_comm,
            "threads_per_rank": rt.threads,
            "backend": job.run.backend,
            "dtype": job.run.dtype,
            "chunk_size": job.run.chunk_size,
            "n_chunks": len(plan.chunks),
            "balance": job.run.balance,
        },
        # Start of the run (before validation) to the last chunk done on any rank.
        "compute_seconds": compute_seconds,
        "loop_start_unix": epoch,  # run/chunks times are seconds after this
        "rank_metrics": metrics,
        "balance_summary": balance_summary(metrics, max(m["loop_seconds"] for m in metrics)),
        "created_utc": datetime.now(UTC).isoformat(timespec="seconds"),
    }


@dataclass(frozen=True)
class StartingPoint:
    identity: dict
    progress: Progress | None  # None: the output already exists, complete, for this job


def starting_point(plan: Plan, rt: Runtime, restart: bool) -> StartingPoint:
    """Rank 0 decides fresh / resume / already complete; every rank learns it (collective).

    A partial run of another job is a JobError (exit 2, all ranks) unless `restart`.
    """
    error, point = None, None
    if rt.rank == 0:
        try:
            point = _starting_point(plan, restart)
        except JobError as e:
            error = e
    agree(rt, error)
    return rt.comm.bcast(point, root=0)


def _starting_point(plan: Plan, restart: bool) -> StartingPoint:
    identity = job_identity(plan.job, plan.reader)
    folder, out = plan.partial_dir, plan.job.output.path
    if restart:
        shutil.rmtree(folder, ignore_errors=True)
    state = check_partial_run(folder, identity, plan.job.source)
    if state == "stale":
        shutil.rmtree(folder)
        state = "fresh"
    if state == "fresh" and not restart and output_fingerprint(out) == fingerprint(identity):
        print(
            f"hpcinfer: {out} is already complete for this job; nothing to do "
            "(--restart computes it again)",
            flush=True,
        )
        return StartingPoint(identity, None)
    if state == "fresh":
        start_partial_run(folder, identity, len(plan.chunks), plan.n_rows)
        return StartingPoint(identity, Progress({}, ()))
    progress = read_progress(folder, len(plan.chunks))
    print(
        f"hpcinfer: resuming: {len(progress.done)} of {len(plan.chunks)} chunks already "
        f"done ({progress.rows:,} of {plan.n_rows:,} rows)",
        flush=True,
    )
    for reason in progress.rejected[:5]:
        print(f"hpcinfer: not trusted, will be computed again: {reason}", flush=True)
    if len(progress.rejected) > 5:
        print(f"hpcinfer: ... and {len(progress.rejected) - 5} more records not trusted")
    return StartingPoint(identity, progress)


@dataclass(frozen=True)
class RunOptions:
    """How to run, as opposed to what (the job): never changes the output."""

    restart: bool = False  # discard a partial run of this job
    dry_run: bool = False  # validate and print the plan, compute nothing
    quiet: bool = False  # no live progress
    progress_interval: float = 30.0  # seconds between progress lines off a terminal


def run_job(job: Job, rt: Runtime, options: RunOptions = RunOptions()) -> int:
    """Run (or resume) `job` on every rank of `rt`.

    Returns 0 once the complete output file exists, or stop.EXIT_STOPPED when a stop
    signal ended the run early with its progress durable.
    """
    t0 = time.perf_counter()
    plan = validated_plan(job, rt)
    grid = plan.grid
    if options.dry_run:
        print_dry_run(plan, rt)  # hpcinfer.dry_run
        return 0
    point = starting_point(plan, rt, options.restart)
    if point.progress is None:
        return 0
    done_before = point.progress.done
    pending = [i for i in range(len(plan.chunks)) if i not in done_before]
    rss_after_load = peak_rss_mb()
    load_seconds = time.perf_counter() - t0

    store = ChunkStore(plan.partial_dir, durable=job.run.checkpoint)
    writer = None  # only a TP group's leader writes its group's results
    if grid.is_leader:
        journal = JournalWriter(plan.partial_dir, rt.rank) if job.run.checkpoint else None
        writer = ChunkWriter(journal)
    claims = GroupClaims(grid, len(pending), job.run.balance, should_stop=stop.requested)
    progress = LiveProgress(
        rt.comm, plan.n_rows, point.progress.rows, options.progress_interval, options.quiet
    )
    rt.comm.Barrier()
    epoch = rt.comm.bcast(time.time(), root=0)  # chunk log times are seconds since this

    t_loop = time.perf_counter()
    busy = io = 0.0
    log = []
    for done, position in enumerate(claims):
        chunk = plan.chunks[pending[position]]
        t_chunk, start = time.perf_counter(), time.time() - epoch
        faults.before_chunk(rt.rank, done, chunk.start, chunk.stop, plan.n_rows)
        sink = None if writer is None else store.create(chunk.index, chunk.rows, plan.model.outputs)
        try:
            io += predict_chunk(plan.model, plan.reader, chunk, job.run.batch_size, sink)
        except BaseException:
            if sink is not None:
                sink.discard()
            raise
        if writer is not None:
            t_write = time.perf_counter()
            stolen = position in claims.stats.stolen
            entry = (chunk.index, grid.dp_rank, start, time.time() - epoch, stolen, False)
            writer.submit(
                sink,
                dp=grid.dp_rank,
                start=entry[2],
                end=entry[3],
                stolen=stolen,
            )
            io += time.perf_counter() - t_write  # only the wait for a free queue slot
            log.append(entry)
            progress.add(chunk.rows)
        busy += time.perf_counter() - t_chunk
    plan.reader.close()
    if writer is not None:
        writer.close()  # every chunk of this rank durable and journalled
    claims.close()
    progress.close()
    rt.comm.Barrier()  # every claimed chunk is done and recorded
    loop_seconds = time.perf_counter() - t_loop

    stats = claims.stats
    metrics = {
        "rank": rt.rank,
        "dp_rank": grid.dp_rank,
        "tp_rank": grid.tp_rank,
        "chunks": len(log) if grid.is_leader else None,
        "load_seconds": load_seconds,  # start, validation, loading the model shard
        "loop_seconds": loop_seconds,  # first claim to the closing barrier
        "busy_seconds": busy,  # computing chunks (reading, predicting, writing)
        "idle_seconds": loop_seconds - busy,  # claiming, stealing, waiting at the end
        "io_seconds": io,  # reading input, writing outputs, waiting for a writer slot
        "write_seconds": writer.seconds if writer else 0.0,  # writer thread, overlapped
        "collective_seconds": grid.tp_group.seconds,
        "collective_calls": grid.tp_group.calls,
        "stolen_chunks": stats.stolen_chunks,
        "steals": stats.steals,
        "steal_attempts": stats.steal_attempts,
        "steal_seconds": stats.steal_seconds,
        "weight_mb": plan.model.weight_bytes / 2**20,
        "peak_rss_mb_after_load": rss_after_load,
        "peak_rss_mb": peak_rss_mb(),
    }
    if counts := getattr(plan.model, "token_counts", None):  # text models
        metrics["tokens_real"], metrics["tokens_computed"] = counts.real, counts.computed
    finished = rt.comm.gather((log, metrics), root=0)
    compute_seconds = time.perf_counter() - t0
    complete = True
    if rt.rank == 0:
        entries = [r for part, _ in finished for r in part]
        earlier = [
            (
                i,
                r.get("dp", -1),
                r.get("start", np.nan),
                r.get("end", np.nan),
                bool(r.get("stolen", False)),
                True,
            )
            for i, r in point.progress.records.items()
        ]
        chunk_log = np.array(sorted(entries + earlier), CHUNK_LOG_DTYPE)
        complete = len(chunk_log) == len(plan.chunks)
        if complete:
            check_every_chunk_once(chunk_log, len(plan.chunks))
            all_metrics = [m for _, m in finished]
            attrs = output_attrs(
                plan, rt, compute_seconds, all_metrics, point.identity, len(done_before), epoch
            )
            assemble_output(
                job.output.path,
                store,
                plan.chunks,
                plan.n_rows,
                plan.model.outputs,
                attrs,
                {"chunks": chunk_log},
            )
            shutil.rmtree(plan.partial_dir)
            report(plan, rt, time.perf_counter() - t0, attrs["balance_summary"])
        else:
            print(
                f"hpcinfer: stopped by signal with {len(chunk_log)} of {len(plan.chunks)} "
                f"chunks done and durable; run the same command again to resume "
                f"(exit code {stop.EXIT_STOPPED})",
                file=sys.stderr,
                flush=True,
            )
    complete = rt.comm.bcast(complete, root=0)
    return 0 if complete else stop.EXIT_STOPPED


def check_every_chunk_once(chunk_log: np.ndarray, n_chunks: int) -> None:
    """Each chunk exactly once across this run and the runs it resumes."""
    counts = np.bincount(chunk_log["index"], minlength=n_chunks)
    if (counts != 1).any():
        missing, repeated = int((counts == 0).sum()), int((counts > 1).sum())
        raise RunError(f"{missing} chunk(s) never computed, {repeated} computed twice")


def report(plan: Plan, rt: Runtime, wall: float, summary: dict[str, float]) -> None:
    shapes = ", ".join(
        f"{name} {(plan.n_rows, *shape)} {np.dtype(dt).name}"
        for name, (shape, dt) in plan.model.outputs.items()
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
