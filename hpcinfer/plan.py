"""Job -> plan: open the input, load the model, check they fit, cut the chunks.

Every check a user can fail happens here, on every rank, before any rank computes, so a
bad job costs seconds and ends with one line naming the file or key (exit code 2).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hpcinfer.backends import get_backend
from hpcinfer.comm import collectives_for, resolve_tp_comm
from hpcinfer.errors import JobError
from hpcinfer.grid import Grid
from hpcinfer.io.inputs import Reader, open_input
from hpcinfer.job import Job
from hpcinfer.journal import partial_dir_for
from hpcinfer.models import Model, load_model
from hpcinfer.schedule import Chunk, make_chunks


@dataclass
class Plan:
    job: Job
    grid: Grid
    tp_comm: str  # the collective path actually used (run.tp_comm resolved)
    backend: Any
    model: Model
    reader: Reader
    chunks: list[Chunk]
    partial_dir: Path  # where finished chunks live until the final file is assembled

    @property
    def n_rows(self) -> int:
        return self.reader.n_rows


def check_output_path(job: Job) -> None:
    out = job.output.path
    if out.is_dir():
        raise JobError(f"{job.source}: output.path {out} is a folder; expected a file path")
    if out == job.input.path:
        raise JobError(f"{job.source}: output.path is the input file {out}; refusing to overwrite")
    parent = out.parent
    while not parent.exists():
        parent = parent.parent
    if not os.access(parent, os.W_OK):
        raise JobError(f"{job.source}: output.path {out}: folder {parent} is not writable")


def make_plan(job: Job, grid: Grid, local_rank: int = 0) -> Plan:
    """Validate `job` end to end and load this rank's shard of the model."""
    check_output_path(job)
    reader = open_input(job)
    backend = get_backend(job.run.backend, job.run.dtype, local_rank)
    tp_comm = resolve_tp_comm(job.run.backend, job.run.tp_comm)
    tp = collectives_for(grid.tp_group, job.run.backend, tp_comm)
    model = load_model(job.model.path, backend, job.run.dtype, tp, grid.tp_rank, job.model.task)
    if (model.row_shape is None) != reader.items:
        wants = "texts or token ids" if model.row_shape is None else "numeric rows (HDF5)"
        holds = reader.kind if reader.items else "numeric rows (HDF5)"
        raise JobError(
            f"{job.source}: the model {job.model.path} reads {wants}, but "
            f"input.path {reader.path} holds {holds}"
        )
    if model.row_shape is not None and reader.row_shape != model.row_shape:
        raise JobError(
            f"{reader.path}:{reader.dataset} rows have shape {reader.row_shape} but the model "
            f"{job.model.path} expects {model.row_shape} (input.dataset vs model)"
        )
    chunks = make_chunks(reader.n_rows, job.run.chunk_size)
    if len(chunks) >= 2**31:
        raise JobError(
            f"{job.source}: {len(chunks)} chunks is too many (limit 2**31): raise run.chunk_size"
        )
    return Plan(
        job=job,
        grid=grid,
        tp_comm=tp_comm,
        backend=backend,
        model=model,
        reader=reader,
        chunks=chunks,
        partial_dir=partial_dir_for(job.output.path),
    )
