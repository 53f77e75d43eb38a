"""The bytes of a record file (JSONL, text, CSV/TSV, a JSON array): a plain file, or the
content of a gzip, zstd or bz2 file.

Readers address a file's content by byte offsets, found once by an index (the end of
every line or record). `view(start, stop)` gives a seekable file in which those offsets
are valid over [start, stop); `scan()` streams the content from its first byte (to build
the index).

A plain file is its own view: reads seek. A compressed stream cannot seek, so
`CompressedFile` keeps one decompressing stream per reader and *materializes* the range
asked for: it decompresses forward to `start` (restarting from the file's beginning only
when a range lies behind the stream), copies [start, stop) into a window (memory up to
WINDOW_MEMORY_BYTES, an unlinked temporary file beyond), and serves reads from there. A
chunk is one range, so its rows, and a cut row read again (`TextPrefix.more`), cost no
second decompression; a rank's chunks come in input order, so its stream only moves
forward, except after a steal. Every read is bounded (never a whole decompressed file in
memory: a "zip bomb" costs time, not memory).

Both check that the file is the one the index was built from (size and mtime, on every
open), and turn a damaged or truncated stream into one JobError line naming the file.
"""

from __future__ import annotations

import bz2
import contextlib
import gzip
import io
import os
import tempfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from hpcinfer.errors import JobError
from hpcinfer.io.file_checks import clip

WINDOW_MEMORY_BYTES = 64 * 2**20  # a window larger than this spills to a temporary file
COPY_BYTES = 2**20  # decompressed bytes moved at a time
CODECS = ("gzip", "zstd", "bz2")


def file_version(st: os.stat_result) -> tuple[int, int]:
    return st.st_size, st.st_mtime_ns


class PlainFile:
    """A file read as it is: views are the file itself, opened and checked."""

    codec = None

    def __init__(self, path: Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise JobError(f"{self.path}: input file not found (input.path)")
        self.version = file_version(os.stat(self.path))

    @contextlib.contextmanager
    def scan(self) -> Iterator[BinaryIO]:
        with self._open() as f:
            yield f

    @contextlib.contextmanager
    def view(self, start: int, stop: int) -> Iterator[BinaryIO]:
        with self._open() as f:
            yield f

    def scanned(self, total: int) -> None:
        """After an index was built from `total` bytes: the file must not have changed."""
        now = file_version(os.stat(self.path))
        if now != self.version or total != self.version[0]:
            raise JobError(f"{self.path}: changed while its lines were indexed (input.path)")

    def close(self) -> None:
        pass

    def _open(self) -> BinaryIO:
        """The file, checked to be the one the index was built from."""
        f = self.path.open("rb")
        now = file_version(os.fstat(f.fileno()))
        if now != self.version:
            f.close()
            raise changed(self.path, self.version[0], now[0])
        return f


def changed(path: Path, then: int, now: int) -> JobError:
    return JobError(
        f"{path}: changed while this run reads it ({then} bytes when indexed, now {now}, "
        "modified since); rerun once the file is final"
    )


class CompressedFile:
    """The decompressed content of a gzip, zstd or bz2 file (every member, frame or
    stream, in order), through one forward stream and a window (see the module text)."""

    def __init__(self, path: Path, codec: str):
        if codec not in CODECS:
            raise ValueError(f"unknown codec {codec!r}")
        self.path, self.codec = Path(path), codec
        if not self.path.is_file():
            raise JobError(f"{self.path}: input file not found (input.path)")
        self.version = file_version(os.stat(self.path))
        self._stream: _Stream | None = None
        self._window: Window | None = None

    @contextlib.contextmanager
    def scan(self) -> Iterator[BinaryIO]:
        stream = _Stream(self.path, self.codec, self.version)
        try:
            yield stream
        finally:
            stream.close()

    def scanned(self, total: int) -> None:
        """After the index pass: the file is unchanged, and (zstd, whose reader takes a
        cut-off frame for the end) made of whole frames."""
        now = file_version(os.stat(self.path))
        if now != self.version:
            raise JobError(f"{self.path}: changed while its lines were indexed (input.path)")
        if self.codec == "zstd":
            with self.path.open("rb") as f:
                problem = zstd_frames_problem(f, self.version[0])
            if problem:
                raise JobError(f"{self.path}: {problem}")

    @contextlib.contextmanager
    def view(self, start: int, stop: int) -> Iterator[BinaryIO]:
        """A seekable file over content bytes [start, stop); the current window when it
        holds them already (it stays until a range outside it is asked for)."""
        if stop <= start:  # nothing to read: the stream stays where it is
            yield Window(io.BytesIO(), start, start)
            return
        w = self._window
        if w is None or not w.start <= start <= stop <= w.stop:
            self._materialize(start, stop)
        assert self._window is not None
        yield self._window

    def close(self) -> None:
        if self._window is not None:
            self._window.close()
            self._window = None
        if self._stream is not None:
            self._stream.close()
            self._stream = None

    def _materialize(self, start: int, stop: int) -> None:
        if self._window is not None:
            self._window.close()
            self._window = None
        if self._stream is None or self._stream.position > start:
            if self._stream is not None:
                self._stream.close()
            self._stream = _Stream(self.path, self.codec, self.version)
        stream = self._stream
        stream.check_version()
        stream.skip(start - stream.position)
        spool = tempfile.SpooledTemporaryFile(max_size=WINDOW_MEMORY_BYTES)  # noqa: SIM115
        left = stop - start
        while left > 0:
            block = stream.read(min(COPY_BYTES, left))
            if not block:
                spool.close()
                raise JobError(
                    f"{self.path}: its content ended {left} bytes early (the file changed "
                    "or is damaged since it was indexed); rerun once the file is final"
                )
            spool.write(block)
            left -= len(block)
        self._window = Window(spool, start, stop)


class Window:
    """Content bytes [start, stop) held in a spool, read with absolute offsets."""

    def __init__(self, spool: BinaryIO, start: int, stop: int):
        self.spool, self.start, self.stop = spool, start, stop
        self._pos = start

    def seek(self, pos: int, whence: int = 0) -> int:
        if whence != 0:
            raise ValueError("a window seeks to absolute offsets only")
        self._pos = pos
        return pos

    def tell(self) -> int:
        return self._pos

    def read(self, n: int = -1) -> bytes:
        end = self.stop if n < 0 else min(self.stop, self._pos + n)
        if self._pos < self.start or end <= self._pos:
            return b""
        self.spool.seek(self._pos - self.start)
        data = self.spool.read(end - self._pos)
        self._pos += len(data)
        return data

    def close(self) -> None:
        self.spool.close()


class _Stream:
    """A forward-only decompressing reader; `position` counts content bytes read."""

    def __init__(self, path: Path, codec: str, version: tuple[int, int]):
        self.path, self.codec, self.version = path, codec, version
        self.raw = path.open("rb")
        self.position = 0
        try:
            self.check_version()
            self.reader = _decompressor(self.raw, codec)
        except BaseException:
            self.raw.close()
            raise

    def check_version(self) -> None:
        now = file_version(os.fstat(self.raw.fileno()))
        if now != self.version:
            raise changed(self.path, self.version[0], now[0])

    def read(self, n: int) -> bytes:
        try:
            data = self.reader.read(n)
        except EOFError:
            raise JobError(
                f"{self.path}: the {self.codec} data ends early (truncated file?)"
            ) from None
        except Exception as e:  # each codec has its own errors: one line for them all
            if not _is_codec_error(e):
                raise
            why = clip(" ".join(str(e).split()), 80)
            raise JobError(f"{self.path}: not valid {self.codec} data ({why})") from None
        self.position += len(data)
        return data

    def skip(self, n: int) -> None:
        while n > 0:
            block = self.read(min(COPY_BYTES, n))
            if not block:
                raise JobError(
                    f"{self.path}: its content ended early (the file changed or is damaged "
                    "since it was indexed); rerun once the file is final"
                )
            n -= len(block)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.reader.close()
        self.raw.close()


def _decompressor(raw: BinaryIO, codec: str):
    if codec == "gzip":
        return gzip.GzipFile(fileobj=raw, mode="rb")  # refuses data after the last member
    if codec == "bz2":
        return _Bz2Streams(raw)
    try:
        import zstandard
    except ImportError:
        raise JobError(
            "reading zstd-compressed input needs zstandard: pip install zstandard"
        ) from None
    return zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True, closefd=False)


def _is_codec_error(e: Exception) -> bool:
    if isinstance(e, OSError | zlib.error | ValueError):
        return True
    return type(e).__module__.startswith("zstandard") or type(e).__name__ == "ZstdError"


class _Bz2Streams:
    """Every bz2 stream of a file in turn, reads bounded; unlike bz2.BZ2File, data after
    the last stream that is not one is an error, not ignored."""

    def __init__(self, raw: BinaryIO):
        self.raw, self.d = raw, bz2.BZ2Decompressor()

    def read(self, n: int) -> bytes:
        while True:
            if self.d.eof:
                rest = self.d.unused_data
                while len(rest) < 4 and (more := self.raw.read(COPY_BYTES)):
                    rest += more
                if not rest:
                    return b""
                if not rest.startswith(b"BZh"):
                    raise ValueError("data after the end of the last bz2 stream")
                self.d = bz2.BZ2Decompressor()
                feed = rest
            elif self.d.needs_input:
                feed = self.raw.read(COPY_BYTES)
                if not feed:
                    raise EOFError
            else:
                feed = b""
            out = self.d.decompress(feed, max_length=n)
            if out:
                return out

    def close(self) -> None:
        pass


ZSTD_MAGIC, ZSTD_SKIPPABLE = 0xFD2FB528, range(0x184D2A50, 0x184D2A60)
TRUNCATED_ZSTD = "the zstd data ends early (truncated file?)"


def zstd_frames_problem(f: BinaryIO, size: int) -> str | None:
    """What is wrong with the zstd frames of `f` (`size` bytes), or None: each frame's
    header and block headers are walked (the blocks are skipped), so a cut-off frame is
    found without decompressing anything."""
    pos = 0
    while pos < size:
        f.seek(pos)
        head = f.read(18)
        magic = int.from_bytes(head[:4], "little")
        if len(head) >= 8 and magic in ZSTD_SKIPPABLE:
            pos += 8 + int.from_bytes(head[4:8], "little")
            continue
        if len(head) < 6:
            break
        if magic != ZSTD_MAGIC:
            return f"not valid zstd data at byte {pos + 1} (not a frame)"
        descriptor = head[4]
        single = (descriptor >> 5) & 1
        pos += 5 + (not single) + (0, 1, 2, 4)[descriptor & 3]
        pos += (single, 2, 4, 8)[descriptor >> 6]
        while True:
            f.seek(pos)
            block = int.from_bytes(f.read(3).ljust(3, b"\xff"), "little")
            kind = (block >> 1) & 3
            if pos + 3 > size:
                return TRUNCATED_ZSTD
            if kind == 3:
                return f"not valid zstd data at byte {pos + 1} (a reserved block type)"
            pos += 3 + (1 if kind == 1 else block >> 3)
            if block & 1:
                break
        pos += 4 * ((descriptor >> 2) & 1)  # the content checksum
    return TRUNCATED_ZSTD if pos != size else None
