"""`run --dry-run`: validate a job and print its plan, computing nothing."""

from __future__ import annotations

import numpy as np

from hpcinfer.errors import JobError
from hpcinfer.io.inputs import describe_reader
from hpcinfer.io.output import output_fingerprint
from hpcinfer.journal import check_partial_run, fingerprint, job_identity, read_progress
from hpcinfer.partition import split_range
from hpcinfer.plan import Plan
from hpcinfer.runtime import Runtime


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:,.1f} {unit}" if unit != "B" else f"{n:,.0f} B"
        n /= 1024
    return f"{n:,.1f} TiB"


def print_dry_run(plan: Plan, rt: Runtime) -> None:
    """The plan of a validated job, printed by rank 0; reads the partial run, writes nothing."""
    grid, job = plan.grid, plan.job
    weights = rt.comm.gather(plan.model.weight_bytes, root=0)
    if rt.rank != 0:
        return
    blocks = [len(split_range(len(plan.chunks), g, grid.dp_size)) for g in range(grid.dp_size)]
    out_bytes = sum(
        np.prod(shape, dtype=np.int64) * np.dtype(dt).itemsize
        for shape, dt in plan.model.outputs.values()
    )
    row_bytes = 0  # texts: token ids, small next to the activations
    results_rows = job.run.chunk_size  # texts: a chunk's outputs are written at its end
    if not plan.reader.items:
        results_rows = job.run.batch_size  # rows: each batch's outputs are written at once
        row_bytes = np.prod(plan.reader.row_shape, dtype=np.int64) * plan.reader.dtype.itemsize
    batch = job.run.batch_size
    identity = job_identity(job, plan.reader)
    try:
        state = check_partial_run(plan.partial_dir, identity, job.source)
    except JobError as e:
        state, resume = "foreign", f"refused: {e}"
    if state == "resume":
        progress = read_progress(plan.partial_dir, len(plan.chunks), verify_files=False)
        resume = f"would resume a partial run: {len(progress.done)} chunks already done"
    elif state == "foreign":
        pass
    elif output_fingerprint(job.output.path) == fingerprint(identity):
        resume = f"{job.output.path} is already complete for this job: nothing to compute"
    elif job.output.path.exists():
        resume = f"a fresh run; the existing {job.output.path} would be replaced"
    else:
        resume = "a fresh run"
    print(
        f"hpcinfer: dry run: {job.source} is valid; nothing computed\n"
        f"  model   {job.model.path} ({plan.model.describe().get('model_type')}), weights "
        f"{human_bytes(max(weights))} per rank (largest), {human_bytes(sum(weights))} in all\n"
        f"  input   {plan.reader.path}:{plan.reader.dataset}, {describe_reader(plan.reader)}\n"
        f"  output  {job.output.path}: "
        + ", ".join(
            f"{n} {(plan.n_rows, *sh)} {np.dtype(dt).name}"
            for n, (sh, dt) in plan.model.outputs.items()
        )
        + f"\n  layout  {rt.size} rank(s) = {grid.dp_size} DP group(s) x tp {grid.tp}, "
        f"{rt.threads} thread(s) per rank, backend {job.run.backend} ({plan.tp_comm}), "
        f"balance {job.run.balance}\n"
        f"  chunks  {len(plan.chunks):,} of {job.run.chunk_size:,} rows; first blocks per DP "
        f"group: {blocks if len(blocks) <= 16 else f'{min(blocks)} to {max(blocks)}'} chunks\n"
        f"  memory  per rank ~ weights {human_bytes(max(weights))} + activations "
        f"{human_bytes(plan.model.activation_bytes(batch))} + input batch "
        f"{human_bytes(batch * row_bytes) if row_bytes else 'small'} + results held "
        f"{human_bytes(results_rows * out_bytes)}\n"
        f"  resume  {resume}",
        flush=True,
    )
