"""hpcinfer: distributed batch inference for HPC clusters.

This module must stay import-light (no numpy, no jax): the runtime sets each rank's
thread limits before those libraries are first imported.
"""

__version__ = "0.1.0"


def __getattr__(name: str):  # run, Job, ...: imported on first use, keeping this light
    if name in ("run", "Stopped"):
        from hpcinfer import api

        return getattr(api, name)
    if name in ("Job", "load_job", "job_from_dict"):
        from hpcinfer import job

        return getattr(job, name)
    if name in ("JobError", "RunError", "DiskError"):
        from hpcinfer import errors

        return getattr(errors, name)
    raise AttributeError(f"module 'hpcinfer' has no attribute {name!r}")
