"""JSON Lines (and JSON lists) read and written in one place, with errors that name the file and its own line.

Two ways to read, for two kinds of file:

* `read_jsonl` (and `read_json_list` for a `.json` list) is strict, for files a person wrote: user data, saved probe
  sets. Every problem (bytes that are not UTF-8, invalid JSON, a line that is not an object) raises an
  `AlignkitError` as `path:line: what`; callers add `field 'name'` in the same form (`location`).
* `read_jsonl_cache` is for append-only files this project writes itself (caches). A kill mid-append can tear the
  last line only; that line is skipped with a warning (the entry is simply redone). A bad line anywhere else was not
  made by a kill and is an error, as in the strict reader.

Two ways to write: `append_jsonl` adds one record with a single `write` (cutting off a torn last line first, so the
new record never joins it); `write_jsonl_atomic` replaces a whole file, so a reader sees the
old file or the new one, never half of either.
"""

from __future__ import annotations

import fcntl
import gzip
import json
import logging
import math
import numbers
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from alignkit.errors import AlignkitError

logger = logging.getLogger(__name__)

Record = dict[str, Any]
BOM = "\ufeff"  # editors on Windows start UTF-8 files with it; it is not part of the JSON


def location(path: str | os.PathLike, line: int, field: str | None = None) -> str:
    """'path:line' or "path:line: field 'name'": the prefix of every error about one line of a file."""
    return f"{path}:{line}" + (f": field '{field}'" if field else "")


def decode_utf8(data: bytes, path: str | os.PathLike, first_line: int = 1) -> str:
    """`data` (the file from `first_line` on) as text; bytes that are not UTF-8 raise naming the line and column of
    the first bad byte."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = first_line + data.count(b"\n", 0, err.start)
        column = err.start - (data.rfind(b"\n", 0, err.start) + 1) + 1
        raise AlignkitError(
            f"{location(path, line)}: not UTF-8 text (byte 0x{data[err.start]:02x} at column {column}); "
            "save the file as UTF-8"
        ) from None


def _parse_line(text: str, path: str | os.PathLike, line: int) -> Record:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise AlignkitError(f"{location(path, line)}: invalid JSON ({err.msg} at column {err.colno})") from None
    if not isinstance(value, dict):
        raise AlignkitError(f"{location(path, line)}: expected a JSON object, got {type(value).__name__}")
    return value


def _read_bytes(path: Path) -> bytes:
    """The file's bytes; a `.gz` file's decompressed (committed probe records are gzipped)."""
    if not path.is_file():
        raise AlignkitError(f"{path} does not exist")
    data = path.read_bytes()
    if path.suffix == ".gz":
        try:
            return gzip.decompress(data)
        except (OSError, EOFError) as err:
            raise AlignkitError(f"{path}: not a readable gzip file ({err})") from None
    return data


def read_jsonl(path: str | os.PathLike) -> list[tuple[int, Record]]:
    """The objects of a JSON Lines file with their 1-based line numbers; blank lines are skipped, anything else that
    is not one JSON object per line raises."""
    path = Path(path)
    rows = []
    for line, raw in enumerate(_read_bytes(path).split(b"\n"), start=1):
        text = decode_utf8(raw, path, line).strip().lstrip(BOM)
        if text:
            rows.append((line, _parse_line(text, path, line)))
    return rows


def read_json_list(path: str | os.PathLike) -> list[tuple[int, Record]]:
    """The objects of a `.json` file holding one list of objects, each with the line its `{` is on."""
    path = Path(path)
    text = decode_utf8(_read_bytes(path), path).lstrip(BOM)
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise AlignkitError(f"{location(path, err.lineno)}: invalid JSON ({err.msg} at column {err.colno})") from None
    if not isinstance(value, list):
        raise AlignkitError(f"{path}: expected a JSON list of objects, got {type(value).__name__}")
    # The list parsed, so walking it again element by element cannot fail: it only finds where each one starts.
    decoder, ws = json.JSONDecoder(), " \t\r\n"
    pos, rows = text.index("[") + 1, []
    for item in value:
        while text[pos] in ws or text[pos] == ",":
            pos += 1
        line = text.count("\n", 0, pos) + 1
        if not isinstance(item, dict):
            raise AlignkitError(f"{location(path, line)}: expected a JSON object, got {type(item).__name__}")
        _, pos = decoder.raw_decode(text, pos)
        rows.append((line, item))
    return rows


def read_jsonl_cache(path: str | os.PathLike) -> list[tuple[int, Record]]:
    """The records of an append-only JSONL file (missing: none) with their line numbers. A torn last line (no final
    newline, not a whole object) is skipped with a warning; a bad line elsewhere raises, since no kill makes one."""
    path = Path(path)
    if not path.is_file():
        return []
    chunks = path.read_bytes().split(b"\n")
    records = []
    for line, raw in enumerate(chunks, start=1):
        if not raw.strip():
            continue
        try:
            records.append((line, _parse_line(decode_utf8(raw, path, line).strip(), path, line)))
        except AlignkitError as err:
            if line < len(chunks):  # this line ended in a newline: it was written whole, so it is damage, not a kill
                raise AlignkitError(f"{err}; delete that line (its entry is redone) or the file") from None
            logger.warning("%s: skipped a torn last line (a write cut short); its entry will be redone", err)
    return records


def _torn_tail(fd: int, size: int) -> int:
    """How many bytes at the end of the file follow its last newline (0 when it ends in one)."""
    end, chunk = size, 1 << 16
    while end > 0:
        start = max(0, end - chunk)
        block = os.pread(fd, end - start, start)
        if (i := block.rfind(b"\n")) >= 0:
            return size - (start + i + 1)
        end = start
    return size


def append_jsonl(path: str | os.PathLike, record: Record, fsync: bool = True) -> None:
    """Append `record` as one line with a single write, under an exclusive lock. A torn last line (a write cut
    short by a kill) is cut off first, so that the file stays one whole record per line."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = (json.dumps(record, ensure_ascii=False) + "\n").encode()
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # other processes appending to the same cache wait for the cut and the write
        size = os.fstat(fd).st_size
        if tail := _torn_tail(fd, size):
            try:  # a whole record that only lacks its newline (edited by hand) is kept
                _parse_line(decode_utf8(os.pread(fd, tail, size - tail), path), path, 0)
                data = b"\n" + data
            except AlignkitError:
                logger.warning("%s: cut off a torn last line of %d bytes before appending", path, tail)
                os.ftruncate(fd, size - tail)
        written = os.write(fd, data)
        while written < len(data):  # short writes are rare on regular files but allowed by POSIX
            written += os.write(fd, data[written:])
        if fsync:
            os.fsync(fd)
    finally:
        os.close(fd)  # releases the lock


def write_jsonl_atomic(path: str | os.PathLike, records: Iterable[Record]) -> Path:
    """Replace `path` with one line per record: written to a temporary file beside it, then renamed over it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o644)  # mkstemp's 0o600 would make the replaced file private
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for record in records:
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def json_safe(value: Any) -> Any:
    """`value` as strict JSON values, at any depth: NaN and ±inf become None (JSON has no NaN; Python's json would
    write a non-standard token), tuples lists, keys strings, numpy scalars Python numbers."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        number = float(value)
        return number if math.isfinite(number) else None
    return value
