"""A persistent judgment cache that survives being killed at any instant.

One JSON line per finished judgment, appended with a single `write` on an O_APPEND descriptor and fsync'ed before the
judgment counts as done. A kill can therefore lose at most the lines being written, and a torn last line is skipped on
load (and fenced off with a newline before the next append) instead of poisoning the file. Reruns read the file and
serve every recorded judgment without a request, which is what makes paid judges restartable.

Judgments that finish while another's fsync is under way are written and fsync'ed together right after it (group
commit): an fsync takes milliseconds on a real disk, and one per judgment in turn capped a concurrent run at a few
hundred judgments per second.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from pathlib import Path

logger = logging.getLogger(__name__)


def cache_key(
    judge_model: str, template_sha256: str, params: dict, instruction: str, output_a: str, output_b: str
) -> str:
    """Identity of one request: the judge, the template text, the sampling parameters, the prompt and both outputs in
    their order. The endpoint URL and the key are deliberately not part of it: the local server gets a new port every
    run, and the same model behind another URL is the same judge."""
    payload = json.dumps(
        {
            "judge_model": judge_model,
            "template_sha256": template_sha256,
            "params": params,
            "instruction": instruction,
            "output_a": output_a,
            "output_b": output_b,
        },
        sort_keys=True,
        ensure_ascii=False,
    )
    return hashlib.sha256(payload.encode()).hexdigest()


class JudgmentCache:
    """Maps cache keys to judgment records; `put` returns only once the record is on disk."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._records: dict[str, dict] = {}
        self.skipped_lines = 0
        self._needs_fence = False
        if self.path.exists():
            raw = self.path.read_bytes()
            self._needs_fence = bool(raw) and not raw.endswith(b"\n")
            for line in raw.splitlines():
                try:
                    record = json.loads(line)
                    self._records[record["key"]] = record
                except (ValueError, KeyError, TypeError):
                    self.skipped_lines += 1  # a line torn by a kill mid-write; its judgment is simply redone
            if self.skipped_lines:
                logger.warning(
                    "%s: skipped %d unreadable line(s), e.g. a write cut short by a kill; their entries are redone",
                    self.path, self.skipped_lines,
                )  # fmt: skip
        self._fd: int | None = None
        self._lock = threading.Lock()  # put() may run on worker threads so that fsync does not stall the event loop
        self._queue_lock = threading.Lock()  # guards the lines waiting for the next write and the counters below
        self._waiting: list[bytes] = []
        self._queued = 0  # lines ever queued
        self._durable = 0  # lines ever written and fsync'ed
        self.fsyncs = 0

    def __len__(self) -> int:
        return len(self._records)

    def __contains__(self, key: str) -> bool:
        return key in self._records

    def get(self, key: str) -> dict | None:
        return self._records.get(key)

    def put(self, key: str, record: dict) -> None:
        """Appends the record and returns once it is on disk. Concurrent callers share writes: whoever takes the write
        lock writes every line queued so far in one `write` and one fsync, and the callers whose lines that covered
        return without writing."""
        record = {"key": key, **record}
        data = (json.dumps(record, ensure_ascii=False) + "\n").encode()
        with self._queue_lock:
            self._waiting.append(data)
            self._queued += 1
            mine = self._queued
        with self._lock:
            if self._durable < mine:  # nobody has written this line yet: write it and everything queued with it
                if self._fd is None:
                    self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
                with self._queue_lock:
                    lines, self._waiting = self._waiting, []
                    last = self._queued
                if self._needs_fence:
                    lines.insert(0, b"\n")
                    self._needs_fence = False
                chunk = b"".join(lines)
                try:
                    written = os.write(self._fd, chunk)
                    while written < len(chunk):  # short writes are rare on regular files but allowed by POSIX
                        written += os.write(self._fd, chunk[written:])
                    os.fsync(self._fd)  # inside the lock, so close() can never pull the descriptor from under it
                except BaseException:
                    # Not durable: the lines go back to the queue for the next writer (this caller sees the error),
                    # after a fence in case part of them reached the file.
                    with self._queue_lock:
                        self._waiting = [line for line in lines if line != b"\n"] + self._waiting
                    self._needs_fence = True
                    raise
                self.fsyncs += 1
                self._durable = last
        self._records[key] = record

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    def __enter__(self) -> JudgmentCache:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
