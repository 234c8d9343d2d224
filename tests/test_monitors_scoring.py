"""Probe scoring on hand-built tensors: every expected value below is worked out by hand in the comments."""

from __future__ import annotations

import math

import pytest
import torch

from alignkit.monitors.config import alert_unavailable
from alignkit.monitors.scoring import (
    LOGODDS_CLAMP,
    RATIO_MIN_FALL,
    auto_probe_due,
    collateral_ratio,
    family_metrics,
    log_odds,
    mechanism_per_probe,
    mechanism_summary,
    merge_shards,
    probe_values,
    response_token_stats,
    shard,
    squeezing_score,
)

LN2, LN3 = math.log(2), math.log(3)
H_34 = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))  # entropy of (3/4, 1/4) = 0.5623 nats


def test_response_token_stats_by_hand():
    # Vocabulary of 2. Logits [0, 0] give p = (1/2, 1/2); logits [ln 3, 0] give p = (3/4, 1/4); [0, -inf] gives (1, 0).
    garbage = [50.0, -50.0]  # at prompt/padding positions: must not leak into any statistic
    logits = torch.tensor(
        [
            # row 0: tokens [0, 0, 1]; only the last token (label of position 1) is response
            [garbage, [LN3, 0.0], garbage],
            # row 1: tokens [1, 0, 0]; both labels are response
            [[0.0, 0.0], [LN3, 0.0], garbage],
            # row 2: tokens [1, 0, pad]; one response label, predicted with certainty (entropy exactly 0)
            [garbage, [0.0, -math.inf], garbage],
        ]
    )
    input_ids = torch.tensor([[0, 0, 1], [1, 0, 0], [1, 0, 0]])
    response_mask = torch.tensor([[False, True], [True, True], [False, True]])
    stats = response_token_stats(logits, input_ids, response_mask)

    # row 0: label 1 under (3/4, 1/4): log 1/4; argmax prob 3/4; entropy H(3/4, 1/4)
    # row 1: label 0 under (1/2, 1/2) then label 0 under (3/4, 1/4)
    # row 2: label 0 under (1, 0): log 1 = 0, argmax prob 1, entropy 0
    expected = {
        "logp": [math.log(0.25), -LN2 + math.log(0.75), 0.0],
        "n_tokens": [1, 2, 1],
        "argmax_logp": [math.log(0.75), -LN2 + math.log(0.75), 0.0],
        "argmax_prob": [0.75, 0.5 + 0.75, 1.0],
        "entropy": [H_34, LN2 + H_34, 0.0],
    }
    for name, values in expected.items():
        assert stats[name].tolist() == pytest.approx(values, abs=1e-6), name


def test_family_metrics_by_hand():
    scored = [
        ("train", "chosen", {"logp": -4.0, "n_tokens": 2, "argmax_logp": -1.0, "argmax_prob": 1.6, "entropy": 1.0}),
        ("train", "chosen", {"logp": -9.0, "n_tokens": 3, "argmax_logp": -0.6, "argmax_prob": 2.1, "entropy": 2.4}),
        ("test", "shuffled", {"logp": -12.0, "n_tokens": 4, "argmax_logp": -2.0, "argmax_prob": 2.0, "entropy": 8.0}),
    ]
    m = family_metrics(scored)
    assert m["probe/train/chosen/logp"] == pytest.approx(-6.5)  # (-4 - 9) / 2
    assert m["probe/train/chosen/logp_per_token"] == pytest.approx(-2.5)  # mean(-4/2, -9/3)
    assert m["probe/train/chosen/argmax_prob"] == pytest.approx(0.75)  # mean(1.6/2, 2.1/3)
    assert m["probe/train/chosen/entropy"] == pytest.approx(0.65)  # mean(1.0/2, 2.4/3)
    assert m["probe/train/argmax/logp"] == pytest.approx(-0.8)  # mean(-1, -0.6)
    assert m["probe/train/argmax/logp_per_token"] == pytest.approx(-0.35)  # mean(-1/2, -0.6/3)
    assert m["probe/test/shuffled/logp_per_token"] == pytest.approx(-3.0)
    assert "probe/test/shuffled/argmax_prob" not in m  # concentration only along y+ and y-
    assert "probe/test/argmax/logp" not in m  # no chosen pairs in that split
    assert "probe/train/argmax/logp" not in family_metrics(scored, argmax=False)


def _per_token(values: dict[str, float]) -> dict[str, float]:
    return {f"probe/{k}/logp_per_token": v for k, v in values.items()}


def test_squeezing_score_dpo_signature():
    start = _per_token({"train/chosen": -1.0, "train/rejected": -2.0, "train/greedy": -0.5, "train/argmax": -0.4})
    now = _per_token({"train/chosen": -1.3, "train/rejected": -2.5, "train/greedy": -0.3, "train/argmax": -0.2})
    s = squeezing_score(start, now)
    assert s.rise == pytest.approx(0.2)  # mean(+0.2, +0.2)
    assert s.fall == pytest.approx(0.4)  # -mean(-0.3, -0.5)
    assert s.score == pytest.approx(0.2)  # min(rise, fall)
    assert [k for k, _ in s.fell()] == ["train/rejected", "train/chosen"]  # most fallen first


def test_squeezing_score_sft_is_not_squeezing():
    # SFT on y+: argmax and chosen both rise; the rest barely moves. Mass is not leaving everything else.
    start = _per_token({"test/chosen": -1.0, "test/rejected": -2.0, "test/greedy": -0.5})
    now = _per_token({"test/chosen": -0.5, "test/rejected": -2.1, "test/greedy": -0.3})
    s = squeezing_score(start, now)
    assert s.fall == pytest.approx(-0.2)  # -mean(+0.5, -0.1)
    assert s.score == pytest.approx(-0.2)
    assert squeezing_score(start, start).score == 0.0
    only_down = {k: v for k, v in start.items() if "greedy" not in k}
    assert squeezing_score(only_down, only_down) is None  # nothing on the argmax side to measure


def test_shard_and_merge_in_a_fake_world_of_two():
    items = [f"probe{i}" for i in range(7)]
    shards = [shard(items, rank, 2) for rank in range(2)]
    assert [i for i, _ in shards[0]] == [0, 2, 4, 6]
    assert [i for i, _ in shards[1]] == [1, 3, 5]
    scored = [[(i, item.upper()) for i, item in part] for part in shards]  # each rank scores only its own share
    assert merge_shards(scored, len(items)) == [item.upper() for item in items]
    with pytest.raises(RuntimeError, match="duplicated"):
        merge_shards([scored[0], scored[1], scored[1][:1]], len(items))
    with pytest.raises(RuntimeError, match="lost"):
        merge_shards([scored[0]], len(items))
    assert shard(items[:1], 1, 2) == []  # more ranks than probes: a rank may have none


def test_auto_schedule_budget():
    # Probed 2 s so far; the next evaluation and the stage's last one cost 1.5 s each: 5 s must fit in 5% of training.
    assert auto_probe_due(0.05, train_seconds=100.0, probe_seconds=2.0, last_probe_seconds=1.5)
    assert not auto_probe_due(0.05, train_seconds=99.0, probe_seconds=2.0, last_probe_seconds=1.5)


# --- EOS apart, concentration in log-odds, per-probe records and the mechanism metrics


def test_response_token_stats_eos_and_log_odds_by_hand():
    # Same three rows as above (vocabulary of 2), with token 0 as EOS.
    garbage = [50.0, -50.0]
    logits = torch.tensor(
        [
            [garbage, [LN3, 0.0], garbage],
            [[0.0, 0.0], [LN3, 0.0], garbage],
            [garbage, [0.0, -math.inf], garbage],
        ]
    )
    input_ids = torch.tensor([[0, 0, 1], [1, 0, 0], [1, 0, 0]])
    response_mask = torch.tensor([[False, True], [True, True], [False, True]])
    stats = response_token_stats(logits, input_ids, response_mask, eos_token_id=0)
    # row 0: label 1 (not EOS). y* = token 0 at p 3/4: logit ln 3; top-1 also token 0: ln 3.
    # row 1: two EOS labels: (1/2, 1/2) then (3/4, 1/4). y* = token 1 at 1/2 (logit 0), then at 1/4 (logit -ln 3);
    #        top-1: 1/2 (0), then 3/4 (ln 3).
    # row 2: one EOS label under (1, 0): y* = token 1 at p 0 and top-1 at p 1, both clamped to -/+ LOGODDS_CLAMP.
    assert stats["eos_logp"].tolist() == pytest.approx([0.0, -LN2 + math.log(0.75), 0.0], abs=1e-6)
    assert stats["n_eos"].tolist() == [0, 2, 1]
    assert stats["alt_logodds"].tolist() == pytest.approx([LN3, -LN3, -LOGODDS_CLAMP], abs=1e-6)
    assert stats["top_logodds"].tolist() == pytest.approx([LN3, LN3, LOGODDS_CLAMP], abs=1e-6)
    assert "eos_logp" in response_token_stats(logits, input_ids, response_mask)  # without an EOS id: all zero


def test_log_odds_is_not_capped_by_headroom():
    # From p = 0.95 to p = 0.99 the log-prob can only rise by 0.04 nats; the log-odds rises by 1.65.
    lo = log_odds(torch.log(torch.tensor([0.95, 0.99], dtype=torch.float64)))
    assert (lo[1] - lo[0]).item() == pytest.approx(math.log(99) - math.log(19), abs=1e-9)
    assert log_odds(torch.tensor([math.log(0.5)])).item() == pytest.approx(0.0, abs=1e-7)  # float32 input


def _stats(logp, n, eos=0.0, n_eos=0.0, alt=0.0, top=0.0):
    return {"logp": logp, "n_tokens": n, "argmax_logp": -1.0, "argmax_prob": 0.5 * n, "entropy": 0.2 * n,
            "eos_logp": eos, "n_eos": n_eos, "alt_logodds": alt, "top_logodds": top}  # fmt: skip


def test_probe_values_keep_eos_apart():
    v = probe_values("chosen", _stats(logp=-7.0, n=4, eos=-1.0, n_eos=1))
    assert v["logp_per_token"] == pytest.approx(-1.75)
    assert v["words_logp_per_token"] == pytest.approx(-2.0)  # (-7 - -1) / 3
    assert v["eos_logp"] == -1.0 and v["argmax_prob"] == 0.5 and v["entropy"] == pytest.approx(0.2)
    assert probe_values("greedy", _stats(-3.0, 3))["eos_logp"] is None  # a decoding cut before its EOS
    assert probe_values("argmax", _stats(-3.0, 3)) == {"logp": -1.0, "logp_per_token": -1.0 / 3, "n_tokens": 3}


def _values(**families):
    return {f: probe_values(f, st) for f, st in families.items()}


def test_mechanism_per_probe_by_hand():
    start = [
        _values(rejected=_stats(-9.0, 4, eos=-3.0, n_eos=1, alt=-8.0, top=4.0), non_human=_stats(-20.0, 5, -2.0, 1),
                shuffled=_stats(-12.0, 3, -1.0, 1), greedy_start=_stats(-2.0, 5, -1.0, 1)),
        _values(rejected=_stats(-4.0, 2, -1.0, 1), non_human=_stats(-10.0, 3, -1.0, 1)),
    ]  # fmt: skip
    now = [
        _values(rejected=_stats(-15.0, 4, eos=-3.0, n_eos=1, alt=4.0, top=8.0), non_human=_stats(-26.0, 5, -4.0, 1),
                shuffled=_stats(-13.0, 3, -1.0, 1), greedy_start=_stats(-1.0, 5, -2.0, 1)),
        _values(rejected=_stats(-2.0, 2, -1.0, 1), non_human=_stats(-13.0, 3, -1.0, 1)),
    ]  # fmt: skip
    m = mechanism_per_probe(start, now, ["train", "test"])
    # probe 0 (train): non_human words -18/4 -> -22/4: -1.0; shuffled -11/2 -> -12/2: -0.5; fall = 0.75.
    #   Its EOS went -2 -> -4 (non_human) and stayed at -1 (shuffled): mean change -1.0, not in the fall.
    #   y-: words -6/3 -> -12/3: fall 2.0. Log-odds per token: alt -2 -> +1 (+3), top 1 -> 2 (+1).
    #   greedy_start words -1/4 -> +1/4: rise 0.5 (its EOS fell, which does not count).
    # probe 1 (test): non_human -9/2 -> -12/2: fall 1.5; y- metrics NaN (held-out probes are not trained).
    assert m["off_target_fall"] == pytest.approx([0.75, 1.5])
    assert m["off_target_eos_change"] == pytest.approx([-1.0, 0.0])
    assert m["rejected_fall"][0] == pytest.approx(2.0) and math.isnan(m["rejected_fall"][1])
    assert m["concentration_alt"][0] == pytest.approx(3.0) and m["concentration_top"][0] == pytest.approx(1.0)
    assert math.isnan(m["concentration_alt"][1])
    assert m["greedy_start_rise"][0] == pytest.approx(0.5) and math.isnan(m["greedy_start_rise"][1])
    assert all(math.isnan(v) for v in m["greedy_rise"])  # no greedy family tracked


def test_mechanism_summary_means_intervals_and_ratio():
    per_probe = {"off_target_fall": [0.75, 1.5, 0.75], "rejected_fall": [2.0, math.nan, 1.0], "flat": [1.0] * 3}
    s = mechanism_summary(per_probe, n_boot=200, seed=0)
    assert s["off_target_fall"].mean == pytest.approx(1.0)
    assert s["rejected_fall"].mean == pytest.approx(1.5)  # NaN skipped
    assert s["collateral_ratio"].mean == pytest.approx(1.0 / 1.5)
    assert 0.75 <= s["off_target_fall"].lo <= 1.0 <= s["off_target_fall"].hi <= 1.5
    assert (s["flat"].lo, s["flat"].hi) == (1.0, 1.0)  # no spread, no interval width
    # y- barely moved: the ratio is undefined rather than a huge number.
    assert math.isnan(collateral_ratio(0.3, RATIO_MIN_FALL / 2)) and collateral_ratio(0.3, 0.6) == 0.5


def test_squeezing_score_ignores_the_fixed_greedy_family():
    start = _per_token({"train/chosen": -1.0, "train/greedy": -0.5, "train/greedy_start": -0.5})
    now = _per_token({"train/chosen": -1.3, "train/greedy": -0.3, "train/greedy_start": -5.0})
    assert squeezing_score(start, now).fall == pytest.approx(0.3)  # greedy_start's -4.5 is not part of the fall


def test_alert_inputs_named_when_families_cannot_produce_them():
    assert alert_unavailable("off_target_fall", ["chosen", "rejected", "greedy"]) is not None
    assert alert_unavailable("off_target_fall", ["chosen", "non_human"]) is None
    assert "rejected" in alert_unavailable("concentration_alt", ["chosen", "non_human"])
    assert "greedy" in alert_unavailable("greedy_start_rise", ["chosen", "argmax"])
    assert alert_unavailable("score", ["chosen", "rejected"]) is not None  # no greedy/argmax: no rise
