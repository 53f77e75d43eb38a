"""What the output file says about the run that made it: model, input, job, layout,
per-rank metrics and the balance summary (read back by `report`)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from hpcinfer import __version__
from hpcinfer.checkpoint.identity import fingerprint
from hpcinfer.parallel.runtime import Runtime
from hpcinfer.plan import Plan


def input_description(reader: Any) -> dict[str, Any]:
    """What the input really was: its format (and compression), and the dataset (HDF5)
    or field, and the kept columns."""
    return reader.describe()


def balance_summary(metrics: list[dict[str, Any]], wall: float) -> dict[str, float]:
    """Imbalance = max busy / mean busy; efficiency = total busy / (ranks x wall)."""
    busy = [m["busy_seconds"] for m in metrics]
    mean = sum(busy) / len(busy)
    return {
        "wall_seconds": wall,
        "imbalance": max(busy) / mean if mean > 0 else 1.0,
        "efficiency": sum(busy) / (len(busy) * wall) if wall > 0 else 1.0,
        "stolen_chunks": sum(m["stolen_chunks"] for m in metrics),
        "steals": sum(m["steals"] for m in metrics),
    }


def output_attrs(
    plan: Plan,
    rt: Runtime,
    compute_seconds: float,
    metrics: list[dict[str, Any]],
    identity: dict[str, Any],
    resumed_chunks: int,
    epoch: float,
) -> dict[str, Any]:
    job = plan.job
    return {
        "hpcinfer_version": __version__,
        "job_fingerprint": fingerprint(identity),
        "resumed_chunks": resumed_chunks,  # chunks computed by earlier, interrupted runs
        "model_path": str(job.model.path),
        # weights by file size, mtime and header hash; small files by content hash
        "model_identity": {k: v for k, v in identity.items() if k.startswith("model ")},
        "model": plan.model.describe(),
        "input_path": str(job.input.path),
        "input": input_description(plan.reader),
        "n_rows": plan.n_rows,
        "job_file": str(job.source.resolve()),
        "job": job.options(),
        "layout": {
            "ranks": rt.size,
            "dp": plan.grid.dp_size,
            "tp": plan.grid.tp,
            "tp_comm": plan.tp_comm,
            "threads_per_rank": rt.threads,
            "backend": plan.settings.backend,
            "max_batch_tokens": plan.settings.max_batch_tokens,
            "auto": list(plan.settings.chosen),  # the settings "auto" chose
            "dtype": job.run.dtype,
            "chunk_size": plan.settings.chunk_size,
            "n_chunks": len(plan.chunks),
            "balance": job.run.balance,
        },
        # Start of the run (before validation) to the last chunk done on any rank.
        "compute_seconds": compute_seconds,
        "loop_start_unix": epoch,  # run/chunks times are seconds after this
        "rank_metrics": metrics,
        # rows cut before tokenizing or truncated to the model's length (text models;
        # each TP group counts its rows once)
        "rows_truncated": sum(
            m["rows_truncated"] for m in metrics if m["tp_rank"] == 0 and "rows_truncated" in m
        ),
        "balance_summary": balance_summary(metrics, max(m["loop_seconds"] for m in metrics)),
        "created_utc": datetime.now(UTC).isoformat(timespec="seconds"),
    }
