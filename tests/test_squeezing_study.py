"""The squeezing study end to end on the tiny model: three arms through the recipe, one report, judged win rates."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from alignkit.errors import AlignkitError
from alignkit.study import StudyConfig, parse_study_config
from tests.fake_judge_server import FakeJudgeServer, prefer_longer

ROOT = Path(__file__).parents[1]
STUDY = ROOT / "recipes" / "squeezing_study.py"
YAML = ROOT / "recipes" / "study_configs" / "squeezing_study.yaml"


def load_study_recipe():
    spec = importlib.util.spec_from_file_location("squeezing_study", STUDY)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def shared(model_dir) -> dict:
    return {
        "model_name_or_path": str(model_dir),
        "max_train_samples": 12,
        "max_length": 256,
        "per_device_train_batch_size": 2,
        "sft_max_steps": 2,
        "sft_learning_rate": 1e-2,
        "preference_max_steps": 2,  # on-policy: one step per round
        "preference_learning_rate": 1e-2,
        "logging_steps": 1,
        "save_steps": 50,
        "probe_num_prompts": 2,
        "probe_max_new_tokens": 4,
        "probe_every": 1000,  # probes at the start and the end of each stage
        "use_cpu": True,
        "cpu_threads": 1,
        "ranker": "callable",  # the tiny model's samples never pass the built-in verifier
        "ranker_path": "tests.test_onpolicy:length_ranker",
        "onpolicy_prompts_per_round": 4,
        "onpolicy_num_samples": 2,
        "onpolicy_max_new_tokens": 6,
    }


@pytest.fixture(scope="module")
def study_dir(tiny_model_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("study") / "study"
    config = tmp_path_factory.mktemp("study_config") / "study.yaml"
    config.write_text(json.dumps({"study_dir": str(out), "shared": shared(tiny_model_dir), "win_rate_num_prompts": 3,
                                  "win_rate_max_new_tokens": 8, "decomposition_params": "all"}))  # fmt: skip
    with FakeJudgeServer(prefer_longer()) as server:
        argv = ["--config", str(config), "--judge_base_url", server.base_url, "--judge_model", "fake"]
        assert load_study_recipe().main(argv) == out
    return out


def test_study_writes_its_report(study_dir):
    for name in ("study.md", "study.html", "study.json", "study_curves.png", "study_squeeze.png",
                 "decomposition/per_token.png", "decomposition/vocabulary.png"):  # fmt: skip
        assert (study_dir / name).exists(), name
    html = (study_dir / "study.html").read_text()
    assert html.count("data:image/png;base64,") == 4 and 'src="study_' not in html  # self-contained
    report = (study_dir / "study.md").read_text()
    assert "**B vs A**: win rate" in report and "**C vs A**: win rate" in report
    assert "position consistency" in report and "95% CI" in report
    assert "of the other tokens go down" in report


def test_arms_share_probes_and_update_budget(study_dir):
    summary = json.loads((study_dir / "study.json").read_text())
    arms = {a["arm"]: a for a in summary["arms"]}
    assert list(arms) == ["A", "B", "C"]
    assert {a["preference_steps"] for a in arms.values()} == {2}
    probe_sets = {(study_dir / arm / "probe_set.jsonl").read_text() for arm in arms}
    assert len(probe_sets) == 1  # B and C loaded A's probe set
    for arm in ("B", "C"):
        config = (study_dir / "configs" / f"{arm}.yaml").read_text()
        assert f"probe_set_path: {(study_dir / 'A' / 'probe_set.jsonl').resolve()}" in config
    # C's SFT stage is B's, copied: identical adapter, and C did not train it again
    assert (study_dir / "B/sft/adapter/adapter_model.safetensors").read_bytes() == (
        study_dir / "C/sft/adapter/adapter_model.safetensors"
    ).read_bytes()
    assert "skipped" in json.loads((study_dir / "C" / "metrics.json").read_text())["sft"]["status"]
    assert arms["A"]["sft_status"] == "trained" and arms["B"]["sft_steps"] == arms["C"]["sft_steps"] == 2
    for arm in arms.values():  # probe curves from start through the end of the preference stage
        assert all(v == v for v in arm["families"]["chosen"].values())
    wins = {(w["candidate"], w["baseline"]): w for w in summary["win_rates"]}
    assert set(wins) == {("B", "A"), ("C", "A")}
    assert all(0 <= w["win_rate"] <= 1 and w["n_pairs"] == 3 for w in wins.values())


def test_shipped_study_yaml_parses():
    study = parse_study_config(["--config", str(YAML)])
    assert study.arms == ["A", "B", "C"] and study.shared["preference_max_steps"] == 40


@pytest.mark.parametrize(
    ("values", "pattern"),
    [
        ({"arms": ["A", "D"]}, "study field 'arms'"),
        ({"shared": {"sft_max_step": 3}}, "did you mean 'sft_max_steps'"),
        ({"shared": {"sft_mode": "chosen"}}, "sets \\['sft_mode'\\]"),
    ],
)
def test_invalid_study_config(values, pattern):
    with pytest.raises(AlignkitError, match=pattern):
        StudyConfig(**values)
