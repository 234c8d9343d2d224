"""The recipe's evaluation step: the judge is checked before training, the built-in data defaults to the verifier, and
a failed final evaluation still leaves a report that says what failed."""

from __future__ import annotations

import json
import re
import socket

import pytest

import alignkit.evaluation as evaluation
from alignkit.config import parse_recipe_config
from alignkit.data import load_builtin
from alignkit.errors import AlignkitError
from alignkit.evaluation import check_judge, eval_judge, final_win_rate
from alignkit.judge import JudgeConfig
from tests.fake_judge_server import FakeJudgeServer, prefer_longer

from .test_recipe import run_recipe_in_process, tiny_args


def dead_url() -> str:
    with socket.socket() as s:  # a port nobody listens on once this closes
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


def test_builtin_data_defaults_to_the_verifier_and_other_data_to_the_local_judge(tmp_path):
    assert eval_judge(parse_recipe_config([])).is_verifier
    other = tmp_path / "prefs.jsonl"
    other.write_text(json.dumps({"prompt": "q", "chosen": "a", "rejected": "b"}) + "\n")
    assert eval_judge(parse_recipe_config(["--dataset_name", str(other)])).is_local


def test_a_bad_judge_fails_before_training_in_seconds(monkeypatch):
    test = list(load_builtin()["test"])
    cfg = parse_recipe_config(["--eval_judge_base_url", dead_url(), "--eval_judge_model", "m"])
    with pytest.raises(AlignkitError, match=r"judge.base_url=http://127.0.0.1:\d+/v1: not reachable"):
        check_judge(cfg, test)
    monkeypatch.delenv("ALIGNKIT_NO_SUCH_KEY", raising=False)
    cfg = parse_recipe_config(["--eval_judge_base_url", dead_url(), "--eval_judge_model", "m",
                               "--eval_judge_api_key_env", "ALIGNKIT_NO_SUCH_KEY"])  # fmt: skip
    with pytest.raises(AlignkitError, match="ALIGNKIT_NO_SUCH_KEY: that environment variable is not set"):
        check_judge(cfg, test)
    cfg = parse_recipe_config(["--eval_judge_verifier", "no_such_module:score"])
    with pytest.raises(AlignkitError, match="judge.verifier 'no_such_module:score': cannot import"):
        check_judge(cfg, test)
    cfg = parse_recipe_config(["--eval_judge_base_url", "verifier"])
    rows = [{"prompt": "Who wrote Hamlet?"}]
    with pytest.raises(AlignkitError, match="no held-out row of 'builtin' has a 'reference_answer'"):
        check_judge(cfg, rows)
    with FakeJudgeServer() as server:  # a reachable endpoint passes
        cfg = parse_recipe_config(["--eval_judge_base_url", server.base_url, "--eval_judge_model", "m"])
        assert check_judge(cfg, test).model == "m"
    assert check_judge(parse_recipe_config([]), test).is_verifier


def outputs(path, rows, text):
    path.write_text("".join(json.dumps({"prompt": r["prompt"], "output": text}) + "\n" for r in rows))
    return path


def test_an_endpoint_that_dies_leaves_a_section_that_says_what_failed(tmp_path, monkeypatch):
    rows = list(load_builtin()["test"])[:3]
    final = outputs(tmp_path / "final.jsonl", rows, "short")
    base = outputs(tmp_path / "base.jsonl", rows, "a longer answer")
    cfg = parse_recipe_config(["--eval_baseline", str(base), "--eval_judge_base_url", "http://x/v1",
                               "--eval_judge_model", "m"])  # fmt: skip
    gone = JudgeConfig(base_url=dead_url(), model="m", max_retries=1, backoff_initial_s=0.01, timeout_s=2.0)
    monkeypatch.setattr(evaluation, "eval_judge", lambda cfg: gone)
    section = final_win_rate(cfg, final, rows, tmp_path / "win_rate")
    # the first to give up waits out its retries; the others then stop at their next refused connection
    assert re.search(
        r"\*\*Incomplete:\*\* 3 pair\(s\) error not in the numbers; first error: (gave up after 2 tries: connection|"
        r"connection: the endpoint is unreachable)\.",
        section,
    )


def test_an_exception_in_the_evaluation_becomes_the_section(tmp_path, monkeypatch):
    def broken(**kwargs):
        raise RuntimeError("the judge server exploded")

    monkeypatch.setattr(evaluation, "evaluate_win_rate", broken)
    section = final_win_rate(parse_recipe_config([]), tmp_path / "final", [], tmp_path / "win_rate")
    assert "**The final evaluation failed** (judge the verifier (reference answers)): RuntimeError: the judge" in (
        section
    )
    assert "RuntimeError" in (tmp_path / "win_rate" / "error.txt").read_text()


def test_the_recipe_writes_its_report_when_the_judge_fails_mid_evaluation(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("ALIGNKIT_TEST_JUDGE_KEY", "sk-wrong")
    baseline = outputs(tmp_path / "baseline.jsonl", list(load_builtin()["test"])[:2], "a long baseline answer")
    # The server lists its models to anyone (so the check before training passes) but refuses the key on every
    # judgment: the evaluation stops with an error after training, and the report must still be written.
    with FakeJudgeServer(policy=prefer_longer(), api_key="sk-right") as server:
        args = tiny_args(tiny_model_dir, tmp_path / "out", preference_max_steps=1, probe_enabled=False,
                         eval_win_rate=True, eval_baseline=baseline, eval_judge_base_url=server.base_url,
                         eval_judge_model="fake-judge",
                         eval_judge_api_key_env="ALIGNKIT_TEST_JUDGE_KEY", eval_num_prompts=2,
                         eval_max_new_tokens=4)  # fmt: skip
        out = run_recipe_in_process(args)
    report = (out / "report.md").read_text()
    assert "**The final evaluation failed** (judge `fake-judge`)" in report and "HTTP 401" in report
    assert (out / "final" / "model.safetensors").exists() and "## Stages" in report


def test_the_default_recipe_ends_with_a_verifier_win_rate(tiny_model_dir, tmp_path):
    args = tiny_args(tiny_model_dir, tmp_path / "out", preference_max_steps=1, probe_enabled=False,
                     eval_win_rate=True, eval_num_prompts=6, eval_max_new_tokens=4)  # fmt: skip
    out = run_recipe_in_process(args)
    report = (out / "report.md").read_text()
    assert "judged by the verifier (reference answers) in both orders" in report
    results = json.loads((out / "win_rate" / "results.json").read_text())
    assert results["judge"]["base_url"] == "verifier" and results["stats"]["requests"] == 0
    assert results["n_pairs"] + sum(results["unjudged"].values()) == 6
