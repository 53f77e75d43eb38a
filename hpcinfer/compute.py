"""The compute step: claim chunks until none is left, compute each in batches, and hand
finished chunk files to the writer thread. Collective over every rank.

    claims      GroupClaims: this DP group's own block first, then steals (TP members
                follow their leader's claims)
    per chunk   compute_chunk: read rows -> model -> the chunk file, batch by batch
    leader      submits the file to ChunkWriter (fsync, rename, journal line) and adds
                its rows to the live progress
"""

from __future__ import annotations

import resource
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from hpcinfer.checkpoint.chunk_files import ChunkFile, ChunkStore
from hpcinfer.checkpoint.columns import Column, output_columns, specs, stored
from hpcinfer.checkpoint.journal import ChunkRun, JournalWriter, Progress
from hpcinfer.checkpoint.writer import ChunkWriter
from hpcinfer.errors import BadRow, DiskError, JobError, RunError
from hpcinfer.io.inputs import Reader
from hpcinfer.models import InputKind, Model
from hpcinfer.parallel.runtime import Runtime
from hpcinfer.parallel.watch import barrier_watching, peers_on_this_host
from hpcinfer.plan import Plan, warn_idle_ranks
from hpcinfer.schedule import stop
from hpcinfer.schedule.balance import GroupClaims
from hpcinfer.schedule.chunks import Chunk
from hpcinfer.tools.progress import LiveProgress


@dataclass(frozen=True)
class RunOptions:
    """How to run, as opposed to what (the job): never changes the output."""

    restart: bool = False  # discard a partial run of this job
    overwrite: bool = False  # replace an existing output that is not this job's result
    dry_run: bool = False  # validate and print the plan, compute nothing
    quiet: bool = False  # no live progress
    progress_interval: float = 30.0  # seconds between progress lines off a terminal


class Hooks:
    """Seams where tests inject faults (hpcinfer.testing.faults); no-ops in a real run."""

    def before_chunk(self, rank: int, chunks_done: int, chunk: Chunk, n_rows: int) -> None:
        """Before each chunk a rank computes (`chunks_done` by it so far)."""

    def chunk_file_started(self) -> None:
        """After the first rows of a chunk file are written, before it is committed."""

    def before_assembly(self) -> None:
        """On rank 0, once every chunk is done, before the output file is written."""


NO_HOOKS = Hooks()


@dataclass(frozen=True)
class RankWork:
    """What one rank did in the compute step, for rank 0's log and report."""

    log: list[tuple[int, ChunkRun]]  # chunks this rank's group finished (leaders only)
    metrics: dict[str, Any]
    epoch: float  # the loop's start (Unix time): chunk times are seconds after it
    error: tuple[int, str] | None = None  # (exit code, message): bad input or a full disk


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
    if rt.rank == 0:
        warn_idle_ranks(plan, len(pending))
    rss_after_load, load_seconds = peak_rss_mb(), time.perf_counter() - t0
    store = ChunkStore(plan.partial_dir, durable=run.checkpoint)
    writer = None  # only a TP group's leader writes its group's results
    if grid.is_leader:
        writer = ChunkWriter(JournalWriter(plan.partial_dir, rt.rank) if run.checkpoint else None)
    halt = stop.SharedStop(rt.comm)
    claims = GroupClaims(grid, len(pending), run.balance, should_stop=halt.should_stop)
    progress = LiveProgress(
        rt.comm, plan.n_rows, before.rows, options.progress_interval, options.quiet
    )
    peers = peers_on_this_host(rt.comm, rt.host)  # (collective: every rank is here)
    epoch = rt.comm.bcast(time.time(), root=0)  # chunk log times are seconds since this
    # rows per batch (numeric rows), or padded tokens per batch (texts)
    size = run.batch_size if plan.model.input_kind is InputKind.ROWS else settings_tokens(plan)
    t_loop, timers, error = time.perf_counter(), Timers(), None
    stream = iter(claims)
    for done, position in enumerate(stream):
        chunk = plan.chunks[pending[position]]
        t_chunk, start = time.perf_counter(), time.time() - epoch
        hooks.before_chunk(rt.rank, done, chunk, plan.n_rows)
        sink = None
        if writer is not None:
            sink = store.create(chunk.index, chunk.rows, specs(plan.columns))
        try:
            timers.io += compute_chunk(
                plan.model, plan.reader, chunk, size, sink, hooks, plan.columns,
                progress.add if writer is not None else None,
            )  # fmt: skip
            if writer is not None:
                t_write = time.perf_counter()
                finished = ChunkRun(
                    grid.dp_rank, start, time.time() - epoch, position in claims.stats.stolen
                )
                writer.submit(sink, finished)  # raises a failure of an earlier commit
                timers.io += time.perf_counter() - t_write  # only the wait for a queue slot
                timers.log.append((chunk.index, finished))
        except (JobError, DiskError) as e:  # bad input (the whole TP group meets it) or a
            error = (e.exit_code, str(e))  # full disk (leaders): every rank stops cleanly
            halt.raise_for_all(rt.rank)
            if any(True for _ in stream) and not grid.is_leader:  # the leader went on
                raise RunError(f"{e} (on rank {rt.rank} only, not its TP group)") from None
            break
        timers.busy += time.perf_counter() - t_chunk
    plan.reader.close()
    if writer is not None:
        try:
            writer.close()  # every chunk of this rank durable and journalled
        except DiskError as e:
            error = error or (e.exit_code, str(e))
    barrier_watching(rt.comm, peers, rt.host)  # every claimed chunk done and recorded
    claims.close()
    progress.close()
    halt.free()
    loop_seconds = time.perf_counter() - t_loop
    metrics = rank_metrics(plan, rt, timers, claims, writer, loop_seconds, load_seconds)
    metrics["peak_rss_mb_after_load"] = rss_after_load
    return RankWork(timers.log, metrics, epoch, error)


def settings_tokens(plan: Plan) -> int:
    return plan.settings.max_batch_tokens


def compute_chunk(
    model: Model,
    reader: Reader,
    chunk: Chunk,
    size: int,
    sink: ChunkFile | None,
    hooks: Hooks = NO_HOOKS,
    columns: dict[str, Column] | None = None,
    on_rows: Callable[[int], None] | None = None,
) -> float:
    """Compute the chunk's rows a batch at a time (`size` rows, or for texts `size` padded
    tokens), each batch's outputs written into `sink` as soon as they exist (None: a TP
    rank that computes but does not write), as `columns` say (named and cast; the kept
    columns' values from the same read; None: the model's outputs as they are);
    `on_rows(n)` after each batch (live progress).
    A failure discards the unfinished file. A failed write (a full disk) does not stop
    the batches: the TP group computes them together, and a leader that left early would
    leave its members waiting in a collective; the error is raised after the chunk.
    Returns the seconds spent reading input and writing outputs.
    """
    io, failed = Stopwatch(), None
    columns = columns or output_columns(model.outputs, {}, "auto", {}, "")
    try:
        if model.input_kind is InputKind.ITEMS:  # the model batches them by length
            with io:
                batch = reader.read_batch(chunk.start, chunk.stop)
            try:
                result = model.predict_items(batch.rows, size, on_rows)
            except BadRow as e:
                raise JobError(f"{reader.where(chunk.start + e.index)}: {e.message}") from None
            if sink is not None:
                with io:
                    sink.write_rows(0, stored(columns, result, batch.kept))
                hooks.chunk_file_started()
            return io.seconds
        for b0 in range(0, chunk.rows, size):
            with io:
                stop = chunk.start + min(b0 + size, chunk.rows)
                batch = reader.read_batch(chunk.start + b0, stop)
            outputs = model.predict(batch.rows)
            if on_rows is not None:
                on_rows(len(batch.rows))
            if sink is not None and failed is None:
                try:
                    with io:
                        sink.write_rows(b0, stored(columns, outputs, batch.kept))
                except RunError as e:  # the file is discarded already
                    failed = e
                if b0 == 0:
                    hooks.chunk_file_started()
            del batch, outputs  # written: the next batch's peak must not include them
    except BaseException:
        if sink is not None:
            sink.discard()
        raise
    if failed is not None:
        raise failed
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
