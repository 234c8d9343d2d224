"""The monitor's rewriter (alignkit.monitors.rephrase) asks through the judge's client and keeps the judge's cache:
a torn line does not crash a rerun, a cached rewrite is never asked again, and endpoint errors name its settings.
(Moved here from test_bad_inputs.py, which tested the rewriter's own client and cache.)"""

from __future__ import annotations

import json
import logging

import pytest

from alignkit.errors import AlignkitError
from alignkit.judge.config import JudgeConfig
from alignkit.monitors.config import MonitorConfig
from alignkit.monitors.rephrase import Rephraser

from .fake_judge_server import FakeJudgeServer


def upper(messages: list[dict]) -> str:
    """The fake endpoint's rewrite: the answer upper-cased."""
    return messages[0]["content"].rsplit("Answer:\n", 1)[1].upper()


@pytest.fixture
def server():
    with FakeJudgeServer(policy=upper) as running:
        yield running


def rephraser(server, cache, **options) -> Rephraser:
    return Rephraser(
        JudgeConfig(base_url=server.base_url, model="m", temperature=0.0, max_retries=1, **options), cache
    )


def test_a_torn_last_line_is_skipped_and_its_rewrite_asked_again(server, tmp_path, caplog):
    cache = tmp_path / "rephrase_cache.jsonl"
    first = rephraser(server, cache)
    assert first.rewrite_all([("rephrase", "Q?", "one"), ("reformat", "Q?", "two")]) == ["ONE", "TWO"]
    with cache.open("a") as f:
        f.write('{"key": "abc", "kind": "rephrase", "te')  # killed mid-append
    with caplog.at_level(logging.WARNING):
        again = rephraser(server, cache)
    assert "rephrase_cache.jsonl: skipped 1 unreadable line" in caplog.text
    assert again.rewrite("rephrase", "Q?", "one") == "ONE" and again.requests == 0  # served from the cache
    assert again.rewrite("rephrase", "Q?", "three") == "THREE" and again.requests == 1
    lines = cache.read_text().splitlines()
    assert len(lines) == 4 and json.loads(lines[3])["text"] == "THREE"  # the new line did not join the torn one
    assert len(rephraser(server, cache).cache) == 3


def test_a_cached_rewrite_is_never_asked_again(server, tmp_path):
    cache = tmp_path / "rephrase_cache.jsonl"
    asks = [("rephrase", [{"role": "user", "content": "Q?"}], "yes"), ("reformat", "Q?", "no")]
    first = rephraser(server, cache)
    assert first.rewrite_all(asks + asks) == ["YES", "NO", "YES", "NO"]  # the same question twice is asked once
    assert first.requests == 2 and sorted(server.asked.values()) == [1, 1]
    second = rephraser(server, cache)  # a second run on the same cache
    assert second.rewrite_all(asks) == ["YES", "NO"] and second.requests == 0 and server.requests == 2
    # a record without its text (edited by hand) cannot serve: that rewrite is asked again, the others are not
    record = json.loads(cache.read_text().splitlines()[0])
    with cache.open("a") as f:  # the later line of a key wins
        f.write(json.dumps({"key": record["key"], "kind": record["kind"]}) + "\n")
    third = rephraser(server, cache)
    assert third.rewrite_all(asks) == ["YES", "NO"] and third.requests == 1


def test_old_cache_lines_keep_serving(server, tmp_path):
    cache = tmp_path / "rephrase_cache.jsonl"
    fresh = rephraser(server, tmp_path / "fresh.jsonl")
    key = fresh._key("rephrase", "Q?", "one")
    cache.write_text(json.dumps({"key": key, "kind": "rephrase", "text": "ONE, REPHRASED"}) + "\n")  # old format
    old = rephraser(server, cache)
    assert old.rewrite("rephrase", "Q?", "one") == "ONE, REPHRASED" and old.requests == 0


def test_endpoint_errors_name_the_rephrase_settings(tmp_path):
    with FakeJudgeServer(policy=upper, api_key="right") as server:
        with pytest.raises(AlignkitError, match=r"rewrite endpoint .* HTTP 401 .*probe_rephrase_base_url"):
            rephraser(server, tmp_path / "c.jsonl").rewrite("rephrase", "Q?", "one")
    with FakeJudgeServer(policy=upper, failure_rate=1.0, failures=("500",), max_failures_per_question=9) as server:
        broken = rephraser(server, tmp_path / "c.jsonl", backoff_initial_s=0.01)
        with pytest.raises(AlignkitError, match=r"rewrite endpoint failed for model 'm' \(gave up after 2 tries"):
            broken.rewrite("rephrase", "Q?", "one")
    with pytest.raises(ValueError, match="unknown rewrite kind"):
        broken.rewrite("paraphrase", "Q?", "one")


def test_from_config_sends_a_dummy_key_when_the_variable_is_unset(server, tmp_path, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    config = MonitorConfig(
        probe_rephrase_base_url=server.base_url,
        probe_rephrase_model="m",
        probe_rephrase_cache=str(tmp_path / "c.jsonl"),
    )
    rewriter = Rephraser.from_config(config)
    assert rewriter.runner.config.temperature == 0.0 and rewriter.runner.config.max_tokens == 256
    assert rewriter.rewrite("reformat", "Q?", "fine") == "FINE"
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    assert Rephraser.from_config(config).rewrite("reformat", "Q?", "other") == "OTHER"
    assert "Bearer sk-test" in server.authorizations
