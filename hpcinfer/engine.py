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
from datetime import UTC, datetime
from typing import Any

import numpy as np

from hpcinfer import __version__, faults
from hpcinfer.balance import GroupClaims
from hpcinfer.errors import JobError, RunError
from hpcinfer.grid import Grid, check_tp
from hpcinfer.io.chunk_store import ChunkStore
from hpcinfer.io.digest import file_sha256
from hpcinfer.io.hdf5_input import Hdf5Rows
from hpcinfer.io.output import assemble_output
from hpcinfer.job import Job
from hpcinfer.models import Model
from hpcinfer.plan import Plan, make_plan
from hpcinfer.runtime import Runtime, agree
from hpcinfer.schedule import Chunk

# One record per computed chunk, written to the output's run/chunks dataset.
CHUNK_LOG_DTYPE = np.dtype(
    [("index", "<i8"), ("dp_rank", "<i4"), ("start", "<f8"), ("end", "<f8"), ("stolen", "?")]
)


def peak_rss_mb() -> float:
    """This process's peak resident memory so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def predict_chunk(
    model: Model, reader: Hdf5Rows, chunk: Chunk, batch_size: int
) -> tuple[dict[str, np.ndarray], float]:
    """All outputs for the chunk's rows, read and computed `batch_size` rows at a time.

    Returns the outputs and the seconds spent reading input.
    """
    out = {
        name: np.empty((chunk.rows, *shape), dtype)
        for name, (shape, dtype) in model.outputs.items()
    }
    read_seconds = 0.0
    for b0 in range(0, chunk.rows, batch_size):
        b1 = min(b0 + batch_size, chunk.rows)
        t0 = time.perf_counter()
        rows = reader.read(chunk.start + b0, chunk.start + b1)
        read_seconds += time.perf_counter() - t0
        for name, values in model.predict(rows).items():
            out[name][b0:b1] = values
    return out, read_seconds


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


def output_attrs(plan: Plan, rt: Runtime, compute_seconds: float, metrics: list[dict]) -> dict:
    job = plan.job
    return {
        "hpcinfer_version": __version__,
        "model_path": str(job.model.path),
        "model_sha256": file_sha256(job.model.path / "model.safetensors"),
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
        "rank_metrics": metrics,
        "balance_summary": balance_summary(metrics, max(m["loop_seconds"] for m in metrics)),
        "created_utc": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def run_job(job: Job, rt: Runtime) -> int:
    """Run `job` on every rank of `rt`; returns 0 once the complete output file exists."""
    t0 = time.perf_counter()
    plan = validated_plan(job, rt)
    grid = plan.grid
    rss_after_load = peak_rss_mb()
    load_seconds = time.perf_counter() - t0

    store = ChunkStore(plan.partial_dir)
    if rt.rank == 0:
        # No resume yet: leftovers of an earlier, interrupted run are discarded.
        shutil.rmtree(plan.partial_dir, ignore_errors=True)
        plan.partial_dir.mkdir(parents=True)
    claims = GroupClaims(grid, len(plan.chunks), job.run.balance)
    rt.comm.Barrier()
    epoch = rt.comm.bcast(time.time(), root=0)  # chunk log times are seconds since this

    t_loop = time.perf_counter()
    busy = io = 0.0
    log = []
    for done, index in enumerate(claims):
        chunk = plan.chunks[index]
        t_chunk, start = time.perf_counter(), time.time() - epoch
        faults.before_chunk(rt.rank, done, chunk.start, chunk.stop, plan.n_rows)
        result, read_seconds = predict_chunk(plan.model, plan.reader, chunk, job.run.batch_size)
        io += read_seconds
        if grid.is_leader:
            t_write = time.perf_counter()
            store.write(chunk.index, result)
            io += time.perf_counter() - t_write
            log.append(
                (index, grid.dp_rank, start, time.time() - epoch, index in claims.stats.stolen)
            )
        busy += time.perf_counter() - t_chunk
    plan.reader.close()
    claims.close()
    rt.comm.Barrier()  # every chunk is done somewhere
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
        "io_seconds": io,  # reading input rows and writing chunk files
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
    finished = rt.comm.gather((log, metrics), root=0)
    compute_seconds = time.perf_counter() - t0
    if rt.rank == 0:
        chunk_log = np.array(sorted(r for part, _ in finished for r in part), CHUNK_LOG_DTYPE)
        all_metrics = [m for _, m in finished]
        check_every_chunk_once(chunk_log, len(plan.chunks))
        attrs = output_attrs(plan, rt, compute_seconds, all_metrics)
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
    rt.comm.Barrier()  # nobody exits 0 before the output exists
    return 0


def check_every_chunk_once(chunk_log: np.ndarray, n_chunks: int) -> None:
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
