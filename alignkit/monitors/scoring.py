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

from alignkit.monitors.config import MODEL_FAMILIES, OFF_TARGET_FAMILIES

# The token statistics live in alignkit.sequences (generation reads them off its decoding, below the monitors);
# re-exported here, where probe scoring's callers look for them.
from alignkit.sequences import LOGODDS_CLAMP as LOGODDS_CLAMP
from alignkit.sequences import log_odds as log_odds
from alignkit.sequences import response_token_stats as response_token_stats

T = TypeVar("T")

# Concentration (argmax probability, entropy) is measured along y+ and y-: where the paper looks for the peakedness
# that the negative gradient builds up.
CONCENTRATION_FAMILIES = ("chosen", "rejected")
STAT_NAMES = (
    "logp", "n_tokens", "argmax_logp", "argmax_prob", "entropy", "eos_logp", "n_eos", "alt_logodds", "top_logodds",
)  # fmt: skip


def metric_key(split: str, family: str, name: str) -> str:
    return f"probe/{split}/{family}/{name}"


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
        # The stage-start decoding is scored since the mechanism metrics exist; the score keeps its original families.
        if parts[2:3] == [FIXED_GREEDY]:
            continue
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


# --- per-probe records and the mechanism metrics (docs/monitors.md, "Mechanism metrics")

ProbeStats = dict[str, dict[str, float]]  # family -> `response_token_stats` sums of one probe's (prompt, response)

FIXED_GREEDY = "greedy_start"  # the stage-start greedy decoding, scored as fixed text at every evaluation
MECHANISM_METRICS = (
    "off_target_fall", "off_target_eos_change", "rejected_fall", "chosen_fall", "collateral_ratio",
    "concentration_alt", "concentration_top", "greedy_start_rise", "greedy_rise",
)  # fmt: skip
RATIO_MIN_FALL = 0.05  # nats/token of y- decrease below which the collateral ratio is undefined (0/0 noise)


def probe_values(family: str, stats: dict[str, float]) -> dict[str, float | int | None]:
    """The compact per-probe record of one family: sums turned into the per-token numbers the metrics use.

    `words_logp_per_token` leaves the EOS label out (None when the response is the EOS alone); `eos_logp` is None when
    no EOS was scored (a greedy decoding cut at the token limit, or scored without its EOS). The `argmax` family is
    read off the `chosen` pass: its log-prob is Σ_t log max_v π(v), and it has no other statistics.
    """
    n = stats["n_tokens"]
    if family == "argmax":
        return {"logp": stats["argmax_logp"], "logp_per_token": stats["argmax_logp"] / n, "n_tokens": int(n)}
    n_eos, eos = stats.get("n_eos", 0.0), stats.get("eos_logp", 0.0)
    words = n - n_eos
    return {
        "logp": stats["logp"],
        "logp_per_token": stats["logp"] / n,
        "n_tokens": int(n),
        "eos_logp": eos if n_eos else None,
        "words_logp_per_token": (stats["logp"] - eos) / words if words else None,
        "argmax_prob": stats["argmax_prob"] / n,
        "entropy": stats["entropy"] / n,
        "alt_logodds": stats["alt_logodds"] / n if "alt_logodds" in stats else None,
        "top_logodds": stats["top_logodds"] / n if "top_logodds" in stats else None,
    }


def record_change(start: dict | None, now: dict | None, name: str) -> float:
    """now[name] − start[name] for two `probe_values` records of one probe and family; NaN when either is missing."""
    if start is None or now is None or start.get(name) is None or now.get(name) is None:
        return math.nan
    return now[name] - start[name]


def mechanism_per_probe(
    start: Sequence[dict[str, dict]], now: Sequence[dict[str, dict]], splits: Sequence[str]
) -> dict[str, list[float]]:
    """Each probe's change since the stage's first evaluation, per mechanism metric (NaN where undefined).

    Args:
        start, now: per probe, family -> `probe_values` record, at the stage's first evaluation and now.
        splits: each probe's split; metrics along the trained pair (`rejected_fall`, `chosen_fall`,
            `concentration_*`) use `train` probes only: that is where the gradient acts.

    Returns lists aligned with the probes, all in nats per token (log-odds per token for concentration):
        off_target_fall = −mean over f in OFF_TARGET_FAMILIES of Δ words_logp_per_token (EOS excluded);
        off_target_eos_change = mean over the same families of Δ log π(EOS) (reported apart, not in the fall);
        rejected_fall, chosen_fall = −Δ words_logp_per_token of y−, y+;
        concentration_alt = Δ mean_t logit π(y*_t) along y−, y* the most likely token other than y−'s own;
        concentration_top = Δ mean_t logit max_v π(v) along y−;
        greedy_start_rise = Δ words_logp_per_token of the stage-start greedy decoding (fixed text);
        greedy_rise = Δ logp_per_token of the greedy decoding regenerated now (content may change).
    """
    out: dict[str, list[float]] = {name: [] for name in MECHANISM_METRICS if name != "collateral_ratio"}
    for s, n, split in zip(start, now, splits):
        off = [record_change(s.get(f), n.get(f), "words_logp_per_token") for f in OFF_TARGET_FAMILIES]
        eos = [record_change(s.get(f), n.get(f), "eos_logp") for f in OFF_TARGET_FAMILIES]
        out["off_target_fall"].append(-_nanmean(off))
        out["off_target_eos_change"].append(_nanmean(eos))
        # Along the trained pair only on training probes (NaN elsewhere): that is where the gradient acts.
        pair = {f: (s.get(f), n.get(f)) if split == "train" else (None, None) for f in ("chosen", "rejected")}
        out["rejected_fall"].append(-record_change(*pair["rejected"], "words_logp_per_token"))
        out["chosen_fall"].append(-record_change(*pair["chosen"], "words_logp_per_token"))
        out["concentration_alt"].append(record_change(*pair["rejected"], "alt_logodds"))
        out["concentration_top"].append(record_change(*pair["rejected"], "top_logodds"))
        fixed = (s.get(FIXED_GREEDY), n.get(FIXED_GREEDY))
        out["greedy_start_rise"].append(record_change(*fixed, "words_logp_per_token"))
        out["greedy_rise"].append(record_change(s.get("greedy"), n.get("greedy"), "logp_per_token"))
    return out


def _nanmean(values: Iterable[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return math.fsum(finite) / len(finite) if finite else math.nan


def collateral_ratio(off_target_fall: float, rejected_fall: float) -> float:
    """Off-target fall per nat of y− decrease (both per token); NaN when y− fell by less than RATIO_MIN_FALL."""
    if not (math.isfinite(off_target_fall) and math.isfinite(rejected_fall)) or rejected_fall < RATIO_MIN_FALL:
        return math.nan
    return off_target_fall / rejected_fall


@dataclass
class Interval:
    mean: float
    lo: float
    hi: float


def mechanism_summary(
    per_probe: dict[str, list[float]], n_boot: int = 1000, seed: int = 0, level: float = 0.95
) -> dict[str, Interval]:
    """Mean over probes (NaN-skipping) of every metric, with a percentile bootstrap interval over probes.

    The same resampled probe indices serve every metric in a replicate, so the collateral ratio (a ratio of two
    means) is resampled as a ratio. Replicates where a metric is undefined are left out of its interval; when that is
    most of them, the interval is NaN.
    """
    names = list(per_probe)
    n = len(per_probe[names[0]]) if names else 0
    values = torch.tensor([per_probe[k] for k in names], dtype=torch.float64).reshape(len(names), n)
    point = _means(names, values.unsqueeze(1))  # (metrics, 1 replicate, probes)
    if n and n_boot > 0:
        idx = torch.randint(0, n, (n_boot, n), generator=torch.Generator().manual_seed(seed))
        draws = _means(names, values[:, idx])
    else:
        draws = {k: torch.full((0,), math.nan, dtype=torch.float64) for k in point}
    alpha = (1 - level) / 2
    out = {}
    for k, mean in point.items():
        d = draws[k][torch.isfinite(draws[k])]
        if d.numel() < max(1, n_boot // 2):
            out[k] = Interval(float(mean[0]), math.nan, math.nan)
        else:
            lo, hi = torch.quantile(d, torch.tensor([alpha, 1 - alpha], dtype=torch.float64)).tolist()
            out[k] = Interval(float(mean[0]), lo, hi)
    return out


def _means(names: list[str], values: torch.Tensor) -> dict[str, torch.Tensor]:
    """NaN-skipping means over the last axis of (metrics, replicates, probes), and the collateral ratio."""
    means = {k: values[j].nanmean(dim=-1) for j, k in enumerate(names)}  # all-NaN rows give NaN
    if "off_target_fall" in means and "rejected_fall" in means:
        fall, rejected = means["off_target_fall"], means["rejected_fall"]
        means["collateral_ratio"] = torch.where(rejected >= RATIO_MIN_FALL, fall / rejected, math.nan)
    return means


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


@dataclass
class CostPlan:
    """What a hard cap on the monitor's cost (`probe_max_overhead`) affords for the rest of a stage."""

    budget_seconds: float  # the cap x the stage's training time, projected from the steps so far
    evaluations_left: int  # mid-stage evaluations that fit once the stage's last evaluation is reserved
    every: int  # steps between them, spread evenly from the last evaluation to the stage's end (0: none fit)
    keep_fraction: float  # share of the probes the stage's last evaluation can afford (1: all of them)


def plan_capped(
    cap: float,
    max_steps: int,
    last_step: int,
    train_seconds: float,
    trained_steps: int,
    probe_seconds: float,
    eval_seconds: float,
    end_seconds: float,
) -> CostPlan:
    """Plan the rest of a stage under `cap`, from measured times: `train_seconds` of training over `trained_steps`
    steps, `probe_seconds` of probing so far, and what a mid-stage and the last evaluation cost (`eval_seconds`,
    `end_seconds`). Recomputed at every step, so a plan that was wrong corrects itself as measurements come in.

    >>> plan_capped(0.05, 100, 0, train_seconds=10.0, trained_steps=1, probe_seconds=10.0, eval_seconds=5.0,
    ...             end_seconds=10.0)  # 5% of 1000 s = 50 s; 10 spent, 10 kept for the end: 6 more, every 15 steps
    CostPlan(budget_seconds=50.0, evaluations_left=6, every=15, keep_fraction=1.0)
    >>> plan_capped(0.05, 10, 0, 10.0, 1, 4.0, 2.0, 4.0).keep_fraction  # 5 s budget: the end can afford 1 s of 4
    0.25
    """
    budget = cap * train_seconds / max(trained_steps, 1) * max_steps
    left = budget - probe_seconds - end_seconds
    n = int(left // eval_seconds) if eval_seconds > 0 and left > 0 else 0
    every = math.ceil((max_steps - last_step) / (n + 1)) if n else 0
    keep = min(1.0, max(0.0, (budget - probe_seconds) / end_seconds)) if end_seconds > 0 else 1.0
    return CostPlan(budget, n, every, keep)


def spaced_probe_due(step: int, max_steps: int, evaluations: int) -> bool:
    """Whether `step` is one of a stage's `evaluations` evenly spaced ones (the first at 0 and the last at `max_steps`
    run anyway): every ceil(max_steps / (evaluations − 1)) steps. False when the stage's length is unknown (0).

    >>> [s for s in range(1, 25) if spaced_probe_due(s, 24, 4)]
    [8, 16, 24]
    """
    if max_steps <= 0 or evaluations <= 2:
        return False
    every = math.ceil(max_steps / (evaluations - 1))
    return step % every == 0
