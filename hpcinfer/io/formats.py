"""What an input file is: its record format and its compression.

Compression is always recognised by content (magic bytes): gzip, zstd and bz2 are read
as streams (hpcinfer.io.sources); zip, xz, lz4 and 7z are named and refused. The record
format is `input.format` when given, else found by content, then by name:

    content             PAR1 at the start: parquet; the HDF5 signature: hdf5
    name (after .gz,    .jsonl .ndjson: jsonl; .json: a JSON array when its first byte is
    .zst, .bz2)         "[", else jsonl; .txt .text: text; .csv: csv; .tsv .tab: tsv;
                        .parquet .pq: parquet; .h5 .hdf5: hdf5

Anything else is an error that says so and names `input.format`: a file is never
guessed to be text.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from hpcinfer.errors import JobError

RECORD_FORMATS = ("jsonl", "json", "text", "csv", "tsv", "parquet", "hdf5")
MAGIC = {"gzip": b"\x1f\x8b", "zstd": b"\x28\xb5\x2f\xfd", "bz2": b"BZh"}
REFUSED_MAGIC = {
    b"PK\x03\x04": "a zip archive (unzip it first)",
    b"\xfd7zXZ\x00": "xz-compressed (recompress with gzip, zstd or bz2, or decompress it)",
    b"\x04\x22\x4d\x18": "lz4-compressed (recompress with gzip, zstd or bz2, or decompress it)",
    b"7z\xbc\xaf\x27\x1c": "a 7z archive (extract it first)",
}
COMPRESSION_SUFFIXES = {
    ".gz": "gzip", ".gzip": "gzip", ".zst": "zstd", ".zstd": "zstd", ".bz2": "bz2",
}  # fmt: skip
SUFFIXES = {
    ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json?", ".txt": "text", ".text": "text",
    ".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".parquet": "parquet", ".pq": "parquet",
    ".h5": "hdf5", ".hdf5": "hdf5",
}  # fmt: skip
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
PEEK_BYTES = 4096  # of content, to tell a JSON array from JSON lines


@dataclass(frozen=True)
class InputFormat:
    """A record format, and the codec its bytes are compressed with (None: plain)."""

    name: str
    codec: str | None = None

    def __str__(self) -> str:
        return f"{self.name} ({self.codec})" if self.codec else self.name


def detect(path: Path, given: str = "auto") -> InputFormat:
    """The format of the file at `path`; `given` is input.format ("auto": find it)."""
    path = Path(path)
    if not path.is_file():
        raise JobError(f"{path}: input file not found (input.path)")
    head = _head(path)
    codec = codec_of(path, head)
    name = path.name
    suffix = Path(name).suffix.lower()
    if codec is None and suffix in COMPRESSION_SUFFIXES:
        raise JobError(
            f"{path}: named {suffix} but not {COMPRESSION_SUFFIXES[suffix]}-compressed "
            "(its first bytes say otherwise)"
        )
    if codec is not None and suffix in COMPRESSION_SUFFIXES:
        name = name[: -len(suffix)]  # data.jsonl.gz: a jsonl file, compressed
    if given != "auto":
        kind = given
    elif codec is None and head.startswith(b"PAR1"):
        kind = "parquet"
    elif codec is None and _is_hdf5(path, head):
        kind = "hdf5"
    else:
        kind = SUFFIXES.get(Path(name).suffix.lower())
        if kind is None:
            raise JobError(
                f"{path}: cannot tell its format from the name ({_suffix_text(name, codec)}): "
                f"name it .jsonl, .json, .txt, .csv, .tsv, .parquet or .h5 (compressed: "
                f"+ .gz, .zst, .bz2), or set input.format ({', '.join(RECORD_FORMATS)})"
            )
        if kind == "json?":
            kind = "json" if first_content_byte(path, codec) == b"[" else "jsonl"
    if codec is not None and kind in ("parquet", "hdf5"):
        raise JobError(
            f"{path}: a {codec}-compressed {kind} file cannot be read in place "
            f"({kind} compresses inside the file): decompress it first"
        )
    return InputFormat(kind, codec)


def codec_of(path: Path, head: bytes) -> str | None:
    for codec, magic in MAGIC.items():
        if head.startswith(magic) and (codec != "bz2" or head[3:4] in b"123456789"):
            return codec
    for magic, what in REFUSED_MAGIC.items():
        if head.startswith(magic):
            raise JobError(f"{path}: {what}; hpcinfer reads gzip, zstd and bz2 streams")
    return None


def first_content_byte(path: Path, codec: str | None) -> bytes:
    """The first byte of the content that is not whitespace (b"" if none in the peek)."""
    from hpcinfer.io.sources import CompressedFile, PlainFile

    source = CompressedFile(path, codec) if codec else PlainFile(path)
    try:
        with source.scan() as f:
            peek = f.read(PEEK_BYTES)
    finally:
        source.close()
    stripped = peek.removeprefix(b"\xef\xbb\xbf").lstrip(b" \t\r\n")
    return stripped[:1]


def _head(path: Path) -> bytes:
    try:
        with path.open("rb") as f:
            return f.read(16)
    except OSError as e:
        raise JobError(f"{path}: cannot read ({e.strerror or e}) (input.path)") from None


def _is_hdf5(path: Path, head: bytes) -> bool:
    if head.startswith(HDF5_SIGNATURE):
        return True
    import h5py  # a user block puts the signature at 512, 1024, ...

    return bool(h5py.is_hdf5(path))


def _suffix_text(name: str, codec: str | None) -> str:
    suffix = Path(name).suffix
    what = f"extension {suffix!r}" if suffix else "no extension"
    return f"{codec}-compressed, {what}" if codec else what
