"""bench/preflight_validation.py on a synthetic study whose off-target fall grows with the pair's valley depth."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.test_bench_paths import bench
from tests.test_study_analysis import ARMS, TRAIN, depth, write_gz, write_study

validation = bench("preflight_validation")  # with bench/ on the path, as when run as a script


def with_preflight(root: Path, seeds=(0, 1, 2)) -> Path:
    """Pre-flight files: y-'s depth as in the probe records (deeper = more fall there), CHES unrelated to it."""
    for seed in seeds:
        for arm in ARMS:
            rows = [{"probe": p, "rejected_logp_per_token": depth(p), "rejected_min_logp": 2 * depth(p),
                     "chosen_logp_per_token": -1.0, "margin_per_token": -1.0 - depth(p),
                     "ches": float((i * 5 + seed) % 3)} for i, p in enumerate(TRAIN)]  # fmt: skip
            write_gz(root / "runs" / f"s{seed}" / f"{arm}.preflight.jsonl.gz", rows)
    return root


def test_valley_depth_predicts_within_runs_and_a_flat_score_does_not(tmp_path):
    root = with_preflight(write_study(tmp_path / "study"))
    rows = {r["score"]: r for r in validation.table(root, n_boot=200)}
    depth_row = rows["rejected_logp_per_token"]
    # Within each (seed, arm) the fall is 0.1·(−depth) + a constant: ranks exactly reversed, ρ = −1.
    assert depth_row["within_run"]["mean"] == pytest.approx(-1.0) and depth_row["predicts_within_run"]
    assert depth_row["units"] == 3 * len(ARMS) * len(TRAIN)
    # y- deeper below y+ = larger margin = more fall: ρ = +1, the sign a predicting margin has.
    assert rows["margin_per_token"]["within_run"]["mean"] == pytest.approx(1.0)
    assert rows["margin_per_token"]["predicts_within_run"]
    assert rows["rejected_min_logp"]["expected_sign"] == -1 and rows["ches"]["expected_sign"] == +1
    assert rows["chosen_logp_per_token"]["units"] == depth_row["units"]  # a constant score: ρ undefined
    assert not rows["chosen_logp_per_token"]["predicts_within_run"]


def test_main_writes_table_and_refuses_a_study_without_preflight(tmp_path, capsys):
    root = with_preflight(write_study(tmp_path / "study"))
    assert validation.main(["--study", str(root), "--bootstrap", "100"]) == 0
    saved = json.loads((root / "preflight_validation.json").read_text())
    assert {r["score"] for r in saved} == set(validation.SCORES)
    assert "| rejected_logp_per_token |" in (root / "preflight_validation.md").read_text()
    bare = write_study(tmp_path / "bare")
    assert validation.main(["--study", str(bare)]) == 2
    assert "no pre-flight files" in capsys.readouterr().err


def test_one_step_sample_of_a_drop_arm_is_compared_on_its_baselines_pairs(tmp_path):
    """A_far_act_drop's pre-flight scored A_far's start: its one-step predictions pair with A_far's measured fall."""
    root = with_preflight(write_study(tmp_path / "study"))
    for seed in (0, 1, 2):
        folder = root / "runs" / f"s{seed}"
        meta = json.loads((folder / "A_far.json").read_text()) | {
            "arm": "A_far_act_drop", "act": {"action": "drop", "at_risk_probes": []}
        }  # fmt: skip
        (folder / "A_far_act_drop.json").write_text(json.dumps(meta))
        for name in ("probe_records", "generations", "preflight"):
            (folder / f"A_far_act_drop.{name}.jsonl.gz").write_bytes((folder / f"A_far.{name}.jsonl.gz").read_bytes())
        # p0..p2 sampled; the predicted change is more negative where the valley is deeper (= more fall in A_far)
        rows = [{"probe": p, "rejected_logp_per_token": depth(p), "rejected_min_logp": 2 * depth(p),
                 "chosen_logp_per_token": -1.0, "margin_per_token": -1.0 - depth(p), "ches": 0.0,
                 "offtarget_delta": 0.01 * depth(p) if i < 3 else None,
                 "offtarget_argmax_delta": 0.0 if i < 3 else None} for i, p in enumerate(TRAIN)]  # fmt: skip
        write_gz(folder / "A_far_act_drop.act_preflight.jsonl.gz", rows)
    sampled = {r["score"]: r for r in validation.correlations(validation.onestep_units(root), 200)}
    assert sampled["offtarget_delta"]["units"] == 9 and sampled["rejected_logp_per_token"]["units"] == 9
    assert sampled["offtarget_delta"]["within_run"]["mean"] == pytest.approx(-1.0)  # deeper, more negative, more fall
    assert sampled["offtarget_delta"]["predicts_within_run"]
    assert validation.main(["--study", str(root), "--bootstrap", "100"]) == 0
    saved = json.loads((root / "preflight_validation.json").read_text())
    assert {r["score"] for r in saved["one_step"]} == {*validation.SCORES, *validation.ONE_STEP}
    assert "one-step prediction" in (root / "preflight_validation.md").read_text()


def test_onestep_bench_predicts_every_pair_under_the_shared_sft_model(tiny_model_dir, tmp_path):
    from tests.test_squeezing_study import load_study_recipe, records, tiny_args

    study_dir = tmp_path / "study"
    load_study_recipe().main([*tiny_args(tiny_model_dir, study_dir), "--arms", "A_near", "A_far"])
    out = tmp_path / "onestep"
    assert bench("preflight_onestep").main(["--study", str(study_dir), "--out", str(out), "--seeds", "0"]) == 0
    for arm in ("A_near", "A_far"):
        predicted = records(out / "s0" / f"{arm}.onestep.jsonl.gz")
        assert len(predicted) == 4 and all(r["offtarget_delta"] is not None for r in predicted)
        # The same SFT model as the study's run: the pre-flight's depth equals the one the study recorded.
        saved = {r["probe"]: r for r in records(study_dir / "runs" / "s0" / f"{arm}.preflight.jsonl.gz")}
        for r in predicted:
            depth_then = saved[r["probe"]]["rejected_logp_per_token"]
            assert r["rejected_logp_per_token"] == pytest.approx(depth_then, abs=1e-5)
    units = validation.onestep_units(study_dir, out)
    assert len(units["offtarget_delta"]) == 8 and {k[1] for k in units["offtarget_delta"]} == {"A_near", "A_far"}
    assert validation.main(["--study", str(study_dir), "--onestep", str(out), "--out", str(out)]) == 0
    assert f"predictions in {out}" in (out / "preflight_validation.md").read_text()
