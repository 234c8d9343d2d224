"""The preference losses (alignkit/losses.py) against hand computations: value and gradient, float64, to 1e-6.

Every expected number is written out with `math` from the formula in the comment beside it, not through the code
under test. Pairs (c, r, c₀, r₀) are log π(y⁺), log π(y⁻), log π_ref(y⁺), log π_ref(y⁻); the batch loss is the mean
over pairs, so each pair's gradient carries a factor 1/batch.
"""

from __future__ import annotations

import math

import pytest
import torch

from alignkit.losses import pair_loss

TOL = 1e-6


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def run(loss: str, pairs: list[tuple[float, float, float, float]], tokens=None, **kwargs):
    """(batch loss, dL/dc per pair, dL/dr per pair, terms) of `pair_loss` on float64 leaves."""
    c = torch.tensor([p[0] for p in pairs], dtype=torch.float64, requires_grad=True)
    r = torch.tensor([p[1] for p in pairs], dtype=torch.float64, requires_grad=True)
    c0 = torch.tensor([p[2] for p in pairs], dtype=torch.float64)
    r0 = torch.tensor([p[3] for p in pairs], dtype=torch.float64)
    n = None if tokens is None else torch.tensor(tokens)
    out = pair_loss(loss, c, r, c0, r0, n, **kwargs)
    total = out.per_pair.mean()
    total.backward()
    return total.item(), c.grad.tolist(), r.grad.tolist(), {k: v.tolist() for k, v in out.terms.items()}


# pair A: h+ = -10 - (-11) = 1, h- = -20 - (-18) = -2 (y+ rose, y- fell: no DPOP penalty)
# pair B: h+ = -12 - (-11) = -1 (y+ fell by 1 nat: DPOP penalty 1), h- = -21 - (-18) = -3
A = (-10.0, -20.0, -11.0, -18.0)
B = (-12.0, -21.0, -11.0, -18.0)


def test_dpo_value_and_gradient():
    beta = 0.1
    loss, dc, dr, _ = run("dpo", [A], beta=beta)
    z = beta * (1 - (-2))  # β(h+ - h-) = 0.3
    assert loss == pytest.approx(math.log(1 + math.exp(-z)), abs=TOL)  # -log σ(z)
    assert dc[0] == pytest.approx(-beta * (1 - sigmoid(z)), abs=TOL)  # dL/dc = -β(1 - σ(z))
    assert dr[0] == pytest.approx(beta * (1 - sigmoid(z)), abs=TOL)  # dL/dr = +β(1 - σ(z))


def test_dpop_penalty_inactive_equals_dpo():
    loss_p, dc_p, dr_p, terms = run("dpop", [A], beta=0.1, dpop_lambda=50.0)
    loss_d, dc_d, dr_d, _ = run("dpo", [A], beta=0.1)
    assert terms["loss/dpop_penalty"] == [0.0]
    assert [loss_p, *dc_p, *dr_p] == pytest.approx([loss_d, *dc_d, *dr_d], abs=TOL)


def test_dpop_value_and_gradient_with_penalty():
    beta, lam = 0.1, 50.0
    loss, dc, dr, terms = run("dpop", [A, B], beta=beta, dpop_lambda=lam)
    z_a = beta * (1 - (-2))  # no penalty: 0.3
    z_b = beta * (-1 - (-3) - lam * 1.0)  # β(h+ - h- - λ·max(0, c0 - c)) = 0.1·(2 - 50) = -4.8
    assert loss == pytest.approx((math.log(1 + math.exp(-z_a)) + math.log(1 + math.exp(-z_b))) / 2, abs=TOL)
    assert terms["loss/dpop_penalty"] == pytest.approx([0.0, 1.0], abs=TOL)
    # pair B: dz/dc = β(1 + λ) (the penalty -λ(c0 - c) grows with c), dz/dr = -β; dL/dz = -(1 - σ(z)); mean over 2
    assert dc[1] == pytest.approx(-(1 - sigmoid(z_b)) * beta * (1 + lam) / 2, abs=TOL)
    assert dr[1] == pytest.approx((1 - sigmoid(z_b)) * beta / 2, abs=TOL)
    assert dc[0] == pytest.approx(-(1 - sigmoid(z_a)) * beta / 2, abs=TOL)
    assert dr[0] == pytest.approx((1 - sigmoid(z_a)) * beta / 2, abs=TOL)


def test_cal_dpo_value_and_gradient():
    beta = 0.1
    target = 1 / (2 * beta)  # 5 nats
    loss, dc, dr, terms = run("cal_dpo", [A], beta=beta)
    h_plus, h_minus = 1.0, -2.0
    preference = math.log(1 + math.exp(-(h_plus - h_minus)))  # -log σ(h+ - h-), no β inside
    calibration = (h_plus - target) ** 2 + (h_minus + target) ** 2  # 16 + 9
    assert loss == pytest.approx(preference + calibration, abs=TOL)
    assert terms["loss/cal_dpo_preference"] == pytest.approx([preference], abs=TOL)
    assert terms["loss/cal_dpo_calibration"] == pytest.approx([25.0], abs=TOL)
    s = sigmoid(h_plus - h_minus)
    assert dc[0] == pytest.approx(-(1 - s) + 2 * (h_plus - target), abs=TOL)
    assert dr[0] == pytest.approx((1 - s) + 2 * (h_minus + target), abs=TOL)


# The floor: |y-| = 4 tokens for both pairs, f = 0.6 nats/token.
# pair A: (r - r0)/|y-| = -2/4 = -0.5 >= -0.6 -> not floored; pair B: -3/4 = -0.75 < -0.6 -> floored.
TOKENS = [4, 4]


def test_floor_stops_only_the_rejected_gradient_of_floored_pairs():
    beta = 0.1
    loss, dc, dr, terms = run("dpo", [A, B], TOKENS, beta=beta, negative_floor=0.6)
    z_a, z_b = beta * (1 + 2), beta * (-1 + 3)
    # the value is plain DPO's
    assert loss == pytest.approx((math.log(1 + math.exp(-z_a)) + math.log(1 + math.exp(-z_b))) / 2, abs=TOL)
    assert terms["loss/negative_floor_active"] == [0.0, 1.0]
    assert dr[0] == pytest.approx(beta * (1 - sigmoid(z_a)) / 2, abs=TOL)  # A keeps its y- gradient
    assert dr[1] == 0.0  # B's y- gradient is stopped
    assert dc[0] == pytest.approx(-beta * (1 - sigmoid(z_a)) / 2, abs=TOL)  # y+ trains as in DPO, both pairs
    assert dc[1] == pytest.approx(-beta * (1 - sigmoid(z_b)) / 2, abs=TOL)


def test_floor_is_strict_and_off_by_default():
    # f = 0.75: pair B sits exactly at -0.75, which is not *more* than 0.75 below
    _, _, dr, terms = run("dpo", [A, B], TOKENS, beta=0.1, negative_floor=0.75)
    assert terms["loss/negative_floor_active"] == [0.0, 0.0] and dr[1] != 0.0
    _, _, _, terms = run("dpo", [A, B], beta=0.1)
    assert "loss/negative_floor_active" not in terms


def test_floor_with_dpop_and_cal_dpo():
    beta, lam = 0.1, 50.0
    _, dc, dr, _ = run("dpop", [B], [4], beta=beta, dpop_lambda=lam, negative_floor=0.6)
    z = beta * (-1 + 3 - lam * 1.0)
    assert dr[0] == 0.0
    assert dc[0] == pytest.approx(-(1 - sigmoid(z)) * beta * (1 + lam), abs=TOL)
    # Cal-DPO: the preference term's y- gradient is stopped, the calibration term's is kept: dL/dr = 2(h- + 1/(2β))
    loss, dc, dr, _ = run("cal_dpo", [B], [4], beta=beta, negative_floor=0.6)
    h_plus, h_minus, target = -1.0, -3.0, 5.0
    assert loss == pytest.approx(
        math.log(1 + math.exp(-(h_plus - h_minus))) + (h_plus - target) ** 2 + (h_minus + target) ** 2, abs=TOL
    )
    assert dr[0] == pytest.approx(2 * (h_minus + target), abs=TOL)
    assert dc[0] == pytest.approx(-(1 - sigmoid(h_plus - h_minus)) + 2 * (h_plus - target), abs=TOL)


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown loss"):
        run("sigmoid", [A], beta=0.1)
    with pytest.raises(ValueError, match="rejected_tokens"):
        run("dpo", [A], beta=0.1, negative_floor=0.5)
