"""Command line: argument parsing only; the work happens in engine.run_job.

mpirun -n 4 python -m hpcinfer run jobs/digits-mlp.toml
python -m hpcinfer run jobs/digits-mlp.toml --backend jax --set run.batch_size=512
"""

from __future__ import annotations

import argparse
import math
import os
import sys

from hpcinfer import __version__
from hpcinfer.errors import Agreed, JobError
from hpcinfer.job import describe_keys
from hpcinfer.parallel.runtime import launcher_rank

DESCRIPTION = """\
Distributed batch inference for HPC clusters. hpcinfer is an SPMD program: launch it
with mpirun/mpiexec/srun and every rank runs the same command; a plain `python -m
hpcinfer` is a one-rank run. Rows of the input are cut into chunks, each rank computes
its own block of chunks, and rank 0 writes one HDF5 file with every result in input order.
"""

RUN_EPILOG = """\
job file (TOML; relative paths are resolved against the job file's folder; every key,
its default and meaning):
{keys}

resuming: finished chunks are durable and journalled in OUTPUT.partial/; running the
same job again after an interruption (kill, crash, time limit) does only what is left,
on any number of ranks and any --tp. A partial run of a different job (other model
files, input, settings) is refused, naming what differs; --restart discards it. One run
per output at a time (OUTPUT.lock); an existing OUTPUT that is not this job's result is
replaced only with --overwrite; hpcinfer never deletes files it did not make.

signals: SIGTERM, SIGUSR1 (SLURM's warning before a time limit or preemption) or Ctrl-C
make every rank finish its chunk in hand and stop; the progress is durable; exit code
75. A second Ctrl-C aborts at once.

exit codes: 0 the complete output file exists; 75 stopped by a signal or a full disk,
rerun the same command to resume; 2 bad job, model, input or options (one line names
the file, key or line; nothing written); 1 a failure while running (the failing rank is
named, every rank stops).

examples:
  mpirun -n 2 python -m hpcinfer run jobs/digits-mlp.toml
  mpirun -n 4 python -m hpcinfer run jobs/big-mlp.toml --tp 2    # 2 DP groups x 2 TP ranks
  python -m hpcinfer run jobs/digits-mlp.toml --backend jax --set output.path=out/x.h5
  python -m hpcinfer status jobs/digits-mlp.toml
"""


class RankZeroParser(argparse.ArgumentParser):
    """Under mpiexec every rank parses the same command line: only rank 0 prints help,
    usage and errors; the others exit with the same code, silently."""

    def _print_message(self, message: str, file=None) -> None:
        if launcher_rank() == 0:
            super()._print_message(message, file)


def positive(kind: type) -> object:
    """An argparse type: a finite number > 0 of `kind` (int or float)."""

    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not math.isfinite(value) or value <= 0:
            raise argparse.ArgumentTypeError(f"must be a {kind.__name__} > 0, got {text!r}")
        return value

    parse.__name__ = f"positive {kind.__name__}"
    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = RankZeroParser(
        prog="python -m hpcinfer",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"hpcinfer {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = sub.add_parser(
        "run",
        help="run a job file (under mpirun for several ranks)",
        description="Run a job: every rank of the MPI launch computes its share of the rows.",
        epilog=RUN_EPILOG.format(keys=describe_keys()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument("job", help="the job file (TOML)")
    run.add_argument(
        "--backend",
        choices=("auto", "numpy", "jax", "cupy"),
        help="shorthand for --set run.backend=NAME",
    )
    run.add_argument("--threads", type=int, help="shorthand for --set run.threads=N")
    run.add_argument(
        "--tp",
        type=int,
        help="tensor-parallel ranks per model copy (shorthand for --set run.tp=N); "
        "the launch's ranks form (ranks / tp) data-parallel groups of tp consecutive ranks",
    )
    run.add_argument(
        "--restart",
        action="store_true",
        help="discard a partial (interrupted) run of this job and start again; without it "
        "an interrupted run is resumed, and a partial run of a different job is refused",
    )
    run.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing output.path that is not this job's finished result "
        "(without it such a file is refused, never overwritten)",
    )
    run.add_argument(
        "--dry-run",
        action="store_true",
        help="validate the job (model, input, output, layout) and print the plan: chunks "
        "per group, rows, memory per rank; compute nothing",
    )
    run.add_argument("--quiet", action="store_true", help="no live progress on rank 0")
    run.add_argument(
        "--progress-interval",
        type=positive(float),
        default=30.0,
        metavar="SECONDS",
        help="seconds between progress lines when stderr is not a terminal (default 30); "
        "on a terminal a progress bar is drawn instead",
    )
    add_set_option(run)
    status = sub.add_parser(
        "status",
        help="how far a run of a job got (chunks and rows done), without MPI",
        description="Print how far a run got: chunks done / total and rows done. Safe to "
        "run beside a running job: it only reads.",
    )
    status.add_argument("job", help="the job file (TOML)")
    add_set_option(status)
    report = sub.add_parser(
        "report",
        help="a finished run's report: per-rank timeline and throughput (PNG) and a summary",
        description="Draw what a finished run recorded (its chunk log and per-rank "
        "metrics): a timeline per DP group with owned, stolen and resumed chunks, the "
        "throughput over time, and a text summary (rows/s, efficiency, imbalance, time "
        "busy / idle / in collectives / in I/O). Nothing is re-run.",
    )
    report.add_argument("target", help="a job file (TOML), or the run's output .h5 file")
    report.add_argument(
        "--png", help="where to write the picture (default: OUTPUT.report.png next to the output)"
    )
    add_set_option(report)
    export = sub.add_parser(
        "export",
        help="a finished output as Parquet or JSONL (for pandas, Spark, jq)",
        description="Write a finished output's datasets as columns of a Parquet or JSONL "
        "file, rows in the same order, a block at a time. JSON has no NaN: those become "
        "null in JSONL.",
    )
    export.add_argument("output", help="the run's output .h5 file (or its job file)")
    export.add_argument("--to", required=True, metavar="FILE", help="the file to write")
    export.add_argument(
        "--format", choices=("parquet", "jsonl"), help="default: from the suffix of --to"
    )
    export.add_argument(
        "--datasets", metavar="A,B", help="only these datasets (default: every one)"
    )
    inspect = sub.add_parser(
        "inspect",
        help="a model's architecture, parameters, memory per rank for each tp, collectives",
        description="Describe a model folder from its config.json and safetensors header, "
        "or a GGUF file from its header (the weights are never read): parameter count, "
        "bytes per stored dtype, the tp values it can be split over, weight memory per rank "
        "and collectives per forward pass for each tensor-parallel size that fits; with "
        "--ranks and --mem-per-rank, a recommended DP x TP layout.",
    )
    inspect.add_argument(
        "model", help="model folder (config.json + model.safetensors) or a .gguf file"
    )
    inspect.add_argument("--tp", type=positive(int), help="show only this tensor-parallel size")
    inspect.add_argument("--ranks", type=positive(int), help="ranks you will launch (for a layout)")
    inspect.add_argument(
        "--mem-per-rank",
        type=positive(float),
        metavar="GB",
        help="memory each rank may use, in GiB (with --ranks)",
    )
    inspect.add_argument(
        "--dtype",
        default="float32",
        choices=("float32", "float64"),
        help="the compute dtype weights are held in (default float32)",
    )
    return parser


def add_set_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override a job-file value (repeatable), e.g. --set run.batch_size=64",
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "run":
        return _run(args)
    if args.command == "status":
        return _status(args)
    if args.command == "inspect":
        return _inspect(args)
    if args.command == "report":
        return _report(args)
    if args.command == "export":
        return _export(args)
    return 2


def _export(args: argparse.Namespace) -> int:
    from pathlib import Path

    from hpcinfer.tools.export import export

    source = Path(args.output)
    try:
        if source.suffix == ".toml":
            from hpcinfer.job import load_job

            source = load_job(source).output.path
        names = [n.strip() for n in args.datasets.split(",")] if args.datasets else None
        print(export(source, Path(args.to), args.format, names))
    except JobError as e:
        print(f"hpcinfer: error: {e}", file=sys.stderr)
        return e.exit_code
    return 0


def _report(args: argparse.Namespace) -> int:
    from pathlib import Path

    from hpcinfer.tools.report import main as report_main

    try:
        return report_main(Path(args.target), Path(args.png) if args.png else None, args.overrides)
    except JobError as e:
        print(f"hpcinfer: error: {e}", file=sys.stderr)
        return e.exit_code


def _inspect(args: argparse.Namespace) -> int:
    from pathlib import Path

    from hpcinfer.tools.inspect import inspect_model

    try:
        print(inspect_model(Path(args.model), args.tp, args.ranks, args.mem_per_rank, args.dtype))
    except JobError as e:
        print(f"hpcinfer: error: {e}", file=sys.stderr)
        return e.exit_code
    return 0


def _status(args: argparse.Namespace) -> int:
    from hpcinfer.job import load_job
    from hpcinfer.tools.status import main as status_main

    try:
        job = load_job(args.job, args.overrides)
    except JobError as e:
        print(f"hpcinfer: error: {e}", file=sys.stderr)
        return e.exit_code
    return status_main(job)


def _run(args: argparse.Namespace) -> int:
    # Parse the job before MPI and numpy: it decides the threads per rank.
    from hpcinfer.job import load_job
    from hpcinfer.parallel.runtime import agree, run_or_abort, start
    from hpcinfer.schedule import stop

    overrides = list(args.overrides)
    if args.backend:
        overrides.append(f"run.backend={args.backend!r}")
    if args.threads is not None:
        overrides.append(f"run.threads={args.threads}")
    if args.tp is not None:
        overrides.append(f"run.tp={args.tp}")
    job, error = None, None
    try:
        job = load_job(args.job, overrides)
    except JobError as e:
        error = e
    rt = start(job.run.threads if job else 0)
    stop.install()  # after MPI is up (its start-up must not replace our handlers)
    try:
        agree(rt, error)
    except Agreed as e:
        return e.exit_code

    from hpcinfer.engine import Hooks, RunOptions, run_job

    hooks = Hooks()
    if os.environ.get("HPCINFER_TESTING") == "1":  # fault injection: tests only
        from hpcinfer.testing.faults import hooks_from_env

        hooks = hooks_from_env()
    options = RunOptions(
        restart=args.restart,
        overwrite=args.overwrite,
        dry_run=args.dry_run,
        quiet=args.quiet,
        progress_interval=args.progress_interval,
    )
    try:
        return run_or_abort(rt, lambda: run_job(job, rt, options, hooks).code)
    except Agreed as e:
        return e.exit_code


if __name__ == "__main__":
    sys.exit(main())
