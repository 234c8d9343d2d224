"""The project's offline lm-eval task: its data is well formed, lm-eval finds it, and a local model runs on it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from alignkit.errors import AlignkitError
from alignkit.judge.benchmarks import SHIPPED_TASKS, hf_model_args, results_table, run_lm_eval

from .conftest import require_or_skip

TASK_DIR = Path(__file__).resolve().parents[1] / "eval" / "lm_eval_tasks" / "alignkit_tiny_qa"


@pytest.fixture
def lm_eval_installed() -> None:
    require_or_skip("lm_eval", "lm-eval is not installed (the eval extra)")


needs_lm_eval = pytest.mark.usefixtures("lm_eval_installed")


def test_tiny_qa_data_is_well_formed():
    rows = [json.loads(line) for line in (TASK_DIR / "alignkit_tiny_qa.jsonl").read_text().splitlines()]
    assert 20 <= len(rows) <= 50
    assert len({r["id"] for r in rows}) == len(rows) and len({r["question"] for r in rows}) == len(rows)
    for r in rows:
        assert len(r["choices"]) == 4 and len(set(r["choices"])) == 4, r
        assert 0 <= r["answer"] < 4, r
    # the right answer is not always in the same slot (a model preferring one slot must not score well)
    assert max(sum(r["answer"] == k for r in rows) for k in range(4)) < 0.5 * len(rows)


def test_model_args_for_each_kind_of_model(tmp_path):
    assert hf_model_args("some/hub-id")["pretrained"] == "some/hub-id"
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "base/model"}))
    assert hf_model_args(adapter) | {} == {"dtype": "float32", "pretrained": "base/model", "peft": str(adapter)}
    gguf = tmp_path / "m.Q4.gguf"
    gguf.write_bytes(b"")
    assert hf_model_args(gguf)["gguf_file"] == "m.Q4.gguf" and hf_model_args(gguf)["pretrained"] == str(tmp_path)


@needs_lm_eval
def test_unknown_task_is_a_clear_error(tiny_model_dir, monkeypatch):
    import lm_eval.tasks

    real = lm_eval.tasks.TaskManager
    # Skip indexing lm-eval's built-in tasks (over a minute on a busy 2-core machine); the name is in neither index.
    monkeypatch.setattr(lm_eval.tasks, "TaskManager", lambda **kw: real(**{**kw, "include_defaults": False}))
    with pytest.raises(AlignkitError, match=r"unknown lm-eval task\(s\) \['no_such_task_xyz'\]"):
        run_lm_eval(tiny_model_dir, ["no_such_task_xyz"])


@needs_lm_eval
def test_tiny_qa_runs_offline_on_a_local_model_folder(tiny_model_dir, tmp_path):
    assert SHIPPED_TASKS.is_dir()
    summary = run_lm_eval(tiny_model_dir, ["alignkit_tiny_qa"], limit=8, output_dir=tmp_path)
    metrics = summary["results"]["alignkit_tiny_qa"]
    assert 0.0 <= metrics["acc,none"] <= 1.0 and 0.0 <= metrics["acc_norm,none"] <= 1.0
    assert summary["n_samples"]["alignkit_tiny_qa"]["effective"] == 8
    table = (tmp_path / "lm_eval_results.md").read_text()
    assert "| alignkit_tiny_qa | acc |" in table and table.strip() == results_table(summary)
    assert json.loads((tmp_path / "lm_eval_results.json").read_text())["tasks"] == ["alignkit_tiny_qa"]
