"""Re-parse instead of re-ask: a judgment cached as unparseable keeps its raw answer, and a rerun reads it with the
parser of the day, without a request, counting what it rescued in the result and the report."""

from __future__ import annotations

import json
import re

import pytest

from alignkit.judge import JudgeConfig, WinRateConfig, evaluate_win_rate
from alignkit.judge import client as client_module
from alignkit.judge.cache import JudgmentCache
from alignkit.judge.parse import parse_verdict
from tests.fake_judge_server import FakeJudgeServer, responses_of

FAST = dict(backoff_initial_s=0.01, backoff_max_s=0.05, timeout_s=10.0)
QUIET = WinRateConfig(bootstrap_samples=200)
WINNER = re.compile(r"winner:\s*(A|B)\b")


def terse_judge(messages: list[dict]) -> str:
    """States its verdict in a form today's parser does not read ("winner: A")."""
    a, b = responses_of(messages)
    return f"winner: {'A' if 'GOOD' in a else 'B'}"


def improved_parser(text: str | None):
    """Today's parser plus the form above: the 'parser fix'."""
    found = WINNER.search(text or "")
    return found.group(1) if found else parse_verdict(text)


def outputs(tmp_path, n: int = 3):
    cand, base = tmp_path / "candidate.jsonl", tmp_path / "baseline.jsonl"
    cand.write_text("".join(json.dumps({"prompt": f"q{i}", "output": f"GOOD answer {i}"}) + "\n" for i in range(n)))
    base.write_text("".join(json.dumps({"prompt": f"q{i}", "output": f"answer {i}"}) + "\n" for i in range(n)))
    return cand, base


def test_a_parser_fix_rescues_cached_unparseable_judgments_without_a_request(tmp_path, monkeypatch):
    assert parse_verdict("winner: A") is None  # the premise: today's parser cannot read the judge
    cand, base = outputs(tmp_path)
    out = tmp_path / "out"
    with FakeJudgeServer(terse_judge) as server:
        judge = JudgeConfig(base_url=server.base_url, model="terse", parse_retries=0, **FAST)
        first = evaluate_win_rate(cand, base, judge=judge, output_dir=out, config=QUIET, progress=False)
        assert server.requests == 6
    assert first.unjudged == {"unparseable": 3} and first.stats["rescued"] == 0
    cached = list(JudgmentCache(out / "judge_cache.jsonl")._records.values())
    assert {r["status"] for r in cached} == {"unparseable"} and all(r["raw"].startswith("winner:") for r in cached)

    monkeypatch.setattr(client_module, "parse_verdict", improved_parser)
    with FakeJudgeServer(terse_judge) as server:
        judge = JudgeConfig(base_url=server.base_url, model="terse", parse_retries=0, **FAST)
        again = evaluate_win_rate(cand, base, judge=judge, output_dir=out, config=QUIET, progress=False)
        assert server.requests == 0  # re-parsed, not re-asked
    assert again.stats["rescued"] == 6 and again.n_pairs == 3 and again.wins == 3 and again.unjudged == {}
    report = (out / "report.md").read_text()
    assert "| Cached unparseable answers read again by the current parser (no request) | 6 |" in report
    # the cache keeps the raw answers as they were: a later parser reads them again
    assert {r["status"] for r in JudgmentCache(out / "judge_cache.jsonl")._records.values()} == {"unparseable"}


@pytest.mark.parametrize("changed", [{"model": "other-judge"}, {"mode": "logprobs"}])
def test_a_changed_judge_or_mode_is_asked_again(tmp_path, changed):
    """The cache key holds the judge model, the template's text and the mode: changing one is a new question."""
    cand, base = outputs(tmp_path, n=2)
    out = tmp_path / "out"
    with FakeJudgeServer(terse_judge) as server:
        for settings in ({}, changed):
            options = {"model": "terse", "parse_retries": 0, **FAST, **settings}
            judge = JudgeConfig(base_url=server.base_url, **options)
            evaluate_win_rate(cand, base, judge=judge, output_dir=out, config=QUIET, progress=False)
        assert server.requests == 8  # 4 questions, asked again under the changed setting
