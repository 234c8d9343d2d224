"""The losses of one update and their residuals G_l = ∂L/∂z_l, as pure functions of per-token log-probs.

Every loss here depends on the logits z_l of an update token only through log π(y_l), and ∂log π(y_l)/∂z_l = e_y − π,
so each residual has the form

    G_l = c_l · (π_l − e_{y_l}),    c_l = −∂L/∂ log π(y_l),

and a whole loss is described by one scalar c per side (docs/dynamics.md derives each):

    sft       L = −Σ_l log π(y_l)                              c = 1
    dpo       L = −log σ(β·margin)                             c⁺ = β(1 − a),  c⁻ = −β(1 − a),  a = σ(β·margin)
              margin = [log π(y⁺) − log π_ref(y⁺)] − [log π(y⁻) − log π_ref(y⁻)]   (log-probs summed over tokens)
    ipo       L = (h − 1/(2β))²                                c⁺ = 2(1/(2β) − h)/|y⁺|,  c⁻ = −2(1/(2β) − h)/|y⁻|
              h = [log π(y⁺) − log π_ref(y⁺)]/|y⁺| − [log π(y⁻) − log π_ref(y⁻)]/|y⁻|   (TRL's per-token average)
    negative  L = +Σ_l log π(y⁻_l)  (pure negative gradient)   c⁻ = −1

c > 0 pulls y_l up (SFT-like), c < 0 pushes it down: the "negative gradient" whose squeezing effect the paper studies.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

LOSSES = ("sft", "dpo", "ipo", "negative")


def loss_value(
    loss: str,
    chosen_logps: torch.Tensor | None,
    rejected_logps: torch.Tensor | None,
    ref_chosen: float = 0.0,
    ref_rejected: float = 0.0,
    beta: float = 0.1,
) -> torch.Tensor:
    """The scalar loss from per-token log-probs (1-D tensors) and the reference's summed log-probs."""
    if loss == "sft":
        return -chosen_logps.sum()
    if loss == "negative":
        return rejected_logps.sum()
    chosen_ratio = chosen_logps.sum() - ref_chosen
    rejected_ratio = rejected_logps.sum() - ref_rejected
    if loss == "dpo":
        return -F.logsigmoid(beta * (chosen_ratio - rejected_ratio))
    if loss == "ipo":
        h = chosen_ratio / len(chosen_logps) - rejected_ratio / len(rejected_logps)
        return (h - 1 / (2 * beta)) ** 2
    raise ValueError(f"unknown loss {loss!r}")


def residual_coefficients(
    loss: str,
    chosen_logps: torch.Tensor | None,
    rejected_logps: torch.Tensor | None,
    ref_chosen: float = 0.0,
    ref_rejected: float = 0.0,
    beta: float = 0.1,
) -> tuple[float, float, dict[str, float]]:
    """(c⁺, c⁻, terms): the residual scales of the chosen and rejected tokens, and the loss's named terms.

    `terms` holds what the coefficients were computed from (margin and a = σ(β·margin) for DPO, h and its target
    1/(2β) for IPO) so that a report can say why the update is as strong as it is.
    """
    if loss == "sft":
        return 1.0, 0.0, {"logp_chosen": float(chosen_logps.sum())}
    if loss == "negative":
        return 0.0, -1.0, {"logp_rejected": float(rejected_logps.sum())}
    chosen_ratio = float(chosen_logps.sum()) - ref_chosen
    rejected_ratio = float(rejected_logps.sum()) - ref_rejected
    if loss == "dpo":
        margin = chosen_ratio - rejected_ratio
        a = 1 / (1 + math.exp(-beta * margin))
        terms = {"logratio_chosen": chosen_ratio, "logratio_rejected": rejected_ratio, "margin": margin, "a": a}
        return beta * (1 - a), -beta * (1 - a), terms
    if loss == "ipo":
        n_chosen, n_rejected = len(chosen_logps), len(rejected_logps)
        h = chosen_ratio / n_chosen - rejected_ratio / n_rejected
        target = 1 / (2 * beta)
        terms = {"logratio_chosen": chosen_ratio, "logratio_rejected": rejected_ratio, "h": h, "target": target}
        return 2 * (target - h) / n_chosen, -2 * (target - h) / n_rejected, terms
    raise ValueError(f"unknown loss {loss!r}")


def residuals(probs: torch.Tensor, targets: torch.Tensor, coef: torch.Tensor) -> torch.Tensor:
    """G_l = c_l (π_l − e_{y_l}) for every row: probs (L, V), targets (L,), coef (L,) → (L, V)."""
    g = probs.clone()
    g[torch.arange(len(targets)), targets] -= 1
    return coef[:, None] * g
