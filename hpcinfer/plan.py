"""Job -> plan: open the input, load the model, check they fit, cut the chunks.

Every check a user can fail happens here, on every rank, before any rank computes, so a
bad job costs seconds and ends with one line naming the file or key (exit code 2).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from hpcinfer.backends import get_backend
from hpcinfer.checkpoint.state import partial_dir_for
from hpcinfer.errors import JobError
from hpcinfer.io.inputs import Reader, open_input
from hpcinfer.job import Job
from hpcinfer.models import InputKind, Model, load_model
from hpcinfer.parallel.comm import collectives_for, resolve_tp_comm
from hpcinfer.parallel.grid import Grid, check_tp
from hpcinfer.parallel.runtime import Runtime, agree
from hpcinfer.schedule.chunks import Chunk, make_chunks


@dataclass(frozen=True)
class Plan:
    job: Job
    grid: Grid
    tp_comm: str  # the collective path actually used (run.tp_comm resolved)
    model: Model
    reader: Reader
    chunks: list[Chunk]
    partial_dir: Path  # where finished chunks live until the final file is assembled

    @property
    def n_rows(self) -> int:
        return self.reader.n_rows


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


def check_input_fits(job: Job, model: Model, reader: Reader) -> None:
    """The model reads what the input holds: texts for text models, rows of its shape."""
    wants, holds = model.input_kind, InputKind.ITEMS if reader.items else InputKind.ROWS
    if wants is not holds:
        what = reader.kind if reader.items else InputKind.ROWS.value
        raise JobError(
            f"{job.source}: the model {job.model.path} reads {wants.value}, but "
            f"input.path {reader.path} holds {what}"
        )
    if wants is InputKind.ROWS and reader.row_shape != model.row_shape:
        raise JobError(
            f"{reader.path}:{reader.dataset} rows have shape {reader.row_shape} but the model "
            f"{job.model.path} expects {model.row_shape} (input.dataset vs model)"
        )


def make_plan(job: Job, grid: Grid, local_rank: int = 0) -> Plan:
    """Validate `job` end to end and load this rank's shard of the model."""
    check_output_path(job)
    reader = open_input(job)
    backend = get_backend(job.run.backend, job.run.dtype, local_rank)
    tp_comm = resolve_tp_comm(job.run.backend, job.run.tp_comm)
    tp = collectives_for(grid.tp_group, job.run.backend, tp_comm)
    model = load_model(job.model.path, backend, job.run.dtype, tp, job.model.task)
    check_input_fits(job, model, reader)
    chunks = make_chunks(reader.n_rows, job.run.chunk_size)
    if len(chunks) >= 2**31:
        raise JobError(
            f"{job.source}: {len(chunks)} chunks is too many (limit 2**31): raise run.chunk_size"
        )
    return Plan(job, grid, tp_comm, model, reader, chunks, partial_dir_for(job.output.path))
