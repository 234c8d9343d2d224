"""The squeezing study's statistics, analysis and report on small synthetic run files with hand-worked numbers.

The synthetic study (`write_study`): per seed, 4 training probes p0..p3 and one held-out probe t0. At DPO begin each
training probe i sits at depth d_i = −0.5·i below its arm's y⁻ level; over DPO:

    arm     y⁻ begin        y⁺ begin  off-target fall        y⁻ fall  concentration_alt  y⁺ change
    A_near  −2 + d_i        −1.0      0.4 + 0.1·(−d_i)       2        0.1                −0.05
    A_far   −5 + d_i + j    −1.0      1.0 + 0.1·(−d_i)       2        0.5                −0.2
    B_near  −1.5 + d_i      −0.9      0.2 + 0.1·(−d_i)       2        0.1                −0.05
    B_far   −2.5 + d_i      −0.9      0.3 + 0.1·(−d_i)       2        0.1                −0.05

(j = a small per-(seed, probe) jitter on A_far's y⁻ only, so that M1's interval is not a single point; t0 has
d = 0.) The intermediate evaluation (epoch 2, step 12) sits halfway.
"""

from __future__ import annotations

import gzip
import json
import math
from pathlib import Path

import numpy as np
import pytest

from alignkit.stats import (
    Estimate,
    bootstrap_interval,
    mean_within_group_spearman,
    nested_bootstrap,
    paired_difference,
    ranks,
    ratio_difference,
    ratio_of_means,
    spearman,
    wilson_interval,
)
from alignkit.study.analysis import analyze
from alignkit.study.claims import directional, gate
from alignkit.study.quality import text_readings, win_units
from alignkit.study.records import Run
from alignkit.study.report import write_report

OFF_TARGET = ("irrelevant_test", "irrelevant_human", "shuffled", "non_human")
TRAIN = ["p0", "p1", "p2", "p3"]
ARMS = {  # arm: (sft_mode, rejected, y⁻ begin, y⁺ begin, off-target fall, concentration_alt, y⁺ change)
    "A_near": ("chosen", "near", -2.0, -1.0, 0.4, 0.1, -0.05),
    "A_far": ("chosen", "far", -5.0, -1.0, 1.0, 0.5, -0.2),
    "B_near": ("extended", "near", -1.5, -0.9, 0.2, 0.1, -0.05),
    "B_far": ("extended", "far", -2.5, -0.9, 0.3, 0.1, -0.05),
}
SCORES = {  # arm: verifier score per prompt g0..g3 (None: uncheckable)
    "A_near": [1.0, 0.0, 1.0, 0.0],
    "B_near": [1.0, 1.0, 1.0, 0.0],
    "A_far": [0.0, 0.0, 1.0, 0.0],
    "B_far": [1.0, 0.0, 1.0, None],
}
N_BOOT = 300  # enough for stable percentiles on these tiny sets, fast on a shared CPU


def jitter(seed: int, i: int) -> float:
    return 0.05 * ((seed * 7 + i * 3) % 5 - 2)


def depth(probe: str) -> float:
    return -0.5 * TRAIN.index(probe) if probe in TRAIN else 0.0


def record(event: str, step: int, probe: str, family: str, words: float, **extra) -> dict:
    split = "train" if probe in TRAIN else "test"
    where = {"stage": "preference", "event": event, "step": step, "global_step": step, "probe": probe, "split": split}
    values = {"words_logp_per_token": words, "logp_per_token": words, "eos_logp": -1.0, "top_logodds": -0.1}
    return {**where, "family": family, **values, "alt_logodds": extra.get("alt")}


def probe_records(seed: int, arm: str, rejected_shift: float = 0.0) -> list[dict]:
    _, _, y_minus, y_plus, fall, conc, chosen_change = ARMS[arm]
    rows = []
    for event, step, t in (("begin", 0, 0.0), ("step", 12, 0.5), ("end", 24, 1.0)):
        for probe in [*TRAIN, "t0"]:
            d = depth(probe)
            j = jitter(seed, TRAIN.index(probe)) if arm == "A_far" and probe in TRAIN else 0.0
            rej0 = y_minus + d + j + rejected_shift
            rows.append(record(event, step, probe, "rejected", rej0 - 2.0 * t, alt=-2.0 + conc * t))
            rows.append(record(event, step, probe, "chosen", y_plus + chosen_change * t, alt=-1.0))
            for family in OFF_TARGET:
                rows.append(record(event, step, probe, family, -3.0 - (fall + 0.1 * -d) * t))
    return rows


def run_json(seed: int, arm: str) -> dict:
    sft_mode, rejected = ARMS[arm][:2]
    extended = sft_mode == "extended"
    return {
        "arm": arm, "seed": seed, "sft_mode": sft_mode, "rejected": rejected, "loss": "dpo",
        "sft": {"steps": 24, "rows": 48 if extended else 24, "y_plus_exposure": 2.0,
                "y_minus_exposure": 2.0 if extended else 0.0, "seconds": 60.0, "status": "trained"},
        "dpo": {"steps": 24, "epochs": 4, "steps_per_epoch": 6, "pairs": 4, "seconds": 120.0, "status": "trained",
                "final_loss": 0.3, "epoch_steps": {"2": 12, "4": 24}},
        "evaluations": [], "seconds": 250.0 + seed, "settings": {"model": "tiny"},
    }  # fmt: skip


def write_gz(path: Path, rows: list[dict]) -> None:
    path.write_bytes(gzip.compress("".join(json.dumps(r) + "\n" for r in rows).encode()))


def write_study(
    root: Path, seeds=(0, 1, 2), arms=tuple(ARMS), rejected_shift: dict | None = None, scores: dict = SCORES
) -> Path:
    for seed in seeds:
        folder = root / "runs" / f"s{seed}"
        folder.mkdir(parents=True, exist_ok=True)
        for arm in arms:
            (folder / f"{arm}.json").write_text(json.dumps(run_json(seed, arm)))
            write_gz(
                folder / f"{arm}.probe_records.jsonl.gz", probe_records(seed, arm, (rejected_shift or {}).get(arm, 0))
            )
            gens = [
                {"checkpoint": f"epoch{e}", "epoch": e, "prompt_id": f"g{i}", "task": "arithmetic", "response": "x",
                 "score": scores[arm][i] if e else 1.0}
                for e in (0, 2, 4) for i in range(4)
            ]  # fmt: skip
            write_gz(folder / f"{arm}.generations.jsonl.gz", gens)
    return root


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> tuple[Path, dict]:
    root = write_study(tmp_path_factory.mktemp("study"))
    return root, analyze(root, n_boot=N_BOOT)


# --- stats


def test_bootstrap_interval_of_a_constant_is_the_constant_and_pairs_by_key():
    x = {(0, "a"): 3.0, (0, "b"): 5.0, (1, "a"): 4.0}
    y = {(0, "a"): 1.0, (0, "b"): 3.0, (1, "a"): 2.0, (1, "b"): 9.0}  # (1, b) has no partner: dropped
    diff = paired_difference(x, y)
    assert diff == {(0, "a"): 2.0, (0, "b"): 2.0, (1, "a"): 2.0}
    est = bootstrap_interval(diff, n=200)
    assert (est.mean, est.lo, est.hi, est.n_units, est.n_seeds) == (2.0, 2.0, 2.0, 3, 2)
    assert est.per_seed == {"0": 2.0, "1": 2.0}


def test_bootstrap_interval_covers_the_mean_and_ignores_dict_order():
    units = {(s, p): float(s * 10 + p) for s in range(3) for p in range(5)}
    a = bootstrap_interval(units, n=500, seed=1)
    b = bootstrap_interval(dict(reversed(list(units.items()))), n=500, seed=1)
    assert a == b
    assert a.mean == pytest.approx(12.0)  # mean of 0..4, 10..14, 20..24
    assert a.lo < 12.0 < a.hi and a.hi - a.lo < 12.0
    assert a.per_seed == {"0": 2.0, "1": 12.0, "2": 22.0}


def test_non_finite_units_are_missing_not_zero():
    est = bootstrap_interval({(0, "a"): 1.0, (0, "b"): math.nan, (0, "c"): 3.0}, n=50)
    assert est.mean == 2.0 and est.n_units == 2


def test_ratio_of_means_is_not_the_mean_of_ratios():
    # (1, 1) and (3, 0.5): mean of ratios = (1 + 6)/2 = 3.5; ratio of means = 2 / 0.75 = 8/3.
    assert ratio_of_means(np.array([[1.0, 1.0], [3.0, 0.5]])) == pytest.approx(8 / 3)
    assert math.isnan(ratio_of_means(np.array([[1.0, 0.0]])))


def test_ratio_difference_pairs_two_ratios_of_means():
    # arm x: (1, 2), (3, 2) -> 4/4 = 1; arm y: (3, 4), (1, 4) -> 4/8 = 0.5; difference 0.5
    assert ratio_difference(np.array([[1.0, 2.0, 3.0, 4.0], [3.0, 2.0, 1.0, 4.0]])) == pytest.approx(0.5)


def test_collateral_ratio_contrast_by_hand(study):
    """Training probes only (y⁻ falls 2 in every arm): A_far falls 1.0..1.15 (mean 1.075), B_far 0.3..0.45
    (0.375), so the ratios are 0.5375 and 0.1875 and (A − B)|far = 0.35; C8 rests on M2, which passes."""
    _, summary = study
    est = summary["contrasts"]["dpo"]["end"]["A-B|far"]["collateral_ratio"]
    assert est["mean"] == pytest.approx(0.35) and est["n_units"] == 3 * len(TRAIN)
    assert "interaction" not in summary["contrasts"]["dpo"]["end"] or (
        "collateral_ratio" not in summary["contrasts"]["dpo"]["end"]["interaction"]
    )
    assert {c["id"]: c["verdict"] for c in summary["claims"]}["C8"] == "reproduced"


def test_ranks_average_ties():
    assert ranks(np.array([10.0, 30.0, 20.0, 20.0])).tolist() == [1.0, 4.0, 2.5, 2.5]


def test_spearman_by_hand():
    x = np.arange(6.0)
    assert spearman(np.c_[x, np.exp(x)]) == pytest.approx(1.0)  # monotone, not linear: still 1
    assert spearman(np.c_[x, -(x**3)]) == pytest.approx(-1.0)
    # ranks x = 1,2,3; y = 1,3,2 -> deviations (−1,0,1)·(−1,1,0) = 1; Σ dev² = 2 each -> ρ = 1/2.
    assert spearman(np.array([[1.0, 5.0], [2.0, 9.0], [3.0, 7.0]])) == pytest.approx(0.5)
    assert math.isnan(spearman(np.array([[1.0, 2.0], [2.0, 2.0], [3.0, 2.0]])))  # constant y


def test_within_group_spearman_separates_arms_from_dose():
    # Two groups, each falling (ρ = −1 inside), but group 1 sits higher on both axes: pooled ρ is positive.
    g0 = [[0.0, 3.0, 0], [1.0, 2.0, 0], [2.0, 1.0, 0]]
    g1 = [[10.0, 13.0, 1], [11.0, 12.0, 1], [12.0, 11.0, 1]]
    values = np.array(g0 + g1)
    assert spearman(values) > 0
    assert mean_within_group_spearman(values) == pytest.approx(-1.0)


def test_estimate_excludes():
    assert Estimate(1, 0.5, 2, 3, 1).excludes(0) == 1
    assert Estimate(-1, -2, -0.5, 3, 1).excludes(0) == -1
    assert Estimate(0, -1, 1, 3, 1).excludes(0) == 0
    assert Estimate(0, math.nan, math.nan, 3, 1).excludes(0) == 0


# --- analysis


def test_manipulation_checks_by_hand(study):
    _, summary = study
    checks = summary["manipulation"]["checks"]
    m1 = checks["M1"]["estimate"]
    # A_far − A_near = (−5 + d + j) − (−2 + d) = −3 + j, j averaging over 3 seeds × 4 probes.
    mean_j = np.mean([jitter(s, i) for s in range(3) for i in range(4)])
    assert m1["mean"] == pytest.approx(-3 + mean_j)
    assert m1["n_units"] == 12 and m1["n_seeds"] == 3  # training probes only: t0 is held out
    assert checks["M1"]["status"] == "passed"
    assert checks["M2"]["estimate"]["mean"] == pytest.approx(2.5 - mean_j)  # B_far − A_far
    assert checks["M2"]["near"]["mean"] == pytest.approx(0.5)  # B_near − A_near
    assert checks["M2"]["status"] == "passed"
    assert summary["manipulation"]["y_plus_change"]["far"]["mean"] == pytest.approx(0.1)
    assert summary["manipulation"]["exposure"] == {
        "chosen": {"y_plus": 2.0, "y_minus": 0.0},
        "extended": {"y_plus": 2.0, "y_minus": 2.0},
    }


def test_outcomes_per_arm_by_hand(study):
    _, summary = study
    end = summary["outcomes"]["A_far"]["end"]
    # Off-target fall 1.0 + 0.1·(−d) over p0..p3 (d = 0, −.5, −1, −1.5) and t0 (d = 0): mean of
    # 1.0, 1.05, 1.1, 1.15, 1.0 = 1.06.
    assert end["off_target_fall"]["mean"] == pytest.approx(1.06)
    assert end["off_target_fall"]["n_units"] == 15
    assert end["rejected_fall"]["mean"] == pytest.approx(2.0)
    assert end["chosen_change"]["mean"] == pytest.approx(-0.2)
    assert end["concentration_alt"]["mean"] == pytest.approx(0.5)
    # Collateral ratio on training probes: mean(1.0, 1.05, 1.1, 1.15) / 2 = 0.5375.
    assert end["collateral_ratio"]["mean"] == pytest.approx(0.5375)
    assert summary["outcomes"]["A_far"]["epoch2"]["off_target_fall"]["mean"] == pytest.approx(0.53)  # halfway


def test_paired_contrasts_by_hand(study):
    _, summary = study
    con = summary["contrasts"]["dpo"]["end"]
    # The 0.1·(−d) dose term is the same in every arm, so it cancels in each paired difference.
    assert con["A-B|far"]["off_target_fall"]["mean"] == pytest.approx(1.0 - 0.3)
    assert con["A-B|near"]["off_target_fall"]["mean"] == pytest.approx(0.4 - 0.2)
    assert con["interaction"]["off_target_fall"]["mean"] == pytest.approx(0.7 - 0.2)
    assert con["far-near|A"]["off_target_fall"]["mean"] == pytest.approx(0.6)
    assert con["A-B|far"]["chosen_change"]["mean"] == pytest.approx(-0.15)
    assert con["A-B|far"]["concentration_alt"]["lo"] == pytest.approx(0.4)  # a constant difference


def test_dose_response_is_monotone_within_arms(study):
    _, summary = study
    dose = summary["dose_response"]
    # Within each arm, a deeper y⁻ (more negative x) has a larger off-target fall: ρ = −1 exactly where x and y are
    # tied in the same groups (the same probe in 3 seeds); A_far's jitter breaks x's ties but not y's, so |ρ| < 1.
    for arm in ("A_near", "B_near", "B_far"):
        assert dose["per_arm"][arm]["mean"] == pytest.approx(-1.0)
    assert -1.0 < dose["per_arm"]["A_far"]["mean"] < -0.9
    assert dose["within_arm_mean"]["mean"] == pytest.approx(np.mean([d["mean"] for d in dose["per_arm"].values()]))
    assert dose["within_arm_mean"]["hi"] < 0 and dose["pooled"]["hi"] < 0
    assert len(dose["points"]) == 3 * 4 * 4  # seeds × arms × training probes


def test_quality_by_hand(study):
    _, summary = study
    q = summary["quality"]
    assert q["accuracy"]["B_near"]["epoch4"]["mean"] == pytest.approx(0.75)
    assert q["accuracy"]["B_far"]["epoch4"]["n_units"] == 9  # g3 is uncheckable: dropped, 3 seeds × 3 prompts
    # B_near vs A_near per prompt: tie, win, tie, tie -> ours (0.5 + 1 + 0.5 + 0.5)/4; paper 1 win / 1 decisive.
    w = q["win_rates"]["B_near_vs_A_near"]["epoch4"]
    assert w["ours"]["mean"] == pytest.approx(0.625)
    assert w["paper"]["mean"] == pytest.approx(1.0)
    assert (w["wins"], w["ties"], w["losses"]) == (3, 9, 0)
    # B_far vs A_far: win, tie, tie, missing -> (1 + 0.5 + 0.5)/3.
    assert q["win_rates"]["B_far_vs_A_far"]["epoch2"]["ours"]["mean"] == pytest.approx(2 / 3)
    # A_far vs A_near: g0 loss, others tie -> 3/8; paper 0/1.
    assert q["win_rates"]["A_far_vs_A_near"]["epoch4"]["ours"]["mean"] == pytest.approx(3 / 8)
    assert q["win_rates"]["A_far_vs_A_near"]["epoch4"]["paper"]["mean"] == pytest.approx(0.0)


def test_win_units_count_ties_as_half():
    units = win_units({(0, "a"): 1.0, (0, "b"): 0.5, (0, "c"): math.nan}, {(0, "a"): 0.5, (0, "b"): 0.5, (0, "c"): 1})
    assert units == {(0, "a"): (1.0, 1.0, 1.0), (0, "b"): (0.5, 0.0, 0.0)}


def test_claims_follow_the_rules(study):
    _, summary = study
    verdicts = {c["id"]: c["verdict"] for c in summary["claims"]}
    assert verdicts["C1"] == "reproduced"  # falls 1.06 > 0, concentration 0.5 > 0, y⁻ falls 2
    assert verdicts["C2"] == verdicts["C3"] == verdicts["C4"] == "reproduced"
    assert verdicts["C5"] == "reproduced"
    assert verdicts["C6"] == "reproduced"
    # B vs A has wins and ties but no loss: C7 is reproduced exactly when both intervals lie above 0.5.
    rates = summary["quality"]["win_rates"]
    above = [rates[f"B_{r}_vs_A_{r}"]["epoch4"]["ours"]["lo"] > 0.5 for r in ("far", "near")]
    assert verdicts["C7"] == ("reproduced" if all(above) else "partly" if any(above) else "not reproduced")


def test_null_quality_result_is_stated_with_its_bound(tmp_path):
    same = {arm: [1.0, 0.0, 1.0, 0.0] for arm in ARMS}  # every pair ties: win rate 0.5 with a [0.5, 0.5] interval
    summary = analyze(write_study(tmp_path, seeds=(0, 1, 2), scores=same), n_boot=N_BOOT)
    c7 = next(c for c in summary["claims"] if c["id"] == "C7")
    assert c7["verdict"] == "not reproduced"
    assert "no effect larger than 0 in the predicted direction was found" in c7["evidence"]


def test_failed_manipulation_check_invalidates_its_claims(tmp_path):
    # Push A_far's y⁻ up by 2.5 nats/token: A_far − A_near = −0.5 + j, short of the −1 that M1 demands.
    root = write_study(tmp_path, seeds=(0,), rejected_shift={"A_far": 2.5})
    summary = analyze(root, n_boot=N_BOOT)
    assert summary["manipulation"]["checks"]["M1"]["status"] == "failed"
    verdicts = {c["id"]: c["verdict"] for c in summary["claims"]}
    assert verdicts["C2"] == "invalid (manipulation check M1 failed)"
    # M2 fails too: B_far − A_far = −2.5 − (−2.5 + j) = −j, far below +1.
    assert summary["manipulation"]["checks"]["M2"]["status"] == "failed"
    assert verdicts["C3"] == "invalid (manipulation check M2 failed)"
    assert verdicts["C4"] == "invalid (manipulation check M1, M2 failed)"
    assert verdicts["C1"] == "reproduced"  # rests on no check


def test_gate_and_directional_rules():
    checks = {"M1": {"status": "passed"}, "M2": {"status": "untestable"}}
    assert gate("reproduced", checks, ["M1"]) == "reproduced"
    assert gate("reproduced", checks, ["M1", "M2"]) == "untestable here"
    assert directional({"mean": 1, "lo": 0.1, "hi": 2}, +1) == "reproduced"
    assert directional({"mean": 1, "lo": -0.1, "hi": 2}, +1) == "not reproduced"
    assert directional({"mean": 1, "lo": None, "hi": None}, +1) == "untestable here"


def test_summary_interval_recomputes_from_the_raw_files(study):
    root, summary = study
    # M1 from the gzipped probe records alone: y⁻ at begin on training probes, A_far − A_near per (seed, probe).
    levels = {}
    for path in sorted(root.glob("runs/s*/A_*.probe_records.jsonl.gz")):
        for line in gzip.decompress(path.read_bytes()).decode().splitlines():
            r = json.loads(line)
            if r["event"] == "begin" and r["family"] == "rejected" and r["split"] == "train":
                seed = int(path.parent.name[1:])
                levels[(path.name.split(".")[0], seed, r["probe"])] = r["words_logp_per_token"]
    diff = {(s, p): v - levels[("A_near", s, p)] for (arm, s, p), v in levels.items() if arm == "A_far"}
    expect = nested_bootstrap(diff, n=N_BOOT)  # seeds as the unit, probes resampled inside each
    on_disk = json.loads((root / "summary.json").read_text())["manipulation"]["checks"]["M1"]["estimate"]
    assert on_disk["lo"] < on_disk["hi"]  # the jitter makes a real interval
    assert (on_disk["mean"], on_disk["lo"], on_disk["hi"]) == pytest.approx((expect.mean, expect.lo, expect.hi))


# --- report


def test_report_and_figures_are_written(study, tmp_path):
    root, summary = study
    path = write_report(root, json.loads((root / "summary.json").read_text()))
    text = path.read_text()
    for name in ("fig_manipulation", "fig_dpo_families", "fig_mechanism", "fig_dose_response", "fig_quality"):
        assert (root / f"{name}.png").stat().st_size > 1000
        assert f"({name}.png)" in text
    assert text.index("## Manipulation checks") < text.index("## Claims")
    assert "position bias cannot arise" in text and "65.18%" in text
    assert "| C3 |" in text and "an interval over seeds needs" not in text


def test_one_seed_missing_arm_report_says_so(tmp_path):
    root = write_study(tmp_path, seeds=(0,), arms=("A_near", "A_far"))
    summary = analyze(root, n_boot=50)
    text = write_report(root, summary).read_text()
    assert "1 seed: an interval over seeds needs ≥ 3 of them to mean much" in text
    assert "arm B_far (dpo) has no finished run" in text
    verdicts = {c["id"]: c["verdict"] for c in summary["claims"]}
    assert verdicts["C3"] == "untestable here" and verdicts["C7"] == "untestable here"
    assert verdicts["C2"] == "reproduced"
    assert (root / "fig_quality.png").exists()


def test_extra_loss_arms_are_read_from_their_fields(tmp_path):
    # IPO copies of the far arms: named with a suffix, told apart by `loss` in their JSON, never by their name.
    root = write_study(tmp_path, seeds=(0, 1))
    for path in list(root.glob("runs/s*/?_far.*")):
        arm, rest = path.name.split(".", 1)
        target = path.with_name(f"{arm}_ipo.{rest}")
        if rest == "json":
            target.write_text(json.dumps({**json.loads(path.read_text()), "arm": f"{arm}_ipo", "loss": "ipo"}))
        else:
            target.write_bytes(path.read_bytes())
    (root / "runs" / "s1" / "B_far_ipo.json").unlink()  # one seed unfinished
    summary = analyze(root, n_boot=50)
    assert summary["arms"]["B_far_ipo"] == {"sft_mode": "extended", "rejected": "far", "loss": "ipo", "seeds": [0]}
    ipo = summary["contrasts"]["ipo"]["end"]
    assert set(ipo) == {"A-B|far"}  # no near arms under IPO
    assert ipo["A-B|far"]["off_target_fall"]["mean"] == pytest.approx(0.7)
    assert ipo["A-B|far"]["off_target_fall"]["n_seeds"] == 1  # paired: only seed 0 has both
    assert "B_far_ipo_vs_A_far_ipo" in summary["quality"]["win_rates"]
    assert any("B_far_ipo finished seeds [0] only" in c for c in summary["caveats"])
    assert summary["primary_loss"] == "dpo" and summary["baseline_arm"] == "A_near"
    assert write_report(root, summary).is_file()
    # Planned as an extra arm for the first seed only (`extra_arms`, `extra_seeds`), it is complete: no caveat.
    path = root / "runs" / "s0" / "B_far_ipo.json"
    meta = json.loads(path.read_text())
    meta["settings"] = {**meta.get("settings", {}), "seeds": [0, 1], "arms": ["A_far", "B_far"],
                        "extra_arms": ["B_far_ipo"], "extra_seeds": 1}  # fmt: skip
    path.write_text(json.dumps(meta))
    assert not any("B_far_ipo finished" in c for c in analyze(root, n_boot=50)["caveats"])


def test_wilson_interval_matches_hand_computed_values():
    """Wilson score intervals, computed by hand from p, n and z = 1.96: 5/10 -> [0.2366, 0.7634]; 0/9 -> upper
    z^2/(n + z^2) = 3.8415/12.8415 = 0.2991; n/n -> lower n/(n + z^2) = 12/15.8415 = 0.7575; 0 of 0 -> undefined."""
    assert wilson_interval(5, 10) == pytest.approx((0.23659, 0.76341), abs=1e-5)
    assert wilson_interval(0, 9) == pytest.approx((0.0, 0.29915), abs=1e-5)
    assert wilson_interval(12, 12) == pytest.approx((0.75751, 1.0), abs=1e-5)
    assert all(math.isnan(x) for x in wilson_interval(0, 0))


def test_text_readings_per_arm_and_checkpoint_by_hand():
    def run(seed: int, answers: list[tuple[str, bool | None]]) -> Run:
        gens = [{"checkpoint": "epoch2", "prompt_id": f"p{i}", "response": text, "prompt_text": "say the cat",
                 **({} if cap is None else {"cap_hit": cap})} for i, (text, cap) in enumerate(answers)]  # fmt: skip
        return Run(meta={"arm": "A_far", "seed": seed}, generations=gens)

    runs = {
        (0, "A_far"): run(0, [("The cat sat.", None), ("the cat the cat the cat", None)]),
        (1, "A_far"): run(1, [("no stop here", False), ("Ends well.", True)]),
    }
    text = text_readings(runs, n_boot=200)["A_far"]["epoch2"]
    # ended: seed 0 by the text (1, 0), seed 1 by the stop reason (1, 0)
    assert text["terminated"]["mean"] == pytest.approx(0.5)
    assert text["terminated"]["per_seed"] == {"0": 0.5, "1": 0.5}
    # 3-grams of "the cat the cat the cat": 4, the last two repeat the first two
    assert text["repetition"]["mean"] == pytest.approx((0 + 0.5 + 0 + 0) / 4)
    assert text["words"]["mean"] == pytest.approx((3 + 6 + 3 + 2) / 4)
    # echo: only "the cat the cat the cat" has a 4-gram (NaN units are left out), and the prompt has none
    assert (text["echo"]["mean"], text["echo"]["n_units"]) == (0.0, 1)
    assert text["repetition"]["n_seeds"] == 2
