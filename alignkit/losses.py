"""Squeezing-aware preference losses as pure functions of per-pair log-probs: DPO, DPOP, Cal-DPO and the
negative-gradient floor (docs/remedies.md derives each and says when to use it).

Nothing here touches a model, so every formula is tested on hand-computed numbers, value and gradient
(tests/test_losses.py). The preference stage feeds these functions the log-probs TRL's DPOTrainer computes
(alignkit/remedies.py). Notation, per pair:

    c, r     = log π(y⁺|x), log π(y⁻|x)               (summed over the response's tokens, as TRL sums them)
    c₀, r₀   = log π_ref(y⁺|x), log π_ref(y⁻|x)
    h⁺, h⁻   = c − c₀, r − r₀                         (the implicit rewards divided by β; TRL's "log ratios")

    dpo      L = −log σ(β(h⁺ − h⁻))
    dpop     L = −log σ(β(h⁺ − h⁻ − λ·max(0, c₀ − c)))                 Pal et al. 2024 (arXiv 2402.13228), Eq. 3
    cal_dpo  L = −log σ(h⁺ − h⁻) + (h⁺ − 1/(2β))² + (h⁻ + 1/(2β))²     Xiao et al. 2024 (arXiv 2412.14516)

Cal-DPO's preference term has no β inside the sigmoid: that is the authors' released code (its `shift` option at
0.5, the setting of their configs), where β only sets the calibration targets ±1/(2β).

The negative-gradient floor (`negative_floor` = f nats per token) gates the y⁻ side of the preference term: for a
pair whose y⁻ already sits more than f nats/token below the reference,

    (r − r₀) / |y⁻| < −f,

r enters the preference term with its gradient stopped (`r.detach()`): the loss value is unchanged, the y⁻ column
of the residual G is zero, and y⁺ keeps its full DPO gradient. Cal-DPO's calibration term is not gated (below
−1/(2β) it pulls y⁻ back up, which is the opposite of squeezing).

Shapes: every tensor argument is (batch,), one entry per pair, in any floating dtype; `rejected_tokens` is (batch,)
counts (int or float). Results are (batch,) per-pair losses: the batch loss is their mean, as in TRL.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

LOSSES = ("dpo", "dpop", "cal_dpo")
DPOP_LAMBDA = 50.0  # the λ of Pal et al.'s experiments


@dataclass
class PairLoss:
    """One batch's per-pair losses and the named parts a run logs (detached, (batch,) each)."""

    per_pair: torch.Tensor  # (batch,): mean() is the batch loss
    terms: dict[str, torch.Tensor] = field(default_factory=dict)  # metric name (TRL style) -> (batch,) values


def floor_mask(
    rejected_logps: torch.Tensor, ref_rejected_logps: torch.Tensor, rejected_tokens: torch.Tensor, floor: float
) -> torch.Tensor:
    """(batch,) bool: the pairs whose y⁻ is more than `floor` nats per token below the reference, i.e.
    (r − r₀)/|y⁻| < −floor. A constant of the step (no gradient)."""
    per_token = (rejected_logps.detach() - ref_rejected_logps) / rejected_tokens.clamp(min=1)
    return per_token < -floor


def floored(rejected_logps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """r with its gradient stopped where `mask` is True: same values, no y⁻ gradient for those pairs."""
    return torch.where(mask, rejected_logps.detach(), rejected_logps)


def dpo_loss(chosen_ratio: torch.Tensor, rejected_ratio: torch.Tensor, beta: float) -> torch.Tensor:
    """−log σ(β(h⁺ − h⁻)), (batch,)."""
    return -F.logsigmoid(beta * (chosen_ratio - rejected_ratio))


def dpop_penalty(chosen_logps: torch.Tensor, ref_chosen_logps: torch.Tensor) -> torch.Tensor:
    """max(0, c₀ − c), (batch,): how far log π(y⁺) has fallen below the reference (0 while it has not)."""
    return torch.relu(ref_chosen_logps - chosen_logps)


def dpop_loss(
    chosen_ratio: torch.Tensor, rejected_ratio: torch.Tensor, penalty: torch.Tensor, beta: float, lam: float
) -> torch.Tensor:
    """−log σ(β(h⁺ − h⁻ − λ·penalty)), (batch,); `penalty` from `dpop_penalty`."""
    return -F.logsigmoid(beta * (chosen_ratio - rejected_ratio - lam * penalty))


def cal_dpo_terms(
    chosen_ratio: torch.Tensor, rejected_ratio: torch.Tensor, beta: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cal-DPO's two parts, (batch,) each: the preference term −log σ(h⁺ − h⁻) and the calibration term
    (h⁺ − 1/(2β))² + (h⁻ + 1/(2β))²."""
    target = 1 / (2 * beta)
    preference = -F.logsigmoid(chosen_ratio - rejected_ratio)
    calibration = (chosen_ratio - target) ** 2 + (rejected_ratio + target) ** 2
    return preference, calibration


def pair_loss(
    loss: str,
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    rejected_tokens: torch.Tensor | None = None,
    *,
    beta: float,
    dpop_lambda: float = DPOP_LAMBDA,
    negative_floor: float | None = None,
) -> PairLoss:
    """The per-pair loss of `loss` (one of LOSSES), with the negative-gradient floor when `negative_floor` is set.

    Args:
        chosen_logps, rejected_logps: (batch,) log π(y⁺|x), log π(y⁻|x) of the policy, with gradient.
        ref_chosen_logps, ref_rejected_logps: (batch,) the reference's (no gradient).
        rejected_tokens: (batch,) |y⁻| in tokens; needed only with `negative_floor`.
        beta: DPO's β (for Cal-DPO: the calibration targets ±1/(2β)).
        dpop_lambda: DPOP's λ.
        negative_floor: f in nats per token, or None (off).

    Returns:
        `PairLoss`; its terms: `loss/dpop_penalty` (max(0, c₀ − c), nats), `loss/cal_dpo_preference`,
        `loss/cal_dpo_calibration`, `loss/negative_floor_active` (1.0 where the pair's y⁻ gradient was stopped).
    """
    if loss not in LOSSES:
        raise ValueError(f"unknown loss {loss!r}; expected one of {LOSSES}")
    terms: dict[str, torch.Tensor] = {}
    rejected = rejected_logps
    if negative_floor is not None:
        if rejected_tokens is None:
            raise ValueError("negative_floor needs rejected_tokens (|y-| of each pair)")
        mask = floor_mask(rejected_logps, ref_rejected_logps, rejected_tokens, negative_floor)
        rejected = floored(rejected_logps, mask)
        terms["loss/negative_floor_active"] = mask.to(chosen_logps.dtype)
    chosen_ratio = chosen_logps - ref_chosen_logps
    rejected_ratio = rejected - ref_rejected_logps
    if loss == "dpo":
        per_pair = dpo_loss(chosen_ratio, rejected_ratio, beta)
    elif loss == "dpop":
        penalty = dpop_penalty(chosen_logps, ref_chosen_logps)
        per_pair = dpop_loss(chosen_ratio, rejected_ratio, penalty, beta, dpop_lambda)
        terms["loss/dpop_penalty"] = penalty.detach()
    else:
        preference, _ = cal_dpo_terms(chosen_ratio, rejected_ratio, beta)
        # the calibration term sees y⁻ ungated (docstring): its own log-ratio, not the floored one
        _, calibration = cal_dpo_terms(chosen_ratio, rejected_logps - ref_rejected_logps, beta)
        per_pair = preference + calibration
        terms["loss/cal_dpo_preference"] = preference.detach()
        terms["loss/cal_dpo_calibration"] = calibration.detach()
    return PairLoss(per_pair, terms)
