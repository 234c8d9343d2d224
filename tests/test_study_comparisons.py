"""Study v2's comparisons on hand-made runs: which arms are compared, the held-out pair readings, SFT's effect, the
within-arm quality change and the paper-claim rules."""

from __future__ import annotations

import pytest

from alignkit.study.claims import paper_verdicts
from alignkit.study.comparisons import pairs_to_compare, quality_by_run, quality_change, sft_effect
from alignkit.study.quality import pair_units, text_units, training_index
from alignkit.study.records import Run


def run(arm: str, seed: int = 0, **meta) -> Run:
    return Run({"arm": arm, "seed": seed, "sft_mode": "chosen", "rejected": "far", **meta})


def pair(cp: str, pid: str, c: float, r: float, n: int = 2) -> dict:
    """A held-out pair record: summed log-probs c (y⁺) and r (y⁻) over n tokens each."""
    return {"checkpoint": cp, "id": pid, "chosen_logp": c, "rejected_logp": r, "chosen_logp_per_token": c / n,
            "rejected_logp_per_token": r / n}  # fmt: skip


def test_each_arm_is_compared_with_its_baseline_and_b_with_ah():
    runs = {(0, a): run(a) for a in ("A_far", "Ah_far", "B_far", "A_far_sftmix", "A_far_act_drop", "B_near")}
    assert pairs_to_compare(runs) == {
        "A_far_act_drop vs A_far": ("A_far", "A_far_act_drop"),
        "A_far_sftmix vs A_far": ("A_far", "A_far_sftmix"),
        "Ah_far vs A_far": ("A_far", "Ah_far"),
        "B_far vs A_far": ("A_far", "B_far"),
        "B_far vs Ah_far": ("Ah_far", "B_far"),
    }  # B_near's baseline A_near did not run: no row


def test_pair_units_read_the_implicit_reward_ranking_against_dpo_begin():
    r = run("A_far", seed=3)
    r.heldout_pairs = [
        pair("epoch0", "p", -10.0, -12.0), pair("epoch4", "p", -9.0, -14.0),  # y⁺ +1, y⁻ −2: reward +3, right
        pair("epoch0", "q", -10.0, -8.0), pair("epoch4", "q", -12.0, -9.0),  # y⁺ −2, y⁻ −1: reward −1, wrong
        pair("epoch0", "t", -4.0, -4.0), pair("epoch4", "t", -5.0, -5.0),  # equal moves: a tie counts half
    ]  # fmt: skip
    units = pair_units(r)
    assert units["epoch4"]["ranking"] == {(3, "p"): 1.0, (3, "q"): 0.0, (3, "t"): 0.5}
    assert units["epoch4"]["yplus_change"] == {(3, "p"): 0.5, (3, "q"): -1.0, (3, "t"): -0.5}
    assert units["epoch0"]["yplus_logp"][(3, "p")] == -5.0 and "ranking" not in units["epoch0"]


def test_sft_effect_is_the_sft_model_minus_the_base_on_held_out_pairs():
    runs = {}
    for seed, lift in ((0, 1.0), (1, 3.0)):
        r = run("A_far", seed)
        r.base_pairs = [pair("base", "p", -10.0, -10.0), pair("base", "q", -6.0, -6.0)]
        r.heldout_pairs = [pair("epoch0", "p", -10.0 + 2 * lift, -10.0), pair("epoch0", "q", -6.0 + 2 * lift, -8.0)]
        runs[(seed, "A_far")] = r
    effect = sft_effect(runs, n_boot=200)["A_far"]
    assert effect["yplus_change"]["per_seed"] == {"0": 1.0, "1": 3.0}
    assert effect["yminus_change"]["mean"] == pytest.approx(-0.5)  # p: 0, q: −1 per token
    assert effect["gap"]["mean"] == pytest.approx(2.0 + 0.5)


def test_quality_change_pairs_each_prompt_with_the_sft_models_answer():
    r = run("A_far", seed=1)
    r.generations = [
        {"checkpoint": "epoch0", "prompt_id": "x", "response": "Paris is the capital.", "cap_hit": False, "score": 1},
        {"checkpoint": "epoch4", "prompt_id": "x", "response": "the cat the cat the cat", "cap_hit": True, "score": 0},
    ]  # fmt: skip
    runs = {(1, "A_far"): r}
    change = quality_change(runs, quality_by_run(runs, {}), n_boot=200)["A_far"]
    assert change["terminated"]["mean"] == -1.0 and change["accuracy"]["mean"] == -1.0
    # 4 word 3-grams, (the cat the) and (cat the cat) twice each: 2 repeats of 4; the SFT answer has none
    assert change["repetition"]["mean"] == pytest.approx(2 / 4)
    assert "copying" not in change  # no training probes, so no index of training answers


def test_copying_reads_the_runs_own_training_answers():
    r = run("A_far", seed=0)
    r.probes = [{"probe": "train/t1", "split": "train"}, {"probe": "test/h1", "split": "test"}]
    text = "one two three four five six seven eight nine"
    r.generations = [{"checkpoint": "epoch4", "prompt_id": "x", "response": text, "cap_hit": False, "score": None}]
    index = training_index(r, {"t1": "zero one two three four five six seven eight", "h1": text})
    share = text_units(r, index)["epoch4"]["copying"][(0, "x")]
    assert share == pytest.approx(1 / 2)  # of its two 8-grams, "one … eight" is in t1's answer; h1 is held out
    assert training_index(r, {}) is None and text_units(r, set())["epoch4"]["copying"][(0, "x")] == 0.0


def est(mean: float, lo: float, hi: float) -> dict:
    return {"mean": mean, "lo": lo, "hi": hi, "n_units": 10, "n_seeds": 5, "per_seed": {}}


def test_paper_verdicts_give_partly_when_a_remedy_wins_only_at_the_end():
    summary = {
        "comparisons": {
            "B_far vs A_far": {"raw": {"off_target_fall": est(1.0, 0.5, 1.5)},
                               "matched": {"heldout_margin": {"off_target_fall": est(0.2, -0.1, 0.5)}},
                               "win_rate": {"ours": est(0.6, 0.55, 0.66)}},
            "B_far vs Ah_far": {"raw": {"off_target_fall": est(1.0, 0.5, 1.5)},
                                "matched": {"heldout_margin": {"off_target_fall": est(0.4, 0.1, 0.7)}}},
        },
        "quality_change": {"A_far": {"repetition": est(0.1, 0.05, 0.2), "terminated": est(-0.2, -0.3, -0.1)}},
        "arm_quality": {"A_far": {"epoch0": {}, "epoch4": {}}},
    }  # fmt: skip
    rows = {r["id"]: r for r in paper_verdicts(summary)}
    assert rows["P3"]["verdict"] == "partly" and rows["P4"]["verdict"] == "reproduced"
    assert "learns less" in rows["P3"]["note"] and rows["P4"]["note"] == ""  # the caveat only where it applies
    assert rows["P5"]["verdict"] == "untestable here" and rows["P6"]["verdict"] == "untestable here"
    assert rows["P7"]["verdict"] == "reproduced"
    assert rows["P8"]["verdict"] == "reproduced"  # [0.55, 0.66] overlaps 65–69% and excludes 50%
    summary["comparisons"]["B_far vs A_far"]["win_rate"]["ours"] = est(0.55, 0.51, 0.6)
    assert {r["id"]: r for r in paper_verdicts(summary)}["P8"]["verdict"] == "partly"
    summary["comparisons"]["B_far vs A_far"]["win_rate"]["ours"] = est(0.52, 0.45, 0.6)
    assert {r["id"]: r for r in paper_verdicts(summary)}["P8"]["verdict"] == "not reproduced"
