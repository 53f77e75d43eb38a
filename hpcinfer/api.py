"""hpcinfer from Python: `hpcinfer.run(job)` in a notebook, a script, or under mpiexec.

    import hpcinfer
    out = hpcinfer.run("jobs/digits-mlp.toml")                     # a job file
    out = hpcinfer.run({"model": {"path": "data/models/digits-mlp"},  # or a job in code
                        "input": {"path": "data/digits.h5", "dataset": "x"},
                        "output": {"path": "out/digits.h5"}})

The same code runs as one rank (a notebook) or on every rank of `mpiexec -n N python
script.py`: each rank calls `run`, and all of them return the output's path once the
file is complete. A job is validated exactly as a job file is (relative paths in a dict
are resolved against `base`, default the working directory). Failures raise: `JobError`
for a bad job or input (what the command line reports with exit code 2), `Stopped` for a
stop signal or a full disk (exit code 75: call `run` again to resume), `RunError` else.

Threads per rank are set when MPI starts, before numpy is first imported where that is
still possible; in a notebook that already imported numpy, BLAS keeps its own count.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hpcinfer.errors import JobError, RunError
from hpcinfer.job import Job, job_from_dict, load_job


class Stopped(RunError):
    """The run stopped early (a signal, a full disk) with its progress durable: calling
    `run` again with the same job resumes it."""

    exit_code = 75


def as_job(job: Job | str | Path | Mapping[str, Any], base: Path | None = None) -> Job:
    if isinstance(job, Job):
        return job
    if isinstance(job, Mapping):
        return job_from_dict(job, base or Path.cwd())
    return load_job(job)


def run(
    job: Job | str | Path | Mapping[str, Any],
    *,
    restart: bool = False,
    overwrite: bool = False,
    quiet: bool = False,
    base: Path | None = None,
) -> Path:
    """Run (or resume) `job` on every rank of this process's MPI world; returns the
    output file's path once it is complete."""
    from hpcinfer.engine import RunOptions, run_job
    from hpcinfer.parallel.runtime import start
    from hpcinfer.schedule import stop

    job = as_job(job, base)
    rt = start(job.run.threads)
    stop.install()
    outcome = run_job(job, rt, RunOptions(restart=restart, overwrite=overwrite, quiet=quiet))
    message = outcome.message.removeprefix("hpcinfer: error: ")
    if outcome.code == JobError.exit_code:
        raise JobError(message)
    if outcome.code == Stopped.exit_code:
        raise Stopped(message)
    if outcome.code:
        raise RunError(message)
    return job.output.path
