"""Probe scoring as pure functions: token statistics from logits, family means, the squeezing score, sharding.

Nothing here touches a model, so every formula is tested on hand-built tensors (tests/test_monitors_scoring.py).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import torch

from alignkit.monitors.config import MODEL_FAMILIES

T = TypeVar("T")

# Concentration (argmax probability, entropy) is measured along y+ and y-: where the paper looks for the peakedness
# that the negative gradient builds up.
CONCENTRATION_FAMILIES = ("chosen", "rejected")
STAT_NAMES = ("logp", "n_tokens", "argmax_logp", "argmax_prob", "entropy")


def metric_key(split: str, family: str, name: str) -> str:
    return f"probe/{split}/{family}/{name}"


def response_token_stats(
    logits: torch.Tensor, input_ids: torch.Tensor, response_mask: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Per-sequence sums over the response tokens, from one forward pass.

    Args:
        logits: (batch, seq, vocab) next-token logits.
        input_ids: (batch, seq) the scored tokens.
        response_mask: (batch, seq-1) bool, True where the *label* (token t+1) is a response token; lines up with
            logits[:, :-1] as `alignkit.sequences.collate` builds it.

    Returns:
        float64 tensors of shape (batch,): `logp` = Σ_t log π(y_t | x, y_<t); `n_tokens`; `argmax_logp` =
        Σ_t log max_v π(v | x, y_<t) (the teacher-forced argmax sequence along y); `argmax_prob` = Σ_t max_v π(·);
        `entropy` = Σ_t H(π(· | x, y_<t)) in nats.
    """
    # Only response positions go through the vocabulary-wide softmax: prompts and padding are most of a batch's
    # tokens, and a (tokens x vocab) float32 tensor is the memory peak of probing.
    rows = response_mask.nonzero(as_tuple=True)[0]
    logp = torch.log_softmax(logits[:, :-1][response_mask].float(), dim=-1)
    token_logp = logp.gather(-1, input_ids[:, 1:][response_mask].unsqueeze(-1)).squeeze(-1)
    max_logp = logp.max(dim=-1).values
    entropy = torch.special.entr(logp.exp()).sum(dim=-1)  # entr(0) = 0, where p·log p would give nan

    def per_row(values: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(logits.shape[0], dtype=torch.float64, device=values.device)
        return out.index_add_(0, rows, values.double())

    return {
        "logp": per_row(token_logp),
        "n_tokens": per_row(torch.ones_like(token_logp)),
        "argmax_logp": per_row(max_logp),
        "argmax_prob": per_row(max_logp.exp()),
        "entropy": per_row(entropy),
    }


def family_metrics(scored: Iterable[tuple[str, str, dict[str, float]]], argmax: bool = True) -> dict[str, float]:
    """Means per (split, family) of the per-pair statistics.

    Args:
        scored: (split, family, stats) per scored (prompt, response) pair, stats as from `response_token_stats`.
        argmax: also report the `argmax` family, read off the `chosen` pairs' teacher-forced argmax.

    Returns:
        `probe/<split>/<family>/logp` (mean summed log-prob), `.../logp_per_token` (mean over pairs of each pair's
        mean token log-prob: every probe weighs the same whatever its length) and, for chosen/rejected,
        `.../argmax_prob` and `.../entropy` (means over pairs of the per-token means).
    """
    groups: dict[tuple[str, str], list[dict[str, float]]] = defaultdict(list)
    for split, family, stats in scored:
        groups[(split, family)].append(stats)
    out: dict[str, float] = {}
    for (split, family), rows in sorted(groups.items()):
        out[metric_key(split, family, "logp")] = _mean(r["logp"] for r in rows)
        out[metric_key(split, family, "logp_per_token")] = _mean(r["logp"] / r["n_tokens"] for r in rows)
        if family in CONCENTRATION_FAMILIES:
            out[metric_key(split, family, "argmax_prob")] = _mean(r["argmax_prob"] / r["n_tokens"] for r in rows)
            out[metric_key(split, family, "entropy")] = _mean(r["entropy"] / r["n_tokens"] for r in rows)
        if argmax and family == "chosen":
            out[metric_key(split, "argmax", "logp")] = _mean(r["argmax_logp"] for r in rows)
            out[metric_key(split, "argmax", "logp_per_token")] = _mean(r["argmax_logp"] / r["n_tokens"] for r in rows)
    return out


def _mean(values: Iterable[float]) -> float:
    values = list(values)
    return math.fsum(values) / len(values) if values else float("nan")


@dataclass
class Squeeze:
    """The squeezing score at one evaluation, relative to the stage's first evaluation (see docs/monitors.md)."""

    score: float  # min(rise, fall), nats/token; > 0 only when the argmax side rose AND the rest fell
    rise: float  # mean Δ per-token log-prob of greedy/argmax
    fall: float  # minus the mean Δ per-token log-prob of every other family
    deltas: dict[str, float] = field(default_factory=dict)  # "<split>/<family>" -> Δ per-token log-prob

    def fell(self) -> list[tuple[str, float]]:
        """The non-argmax families whose per-token log-prob went down, most first."""
        down = [(k, d) for k, d in self.deltas.items() if k.split("/")[1] not in MODEL_FAMILIES and d < 0]
        return sorted(down, key=lambda kd: kd[1])


def squeezing_score(
    start: dict[str, float], now: dict[str, float], up_families: Sequence[str] = MODEL_FAMILIES
) -> Squeeze | None:
    """Score = min(rise, fall) over the per-token log-probs in both metric dicts.

    rise = mean over (split, f in up_families) of Δ logp_per_token; fall = −mean over every other (split, family) of
    Δ logp_per_token; Δ = now − start. None when either side has no family to measure.
    """
    deltas: dict[str, float] = {}
    for key, value in now.items():
        parts = key.split("/")
        if len(parts) == 4 and parts[0] == "probe" and parts[3] == "logp_per_token" and key in start:
            delta = value - start[key]
            if math.isfinite(delta):
                deltas[f"{parts[1]}/{parts[2]}"] = delta
    up = [d for k, d in deltas.items() if k.split("/")[1] in up_families]
    down = [d for k, d in deltas.items() if k.split("/")[1] not in up_families]
    if not up or not down:
        return None
    rise, fall = _mean(up), -_mean(down)
    return Squeeze(min(rise, fall), rise, fall, deltas)


def shard(items: Sequence[T], rank: int, world_size: int) -> list[tuple[int, T]]:
    """This rank's share of `items`, each with its index: rank r takes items r, r+W, r+2W, ..."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside a world of {world_size}")
    return [(i, items[i]) for i in range(rank, len(items), world_size)]


def merge_shards(shards: Sequence[Sequence[tuple[int, T]]], n_items: int) -> list[T]:
    """Put gathered shards back in item order, checking that every item came back exactly once."""
    out: list = [None] * n_items
    seen = [0] * n_items
    for part in shards:
        for i, value in part:
            out[i] = value
            seen[i] += 1
    bad = [i for i, n in enumerate(seen) if n != 1]
    if bad:
        raise RuntimeError(
            f"probe sharding lost or duplicated items {bad[:10]} (counts {[seen[i] for i in bad[:10]]})"
        )
    return out


def auto_probe_due(budget: float, train_seconds: float, probe_seconds: float, last_probe_seconds: float) -> bool:
    """Whether the automatic schedule can afford an evaluation now.

    An evaluation now costs about `last_probe_seconds`, and the stage's last evaluation (always run) as much again;
    if both fit in `budget` × the training time so far, they fit in it at the end of the stage too, because training
    time only grows. So probing stays within the budget of the stage whenever the stage is long enough to afford its
    first and last evaluations at all.
    """
    return probe_seconds + 2 * last_probe_seconds <= budget * train_seconds
