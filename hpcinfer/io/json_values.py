"""One JSON record's values, checked: the row's field (a text or a list of token ids) and
its kept keys (scalars). Shared by JSONL lines and JSON array elements; every fault is a
JobError naming the record (`where`: "file:line")."""

from __future__ import annotations

import json
import re
from typing import Any, BinaryIO

from hpcinfer.errors import JobError
from hpcinfer.io import keep as kept_columns
from hpcinfer.io.file_checks import clip
from hpcinfer.io.json_scan import LineError, scan_line

INT64 = (-(2**63), 2**63 - 1)
_SURROGATE = re.compile("[\ud800-\udfff]")


def is_token_ids(value: object) -> bool:
    """A list of integers (whether each is in the vocabulary is the model's to check)."""
    return isinstance(value, list) and all(
        isinstance(v, int) and not isinstance(v, bool) for v in value
    )


def parse(text: str, where: str) -> Any:
    """`text` as JSON, as json.loads reads it."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        column = len(text[: e.pos].encode("utf-8", "surrogatepass")) + 1
        raise JobError(f"{where}: not valid JSON: {e.msg} (byte {column})") from None
    except RecursionError:
        raise JobError(f"{where}: not valid JSON: nested too deeply") from None
    except ValueError as e:  # an int of more than 4300 digits
        raise JobError(f"{where}: not valid JSON: {clip(str(e), 80)}") from None


def field_value(record: Any, field: str, where: str) -> str | list[int]:
    """The value under `field`: a text, or a list of token ids that fit int64."""
    value = record.get(field) if isinstance(record, dict) else None
    if isinstance(value, str):
        check_text(value, field, where)
        return value
    if is_token_ids(value):
        for v in value:
            if not INT64[0] <= v <= INT64[1]:
                raise JobError(
                    f"{where}: token id {clip(str(v), 30)} in field {field!r} does not fit int64"
                )
        return value
    brief = "nothing (no such field)" if value is None else clip(json.dumps(value), 60)
    raise field_error(where, field, brief)


def check_text(text: str, field: str, where: str) -> None:
    if (m := _SURROGATE.search(text)) is not None:
        raise JobError(
            f"{where}: field {field!r} holds a lone surrogate (\\u{ord(m.group()):04x}), not text"
        )


def field_error(where: str, field: str, brief: str) -> JobError:
    return JobError(
        f"{where}: field {field!r} (input.field) must be a text or a list of token ids "
        f"(integers); got {clip(brief, 60)}"
    )


def kept_values(record: Any, keep: tuple[str, ...], where: str) -> tuple:
    """The values of the kept keys (every row must have each, a scalar)."""
    values = []
    for name in keep:
        if not isinstance(record, dict) or name not in record:
            raise missing_kept(name, where)
        kept_columns.value_kind(record[name], name, where)
        values.append(record[name])
    return tuple(values)


def missing_kept(name: str, where: str) -> JobError:
    return JobError(f"{where}: no key {name!r} to keep (output.keep: every row must have it)")


def long_kept(f: BinaryIO, start: int, stop: int, keep: tuple[str, ...], where: str) -> tuple:
    """The kept keys of a line too long to parse whole, each found by a scan of its own
    (json_scan; a kept text is at most MAX_KEPT_BYTES)."""
    values = []
    for name in keep:
        limit = kept_columns.MAX_KEPT_BYTES
        try:
            found = scan_line(f, start, stop, name, limit, 0)
        except LineError as e:
            raise JobError(f"{where}: {e}") from None
        if found.kind == "missing":
            raise missing_kept(name, where)
        if found.kind == "text" and not found.complete:
            raise JobError(
                f"{where}: kept column {name!r} holds a text of over {limit:,} bytes "
                "(keep is for ids, paths and labels)"
            )
        if found.kind not in ("text", "scalar"):
            raise JobError(
                f"{where}: kept column {name!r} holds {clip(found.brief, 40)}; hpcinfer keeps "
                "texts, integers, floats and booleans"
            )
        kept_columns.value_kind(found.value, name, where)
        values.append(found.value)
    return tuple(values)
