"""Pre-flight formulas and report lines on hand-built numbers: every expected value is worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch
from datasets import Dataset

from alignkit.config import parse_recipe_config
from alignkit.dynamics import DistributionChange
from alignkit.preflight.onestep import sample_pairs, summarize
from alignkit.preflight.recipe import actions
from alignkit.preflight.run import PreflightResult
from alignkit.preflight.scores import at_risk, ches, margin, mean_response_hidden, rank, valley
from alignkit.preflight.table import markdown_table, verdict

LN2, LN4 = math.log(2), math.log(4)


def test_valley_by_hand():
    # p = (1/2, 1/4, 1/2): sum = -(ln2 + ln4 + ln2) = -4 ln2; mean = -4 ln2 / 3; the deepest token is ln(1/4).
    v = valley([-LN2, -LN4, -LN2])
    assert v["logp"] == pytest.approx(-4 * LN2)
    assert v["logp_per_token"] == pytest.approx(-4 * LN2 / 3)
    assert v["min_logp"] == pytest.approx(-LN4)
    assert v["n_tokens"] == 3
    with pytest.raises(ValueError, match="no scored tokens"):
        valley([])


def test_margin_by_hand():
    # y+: 2 tokens of ln(1/2) -> sum -2 ln2, mean -ln2. y-: 4 tokens of ln(1/4) -> sum -8 ln2, mean -2 ln2.
    plus, minus = valley([-LN2, -LN2]), valley([-LN4] * 4)
    m = margin(plus, minus)
    assert m["margin"] == pytest.approx(6 * LN2)  # -2 ln2 - (-8 ln2)
    assert m["margin_per_token"] == pytest.approx(LN2)  # -ln2 - (-2 ln2)


def test_mean_response_hidden_uses_the_positions_that_predict_the_response():
    # One row of 4 tokens, d = 2; labels 2 and 3 are response tokens, so positions 1 and 2 predict them.
    hidden = torch.tensor([[[100.0, 100.0], [1.0, 0.0], [3.0, 2.0], [-50.0, 7.0]]])
    mask = torch.tensor([[False, True, True]])
    assert mean_response_hidden(hidden, mask).tolist() == [[2.0, 1.0]]  # ((1,0) + (3,2)) / 2


def test_ches_by_hand():
    # h+ = (1, 0), h- = (1, 1): <h+, h-> - |h+|^2 = 1 - 1 = 0.
    # h+ = (2, 0), h- = (-1, 0): -2 - 4 = -6 (dissimilar: low). h+ = (1, 0), h- = (3, 0): 3 - 1 = 2 (similar: high).
    plus = torch.tensor([[1.0, 0.0], [2.0, 0.0], [1.0, 0.0]])
    minus = torch.tensor([[1.0, 1.0], [-1.0, 0.0], [3.0, 0.0]])
    assert ches(plus, minus).tolist() == [0.0, -6.0, 2.0]


def test_ches_is_length_normalised():
    # Razin et al.'s raw CHES of summed states, divided by |y+||y-| and |y+|^2, is the CHES of the means.
    hidden = torch.tensor(
        [[[0.0, 0.0], [1.0, 2.0], [3.0, 0.0], [0.0, 0.0]], [[0.0, 0.0], [2.0, 2.0], [0.0, 0.0], [0.0, 0.0]]]
    )
    mask = torch.tensor([[True, True, False], [True, True, True]])  # y+: positions 0,1 (n=2); y-: positions 0..2 (n=3)
    means = mean_response_hidden(hidden, mask)
    # Summed states: y+ = (0,0) + (1,2) = (1,2); y- = (0,0) + (2,2) + (0,0) = (2,2).
    sum_plus, sum_minus = torch.tensor([1.0, 2.0]), torch.tensor([2.0, 2.0])
    expected = float(sum_plus @ sum_minus) / (2 * 3) - float(sum_plus @ sum_plus) / 2**2  # 6/6 - 5/4 = -1/4
    assert ches(means[:1], means[1:]).item() == pytest.approx(expected) == pytest.approx(-0.25)


def test_at_risk_and_rank():
    records = [
        {"id": "a", "rejected_logp_per_token": -1.0, "rejected_min_logp": -2.0},
        {"id": "b", "rejected_logp_per_token": -3.0, "rejected_min_logp": -4.0},
        {"id": "c", "rejected_logp_per_token": -3.0, "rejected_min_logp": -9.0},
    ]
    assert [r["id"] for r in rank(records)] == ["c", "b", "a"]  # deepest first; ties by the deepest token
    assert at_risk(-3.0, -2.5) and not at_risk(-1.0, -2.5) and not at_risk(-2.5, -2.5)


def test_summarize_by_hand():
    # Two observed positions, vocabulary 3. Targets 0 and 2; argmax of probs: 1 and 2.
    delta = torch.tensor([[-0.2, 0.4, -0.1], [0.0, -0.3, 0.1]])
    probs = torch.tensor([[0.2, 0.7, 0.1], [0.3, 0.1, 0.6]])
    out = summarize(DistributionChange(delta, probs, torch.tensor([0, 2])))
    assert out["offtarget_delta"] == pytest.approx((-0.2 + 0.1) / 2)
    assert out["offtarget_argmax_delta"] == pytest.approx((0.4 + 0.1) / 2)


def test_sample_pairs_is_seeded_and_bounded():
    assert sample_pairs(10, 3, seed=1) == sample_pairs(10, 3, seed=1)
    assert len(set(sample_pairs(10, 3, seed=1))) == 3
    assert sample_pairs(2, 5, seed=0) == [0, 1]


def test_verdict_says_how_many_and_what_to_do():
    line = verdict(3, 12, -2.5, "the base model `m`", "chosen", decided_on_base=True)
    assert line.startswith("3 of 12 pairs (25%) have y- deeper than -2.5 nats/token under the base model `m`")
    assert "extend_sft" in line and "drop" in line
    assert "more SFT steps" in verdict(3, 12, -2.5, "the SFT model", "extended", decided_on_base=False)
    assert "no action needed" in verdict(0, 12, -2.5, "the SFT model", "extended", decided_on_base=False)


def test_markdown_table_escapes_and_blanks():
    lines = markdown_table([{"rank": 1, "id": "a|b", "ches": 0.12345, "at_risk": True, "offtarget_delta": None}])
    assert lines[2].startswith("| 1 | - | a\\|b | - |")  # rank, no row, escaped id, no task
    assert "| 0.123 |" in lines[2] and lines[2].endswith("| - | yes |")


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--preflight", "report"], "preflight: report: nothing changed (1 of 2 pairs at risk)"),
        (["--preflight", "act", "--preflight_action", "drop"], "1 pairs at risk removed; the preference stage trained "
         "on the other 1 of the 2 scored pairs"),
        (["--preflight", "act", "--sft_mode", "extended"], "no change; sft_mode extended already trains on every y-"),
        (["--preflight", "act", "--sft_mode", "chosen"], "the SFT stage also trained on y- of the 1 pairs at risk"),
    ],
)  # fmt: skip
def test_report_counts_what_the_preflight_changed(args, expected, tmp_path):
    records = [{"row": 0, "at_risk": True}, {"row": 1, "at_risk": False}]
    result = PreflightResult(records, "m", -2.5, 1.0, 0.0, tmp_path, Dataset.from_list([{"preflight_row": 0}]))
    assert expected in actions(parse_recipe_config(args), result)[0]
