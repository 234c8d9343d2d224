"""The verifier (alignkit.data.verifier) and the `verifier` judge built on it: each built-in task, both orders, graded
scores, rows without a reference answer, a user's `module:function`, the win-rate evaluator and its CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from alignkit.data.builtin import builtin_rows, load_builtin
from alignkit.data.verifier import load_verifier, verify
from alignkit.errors import AlignkitError
from alignkit.judge import JudgeConfig, WinRateConfig, evaluate_win_rate
from alignkit.judge.client import Comparison
from alignkit.judge.verifier import VerifierJudge, verifier_verdict, with_references
from alignkit.onpolicy.rankers import builtin_verifier

REPO = Path(__file__).resolve().parents[1]
QUIET = WinRateConfig(bootstrap_samples=200)


# --- the verifier


def _row(task: str, prompt: str, answer: str) -> dict:
    return {"task": task, "prompt": [{"role": "user", "content": prompt}], "reference_answer": answer}


@pytest.mark.parametrize(
    ("task", "prompt", "answer", "candidate", "score"),
    [
        ("arithmetic", "Calculate 96 - 36.", "60", "96 - 36 = 60. The answer is 60.", 1.0),
        ("arithmetic", "Calculate 96 - 36.", "60", "96-36=60", 1.0),  # "-36" is not a negative number here
        ("arithmetic", "Calculate 96 - 36.", "60", "The answer is sixty.", 1.0),
        ("arithmetic", "Calculate 96 - 36.", "60", "It is 60.0", 1.0),
        ("arithmetic", "Calculate 96 - 36.", "60", "It is 60 or 61.", 0.5),  # a hedge: right next to wrong
        ("arithmetic", "Calculate 96 - 36.", "60", "58 59 60 61 62", 0.2),  # guessing many is worth little
        ("arithmetic", "Calculate 96 - 36.", "60", "The answer is 62.", 0.0),
        ("arithmetic", "Calculate 96 - 36.", "60", "Calculate 96 - 36.", 0.0),  # echoing the question
        ("arithmetic", "Calculate 96 - 36.", "60", "600", 0.0),  # no partial-number matches
        ("arithmetic", "Calculate 96 - 36.", "60", "", 0.0),
        ("units", "How many meters are in 3 kilometers?", "3000", "3 x 1000 = 3,000 meters.", 1.0),
        ("units", "How many meters are in 3 kilometers?", "3000", "There are 300 meters.", 0.0),
        ("letters", "How many letters are in the word 'garden'?", "6", "'garden' has six letters.", 1.0),
        ("letters", "How many letters are in the word 'garden'?", "6", "The word has one 6-letter form.", 1.0),
        ("compare", "Which number is larger, 585 or 31?", "585", "585 is larger than 31.", 1.0),
        ("compare", "Which number is larger, 585 or 31?", "585", "31 is smaller than 585.", 1.0),
        ("compare", "Which number is larger, 585 or 31?", "585", "The larger number is 585.", 1.0),
        ("compare", "Which number is larger, 585 or 31?", "585", "31 is larger than 585.", 0.0),
        ("compare", "Which number is larger, 585 or 31?", "585", "31", 0.0),
        ("sorting", "Sort these numbers from smallest to largest: 9, 3, 7.", "3, 7, 9", "Sorted: 3, 7, 9.", 1.0),
        ("sorting", "Sort these numbers from smallest to largest: 9, 3, 7.", "3, 7, 9",
         "You gave 9, 3, 7; sorted they are 3, 7, 9.", 1.0),
        ("sorting", "Sort these numbers from smallest to largest: 9, 3, 7.", "3, 7, 9", "Sorted: 3, 9, 7.", 0.0),
        ("sorting", "Sort these numbers from smallest to largest: 9, 3, 7.", "3, 7, 9",
         "3, 7, 9 or maybe 3, 9, 7", 0.5),
        ("reverse", "Spell the word 'piano' backwards.", "onaip", "'piano' spelled backwards is 'onaip'.", 1.0),
        ("reverse", "Spell the word 'piano' backwards.", "onaip", "O-N-A-I-P", 1.0),
        ("reverse", "Spell the word 'piano' backwards.", "onaip", "onaip, or is it oniap?", 0.5),
        ("reverse", "Spell the word 'piano' backwards.", "onaip", "It is 'oanip'.", 0.0),
        ("capitals", "What is the capital of Brazil?", "Brasília", "The capital is Brasilia.", 1.0),
        ("capitals", "What is the capital of Brazil?", "Brasília", "Rio de Janeiro or Brasília.", 0.5),
        ("capitals", "What is the capital of Brazil?", "Brasília", "Rio de Janeiro.", 0.0),
        ("capitals", "What is the capital of the United States?", "Washington, D.C.", "Washington DC", 1.0),
        ("capitals", "What is the capital of Mexico?", "Mexico City", "It is Mexico City.", 1.0),
        ("capitals", "What is the capital of Italy?", "Rome", "Romeo and Juliet.", 0.0),  # whole words only
        ("antonyms", "What is the opposite of 'hot'?", "cold", "The opposite of 'hot' is 'cold'.", 1.0),
        ("antonyms", "What is the opposite of 'hot'?", "cold", "It is 'warm'.", 0.0),
        ("antonyms", "What is the opposite of 'hot'?", "cold", "cold, or warm", 0.5),
        ("other", "What is 2 to the power of 10?", "1,024", "It is 1024.", 1.0),  # user data: numeric answer
        ("other", "Name the largest planet.", "Jupiter", "That is Jupiter.", 1.0),  # user data: a phrase
    ],
)  # fmt: skip
def test_verifier(task, prompt, answer, candidate, score):
    assert verify(candidate, _row(task, prompt, answer)) == pytest.approx(score)


def test_verifier_on_the_builtin_pairs():
    """Every built-in chosen answer (and its rephrase) scores 1, every rejected one 0; advice cannot be checked."""
    for row in builtin_rows():
        got = [
            verify(row[f][0]["content"], row) for f in ("chosen", "chosen_rephrase", "rejected", "rejected_rephrase")
        ]
        assert got == ([None] * 4 if row["task"] == "advice" else [1.0, 1.0, 0.0, 0.0]), row["id"]


# --- the verifier judge


def _text(messages: list[dict]) -> str:
    return messages[0]["content"]


def one_row_per_task() -> list[dict]:
    rows = {}
    for row in builtin_rows():
        rows.setdefault(row["task"], row)
    return list(rows.values())


def test_verifier_judge_on_each_builtin_task_in_both_orders():
    judge = VerifierJudge()
    rows = one_row_per_task()
    assert {r["task"] for r in rows} >= {"arithmetic", "capitals", "units", "antonyms", "reverse", "sorting",
                                         "letters", "compare", "advice"}  # fmt: skip
    for row in rows:
        instruction, good, bad = _text(row["prompt"]), _text(row["chosen"]), _text(row["rejected"])
        comparisons = [
            Comparison(instruction, good, bad),
            Comparison(instruction, bad, good),
            Comparison(instruction, good, _text(row["chosen_rephrase"])),
        ]
        got = [(j.status, j.verdict) for j in judge.judge(comparisons, [row] * 3)]
        if row["task"] == "advice":  # no reference answer: nothing to check
            assert [s for s, _ in got] == ["unverifiable"] * 3, row["id"]
        else:
            assert got == [("ok", "A"), ("ok", "B"), ("ok", "tie")], row["id"]


def test_graded_scores_decide_and_equal_scores_tie():
    row = {"task": "arithmetic", "prompt": "What is 12 plus 30?", "reference_answer": "42"}
    hedge, wrong, right = "It is 42, or maybe 43.", "It is 43.", "It is 42."
    verdicts = [j.verdict for j in VerifierJudge().judge(
        [Comparison("q", hedge, wrong), Comparison("q", hedge, right), Comparison("q", wrong, "44")], [row] * 3
    )]  # fmt: skip
    assert verdicts == ["A", "B", "tie"]  # 0.5 beats 0, loses to 1; two wrong answers tie
    assert (verifier_verdict(0.5, 0.0), verifier_verdict(0.0, 0.0), verifier_verdict(1.0, None)) == ("A", "tie", None)


def test_the_onpolicy_ranker_and_the_judge_share_one_verifier():
    rows = [r for r in builtin_rows() if r["reference_answer"]][:20]
    candidates = [[_text(r["chosen"]), _text(r["rejected"])] for r in rows]
    assert builtin_verifier([r["prompt"] for r in rows], candidates, rows) == [[1.0, 0.0]] * 20
    assert load_verifier("builtin") is verify


def test_references_come_from_the_builtin_data_when_the_prompt_set_has_none():
    row = next(r for r in builtin_rows() if r["task"] == "capitals")
    filled = with_references([{"prompt": row["prompt"]}, {"prompt": "Who wrote Hamlet?"}])
    assert filled[0]["reference_answer"] == row["reference_answer"] and filled[0]["task"] == "capitals"
    assert "reference_answer" not in filled[1]


def check_has_word(response: str, row: dict):
    """A user verifier: 1 if the reference word appears, 0 if not; None for rows without one."""
    if not row.get("reference_answer"):
        return None
    return float(row["reference_answer"].lower() in response.lower())


def bad_verifier(response: str, row: dict):
    return "yes"


def test_a_user_verifier_plugs_in_as_module_function():
    judge = VerifierJudge("tests.test_verifier:check_has_word")
    row = {"prompt": "Name a fruit that is yellow.", "reference_answer": "banana"}
    assert [j.verdict for j in judge.judge([Comparison("q", "A banana.", "An apple.")], [row])] == ["A"]
    with pytest.raises(AlignkitError, match="must return a number"):
        VerifierJudge("tests.test_verifier:bad_verifier").judge([Comparison("q", "x", "y")], [row])
    with pytest.raises(AlignkitError, match="judge.verifier 'tests.test_verifier:nope'.*no function 'nope'"):
        VerifierJudge("tests.test_verifier:nope")


def write_outputs(path: Path, rows: list[dict], field: str) -> Path:
    with path.open("w") as f:
        for r in rows:
            f.write(json.dumps({"prompt": r["prompt"], "output": r[field]}) + "\n")
    return path


def test_win_rate_with_the_verifier_judge_on_the_held_out_split(tmp_path):
    test = list(load_builtin()["test"])
    good = write_outputs(tmp_path / "chosen.jsonl", test, "chosen")
    bad = write_outputs(tmp_path / "rejected.jsonl", test, "rejected")
    result = evaluate_win_rate(good, bad, judge=JudgeConfig(base_url="verifier"), output_dir=tmp_path / "out",
                               config=QUIET, progress=False)  # fmt: skip
    checkable = sum(1 for r in test if r["reference_answer"])
    assert (result.wins, result.ties, result.losses) == (checkable, 0, 0)
    assert result.unjudged == {"unverifiable": len(test) - checkable}  # the advice prompts
    assert result.win_rate == 1.0 and result.position_consistency == 1.0 and result.complete
    assert result.stats["requests"] == 0
    report = (tmp_path / "out" / "report.md").read_text()
    assert "verifier" in report and "simplified fit" in report and "Warning: weak judge" not in report


def test_cli_judge_verifier(tmp_path):
    test = list(load_builtin()["test"])
    good = write_outputs(tmp_path / "chosen.jsonl", test, "chosen")
    bad = write_outputs(tmp_path / "rejected.jsonl", test, "rejected")
    proc = subprocess.run(
        [sys.executable, str(REPO / "eval" / "win_rate.py"), "--candidate", str(bad), "--baseline", str(good),
         "--judge", "verifier", "--output-dir", str(tmp_path / "out"), "--quiet", "--bootstrap-samples", "100"],
        capture_output=True, text=True, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "win rate 0.0%" in proc.stdout and "0 requests" in proc.stdout
