"""Live progress on rank 0: rows done across every rank, rows/s, ETA.

No collective per batch or chunk: each writing rank adds its finished chunk's rows into
one word in rank 0's RMA window (an atomic accumulate, ~4 us, once per chunk), and a
thread on rank 0 reads that word from its own memory. On a terminal it drives a tqdm bar;
elsewhere (SLURM output files, mpiexec's piped stderr) it prints a plain line after 2 s,
then at doubling pauses up to every `interval` seconds.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator

from hpcinfer.parallel.comm import AtomicWords
from hpcinfer.tools.format import format_duration


def progress_line(done: int, total: int, new_rows: int, elapsed: float) -> str:
    """`done`/`total` rows; the rate counts only rows this run computed (not resumed ones)."""
    rate = new_rows / elapsed if elapsed > 0 else 0.0
    eta = format_duration((total - done) / rate) if rate > 0 else "?"
    share = done / total if total else 1.0
    return f"hpcinfer: {done:,} / {total:,} rows ({share:.1%}), {rate:,.0f} rows/s, ETA {eta}"


FIRST_LINE_SECONDS = 2.0


def line_pauses(interval: float) -> Iterator[float]:
    """Seconds before each progress line off a terminal: the first after 2 s (a short run
    shows life too), then doubling up to `interval`, which then repeats."""
    pause = min(FIRST_LINE_SECONDS, interval)
    while True:
        yield pause
        pause = min(interval, pause * 2)


class LiveProgress:
    """Collective to create and to close (over every rank of `comm`)."""

    def __init__(self, comm, total_rows: int, done_rows: int, interval: float, quiet: bool):
        self.words = AtomicWords(comm, initial=0)
        self.total, self.done_before = total_rows, done_rows
        self.interval = interval
        self._stop = threading.Event()
        self._thread = None
        self._t0 = time.perf_counter()
        if comm.Get_rank() == 0 and not quiet and total_rows > done_rows:
            self._thread = threading.Thread(target=self._report, name="progress", daemon=True)
            self._thread.start()

    def add(self, rows: int) -> None:
        """This rank finished `rows` rows (call once per chunk)."""
        self.words.add(0, rows)

    def close(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
        self.words.free()

    def _report(self) -> None:
        if sys.stderr.isatty():
            self._report_bar()
            return
        for pause in line_pauses(self.interval):
            if self._stop.wait(pause):
                return
            new = self.words.local_value()
            print(
                progress_line(
                    self.done_before + new, self.total, new, time.perf_counter() - self._t0
                ),
                file=sys.stderr,
                flush=True,
            )

    def _report_bar(self) -> None:
        from tqdm import tqdm

        bar = tqdm(
            total=self.total,
            initial=self.done_before,
            unit="rows",
            unit_scale=True,
            dynamic_ncols=True,
            file=sys.stderr,
        )
        shown = 0
        while not self._stop.wait(min(self.interval, 0.5)):
            new = self.words.local_value()
            bar.update(new - shown)
            shown = new
        bar.update(self.words.local_value() - shown)
        bar.close()
