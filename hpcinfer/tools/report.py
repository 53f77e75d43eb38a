"""`python -m hpcinfer report JOB.toml | OUTPUT.h5`: what a finished run did, as a picture.

Everything comes from what the run recorded in its output file (the run/chunks log and
the rank_metrics / balance_summary attributes); nothing is re-run. Writes
`<output>.report.png`: a timeline with one lane per DP group (each chunk a bar, owned or
stolen; chunks done by earlier, interrupted runs in their own lane) and the throughput
over time, and prints a text summary.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from hpcinfer.errors import JobError
from hpcinfer.io.file_checks import error_text


@dataclass
class RunRecord:
    path: Path
    chunks: np.ndarray  # run/chunks: index, dp_rank, start, end, stolen, resumed
    metrics: list[dict]
    summary: dict
    layout: dict
    n_rows: int
    chunk_rows: np.ndarray  # rows of each chunk, by index


RUN_ATTRS = ("layout", "n_rows", "rank_metrics", "balance_summary")
CHUNK_FIELDS = ("index", "dp_rank", "start", "end", "stolen", "resumed")


def load_run(path: Path) -> RunRecord:
    """What a finished run recorded in its output; a file that is not one (damaged,
    truncated, another program's, an older hpcinfer's) is one JobError line naming it."""
    if not h5py.is_hdf5(path):
        raise JobError(f"{path}: not an HDF5 file (not an hpcinfer output)")
    try:
        with h5py.File(path, "r") as f:
            if "run/chunks" not in f:
                raise JobError(f"{path}: no run/chunks log (not written by hpcinfer >= 0.1)")
            return _record(path, f)
    except (OSError, RuntimeError, KeyError) as e:
        raise JobError(f"{path}: cannot read the run's output file ({error_text(e)})") from None


def _record(path: Path, f: h5py.File) -> RunRecord:
    missing = [key for key in RUN_ATTRS if key not in f.attrs]
    chunks = f["run/chunks"]
    missing += [
        f"run/chunks field {name!r}"
        for name in CHUNK_FIELDS
        if name not in (chunks.dtype.names or ())
    ]
    if missing:
        raise JobError(f"{path}: not a complete hpcinfer output (missing {', '.join(missing)})")
    try:
        layout = json.loads(f.attrs["layout"])
        n_rows = int(f.attrs["n_rows"])
        size = int(layout["chunk_size"])
        chunk_rows = np.minimum(size, n_rows - np.arange(int(layout["n_chunks"])) * size)
        metrics, summary = (
            json.loads(f.attrs["rank_metrics"]),
            json.loads(f.attrs["balance_summary"]),
        )
        log = chunks[:]
        if len(log) and (log["index"].min() < 0 or log["index"].max() >= len(chunk_rows)):
            raise ValueError("run/chunks names chunks the layout does not have")
    except (ValueError, TypeError, KeyError, IndexError) as e:
        raise JobError(f"{path}: its run record is damaged ({error_text(e)})") from None
    return RunRecord(path, log, metrics, summary, layout, n_rows, chunk_rows)


def report_data(run: RunRecord) -> dict:
    """The numbers the report shows (tested directly; the picture draws these)."""
    this = run.chunks[~run.chunks["resumed"]]
    groups = run.layout["dp"]
    per_group = np.bincount(this["dp_rank"], minlength=groups)
    stolen = np.bincount(this["dp_rank"][this["stolen"]], minlength=groups)
    rows_this_run = int(run.chunk_rows[this["index"]].sum())
    wall = run.summary["wall_seconds"]
    split = {
        key: sum(m[f"{key}_seconds"] for m in run.metrics)
        for key in ("busy", "idle", "collective", "io")
    }
    leaders = [m for m in run.metrics if m["tp_rank"] == 0 and "tokens_real" in m]
    return {
        "groups": groups,
        # text models: tokens of text / tokens computed (padding included); None otherwise
        "tokens": (
            (sum(m["tokens_real"] for m in leaders), sum(m["tokens_computed"] for m in leaders))
            if leaders
            else None
        ),
        "chunks_per_group": per_group.tolist(),
        "stolen_per_group": stolen.tolist(),
        "resumed_chunks": int(run.chunks["resumed"].sum()),
        "rows_this_run": rows_this_run,
        "rows_per_second": rows_this_run / wall if wall > 0 else 0.0,
        "efficiency": run.summary["efficiency"],
        "imbalance": run.summary["imbalance"],
        "wall_seconds": wall,
        "seconds_by_kind": split,
    }


def text_summary(run: RunRecord, data: dict) -> str:
    s = data["seconds_by_kind"]
    total = s["busy"] + s["idle"] or 1.0
    return "\n".join(
        [
            (
                f"{run.path}: {run.layout['ranks']} rank(s), {data['groups']} DP group(s) x tp "
                f"{run.layout['tp']}, balance {run.layout['balance']}"
            ),
            f"  {data['rows_this_run']:,} rows in {data['wall_seconds']:.2f} s this run: "
            f"{data['rows_per_second']:,.0f} rows/s"
            + (
                f" (+ {data['resumed_chunks']} chunks from earlier runs)"
                if data["resumed_chunks"]
                else ""
            ),
            f"  efficiency {data['efficiency']:.1%}, imbalance {data['imbalance']:.3f}",
            (
                f"  rank time: busy {s['busy'] / total:.1%} (of which I/O {s['io'] / total:.1%}, "
                f"collectives {s['collective'] / total:.1%}), idle {s['idle'] / total:.1%}"
            ),
            "  chunks per DP group: "
            + ", ".join(
                f"{c} ({st} stolen)"
                for c, st in zip(data["chunks_per_group"], data["stolen_per_group"], strict=True)
            ),
        ]
        + (
            [
                (
                    f"  tokens: {data['tokens'][0]:,} of text in {data['tokens'][1]:,} computed "
                    f"(padding efficiency {data['tokens'][0] / max(1, data['tokens'][1]):.1%})"
                )
            ]
            if data["tokens"]
            else []
        )
    )


def render(run: RunRecord, data: dict, png: Path) -> None:
    try:
        import matplotlib
    except ImportError:
        raise JobError("the report needs matplotlib: pip install -e '.[report]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    this = run.chunks[~run.chunks["resumed"]]
    earlier = run.chunks[run.chunks["resumed"]]
    groups = data["groups"]
    fig, (ax, ax2) = plt.subplots(
        2,
        1,
        figsize=(11, 2.2 + 0.45 * groups + 2.6),
        gridspec_kw={"height_ratios": [max(2, groups * 0.45), 2.2]},
    )
    colours = {False: "#4c72b0", True: "#dd8452"}
    for stolen in (False, True):
        sel = this[this["stolen"] == stolen]
        ax.barh(
            sel["dp_rank"],
            sel["end"] - sel["start"],
            left=sel["start"],
            height=0.7,
            color=colours[stolen],
            edgecolor="white",
            linewidth=0.3,
            label="stolen" if stolen else "own block",
        )
    lanes = [f"DP {g}" for g in range(groups)]
    if len(earlier):
        ax.barh(
            np.full(len(earlier), groups),
            earlier["end"] - earlier["start"],
            left=earlier["start"],
            height=0.7,
            color="#bbbbbb",
            hatch="//",
            label=f"earlier runs ({len(earlier)} chunks, resumed)",
        )
        lanes.append("earlier runs")
    ax.set_yticks(range(len(lanes)), lanes)
    ax.invert_yaxis()
    ax.set_xlabel("seconds since this run's start")
    ax.set_title(
        f"{run.path.name}: {data['rows_per_second']:,.0f} rows/s, efficiency "
        f"{data['efficiency']:.1%}, imbalance {data['imbalance']:.3f}"
    )
    ax.legend(loc="lower right", fontsize=8)

    if len(this):
        ends = np.sort(this["end"])
        rows = run.chunk_rows[this["index"]][np.argsort(this["end"])]
        n_bins = max(2, min(40, len(ends) // max(1, groups)))  # ~ one chunk per group per bin
        bins = np.linspace(0, max(ends.max(), 1e-9), n_bins + 1)
        per_bin, _ = np.histogram(ends, bins=bins, weights=rows)
        width = bins[1] - bins[0]
        ax2.step(bins[1:], per_bin / width, where="pre", color="#4c72b0")
        ax2.set_ylabel("rows/s")
        twin = ax2.twinx()
        twin.plot(ends, np.cumsum(rows), color="#55a868")
        twin.set_ylabel("rows done (this run)", color="#55a868")
    ax2.set_xlabel("seconds since this run's start")
    ax2.set_title("throughput")
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


def output_of(target: Path, overrides: list[str] | None = None) -> Path:
    """The output file of a job file, or the file itself when given an HDF5 file."""
    if target.suffix in (".h5", ".hdf5"):
        return target
    from hpcinfer.job import load_job

    return load_job(target, overrides or []).output.path


def main(target: Path, png: Path | None = None, overrides: list[str] | None = None) -> int:
    path = output_of(target, overrides)
    if not path.exists():
        raise JobError(f"{path}: no output file (has the run finished? see `status`)")
    run = load_run(path)
    try:
        data = report_data(run)
    except (ValueError, TypeError, KeyError, IndexError, AttributeError) as e:
        raise JobError(f"{path}: its run record is damaged ({error_text(e)})") from None
    png = png or path.with_name(path.name + ".report.png")
    render(run, data, png)
    print(text_summary(run, data))
    print(f"  report: {png}")
    return 0
