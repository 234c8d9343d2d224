"""Pre-flight scores as pure functions: valley depth, margin, CHES, and the at-risk rule.

Nothing here touches a model, so every formula is tested on hand-built numbers (tests/test_preflight_scores.py).
Log-probs are in nats and come from `alignkit.sequences` (the one definition of log π(y|x)): one value per response
token, EOS included.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch


def valley(token_logps: Sequence[float]) -> dict[str, float | int]:
    """How deep one response sits, from its per-token log-probs log π(y_t | x, y_<t) (length n ≥ 1).

    Returns `logp` = Σ_t (= log π(y|x)), `logp_per_token` = logp / n (depth independent of length), `min_logp` =
    min_t (the deepest single token: one very unlikely token is a valley even in an otherwise likely answer) and
    `n_tokens` = n.
    """
    if not token_logps:
        raise ValueError("a response has no scored tokens")
    total = math.fsum(token_logps)
    return {
        "logp": total,
        "logp_per_token": total / len(token_logps),
        "min_logp": min(token_logps),
        "n_tokens": len(token_logps),
    }


def margin(chosen: dict[str, float], rejected: dict[str, float]) -> dict[str, float]:
    """The y+/y- margin from two `valley` results: summed (log π(y+|x) − log π(y-|x)) and per token (the difference
    of the per-token means, which does not reward a long y- for being long)."""
    return {
        "margin": chosen["logp"] - rejected["logp"],
        "margin_per_token": chosen["logp_per_token"] - rejected["logp_per_token"],
    }


def pair_scores(chosen_logps: Sequence[float], rejected_logps: Sequence[float], ches_score: float) -> dict:
    """One pair's pre-flight scores: `rejected_*` and `chosen_*` (`valley`), `margin`, `margin_per_token`, `ches`."""
    plus, minus = valley(chosen_logps), valley(rejected_logps)
    record = {f"rejected_{k}": v for k, v in minus.items()} | {f"chosen_{k}": v for k, v in plus.items()}
    return record | margin(plus, minus) | {"ches": ches_score}


def mean_response_hidden(hidden: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """The mean over response positions of the last layer's hidden states.

    Args:
        hidden: (batch, seq, d) hidden states (the input of the unembedding).
        response_mask: (batch, seq-1) bool, True where the *label* (token t+1) is a response token, as
            `alignkit.sequences.collate` builds it. Position t's hidden state is the one that predicts token t+1, so
            the selected states are those of the last prompt token up to the second-to-last response token: exactly
            the states Razin et al. sum (the last token's state predicts nothing in the response).

    Returns:
        (batch, d) float64: Σ_t h_t / n per row, n = the row's number of response tokens.
    """
    mask = response_mask.to(torch.float64).unsqueeze(-1)
    sums = (hidden[:, :-1].to(torch.float64) * mask).sum(dim=1)
    return sums / mask.sum(dim=1).clamp(min=1)


def ches(mean_chosen: torch.Tensor, mean_rejected: torch.Tensor) -> torch.Tensor:
    """Length-normalised CHES (Razin et al., "Unintentional Unalignment", 2024) of each pair.

        CHES_ln = ⟨h̄+, h̄-⟩ − ‖h̄+‖²,   h̄± = (1/|y±|) Σ_t h(x, y±_<t)

    Args:
        mean_chosen, mean_rejected: (batch, d) mean hidden states of y+ and y- (`mean_response_hidden`).

    Returns:
        (batch,) float64. High (near or above 0) = y- is represented like y+: the pair's gradients on y+ and y- nearly
        cancel, and DPO tends to lower log π(y+) too (likelihood displacement). The raw score sums instead of
        averaging (its scale grows with the product of the lengths); the mean keeps pairs of different lengths
        comparable, which is the variant Razin et al. recommend for ranking.
    """
    plus, minus = mean_chosen.to(torch.float64), mean_rejected.to(torch.float64)
    return (plus * minus).sum(dim=-1) - (plus * plus).sum(dim=-1)


def at_risk(rejected_logp_per_token: float, threshold: float) -> bool:
    """The pre-flight's rule: y- sits deeper than `threshold` nats per token (a low-probability valley)."""
    return rejected_logp_per_token < threshold


def rank(records: Sequence[dict]) -> list[dict]:
    """Records ordered riskiest first: deepest y- (lowest mean log-prob per token), ties by deepest single token."""
    return sorted(records, key=lambda r: (r["rejected_logp_per_token"], r["rejected_min_logp"]))
