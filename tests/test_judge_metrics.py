"""Win-rate metrics on hand-made verdicts: every expected number below is worked out by hand in the comments."""

from __future__ import annotations

import math

import numpy as np
import pytest

from alignkit.judge.metrics import (
    bootstrap_ci,
    candidate_score,
    combine_orders,
    fit_length_model,
    instruction_difficulty,
    length_controlled_win_rate,
    length_controlled_with_difficulty,
    outcome_counts,
    position_consistency,
    standard_error,
    summarize,
    win_rate,
)


@pytest.mark.parametrize(
    ("first", "second", "score", "consistent"),
    [
        ("A", "B", 1.0, True),  # candidate preferred as A and as B: a win
        ("B", "A", 0.0, True),  # baseline preferred in both orders: a loss
        ("tie", "tie", 0.5, True),
        ("A", "A", 0.5, False),  # always position A: flips with the order, a tie
        ("B", "B", 0.5, False),  # always position B
        ("A", "tie", 0.5, False),  # preferred once, tied once: not agreed, a tie
        ("tie", "B", 0.5, False),
        ("B", "tie", 0.5, False),  # lost once, tied once: also a tie, never a loss
        ("tie", "A", 0.5, False),
    ],
)
def test_combine_orders_truth_table(first, second, score, consistent):
    assert combine_orders(first, second) == (score, consistent)


def test_candidate_score_maps_positions_back():
    assert candidate_score("A", "A") == 1.0 and candidate_score("B", "A") == 0.0
    assert candidate_score("A", "B") == 0.0 and candidate_score("B", "B") == 1.0
    with pytest.raises(ValueError):
        candidate_score("unparseable", "A")


def test_headline_numbers_from_hand_made_verdicts():
    # 10 pairs: (candidate first, candidate second)
    verdicts = [("A", "B")] * 4 + [("B", "A")] * 2 + [("A", "A")] * 3 + [("tie", "tie")]
    scores, consistent = zip(*(combine_orders(a, b) for a, b in verdicts))
    # 4 wins, 2 losses, 3 flips + 1 agreed tie = 4 ties -> (4 + 4/2) / 10 = 0.6
    assert outcome_counts(scores) == {"wins": 4, "ties": 4, "losses": 2}
    assert win_rate(scores) == pytest.approx(0.6)
    # consistent: 4 + 2 + 1 = 7 of 10
    assert position_consistency(consistent) == pytest.approx(0.7)
    # scores 1,1,1,1,0,0,.5,.5,.5,.5: mean .6, sample var = (4*.16 + 2*.36 + 4*.01)/9 = 1.4/9
    assert standard_error(scores) == pytest.approx(math.sqrt(1.4 / 9) / math.sqrt(10))


def test_empty_inputs_are_nan_not_errors():
    assert math.isnan(win_rate([])) and math.isnan(position_consistency([]))
    assert all(math.isnan(x) for x in bootstrap_ci([]))
    assert math.isnan(length_controlled_win_rate([], []))


def test_bootstrap_ci_properties():
    assert bootstrap_ci([0.5] * 20) == (0.5, 0.5)  # no spread, no interval
    scores = [1.0] * 30 + [0.0] * 10  # win rate 0.75
    low, high = bootstrap_ci(scores, n_resamples=4000, seed=1)
    assert low < 0.75 < high
    # normal approximation: se = sqrt(.75*.25/40) = 0.0685 -> about [0.616, 0.884]
    assert low == pytest.approx(0.75 - 1.96 * 0.0685, abs=0.03)
    assert high == pytest.approx(0.75 + 1.96 * 0.0685, abs=0.03)
    assert bootstrap_ci(scores, seed=3) == bootstrap_ci(scores, seed=3)  # reproducible
    wide = bootstrap_ci([1.0, 0.0] * 10, seed=0)
    narrow = bootstrap_ci([1.0, 0.0] * 1000, seed=0)
    assert narrow[1] - narrow[0] < (wide[1] - wide[0]) / 5  # ~1/sqrt(100) as wide


def test_lc_equals_plain_win_rate_without_length_difference():
    scores = [1.0, 1.0, 0.5, 0.0, 1.0, 0.5, 1.0, 0.0]
    assert length_controlled_win_rate(scores, [0] * len(scores)) == pytest.approx(win_rate(scores), abs=1e-9)


def test_lc_equals_plain_win_rate_when_every_score_is_the_same():
    assert length_controlled_win_rate([1.0] * 5, [10, 20, 30, 40, 50]) == 1.0


def test_lc_removes_a_pure_length_effect():
    # A judge that only rewards length: P(candidate wins) = sigmoid(2.5 * tanh(d / std(d))), no quality effect.
    # The candidate is longer in ~80% of pairs, so its raw win rate is ~0.69; at equal length it would be 0.5.
    rng = np.random.default_rng(0)
    d = np.where(rng.random(1000) < 0.8, 1, -1) * rng.gamma(4, 30, 1000)
    scores = (rng.random(1000) < 1 / (1 + np.exp(-2.5 * np.tanh(d / d.std())))).astype(float)
    assert win_rate(scores) == pytest.approx(0.69, abs=0.02)
    assert length_controlled_win_rate(scores, d) == pytest.approx(0.5, abs=0.03)


def test_lc_cannot_separate_length_from_quality_under_perfect_separation():
    # The candidate wins exactly when longer (8 of 10 pairs). No logistic fit can tell an intercept from a slope
    # here; the L2 penalty keeps the answer finite and between 0.5 and the raw rate, which the docs warn about.
    diff = [100, 120, 80, 150, 90, 110, 130, 70, -100, -120] * 5
    scores = [1.0 if d > 0 else 0.0 for d in diff]
    assert 0.5 < length_controlled_win_rate(scores, diff) < win_rate(scores) == pytest.approx(0.8)


def test_lc_keeps_a_quality_effect_that_is_not_about_length():
    # Symmetric lengths and the candidate wins 3 of 4 pairs whatever its length: LC stays at the raw rate.
    diff = [50, -50, 30, -30] * 10
    scores = [1.0, 1.0, 1.0, 0.0, 1.0, 1.0, 0.0, 1.0] * 5
    assert win_rate(scores) == pytest.approx(0.75)
    assert length_controlled_win_rate(scores, diff) == pytest.approx(0.75, abs=0.03)


def test_length_model_recovers_known_coefficients():
    rng = np.random.default_rng(0)
    d = rng.normal(0, 200, size=20000)
    x = np.tanh(d / d.std())
    y = (rng.random(20000) < 1 / (1 + np.exp(-(0.4 + 1.5 * x)))).astype(float)
    intercept, slope = fit_length_model(y, d, l2=1e-6)
    assert intercept == pytest.approx(0.4, abs=0.06)
    assert slope == pytest.approx(1.5, abs=0.1)


def test_summarize_agrees_with_the_parts():
    scores = [1.0, 0.0, 0.5, 1.0]
    out = summarize(scores, [True, True, False, True], [10, 20, 30, 40], [10, 25, 10, 20], n_resamples=200)
    assert out["n_pairs"] == 4 and out["wins"] == 2 and out["losses"] == 1 and out["ties"] == 1
    assert out["win_rate"] == pytest.approx(0.625)
    assert out["position_consistency"] == pytest.approx(0.75)
    assert out["candidate_longer_share"] == pytest.approx(0.5)  # diffs 0, -5, 20, 20
    assert out["win_rate_ci"][0] <= 0.625 <= out["win_rate_ci"][1]


def test_instruction_difficulty_hand_computed():
    # two other models: instruction 0 won by both -> share (2 + 0.5) / 3 = 5/6, difficulty -log 5 = -1.6094;
    # instruction 1 lost by both -> 1/6, +1.6094; instruction 2 one win one loss -> 1/2, 0. Mean 0 already.
    got = instruction_difficulty(np.array([[1.0, 0.0, 1.0], [1.0, 0.0, 0.0]]))
    assert got == pytest.approx([-math.log(5), math.log(5), 0.0])


def test_lc_with_difficulty_needs_two_models_and_equals_the_plain_rate_without_length_or_difficulty_effects():
    with pytest.raises(ValueError, match="at least two models"):
        length_controlled_with_difficulty({"B": [1.0, 0.0]}, {"B": [0, 0]})
    # no length difference, and a heavy penalty pins the difficulty coefficient at 0: only the intercept is left,
    # and the mean of sigmoid(intercept) is the plain win rate, as in the simplified fit
    scores = {"B": [1.0, 0.0, 1.0, 1.0], "C": [0.0, 1.0, 0.5, 1.0]}
    zero = {"B": [0, 0, 0, 0], "C": [0, 0, 0, 0]}
    got = length_controlled_with_difficulty(scores, zero, l2=1e9)
    assert got == pytest.approx({"B": 0.75, "C": 0.625}, abs=1e-6)


def test_lc_with_difficulty_removes_a_length_effect_on_instructions_of_varied_difficulty():
    # 600 instructions with difficulty h_i; model B is as good as the baseline (quality 0) but longer in 80% of
    # pairs, and the judge rewards length: P = sigmoid(-h_i + 2 tanh(d/sd)). Model C is better (quality +1) with no
    # length difference. At equal length B's expected win rate is mean sigmoid(-h_i), about 0.5.
    rng = np.random.default_rng(1)
    n = 600
    h = rng.normal(0, 1.5, n)
    d_b = np.where(rng.random(n) < 0.8, 1, -1) * rng.gamma(4, 30, n)
    p_b = 1 / (1 + np.exp(-(-h + 2 * np.tanh(d_b / d_b.std()))))
    p_c = 1 / (1 + np.exp(-(1 - h)))
    scores = {"B": (rng.random(n) < p_b).astype(float), "C": (rng.random(n) < p_c).astype(float)}
    got = length_controlled_with_difficulty(scores, {"B": d_b, "C": np.zeros(n)}, l2=1e-3)
    assert win_rate(scores["B"]) > 0.6  # the raw rate is inflated by length
    assert got["B"] == pytest.approx(np.mean(1 / (1 + np.exp(h))), abs=0.06)
    assert got["C"] == pytest.approx(np.mean(1 / (1 + np.exp(-(1 - h)))), abs=0.06)
