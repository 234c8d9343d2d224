"""The judgment cache's group commit: concurrent puts share fsyncs, and each returns only once its line is on disk."""

from __future__ import annotations

import json
import os
import threading
import time

import pytest

from alignkit.judge import cache as cache_module
from alignkit.judge.cache import JudgmentCache


def _lines(path):
    return [json.loads(line) for line in path.read_bytes().splitlines() if line]


def test_concurrent_puts_share_fsyncs_and_are_all_durable(tmp_path, monkeypatch):
    path = tmp_path / "cache.jsonl"
    real_fsync = os.fsync
    on_disk_at_return: dict[str, bool] = {}
    synced: set[str] = set()

    def slow_fsync(fd):  # a slow disk: the first sync lasts until every other thread has queued its line
        if not synced:
            while cache._queued < 16:  # the others queue behind the write lock this sync holds
                time.sleep(0.001)
        real_fsync(fd)
        synced.update(r["key"] for r in _lines(path))

    monkeypatch.setattr(cache_module.os, "fsync", slow_fsync)
    cache = JudgmentCache(path)
    start = threading.Barrier(16)

    def put(i: int) -> None:
        start.wait()
        cache.put(f"k{i}", {"status": "ok", "verdict": "A"})
        on_disk_at_return[f"k{i}"] = f"k{i}" in synced  # fsync'ed before put returned

    threads = [threading.Thread(target=put, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    cache.close()
    assert on_disk_at_return == {f"k{i}": True for i in range(16)}
    # The first sync covers the lines queued when it began (all 16 if every thread queued before it: seen in CI), and
    # the lines queued during it share the one next sync: group commit, whatever the threads' timing.
    assert 1 <= cache.fsyncs <= 2
    assert sorted(r["key"] for r in _lines(path)) == sorted(f"k{i}" for i in range(16))
    reloaded = JudgmentCache(path)
    assert len(reloaded) == 16 and reloaded.skipped_lines == 0


def test_a_failed_write_raises_and_its_lines_are_written_by_the_next_put(tmp_path, monkeypatch):
    path = tmp_path / "cache.jsonl"
    cache = JudgmentCache(path)
    real_fsync = os.fsync
    calls = []

    def failing_once(fd):
        calls.append(fd)
        if len(calls) == 1:
            raise OSError("disk full")
        real_fsync(fd)

    monkeypatch.setattr(cache_module.os, "fsync", failing_once)
    with pytest.raises(OSError, match="disk full"):
        cache.put("a", {"status": "ok"})
    assert "a" not in cache  # never counted as done
    cache.put("b", {"status": "ok"})
    cache.close()
    reloaded = JudgmentCache(path)
    # "a" reached the file before the failed fsync and again with "b", after a fence: one copy per key survives.
    assert sorted(r["key"] for r in _lines(path)) == ["a", "a", "b"]
    assert set(reloaded._records) == {"a", "b"} and reloaded.skipped_lines == 1  # the fence's empty line
