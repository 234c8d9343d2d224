"""The squeezing study end to end on the tiny model: four arms, files per (seed, arm), report, resume, bad input."""

from __future__ import annotations

import gzip
import importlib.util
import json
from pathlib import Path

import pytest

from alignkit.errors import AlignkitError
from alignkit.study.config import PRIMARY_ARMS, parse_study_config
from alignkit.study.stats import bootstrap_interval, paired_difference

ROOT = Path(__file__).parents[1]
STUDY = ROOT / "recipes" / "squeezing_study.py"


def load_study_recipe():
    spec = importlib.util.spec_from_file_location("squeezing_study", STUDY)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tiny_args(model_dir: Path, study_dir: Path) -> list[str]:
    values = {
        "study_dir": str(study_dir), "model_name_or_path": str(model_dir), "seeds": [0], "num_train_pairs": 4,
        "num_heldout_probes": 2, "batch_size": 2, "sft_steps": 2, "sft_learning_rate": 1e-2, "dpo_epochs": 2,
        "dpo_learning_rate": 1e-2, "eval_epochs": [1, 2], "eval_num_prompts": 3, "eval_max_new_tokens": 4,
        "probe_max_new_tokens": 4, "cpu_threads": 1, "bootstrap": 200, "lora_r": 4, "lora_alpha": 8,
    }  # fmt: skip
    # The recipe's command-line style (alignkit.cli): a list is its items after the flag.
    return [a for k, v in values.items() for a in (f"--{k}", *map(str, v if isinstance(v, list) else [v]))]


@pytest.fixture(scope="module")
def study(tiny_model_dir, tmp_path_factory) -> tuple[Path, list[str]]:
    study_dir = tmp_path_factory.mktemp("study") / "study"
    args = tiny_args(tiny_model_dir, study_dir)
    report = load_study_recipe().main(args)
    assert report == study_dir / "study.md"
    return study_dir, args


def records(path: Path) -> list[dict]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def test_every_arm_leaves_its_raw_files(study):
    study_dir, _ = study
    for arm in PRIMARY_ARMS:
        meta = json.loads((study_dir / "runs" / "s0" / f"{arm}.json").read_text())
        assert meta["arm"] == arm and meta["dpo"]["steps"] == 4 and meta["dpo"]["epoch_steps"] == {"1": 2, "2": 4}
        # Same SFT steps in both modes: chosen-only shows each y+ twice as often as extended SFT.
        assert meta["sft"]["y_plus_exposure"] == (1.0 if arm.startswith("A") else 0.5)
        assert meta["sft"]["y_minus_exposure"] == (0.0 if arm.startswith("A") else 0.5)
        probes = records(study_dir / "runs" / "s0" / f"{arm}.probe_records.jsonl.gz")
        assert {r["event"] for r in probes} == {"begin", "step", "end"}
        assert {r["split"] for r in probes} == {"train", "test"}
        answers = records(study_dir / "runs" / "s0" / f"{arm}.generations.jsonl.gz")
        assert sorted({r["checkpoint"] for r in answers}) == ["epoch0", "epoch1", "epoch2"]
        assert len(answers) == 3 * 3
        preflight = records(study_dir / "runs" / "s0" / f"{arm}.preflight.jsonl.gz")
        # One pre-flight record per training pair, keyed like its probe, with the valley depth of y-.
        assert {r["probe"] for r in preflight} == {r["probe"] for r in probes if r["split"] == "train"}
        assert all(r["rejected_logp_per_token"] < 0 and r["ches"] is not None for r in preflight)
    assert not (study_dir / "work" / "s0").exists()  # a finished seed's models are removed


def test_near_and_far_arms_differ_only_in_the_rejected_answer(study):
    study_dir, _ = study
    begin = {}
    for arm in ("A_near", "A_far"):
        rows = records(study_dir / "runs" / "s0" / f"{arm}.probe_records.jsonl.gz")
        begin[arm] = {(r["probe"], r["family"]): r for r in rows if r["event"] == "begin"}
    assert begin["A_near"].keys() == begin["A_far"].keys()
    same = [k for k in begin["A_near"] if k[1] == "chosen"]
    assert same and all(begin["A_near"][k]["logp"] == pytest.approx(begin["A_far"][k]["logp"]) for k in same)
    train_rejected = [k for k in begin["A_near"] if k[1] == "rejected" and k[0].startswith("train/")]
    assert any(begin["A_near"][k]["logp"] != begin["A_far"][k]["logp"] for k in train_rejected)


def test_report_numbers_come_from_the_probe_records(study):
    """M1 (A_far − A_near of y-'s begin per-token log π, per training probe) recomputed from the raw files."""
    study_dir, _ = study
    summary = json.loads((study_dir / "summary.json").read_text())

    def begin_rejected(arm: str) -> dict:
        rows = records(study_dir / "runs" / "s0" / f"{arm}.probe_records.jsonl.gz")
        return {(0, r["probe"]): r["words_logp_per_token"] for r in rows
                if r["event"] == "begin" and r["family"] == "rejected" and r["split"] == "train"}  # fmt: skip

    diff = paired_difference(begin_rejected("A_far"), begin_rejected("A_near"))
    again = bootstrap_interval(diff, n=200)
    m1 = summary["manipulation"]["checks"]["M1"]["estimate"]
    assert m1["mean"] == pytest.approx(again.mean) and m1["n_units"] == 4
    assert (m1["lo"], m1["hi"]) == pytest.approx((again.lo, again.hi))
    text = (study_dir / "study.md").read_text()
    assert text.index("Manipulation") < text.index("Claims")  # the checks come first
    for figure in ("fig_manipulation.png", "fig_dose_response.png", "fig_quality.png"):
        assert (study_dir / figure).stat().st_size > 1000


def test_rerun_skips_finished_runs_and_redoes_a_lost_one(study, caplog):
    study_dir, args = study
    lost = study_dir / "runs" / "s0" / "B_far.json"
    before = {p.name: p.stat().st_mtime_ns for p in (study_dir / "runs" / "s0").glob("*.json")}
    lost.unlink()  # as if the study had been killed during B_far
    caplog.set_level("WARNING", logger="alignkit")
    load_study_recipe().main(args)
    assert "3 of 4 runs already finished" in caplog.text
    assert "run 1/1: seed 0, arm B_far" in caplog.text
    after = {p.name: p.stat().st_mtime_ns for p in (study_dir / "runs" / "s0").glob("*.json")}
    assert after.keys() == before.keys()
    assert all(after[name] == before[name] for name in before if name != "B_far.json")


def test_analyze_rewrites_the_report_from_the_files_and_trains_nothing(study, caplog):
    study_dir, args = study
    (study_dir / "study.md").unlink()
    meta = study_dir / "runs" / "s0" / "B_far.json"
    aside = meta.with_suffix(".aside")
    meta.rename(aside)  # an unfinished run: a training rerun would redo it, --analyze must not
    try:
        caplog.set_level("WARNING", logger="alignkit")
        assert load_study_recipe().main([*args, "--analyze"]) == study_dir / "study.md"
        summary = json.loads((study_dir / "summary.json").read_text())
        assert "[study] run" not in caplog.text and "B_far" not in summary["arms"]
    finally:
        aside.rename(meta)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--arms", "A_near", "C_far"], "'C_far'"),
        (["--seeds", "0", "0"], "distinct seeds"),
        (["--num_train_pairs", "5", "--batch_size", "2"], "multiple of 'batch_size'"),
        (["--eval_epochs", "5"], "eval_epochs"),
        (["--profile", "nope"], "unknown profile 'nope'"),
        (["--profile", "quick", "--config", "x.yaml"], "not both"),
        (["--sedes", "1"], "did you mean '--seeds'"),
        (["--profile", "quick", "--lora_r", "0"], "'lora_r' must be positive"),
    ],
)
def test_bad_study_settings_are_refused_by_name(argv, message):
    with pytest.raises(AlignkitError, match=message):
        parse_study_config(argv)


def test_a_bad_key_in_a_study_yaml_names_the_file_and_key(tmp_path):
    path = tmp_path / "study.yaml"
    path.write_text("seeds: [0, 1, 2]\nnum_train_pairs: sixteen\n")
    with pytest.raises(AlignkitError, match=r"study\.yaml: key 'num_train_pairs' is 'sixteen'; expected int"):
        parse_study_config(["--config", str(path)])


def test_profiles_parse_and_quick_is_the_full_studys_first_seed():
    quick, full = parse_study_config(["--profile", "quick"]), parse_study_config(["--profile", "full"])
    assert quick.seeds == [full.seeds[0]] and len(full.seeds) >= 3
    differ = {k for k in vars(quick) if getattr(quick, k) != getattr(full, k)}
    assert differ == {"seeds", "study_dir"}
