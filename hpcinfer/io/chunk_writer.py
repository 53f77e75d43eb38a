"""Finished chunks made durable on a background thread, in order: file, then journal line.

fsync waits for the disk; done inline it would stall the next chunk's compute (measured:
~4 % of the MLP benchmark's makespan). Here the compute thread hands each finished chunk
over and goes on; the writer thread writes the chunk file durably and only then appends
its journal line. A chunk is done only once its line is fsync'd, so a crash loses at most
the chunks still queued, which a rerun computes again. The queue is short (memory stays
bounded: at most `depth` chunk results wait), and an error on the writer thread is raised
on the compute thread at the next hand-over or at close.
"""

from __future__ import annotations

import queue
import threading
import time

import numpy as np

from hpcinfer.io.chunk_store import ChunkStore


class ChunkWriter:
    def __init__(self, store: ChunkStore, journal=None, depth: int = 2):
        self.store, self.journal = store, journal
        self.seconds = 0.0  # time the writer thread spent writing (overlapped with compute)
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="chunk-writer", daemon=True)
        self._thread.start()

    def submit(self, index: int, rows: int, result: dict[str, np.ndarray], **facts) -> None:
        """Queue chunk `index` for writing (blocks while `depth` chunks are waiting)."""
        self._raise_if_failed()
        self._queue.put((index, rows, result, facts))

    def close(self) -> None:
        """Wait until every queued chunk is durable and recorded."""
        self._queue.put(None)
        self._thread.join()
        if self.journal is not None:
            self.journal.close()
        self._raise_if_failed()

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            if self._error is not None:
                continue  # drain: the compute thread will raise
            index, rows, result, facts = item
            t0 = time.perf_counter()
            try:
                crc = self.store.write(index, result)
                if self.journal is not None:
                    self.journal.record(index, rows, crc, **facts)
            except BaseException as e:  # handed to the compute thread
                self._error = e
            del item, result  # written: free it now, not when the next chunk arrives
            self.seconds += time.perf_counter() - t0

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise self._error
