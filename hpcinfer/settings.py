"""What "auto" means: the run settings a job may leave to hpcinfer, decided once per run
(the same on every rank) and recorded in the output.

    backend           jax where it is installed, for the model families where it is
                      faster (text models: MiniLM on 2 ranks, warm, 131 against numpy's
                      112 texts/s); numpy otherwise, and numpy under --tp unless mpi4jax
                      is there: with the collectives staged through the host JAX runs
                      the forward op by op (MiniLM at tp 2: 22 against numpy's 107)
    chunk_size        rows / TARGET_CHUNKS, within [floor, CHUNK_MAX]: enough chunks that
                      every group gets several and stealing has grain on up to ~64 groups,
                      few enough that a chunk's fixed cost (a file, an fsync, a journal
                      line: a few ms) stays near 1 % of its compute. It depends on the row
                      count only, never on the rank count, so a run resumes on any layout.
    max_batch_tokens  padded tokens per text batch: 1024 on a CPU (measured fastest for
                      MiniLM: activations stay in cache, GEMMs are still large), 16384 on
                      a GPU; it bounds a batch's memory whatever the text lengths
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

from hpcinfer.job import Job

TARGET_CHUNKS = 256
TEXT_CHUNK_FLOOR = 128  # texts: enough to sort by length and pack well
ROW_CHUNK_FLOOR = 1024  # numeric rows: cheap each, so more per chunk
CHUNK_MAX = 8192
CPU_BATCH_TOKENS = 1024
GPU_BATCH_TOKENS = 16384


@dataclass(frozen=True)
class Settings:
    """The run settings in force: the job's own, or what "auto" chose."""

    backend: str
    chunk_size: int
    max_batch_tokens: int
    chosen: tuple[str, ...]  # which of them "auto" chose, for the run's first line
    batch_size: int = 0  # numeric rows: rows a batch (texts: max_batch_tokens instead)

    def describe(self) -> str:
        auto = {name: " (auto)" if name in self.chosen else "" for name in self.__annotations__}
        batch = (
            f"batch_size {self.batch_size:,}"
            if self.batch_size
            else f"max_batch_tokens {self.max_batch_tokens:,}{auto['max_batch_tokens']}"
        )
        return (
            f"backend {self.backend}{auto['backend']}, chunk_size {self.chunk_size:,}"
            f"{auto['chunk_size']}, {batch}"
        )


def auto_chunk_size(n_rows: int, texts: bool) -> int:
    floor = TEXT_CHUNK_FLOOR if texts else ROW_CHUNK_FLOOR
    return max(floor, min(CHUNK_MAX, -(-n_rows // TARGET_CHUNKS)))


def chunk_size_of(job: Job, n_rows: int, texts: bool) -> int:
    """The job's chunk_size, or the automatic one for `n_rows` rows."""
    setting = job.run.chunk_size
    return auto_chunk_size(n_rows, texts) if setting == "auto" else int(setting)


def auto_backend(prefers_jax: bool, tp: int = 1, tp_comm: str = "auto") -> str:
    if not prefers_jax or importlib.util.find_spec("jax") is None:
        return "numpy"
    # run.tp_comm = "auto" means mpi4jax where installed (parallel.comm.resolve_tp_comm;
    # not imported here: `status` reads settings without mpi4py)
    traceable = tp_comm == "mpi4jax" or (
        tp_comm == "auto" and importlib.util.find_spec("mpi4jax") is not None
    )
    return "jax" if tp == 1 or traceable else "numpy"


def on_gpu(backend: str) -> bool:
    if backend == "cupy":
        return True
    if backend != "jax":
        return False
    import jax

    return jax.default_backend() == "gpu"


def resolve(job: Job, n_rows: int, texts: bool, prefers_jax: bool) -> Settings:
    run, chosen = job.run, []
    backend = run.backend
    if backend == "auto":
        backend = auto_backend(prefers_jax, run.tp, run.tp_comm)
        chosen = [*chosen, "backend"]
    if run.chunk_size == "auto":
        chosen.append("chunk_size")
    tokens = run.max_batch_tokens
    if tokens == 0:
        tokens = GPU_BATCH_TOKENS if on_gpu(backend) else CPU_BATCH_TOKENS
        chosen.append("max_batch_tokens")
    rows = 0 if texts else run.batch_size
    return Settings(backend, chunk_size_of(job, n_rows, texts), tokens, tuple(chosen), rows)
