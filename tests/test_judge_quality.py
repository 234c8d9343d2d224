"""The judge-quality set (built deterministically, shipped, verified); the annotator-table metrics, hand-computed."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from alignkit.data.builtin import builtin_rows
from alignkit.data.verifier import verify
from alignkit.errors import AlignkitError
from alignkit.judge.client import Judgment
from alignkit.judge.config import JudgeConfig
from alignkit.judge.quality import (
    SHIPPED_PAIRS,
    PairJudgments,
    build_labelled_pairs,
    quality_row,
    read_labelled_pairs,
)
from tests.fake_judge_server import FakeJudgeServer, position_biased_logprobs

REPO = Path(__file__).resolve().parents[1]


def test_the_shipped_set_is_the_builders_output_and_every_label_is_verified():
    shipped = read_labelled_pairs()
    assert shipped == build_labelled_pairs()  # rebuild with write_labelled_pairs(SHIPPED_PAIRS, build_...) if not
    assert len(shipped) >= 200
    rows = {r["id"]: r for r in builtin_rows()}
    for p in shipped:
        row = rows[p["source_id"]]
        correct, wrong = (p["response_1"], p["response_2"]) if p["label"] == 1 else (p["response_2"], p["response_1"])
        assert (verify(correct, row), verify(wrong, row)) == (1.0, 0.0), p["id"]
    assert {p["label"] for p in shipped} == {1, 2}  # the correct response is not always in the same slot
    assert len({p["task"] for p in shipped}) == 8


def test_a_bad_labelled_row_names_file_line_and_field(tmp_path):
    path = tmp_path / "pairs.jsonl"
    good = json.loads(SHIPPED_PAIRS.read_text().splitlines()[0])
    path.write_text(json.dumps(good) + "\n" + json.dumps({**good, "label": 3}) + "\n")
    with pytest.raises(AlignkitError, match=r"pairs.jsonl:2: field 'label' must be 1 or 2"):
        read_labelled_pairs(path)


def ok(verdict: str, logit_a: float | None = None) -> Judgment:
    return Judgment(key="", status="ok", verdict=verdict, logit_a=logit_a)


TEXT = JudgeConfig(base_url="http://x/v1", model="m", mode="text")
LOGPROBS = JudgeConfig(base_url="http://x/v1", model="m", mode="logprobs", logprob_margin=0.5)


def test_a_judge_that_always_says_a():
    # labels 1, 2, 1, 2; response 1 is the longer one in every pair
    records = [PairJudgments(label, (20, 10), ok("A"), ok("A")) for label in (1, 2, 1, 2)]
    row = quality_row(records, TEXT)
    assert row["agreement"] == 0.5  # right in one order of each pair
    assert row["p_first"] == 1.0 and row["self_consistency"] == 0.0
    assert row["p_longer"] == 0.5  # names response 1 (longer) when it is first, response 2 when that is
    assert row["ties"] == 0.0 and row["pair_ties"] == 1.0 and row["pair_accuracy"] == 0.5


def test_a_perfect_judge_and_one_that_prefers_length():
    perfect = [PairJudgments(1, (5, 9), ok("A"), ok("B")), PairJudgments(2, (5, 9), ok("B"), ok("A"))]
    row = quality_row(perfect, TEXT)
    assert (row["agreement"], row["pair_accuracy"], row["p_first"], row["self_consistency"]) == (1.0, 1.0, 0.5, 1.0)
    assert row["p_longer"] == 0.5  # the correct response is the longer one in half of the pairs
    longer = [PairJudgments(1, (5, 9), ok("B"), ok("A")), PairJudgments(2, (5, 9), ok("B"), ok("A"))]
    row = quality_row(longer, TEXT)
    assert (row["p_longer"], row["agreement"], row["self_consistency"]) == (1.0, 0.5, 1.0)


def test_ties_and_unparsed_judgments():
    records = [
        PairJudgments(1, (5, 5), ok("tie"), ok("A")),  # tie, then response 2 (shown first)
        PairJudgments(2, (5, 5), Judgment(key="", status="unparseable"), ok("A")),  # left out of the pair metrics
    ]
    row = quality_row(records, TEXT)
    # judgments used: tie (credit 0.5), response 2 vs label 1 (0), response 2 vs label 2 (1): agreement 1.5 / 3
    assert row["agreement"] == pytest.approx(0.5) and row["ties"] == pytest.approx(1 / 3)
    assert row["unparsed"] == 1 and row["self_consistency"] == 0.0 and math.isnan(row["p_longer"])


def test_logprobs_rows_combine_both_orders_in_log_odds():
    # response 1 correct; the judge leans to A by 1.5 and to the correct answer by 0.6: log-odds 2.1 then 0.9
    records = [PairJudgments(1, (5, 5), ok("A", 2.1), ok("A", 0.9))]
    row = quality_row(records, LOGPROBS)
    assert row["agreement"] == 0.5 and row["p_first"] == 1.0  # each verdict alone reads the position
    assert row["pair_accuracy"] == 1.0  # (2.1 - 0.9) / 2 = 0.6 >= 0.5: response 1
    weaker = [PairJudgments(1, (5, 5), ok("A", 2.0), ok("A", 1.4))]  # (2.0 - 1.4) / 2 = 0.3: abstain
    assert quality_row(weaker, LOGPROBS)["pair_ties"] == 1.0


def always_a(messages):
    return "Verdict: [[A]]"


def test_the_command_prints_the_table_for_both_modes(tmp_path):
    with FakeJudgeServer(always_a, logprob_policy=position_biased_logprobs(bias=1.5)) as server:
        proc = subprocess.run(
            [sys.executable, str(REPO / "eval" / "judge_quality.py"), "--judge-base-url", server.base_url,
             "--judge-model", "fake", "--limit", "10", "--output-dir", str(tmp_path), "--quiet"],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert server.requests == 40  # 10 pairs x 2 orders x 2 modes
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stdout.splitlines() if line.startswith("| fake |")]
    assert [line.split(" | ")[1] for line in lines] == ["text", "logprobs"]
    assert all(" | 10 | 0.500 | 0.500 | 1.000 | 0.000 |" in line for line in lines)  # always A, in both modes
    saved = json.loads((tmp_path / "quality.json").read_text())
    assert saved["rows"][1]["mode"] == "logprobs"
    # every pair's combined log-odds is (1.5 - 1.5) / 2 = 0: a tie at every margin
    assert [(r["margin"], r["decided"]) for r in saved["margin_sweep"]] == [
        (m, 0) for m in (0, 0.05, 0.1, 0.2, 0.5, 1)
    ]
    assert "| 0.5 | 0 of 10 |" in proc.stdout
