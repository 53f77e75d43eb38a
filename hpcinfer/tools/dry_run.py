"""`run --dry-run`: validate a job and print its plan, computing nothing."""

from __future__ import annotations

import contextlib

import numpy as np

from hpcinfer.checkpoint.columns import stored_type
from hpcinfer.checkpoint.identity import job_identity
from hpcinfer.checkpoint.lock import lock_path_for, read_holder
from hpcinfer.checkpoint.state import ResumeState, Start, resume_state
from hpcinfer.errors import JobError
from hpcinfer.io.file_checks import human_bytes
from hpcinfer.io.inputs import describe_reader
from hpcinfer.models import InputKind
from hpcinfer.parallel.partition import split_range
from hpcinfer.parallel.runtime import Runtime
from hpcinfer.plan import Plan


def describe_start(plan: Plan, state: ResumeState) -> str:
    """What a run would do with the partial run, the output and the lock it finds."""
    out, folder = plan.job.output.path, plan.partial_dir
    holder = None
    with contextlib.suppress(JobError):
        holder = read_holder(lock_path_for(out))
    if holder is not None and not holder.stale():
        return f"refused: {holder.describe()} holds this output"
    if state.start is Start.RESUME:
        return f"would resume a partial run: {len(state.progress.done)} chunks already done"
    if state.start is Start.FOREIGN:
        return (
            f"refused: {folder}: a partial run of a different job is here "
            f"({', '.join(state.differs)} differ); --restart would discard it"
        )
    if state.start is Start.NOT_OURS:
        return f"refused: {folder} exists and hpcinfer did not make it"
    if state.start is Start.DAMAGED:
        return f"refused: {state.problem}; --restart would discard the partial run"
    if state.start is Start.UNSTARTED:
        return f"{folder} is a run that died before it started: it would be discarded"
    if state.start is Start.COMPLETE:
        return f"{out} is already complete for this job: nothing to compute"
    if out.exists() or out.is_symlink():
        return f"refused: {out} exists and is not this job's output (--overwrite replaces it)"
    return "a fresh run"


def where(plan: Plan) -> str:
    """The input as the user named it: a file, and the HDF5 dataset when there is one."""
    reader = plan.reader
    hdf5 = not reader.items or reader.kind.startswith("hdf5")
    return f"{reader.path}:{reader.dataset}" if hdf5 else str(reader.path)


def print_dry_run(plan: Plan, rt: Runtime) -> None:
    """The plan of a validated job, printed by rank 0; reads the partial run, writes nothing."""
    grid, job, model, settings = plan.grid, plan.job, plan.model, plan.settings
    weights = rt.comm.gather(model.weight_bytes, root=0)
    if rt.rank != 0:
        return
    blocks = [len(split_range(len(plan.chunks), g, grid.dp_size)) for g in range(grid.dp_size)]
    out_bytes = sum(c.spec.row_bytes for c in plan.columns.values())
    row_bytes = 0  # texts: token ids, small next to the activations
    results_rows = settings.chunk_size  # texts: a chunk's outputs are written at its end
    batch = settings.max_batch_tokens  # texts: a batch is this many (padded) tokens
    if model.input_kind is InputKind.ROWS:
        batch = results_rows = job.run.batch_size  # rows: each batch's written at once
        row_bytes = np.prod(plan.reader.row_shape, dtype=np.int64) * plan.reader.dtype.itemsize
    identity = job_identity(job, plan.reader, settings.chunk_size)
    state = resume_state(job.output.path, identity, len(plan.chunks), verify_files=False)
    print(
        f"hpcinfer: dry run: {job.source} is valid; nothing computed\n"
        f"  model   {job.model.path} ({model.describe().get('model_type')}), weights "
        f"{human_bytes(max(weights))} per rank (largest), {human_bytes(sum(weights))} in all\n"
        f"  input   {where(plan)}, {describe_reader(plan.reader)}\n"
        f"  output  {job.output.path}: "
        + ", ".join(
            f"{n} {(plan.n_rows, *c.spec.shape)} {stored_type(c)}" + (" (kept)" if c.kept else "")
            for n, c in plan.columns.items()
        )
        + f"\n  layout  {rt.size} rank(s) = {grid.dp_size} DP group(s) x tp {grid.tp}, "
        f"{rt.threads} thread(s) per rank, {settings.describe()}, tp_comm {plan.tp_comm}, "
        f"balance {job.run.balance}\n"
        f"  chunks  {len(plan.chunks):,} of {settings.chunk_size:,} rows; first blocks per DP "
        f"group: {blocks if len(blocks) <= 16 else f'{min(blocks)} to {max(blocks)}'} chunks\n"
        f"  memory  per rank ~ weights {human_bytes(max(weights))} + activations "
        f"{human_bytes(model.activation_bytes(batch))} + input batch "
        f"{human_bytes(batch * row_bytes) if row_bytes else 'small'} + results held "
        f"{human_bytes(results_rows * out_bytes)}\n"
        f"  resume  {describe_start(plan, state)}",
        flush=True,
    )
