"""`python -m alignkit.study.judge`: a judge's win rate per study comparison through the evaluator, seeds as the unit.

Run on a copy of the committed study's A_far and B_far answers (real answers of the real model)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from alignkit.errors import AlignkitError
from alignkit.judge.config import JudgeConfig
from alignkit.study.analysis import analyze
from alignkit.study.judge import judge_study, main
from alignkit.study.records import JUDGE_RESULT
from alignkit.study.report import write_report
from tests.fake_judge_server import FakeJudgeServer, prefer_longer

FULL = Path(__file__).resolve().parents[1] / "results" / "squeezing_study" / "full"
FAST = dict(backoff_initial_s=0.01, backoff_max_s=0.05, timeout_s=10.0)


def study_copy(tmp_path: Path, seeds=(0, 1, 2, 3, 4), arms=("A_far", "B_far")) -> Path:
    for seed in seeds:
        (tmp_path / "runs" / f"s{seed}").mkdir(parents=True)
        for arm in arms:
            for path in (FULL / "runs" / f"s{seed}").glob(f"{arm}.*"):
                shutil.copy(path, tmp_path / "runs" / f"s{seed}" / path.name)
    return tmp_path


def test_the_verifier_through_the_evaluator_gives_the_studys_own_win_rate(tmp_path):
    # Two paths to one number: the study's analysis scores each answer with the verifier and pairs them; the
    # evaluator judges the same answers in both orders with the verifier judge.
    root = study_copy(tmp_path)
    result = judge_study(root, JudgeConfig(base_url="verifier"), n_boot=200, progress=False)
    want = json.loads((FULL / "summary.json").read_text())["comparisons"]["B_far vs A_far"]["win_rate"]["ours"]
    got = result["comparisons"]["B_far vs A_far"]["win_rate"]["ours"]
    assert got["mean"] == pytest.approx(want["mean"], abs=1e-12) and got["n_seeds"] == 5
    assert got["per_seed"] == pytest.approx(want["per_seed"])
    assert json.loads((root / JUDGE_RESULT).read_text())["judge"]["base_url"] == "verifier"
    # The analysis reads the file: the report's judge section and the paper table's judged row
    summary = analyze(root, n_boot=50)
    claims = {c["id"]: c for c in summary["paper_claims"]}
    assert claims["P8j"]["verdict"] == "partly" and "verifier:builtin" in claims["P8j"]["claim"]
    report = write_report(root, summary).read_text()
    assert "## LLM judge" in report and "| B_far vs A_far | 5 | 0.531 [" in report
    (root / JUDGE_RESULT).write_text('{"judge": {},\n "comparisons": [}')
    with pytest.raises(AlignkitError, match=rf"{JUDGE_RESULT}:2: not valid JSON"):
        analyze(root, n_boot=50)


def test_an_llm_judge_is_asked_in_both_orders_once_and_a_rerun_asks_nothing(tmp_path):
    root = study_copy(tmp_path, seeds=(0, 1))
    with FakeJudgeServer(policy=prefer_longer()) as server:
        judge = JudgeConfig(base_url=server.base_url, model="fake", **FAST)
        first = judge_study(root, judge, n_boot=200, progress=False)
        asked = server.requests
        again = judge_study(root, judge, n_boot=200, progress=False)
        assert server.requests == asked  # every verdict came from the cache
    comp = first["comparisons"]["B_far vs A_far"]
    assert comp["complete"] and comp["seeds"] == [0, 1] and asked > 0
    # prefer_longer's outcome per prompt, from the answers the evaluator was given: B wins where its answer is longer
    expected = []
    for seed in (0, 1):
        folder = root / "judge" / "B_far_vs_A_far" / f"s{seed}"
        b, a = ([json.loads(line)["output"].strip() for line in (folder / name).read_text().splitlines()]
                for name in ("candidate_answers.jsonl", "baseline_answers.jsonl"))  # fmt: skip
        expected += [0.5 if len(x) == len(y) else float(len(x) > len(y)) for x, y in zip(b, a)]
    assert comp["win_rate"]["ours"]["mean"] == pytest.approx(sum(expected) / len(expected))
    assert again["comparisons"]["B_far vs A_far"]["win_rate"] == comp["win_rate"]


def test_bad_requests_are_refused_by_name(tmp_path, capsys):
    root = study_copy(tmp_path, seeds=(0,))
    with pytest.raises(AlignkitError, match=r"--comparisons \['B_far vs C'\]: not in .*'B_far vs A_far'"):
        judge_study(root, JudgeConfig(base_url="verifier"), names=["B_far vs C"], progress=False)
    assert main(["--judge", "verifier"]) == 2
    assert "--study_dir is required" in capsys.readouterr().err
    assert main(["--study_dir", str(root), "--judge", "verifier", "--quiet", "true", "--bootstrap", "50"]) == 0
    assert "B_far vs A_far: judge win rate" in capsys.readouterr().out
