"""Finished chunks made durable on a background thread, in order: file, then journal line.

fsync waits for the disk; done inline it would stall the next chunk's compute (measured:
~4 % of the MLP benchmark's makespan). The compute thread writes a chunk's rows into its
file as they are computed (into the page cache: cheap) and hands the finished file over;
the writer thread makes it durable (fsync, rename) and only then appends its journal
line. A chunk is done only once its line is fsync'd, so a crash loses at most the chunks
still queued, which a rerun computes again. The queue holds files, not results, so it
costs no memory; an error on the writer thread is raised on the compute thread at the
next hand-over or at close.
"""

from __future__ import annotations

import queue
import threading
import time

from hpcinfer.checkpoint.chunk_files import ChunkFile
from hpcinfer.checkpoint.journal import ChunkRecord, ChunkRun, JournalWriter


class ChunkWriter:
    def __init__(self, journal: JournalWriter | None = None, depth: int = 2):
        self.journal = journal
        self.seconds = 0.0  # time the writer thread spent committing (overlapped)
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="chunk-writer", daemon=True)
        self._thread.start()

    def submit(self, chunk: ChunkFile, run: ChunkRun) -> None:
        """Queue a filled chunk file for commit (blocks while `depth` wait)."""
        self._raise_if_failed()
        self._queue.put((chunk, run))

    def close(self) -> None:
        """Wait until every queued chunk is durable and recorded."""
        self._queue.put(None)
        self._thread.join()
        if self.journal is not None:
            self.journal.close()
        self._raise_if_failed()

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            chunk, run = item
            if self._error is not None:
                chunk.discard()  # drain: the compute thread will raise
                continue
            t0 = time.perf_counter()
            try:
                crc = chunk.commit()
                if self.journal is not None:
                    self.journal.record(ChunkRecord(chunk.index, chunk.rows, crc, run))
            except BaseException as e:  # noqa: BLE001 (handed to the compute thread)
                self._error = e
            self.seconds += time.perf_counter() - t0

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise self._error
