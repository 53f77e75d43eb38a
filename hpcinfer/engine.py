"""The SPMD run: every rank runs `run_job`; MPI is the only coordination.

plan      the job validated on every rank (grid, model shard, input), agreed   plan.py
start     rank 0 locks the output and decides fresh / resume / complete /
          refused; every rank learns it                                        start.py
compute   claim chunks (own block first, then steal); per chunk read rows, predict
          in batches (the TP group together), the group's leader streams outputs
          into the chunk file; a writer thread makes it durable, then journals it
                                                                               compute.py
gather    every rank's chunk log and metrics, to rank 0
finish    rank 0 checks every chunk is there exactly once, assembles the output
          file and reports; or, stopped by a signal, says how to resume
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass

import numpy as np

from hpcinfer.checkpoint.assemble import assemble_output, match_privacy
from hpcinfer.checkpoint.chunk_files import ChunkStore
from hpcinfer.checkpoint.columns import specs, stored_type
from hpcinfer.checkpoint.journal import ChunkRecord, ChunkRun
from hpcinfer.checkpoint.lock import RunLock
from hpcinfer.checkpoint.state import ResumeState, Start, remove_partial_run
from hpcinfer.compute import NO_HOOKS, Hooks, RankWork, RunOptions, compute_pending
from hpcinfer.errors import JobError, RunError
from hpcinfer.job import Job
from hpcinfer.parallel.runtime import Runtime, agree
from hpcinfer.plan import Plan, validated_plan
from hpcinfer.schedule import stop
from hpcinfer.start import StartOptions, decide_start
from hpcinfer.tools.dry_run import print_dry_run
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
class Outcome:
    """How a run ended, the same on every rank: the exit code and, unless 0, the one line
    rank 0 printed (bad input 2, a stop or a full disk 75, a failing disk 1)."""

    code: int
    message: str = ""


def run_job(
    job: Job, rt: Runtime, options: RunOptions | None = None, hooks: Hooks = NO_HOOKS
) -> Outcome:
    """Run (or resume) `job` on every rank of `rt`: code 0 once the complete output file
    exists. A job refused before any compute raises `Agreed` on every rank instead."""
    t0 = time.perf_counter()
    options = options or RunOptions()
    plan = validated_plan(job, rt)
    try:
        return run_plan(plan, rt, options, hooks, t0)
    finally:
        plan.reader.close()  # (compute_pending closed it already where it ran)


def run_plan(plan: Plan, rt: Runtime, options: RunOptions, hooks: Hooks, t0: float) -> Outcome:
    if options.dry_run:
        print_dry_run(plan, rt)
        return Outcome(0)
    state, identity, lock = agreed_start(plan, rt, StartOptions(options.restart, options.overwrite))
    try:
        if state.start is Start.COMPLETE:
            return Outcome(0)
        if rt.rank == 0:
            grid = plan.grid
            print(
                f"hpcinfer: {rt.size} rank(s) (dp {grid.dp_size} x tp {grid.tp}), "
                f"{plan.settings.describe()}, {len(plan.chunks):,} chunk(s)",
                flush=True,
            )
        work = compute_pending(plan, rt, state.progress, options, hooks, t0)
        everyone = rt.comm.gather(work, root=0)
        outcome = finish(plan, rt, state, everyone, identity, t0, hooks) if rt.rank == 0 else None
        outcome = rt.comm.bcast(outcome, root=0)
        if outcome.code and rt.rank == 0:
            print(outcome.message, file=sys.stderr, flush=True)
        return outcome
    finally:
        if lock is not None:
            lock.release()


def agreed_start(
    plan: Plan, rt: Runtime, options: StartOptions
) -> tuple[ResumeState, dict, RunLock | None]:
    """Rank 0 decides where the run starts and holds the output's lock (None elsewhere);
    every rank learns the decision. A refusal is a JobError on every rank (exit 2)."""
    error, decided, lock = None, None, None
    if rt.rank == 0:
        try:
            state, identity, lock = decide_start(plan, options)
            decided = (state, identity)
        except JobError as e:
            error = e
    agree(rt, error)
    state, identity = rt.comm.bcast(decided, root=0)
    return state, identity, lock


# -- finish (rank 0) -----------------------------------------------------------------


def finish(
    plan: Plan,
    rt: Runtime,
    state: ResumeState,
    work: list[RankWork],
    identity: dict,
    t0: float,
    hooks: Hooks = NO_HOOKS,
) -> Outcome:
    """Assemble the output if every chunk is done; else say why not and how to go on.
    Rank 0 only."""
    before = state.progress
    failed = [(r, w.error) for r, w in enumerate(work) if w.error]
    if failed:  # bad input or a full disk met mid-run: one line, from the first rank
        r, (code, message) = failed[0]
        if code == JobError.exit_code and state.start is Start.FRESH:
            remove_partial_run(plan.partial_dir)  # the input must change: nothing to keep
        return Outcome(code, f"hpcinfer: error: {message} (on rank {r} of {rt.size})")
    log = chunk_log([entry for w in work for entry in w.log], before.records)
    if len(log) != len(plan.chunks):
        return Outcome(
            stop.EXIT_STOPPED,
            f"hpcinfer: stopped by signal with {len(log)} of {len(plan.chunks)} chunks done "
            f"and durable; run the same command again to resume (exit code {stop.EXIT_STOPPED})",
        )
    check_every_chunk_once(log, len(plan.chunks))
    metrics = [w.metrics for w in work]
    attrs = output_attrs(
        plan, rt, time.perf_counter() - t0, metrics, identity, len(before.done), work[0].epoch
    )
    hooks.before_assembly()
    try:
        store = ChunkStore(plan.partial_dir)
        encodings = {n: c.encoding for n, c in plan.columns.items() if c.encoding}
        assemble_output(
            plan.job.output.path, store, plan.chunks, plan.n_rows, specs(plan.columns), attrs,
            {"chunks": log}, encodings,
        )  # fmt: skip
    except RunError as e:  # a full disk (75) or a failing one (1): the chunks are kept
        return Outcome(e.exit_code, f"hpcinfer: error: {e}")
    if not remove_partial_run(plan.partial_dir):
        print(f"hpcinfer: kept {plan.partial_dir}: it holds files hpcinfer did not make")
    match_privacy(plan.job.output.path, plan.reader.sources())
    report(plan, rt, time.perf_counter() - t0, attrs["balance_summary"], before.rows)
    return Outcome(0)


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


def report(
    plan: Plan, rt: Runtime, wall: float, summary: dict[str, float], resumed_rows: int
) -> None:
    """The closing lines; rows/s counts only the rows this run computed."""
    shapes = ", ".join(
        f"{name} {(plan.n_rows, *c.spec.shape)} {c.encoding or stored_type(c)}"
        for name, c in plan.columns.items()
    )
    grid, new = plan.grid, plan.n_rows - resumed_rows
    rows = f"{plan.n_rows:,} rows"
    if resumed_rows:
        rows += f", {resumed_rows:,} of them by earlier runs; {new:,} rows"
    print(
        f"hpcinfer: wrote {plan.job.output.path}: {shapes}; {rows} in {wall:.2f} s "
        f"({new / wall:,.0f} rows/s) on {rt.size} rank(s) "
        f"(dp {grid.dp_size} x tp {grid.tp}) x {rt.threads} thread(s)\n"
        f"hpcinfer: balance {plan.job.run.balance}: imbalance {summary['imbalance']:.3f}, "
        f"efficiency {summary['efficiency']:.1%}, {summary['stolen_chunks']} chunk(s) "
        f"stolen in {summary['steals']} steal(s)",
        file=sys.stdout,
        flush=True,
    )
