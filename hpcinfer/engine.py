"""The SPMD loop: every rank runs this; MPI is the only coordination.

plan (every rank validates; agreed)  ->  my block of chunks: read rows, predict in
batches, write the chunk file durably  ->  rank 0 checks every chunk is there and
assembles the final HDF5 file  ->  every rank exits 0 only once that file exists.
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
from hpcinfer.errors import JobError, RunError
from hpcinfer.grid import Grid, check_tp
from hpcinfer.io.chunk_store import ChunkStore
from hpcinfer.io.digest import file_sha256
from hpcinfer.io.hdf5_input import Hdf5Rows
from hpcinfer.io.output import assemble_output
from hpcinfer.job import Job
from hpcinfer.models import Model
from hpcinfer.partition import split_range
from hpcinfer.plan import Plan, make_plan
from hpcinfer.runtime import Runtime, agree
from hpcinfer.schedule import Chunk


def peak_rss_mb() -> float:
    """This process's peak resident memory so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def predict_chunk(
    model: Model, reader: Hdf5Rows, chunk: Chunk, batch_size: int
) -> dict[str, np.ndarray]:
    """All outputs for the chunk's rows, read and computed `batch_size` rows at a time."""
    out = {
        name: np.empty((chunk.rows, *shape), dtype)
        for name, (shape, dtype) in model.outputs.items()
    }
    for b0 in range(0, chunk.rows, batch_size):
        b1 = min(b0 + batch_size, chunk.rows)
        rows = reader.read(chunk.start + b0, chunk.start + b1)
        for name, values in model.predict(rows).items():
            out[name][b0:b1] = values
    return out


def output_attrs(
    plan: Plan, rt: Runtime, compute_seconds: float, rank_metrics: list[dict]
) -> dict[str, Any]:
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
        },
        # Start of the run (before validation) to the last chunk done on any rank.
        "compute_seconds": compute_seconds,
        "rank_metrics": rank_metrics,
        "created_utc": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def run_job(job: Job, rt: Runtime) -> int:
    """Run `job` on every rank of `rt`; returns 0 once the complete output file exists."""
    t0 = time.perf_counter()
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
    rss_after_load = peak_rss_mb()
    load_seconds = time.perf_counter() - t0

    store = ChunkStore(plan.partial_dir)
    if rt.rank == 0:
        # No resume yet: leftovers of an earlier, interrupted run are discarded.
        shutil.rmtree(plan.partial_dir, ignore_errors=True)
        plan.partial_dir.mkdir(parents=True)
    rt.comm.Barrier()

    mine = [plan.chunks[i] for i in split_range(len(plan.chunks), grid.dp_rank, grid.dp_size)]
    t_loop = time.perf_counter()
    for done, chunk in enumerate(mine):
        faults.before_chunk(rt.rank, done)
        result = predict_chunk(plan.model, plan.reader, chunk, job.run.batch_size)
        if grid.is_leader:
            store.write(chunk.index, result)
    plan.reader.close()
    loop_seconds = time.perf_counter() - t_loop

    written = [c.index for c in mine] if grid.is_leader else []
    metrics = {
        "rank": rt.rank,
        "dp_rank": grid.dp_rank,
        "tp_rank": grid.tp_rank,
        "chunks": len(mine),
        "rows": sum(c.rows for c in mine),
        "load_seconds": load_seconds,  # start, validation, loading the model shard
        "loop_seconds": loop_seconds,  # reading, computing and writing this rank's chunks
        "collective_seconds": grid.tp_group.seconds,
        "collective_calls": grid.tp_group.calls,
        "weight_mb": plan.model.weight_bytes / 2**20,
        "peak_rss_mb_after_load": rss_after_load,
        "peak_rss_mb": peak_rss_mb(),
    }
    finished = rt.comm.gather((written, metrics), root=0)
    compute_seconds = time.perf_counter() - t0
    if rt.rank == 0:
        done_set = {i for written, _ in finished for i in written}
        missing = len(plan.chunks) - len(done_set)
        if missing:
            raise RunError(f"{missing} of {len(plan.chunks)} chunks were not computed")
        assemble_output(
            job.output.path,
            store,
            plan.chunks,
            plan.n_rows,
            plan.model.outputs,
            output_attrs(plan, rt, compute_seconds, [m for _, m in finished]),
        )
        shutil.rmtree(plan.partial_dir)
        wall = time.perf_counter() - t0
        shapes = ", ".join(
            f"{name} {(plan.n_rows, *shape)} {np.dtype(dt).name}"
            for name, (shape, dt) in plan.model.outputs.items()
        )
        print(
            f"hpcinfer: wrote {job.output.path}: {shapes}; {plan.n_rows} rows in {wall:.2f} s "
            f"({plan.n_rows / wall:,.0f} rows/s) on {rt.size} rank(s) (dp {grid.dp_size} x "
            f"tp {grid.tp}) x {rt.threads} thread(s)",
            file=sys.stdout,
            flush=True,
        )
    rt.comm.Barrier()  # nobody exits 0 before the output exists
    return 0
