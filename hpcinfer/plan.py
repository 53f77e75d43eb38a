"""Job -> plan: open the input, load the model, check they fit, cut the chunks.

Every check a user can fail happens here, on every rank, before any rank computes, so a
bad job costs seconds and ends with one line naming the file or key (exit code 2).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, replace
from pathlib import Path

from hpcinfer.backends import get_backend
from hpcinfer.checkpoint.columns import Column, output_columns
from hpcinfer.checkpoint.lock import lock_path_for
from hpcinfer.checkpoint.state import our_partial_dir, partial_dir_for
from hpcinfer.errors import JobError
from hpcinfer.io import keep as kept_columns
from hpcinfer.io.inputs import Reader, open_input
from hpcinfer.job import Job
from hpcinfer.models import InputKind, Model, OutputSpec, family_of, load_model, read_config
from hpcinfer.parallel.comm import collectives_for, resolve_tp_comm
from hpcinfer.parallel.grid import Grid, check_tp
from hpcinfer.parallel.partition import split_range
from hpcinfer.parallel.runtime import Runtime, agree
from hpcinfer.schedule.chunks import Chunk, make_chunks
from hpcinfer.settings import Settings
from hpcinfer.settings import resolve as resolve_settings


@dataclass(frozen=True)
class Plan:
    job: Job
    grid: Grid
    tp_comm: str  # the collective path actually used (run.tp_comm resolved)
    settings: Settings  # backend, chunk_size, max_batch_tokens: the job's or auto's
    model: Model
    reader: Reader
    chunks: list[Chunk]
    partial_dir: Path  # where finished chunks live until the final file is assembled
    columns: dict[str, Column]  # the output's datasets: model outputs and kept columns

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
        plan = make_plan(job, grid, rt.local_rank, rt.rank, rt.size)
    except JobError as e:
        error = e
    agree(rt, error)
    assert plan is not None  # agree() raised otherwise
    if plan.reader.keep:  # kept columns' types, from every rank's share
        notes = rt.comm.allgather(plan.reader.kinds)
        try:
            plan = replace(plan, columns=plan_columns(job, plan.model, plan.reader, notes))
        except JobError as e:
            error = e
        try:
            agree(rt, error)
        except JobError:
            plan.reader.close()
            raise
    return plan


def warn_idle_ranks(plan: Plan, pending: int) -> None:
    """Fewer chunks to compute than data-parallel groups: some ranks will only wait."""
    groups = plan.grid.dp_size
    if 0 < pending < groups:
        print(
            f"hpcinfer: warning: {pending} chunk(s) for {groups} data-parallel groups: "
            f"{groups - pending} group(s) ({(groups - pending) * plan.grid.tp} rank(s)) will "
            f"idle; lower run.chunk_size (now {plan.settings.chunk_size}) or launch fewer ranks",
            file=sys.stderr,
            flush=True,
        )


def check_output_path(job: Job, reader: Reader) -> None:
    """The output (and its .partial folder and .lock) may be created, and never aliases a
    file the job reads: compared by resolved path and by device and inode, so `..`, `//`,
    symlinks and hard links are all caught."""
    check_output_place(job)
    check_no_alias(job, reader)


def check_output_place(job: Job) -> None:
    """The output's folder exists or can be made, is writable, and takes its name and
    the names hpcinfer puts beside it."""
    out, where = job.output.path, f"{job.source}: output.path {job.output.path}"
    _exists(out, where)  # a name too long, a loop: one line
    if out.is_dir():
        raise JobError(f"{where} is a folder; expected a file path")
    parent = out.parent
    while not _exists(parent, where):
        if os.path.lexists(parent):
            raise JobError(f"{where}: {parent} is a symbolic link to nothing")
        parent = parent.parent
    if not parent.is_dir():
        raise JobError(f"{where}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise JobError(f"{where}: folder {parent} is not writable")
    name_max = _name_max(parent)
    longest = len(os.fsencode(out.name)) + NAME_EXTRA
    if longest > name_max:
        raise JobError(
            f"{where}: the file name is {longest - NAME_EXTRA} bytes long; at most "
            f"{name_max - NAME_EXTRA} can be used here (hpcinfer writes OUTPUT.partial, "
            "OUTPUT.lock and temporary names of up to 45 bytes more beside it)"
        )


def check_no_alias(job: Job, reader: Reader) -> None:
    """The output, its .partial folder and .lock are none of the files the job reads."""
    out, where = job.output.path, f"{job.source}: output.path {job.output.path}"
    model = job.model.path
    read = [job.source, *reader.sources(), model]
    if model.is_dir():
        read += [p for p in model.rglob("*") if p.is_file()]
    read_paths = {os.path.realpath(p) for p in read}
    read_ids = {(st.st_dev, st.st_ino) for p in read if (st := _stat(p))}
    for target in (out, partial_dir_for(out), lock_path_for(out)):
        st = _stat(target)
        if os.path.realpath(target) in read_paths or (st and (st.st_dev, st.st_ino) in read_ids):
            raise JobError(f"{where}: {target} is a file this job reads; refusing to write it")
    real_model = os.path.realpath(model)
    if model.is_dir() and os.path.realpath(out).startswith(real_model + os.sep):
        raise JobError(f"{where} is inside the model folder {model}; choose another place")


# The longest name hpcinfer derives from the output's: .assembling-<32 hex>-NAME
NAME_EXTRA = 45


def _exists(path: Path, where: str) -> bool:
    try:
        path.stat()
    except FileNotFoundError:
        return False
    except NotADirectoryError:  # a file on the way: the loop reaches it
        return False
    except OSError as e:  # a name too long, a loop of symbolic links, no permission
        raise JobError(f"{where}: {path}: {e.strerror or e}") from None
    return True


def _name_max(folder: Path) -> int:
    try:
        return os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError):
        return 255


def _stat(path: Path) -> os.stat_result | None:
    try:
        return path.stat()
    except OSError:  # missing, a dangling link, a loop: nothing to alias
        return None


def check_input_fits(job: Job, model: Model, reader: Reader) -> None:
    """The model reads what the input holds: texts for text models, rows of its shape."""
    wants, holds = model.input_kind, InputKind.ITEMS if reader.items else InputKind.ROWS
    if wants is not holds:
        what = reader.kind if reader.items else InputKind.ROWS.value
        raise JobError(
            f"{job.source}: the model {job.model.path} reads {wants.value}, but "
            f"input.path {reader.path} holds {what}"
        )
    if reader.items and reader.texts_only and not model.reads_texts:
        raise JobError(
            f"{reader.path} holds texts, but the model folder {job.model.path} has no "
            "tokenizer (tokenizer.json, vocab.json + merges.txt, or vocab.txt): give token "
            "ids instead"
        )
    if wants is InputKind.ROWS and reader.row_shape != model.row_shape:
        raise JobError(
            f"{reader.path}:{reader.dataset} rows have shape {reader.row_shape} but the model "
            f"{job.model.path} expects {model.row_shape} (input.dataset vs model)"
        )


def check_rows(job: Job, model: Model, reader: Reader, rank: int, size: int) -> None:
    """Rows fit in memory and parse: text rows are cut to what the model's tokenizer can
    use, a batch of numeric rows must fit in memory, and this rank checks its 1/size share
    of the rows (a bad JSONL line is then found here, not when its chunk runs; agree()
    reports the lowest)."""
    if model.input_kind is InputKind.ITEMS:
        reader.set_cut(model.text_cut())
    else:
        reader.check_batch(job.run.batch_size, job.run.dtype)
    reader.validate(split_range(reader.n_rows, rank, size))


def plan_columns(
    job: Job,
    model: Model,
    reader: Reader,
    notes: list[dict[str, kept_columns.Kinds]],
    strict: bool = True,
) -> dict[str, Column]:
    """The output's datasets; `notes` are every rank's kinds of the kept columns (not
    `strict`: one rank's, whose mixed kinds validated_plan reports from all ranks' notes,
    so the message does not depend on the rank count)."""
    kept = {}
    for name in reader.keep:
        kind = kept_columns.merge(name, [n[name] for n in notes], strict)
        shape, dtype = kept_columns.kind_spec(kind)
        kept[name] = OutputSpec(shape, dtype)
    datasets, dtype = job.output.datasets, job.output.dtype
    return output_columns(model.outputs, datasets, dtype, kept, str(job.source))


def make_plan(
    job: Job,
    grid: Grid,
    local_rank: int = 0,
    rank: int = 0,
    size: int = 1,
) -> Plan:
    """Validate `job` end to end and load this rank's shard of the model; `rank` of `size`
    (world) checks its share of the input rows (the kept columns' types are this rank's:
    validated_plan merges every rank's)."""
    kept_columns.check_names(job.output.keep, str(job.source))
    check_output_place(job)
    reader = open_input(job, our_partial_dir(job.output.path))
    try:
        check_no_alias(job, reader)
        family = family_of(job.model.path, read_config(job.model.path))
        settings = resolve_settings(job, reader.n_rows, reader.items, family.fast_backend == "jax")
        backend = get_backend(settings.backend, job.run.dtype, local_rank)
        tp_comm = resolve_tp_comm(settings.backend, job.run.tp_comm)
        tp = collectives_for(grid.tp_group, settings.backend, tp_comm)
        model = load_model(
            job.model.path,
            backend,
            job.run.dtype,
            tp,
            job.model.task,
            prompt_name=job.model.prompt_name,
            pooling=job.model.pooling,
        )
        check_input_fits(job, model, reader)
        check_rows(job, model, reader, rank, size)
        columns = plan_columns(job, model, reader, [reader.kinds], strict=False)
        chunks = make_chunks(reader.n_rows, settings.chunk_size)
        if len(chunks) >= 2**31:
            raise JobError(
                f"{job.source}: {len(chunks)} chunks is too many (limit 2**31): "
                "raise run.chunk_size"
            )
    except BaseException:
        reader.close()
        raise
    partial = partial_dir_for(job.output.path)
    return Plan(job, grid, tp_comm, settings, model, reader, chunks, partial, columns)
