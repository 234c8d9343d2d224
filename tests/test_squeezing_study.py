"""The squeezing study end to end on the tiny model: four arms, files per (seed, arm), report, resume, bad input."""

from __future__ import annotations

import gzip
import importlib.util
import json
from pathlib import Path

import pytest

import alignkit.study.run as study_run
from alignkit.errors import AlignkitError
from alignkit.stats import bootstrap_interval, paired_difference
from alignkit.study.config import PRIMARY_ARMS, parse_arm, parse_study_config

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
        (["--extra_arms", "A_far_ipo", "--extra_seeds", "9"], "'extra_seeds' must lie in 1..3"),
        (["--answer_epochs", "7"], "'answer_epochs' must lie in 1..dpo_epochs=4"),
        (["--eval_prompts", "train"], "'eval_prompts' must be 'heldout' or 'test'"),
        (["--eval_num_prompts", "40", "--final_eval_num_prompts", "20"], r"'final_eval_num_prompts' \(20\) must"),
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
    """The quick profile's runs are the full profile's first seed-0 runs (same settings, so the same fingerprints),
    and the full profile has >= 5 seeds for its headline arms and >= 3 for the rest."""
    quick, full = parse_study_config(["--profile", "quick"]), parse_study_config(["--profile", "full"])
    assert quick.seeds == [full.seeds[0]] and len(full.seeds) >= 5 and full.extra_seeds >= 3
    assert quick.arms == full.arms[: len(quick.arms)] and not quick.extra_arms
    differ = {k for k in vars(quick) if getattr(quick, k) != getattr(full, k)}
    assert differ == {"seeds", "study_dir", "arms", "extra_arms"}
    v1 = parse_study_config(["--profile", "v1"])
    assert v1.eval_prompts == "test" and v1.probe_step_families == ["all"] and v1.final_prompts == 32


# --- pre-flight act arms: the recipe's own act paths inside the study


@pytest.fixture(scope="module")
def act_study(tiny_model_dir, tmp_path_factory) -> tuple[Path, float]:
    """A_far first; then the act arms at a threshold between the deepest and the second-deepest y- of A_far under its
    SFT model (which drop shares), so that drop drops one pair and keeps three."""
    study_dir = tmp_path_factory.mktemp("act") / "study"
    args = tiny_args(tiny_model_dir, study_dir)
    load_study_recipe().main([*args, "--arms", "A_far"])
    depths = sorted(
        r["rejected_logp_per_token"] for r in records(study_dir / "runs" / "s0" / "A_far.preflight.jsonl.gz")
    )
    threshold = (depths[0] + depths[1]) / 2
    arms = ["--arms", "A_far", "A_far_act_extend", "A_far_act_drop"]
    load_study_recipe().main([*args, *arms, f"--preflight_threshold={threshold}", "--preflight_dynamics_pairs", "1"])
    return study_dir, threshold


def test_act_drop_scores_under_the_baselines_sft_model_and_trains_on_the_rest(act_study):
    study_dir, threshold = act_study
    runs = study_dir / "runs" / "s0"
    base, drop = (json.loads((runs / f"{a}.json").read_text()) for a in ("A_far", "A_far_act_drop"))
    baseline = {r["probe"]: r for r in records(runs / "A_far.preflight.jsonl.gz")}
    acted = {r["probe"]: r for r in records(runs / "A_far_act_drop.act_preflight.jsonl.gz")}
    # Same seed, same chosen-only SFT: the recipe's pre-flight sees the scores the baseline's DPO started from.
    assert acted.keys() == baseline.keys()
    for probe, r in acted.items():
        assert r["rejected_logp_per_token"] == pytest.approx(baseline[probe]["rejected_logp_per_token"], abs=1e-5)
    risky = sorted(p for p, r in baseline.items() if r["rejected_logp_per_token"] < threshold)
    assert sorted(drop["act"]["at_risk_probes"]) == risky and drop["act"]["at_risk"] == 1
    assert drop["act"]["scored_under"].startswith("the SFT model")
    # DPO trained its steps on the 3 kept pairs (batches of 2 and 1): the same steps, fewer pair-gradients.
    assert drop["dpo"]["pairs"] == 3 and base["dpo"]["pairs"] == 4
    assert drop["dpo"]["steps"] == base["dpo"]["steps"] == 4
    assert drop["act"]["dpo_pair_updates"] == 6 and drop["act"]["baseline_pair_updates"] == 8
    assert sum(r["offtarget_delta"] is not None for r in acted.values()) == 1  # the one-step prediction sample
    # Every training pair stays a probe, dropped or not: the units pair with the baseline's.
    probes = {r["probe"] for r in records(runs / "A_far_act_drop.probe_records.jsonl.gz")}
    assert probes == {r["probe"] for r in records(runs / "A_far.probe_records.jsonl.gz")}


def test_act_extend_adds_the_risky_rejected_answers_to_sft(act_study):
    study_dir, threshold = act_study
    runs = study_dir / "runs" / "s0"
    extend = json.loads((runs / "A_far_act_extend.json").read_text())
    acted = records(runs / "A_far_act_extend.act_preflight.jsonl.gz")
    risky = sorted(r["probe"] for r in acted if r["rejected_logp_per_token"] < threshold)
    assert sorted(extend["act"]["at_risk_probes"]) == risky and "base model" in extend["act"]["scored_under"]
    counts = {"chosen": 4} | ({"rejected (pre-flight)": len(risky)} if risky else {})
    assert extend["sft"]["row_counts"] == counts
    assert extend["dpo"]["pairs"] == 4  # extend_sft drops nothing
    assert all(r["offtarget_delta"] is None for r in acted)  # no one-step prediction under the base model


def test_act_arms_are_compared_with_their_baseline_not_mixed_into_the_factorial(act_study):
    study_dir, _ = act_study
    summary = json.loads((study_dir / "summary.json").read_text())
    assert list(summary["arms"]) == ["A_far"]  # the act arms enter no claim, contrast or dose-response
    assert {p[1] for p in summary["dose_response"]["points"]} == {"A_far"}
    act = summary["act"]
    assert set(act) == {"A_far_act_extend", "A_far_act_drop"}
    drop = act["A_far_act_drop"]
    assert drop["baseline"] == "A_far" and drop["per_seed"]["0"]["at_risk"] == 1
    # The paired difference recomputed from the two arms' own per-probe falls.
    x, y = summary["outcomes"]["A_far"]["end"]["off_target_fall"], drop["off_target_fall"]["end"]
    assert y["baseline"]["mean"] == pytest.approx(x["mean"])
    assert y["difference"]["all"]["mean"] == pytest.approx(y["act"]["mean"] - y["baseline"]["mean"])
    assert y["difference"]["at_risk"]["n_units"] == 1 and y["difference"]["not_at_risk"]["n_units"] == 3
    assert y["difference"]["heldout"]["n_units"] == 2
    assert y["verdict"] in ("reduced", "increased", "no difference found")
    acc = drop["accuracy"]["epoch2"]
    assert acc["difference"]["mean"] == pytest.approx(acc["act"]["mean"] - acc["baseline"]["mean"])
    assert "## Pre-flight act arms" in (study_dir / "study.md").read_text()
    assert (study_dir / "fig_act.png").stat().st_size > 1000


def test_pair_updates_counts_the_loaders_short_last_batch():
    from alignkit.study.run import pair_updates

    assert pair_updates(4, 4, 2) == 8  # two full epochs of 2 batches
    assert pair_updates(16, 3, 4) == 48  # one short batch of 3 per step
    assert pair_updates(5, 5, 2) == 9  # epoch 1: 2 + 2 + 1, epoch 2: 2 + 2


def test_act_arm_names_parse():
    from alignkit.study.config import parse_arm

    extend, drop = parse_arm("A_far_act_extend"), parse_arm("A_far_act_drop_ipo")
    assert (extend.act, extend.baseline, extend.sft_key) == ("extend_sft", "A_far", "chosen_act_extend_far")
    assert (drop.act, drop.baseline, drop.sft_key, drop.loss) == ("drop", "A_far_ipo", "chosen", "ipo")
    with pytest.raises(AlignkitError, match="_act_extend"):
        parse_arm("A_far_act_keep")


def test_seed_data_draws_the_committed_runs_pairs():
    """The study's pairs come from the whole training split, whatever the recipe's demo default (max_train_samples)
    is: seed 0 of the full profile draws the pairs of the committed act study's A_far run."""
    from alignkit.study.run import seed_data

    study = parse_study_config(["--profile", "full"])
    picked = {f"train/{r['id']}" for r in seed_data(study, 0)["far"]}
    committed = {
        r["probe"] for r in records(ROOT / "results" / "preflight_act" / "runs" / "s0" / "A_far.preflight.jsonl.gz")
    }
    assert picked == committed and len(picked) == study.num_train_pairs


# --- study v2 arms: equal y⁺ exposure, variants (loss, remedy, on-policy), extra arms at fewer seeds


@pytest.fixture(scope="module")
def v2_study(tiny_model_dir, tmp_path_factory) -> tuple[Path, list[str]]:
    study_dir = tmp_path_factory.mktemp("study_v2") / "study"
    args = tiny_args(tiny_model_dir, study_dir)
    # The tiny model never answers right, so the verifier ties every sample: rank by length instead.
    ranker = {"ranker": "callable", "ranker_path": f"{__file__}:longest_first"}
    args += ["--seeds", "0", "1", "--arms", "A_far", "Ah_far", "--extra_arms", "A_far_sftmix", "A_far_onpolicy",
             "--extra_seeds", "1", "--eval_prompts", "heldout", "--final_eval_num_prompts", "5"]  # fmt: skip
    with pytest.MonkeyPatch.context() as mp:
        verifier = study_run.onpolicy_fields
        mp.setattr(study_run, "onpolicy_fields", lambda study: {**verifier(study), **ranker})
        load_study_recipe().main(args)
    return study_dir, args


def longest_first(prompts, candidates):
    return [[float(len(c)) for c in cands] for cands in candidates]


def test_v2_arms_run_at_their_seeds_with_their_settings(v2_study):
    study_dir, _ = v2_study
    assert sorted(p.name for p in (study_dir / "runs" / "s1").glob("*.json")) == ["A_far.json", "Ah_far.json"]
    meta = {p.stem: json.loads(p.read_text()) for p in (study_dir / "runs" / "s0").glob("*.json")}
    assert set(meta) == {"A_far", "Ah_far", "A_far_sftmix", "A_far_onpolicy"}
    # Ah: chosen-only SFT at half the steps, so each y⁺ is seen as often as under extended SFT
    assert meta["Ah_far"]["sft"]["steps"] * 2 == meta["A_far"]["sft"]["steps"]
    assert meta["Ah_far"]["sft"]["y_plus_exposure"] * 2 == pytest.approx(meta["A_far"]["sft"]["y_plus_exposure"])
    assert meta["A_far_sftmix"]["preference_fields"] == {"sft_weight": 1.0}
    assert meta["A_far_sftmix"]["baseline"] == "A_far" and not meta["A_far_sftmix"]["factorial"]
    assert meta["A_far_onpolicy"]["onpolicy_rows"]["prompts"] >= 1
    # the DPO evaluations land at every eval epoch on one step axis, on-policy included
    for arm in ("A_far", "A_far_onpolicy"):
        steps = sorted({r["step"] for r in records(study_dir / "runs" / "s0" / f"{arm}.probe_records.jsonl.gz")})
        assert steps == [0, 2, 4], arm


def test_v2_heldout_answers_are_untrained_prompts_with_stop_reasons(v2_study):
    study_dir, _ = v2_study
    gens = records(study_dir / "runs" / "s0" / "A_far.generations.jsonl.gz")
    by_epoch = {e: [g for g in gens if g["epoch"] == e] for e in (0, 1, 2)}
    assert [len(by_epoch[e]) for e in (0, 1, 2)] == [5, 3, 5]  # all at start and end, eval_num_prompts between
    assert all(isinstance(g["cap_hit"], bool) for g in gens)
    trained = {json.loads(line)["probe"].split("/", 1)[1]
               for line in gzip.open(study_dir / "runs" / "s0" / "A_far.preflight.jsonl.gz", "rt")}  # fmt: skip
    assert not trained & {g["prompt_id"] for g in gens}
    pairs = records(study_dir / "runs" / "s0" / "A_far.heldout_pairs.jsonl.gz")
    assert sorted({p["epoch"] for p in pairs}) == [0, 2] and len(pairs) == 10
    # arms from the same SFT model share its stage-start answers (decoded once, then read back)
    start = [g for g in records(study_dir / "runs" / "s0" / "A_far_sftmix.generations.jsonl.gz") if g["epoch"] == 0]
    assert [g["response"] for g in start] == [g["response"] for g in by_epoch[0]]


def test_v2_arm_names_parse_and_bad_ones_are_refused():
    arm = parse_arm("Ah_near")
    assert arm.half_sft and arm.sft_key == "chosen_half" and arm.baseline == "A_near" and not arm.factorial
    assert parse_arm("A_far_caldpo").loss == "cal_dpo" and parse_arm("A_far_caldpo").baseline == "A_far"
    assert parse_arm("B_far_ipo").factorial and parse_arm("A_far_act_drop").baseline == "A_far"
    assert parse_arm("A_far_floor").preference_fields() == {"negative_floor": 0.5}
    with pytest.raises(AlignkitError, match="A_far_rpo"):
        parse_arm("A_far_rpo")
    with pytest.raises(AlignkitError, match="extra_arms"):
        parse_study_config(["--arms", "A_far", "--extra_arms", "A_far"])
