"""Statistics as pure numpy functions: bootstrap intervals (flat, or nested: seeds, then probes), paired differences,
Spearman ρ, Wilson intervals.

A *unit* is one independent-enough observation, keyed by a tuple whose first element is the seed: `(seed, probe)` for
probe metrics, `(seed, prompt)` for generations, `(seed, arm, probe)` for the pooled dose–response. A unit's value is
a float or a tuple of floats (e.g. `(off_target_fall, rejected_fall)` for a ratio of means, `(x, y)` for a rank
correlation). Every estimate is the statistic on all units plus a percentile bootstrap interval that resamples units
with replacement.

Nothing here knows about models or files; tests/test_study_analysis.py checks each function on hand-worked numbers.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Hashable, Mapping
from dataclasses import asdict, dataclass, field

import numpy as np

Key = tuple[Hashable, ...]  # (seed, ...): the first element is always the seed
Units = Mapping[Key, float | tuple[float, ...]]
Statistic = Callable[[np.ndarray], float]  # (units, components) -> one number

N_BOOT = 2000
LEVEL = 0.95


@dataclass
class Estimate:
    """A statistic with its bootstrap interval, how many units and seeds stand behind it, and its value per seed."""

    mean: float
    lo: float
    hi: float
    n_units: int
    n_seeds: int
    per_seed: dict[str, float] = field(default_factory=dict)  # the statistic on each seed's units alone

    def to_dict(self) -> dict:
        return asdict(self)

    def excludes(self, value: float) -> int:
        """+1 when the whole interval lies above `value`, −1 when below, 0 when it contains it (or is undefined)."""
        if not (math.isfinite(self.lo) and math.isfinite(self.hi)):
            return 0
        return 1 if self.lo > value else -1 if self.hi < value else 0


def unit_array(units: Units, drop_nonfinite: bool = True) -> tuple[list[Key], np.ndarray]:
    """Keys in sorted order and their values as an (n_units, n_components) float array, non-finite units dropped.

    Sorting makes the result independent of dict order, so an interval recomputed from the raw files with the same
    bootstrap seed is the same number. A unit with any non-finite component is a missing pair (e.g. a probe with no
    y⁻, an uncheckable answer): it is dropped before resampling, so every replicate has the same kind of units.
    With `drop_nonfinite` False a unit is kept while any component is finite, for a NaN-aware statistic.
    """
    keys = sorted(units, key=lambda k: tuple(str(part) for part in k))
    rows = np.array([np.atleast_1d(np.asarray(units[k], dtype=float)) for k in keys], dtype=float)
    if rows.size == 0:
        return [], np.zeros((0, 1))
    keep = np.isfinite(rows).all(axis=1) if drop_nonfinite else np.isfinite(rows).any(axis=1)
    return [k for k, ok in zip(keys, keep) if ok], rows[keep]


def mean_of(values: np.ndarray) -> float:
    """Mean of the first component over units."""
    return float(values[:, 0].mean()) if len(values) else math.nan


def ratio_of_means(values: np.ndarray) -> float:
    """mean(component 0) / mean(component 1): e.g. off-target fall per nat of y⁻ decrease, or wins per decisive pair.

    A ratio of means (not a mean of ratios) so that a unit whose denominator is near 0 cannot dominate; NaN when the
    denominator's mean is 0.
    """
    if not len(values):
        return math.nan
    den = values[:, 1].mean()
    return float(values[:, 0].mean() / den) if den != 0 else math.nan


def ratio_difference(values: np.ndarray) -> float:
    """mean(c0)/mean(c1) − mean(c2)/mean(c3): the paired difference of two ratios of means, each unit carrying both
    arms' (numerator, denominator), so one resampling draws the same units for both ratios."""
    return ratio_of_means(values[:, 0:2]) - ratio_of_means(values[:, 2:4])


def bootstrap_interval(
    units: Units, statistic: Statistic = mean_of, n: int = N_BOOT, seed: int = 0, level: float = LEVEL
) -> Estimate:
    """Statistic over all units with a percentile bootstrap interval over units.

    Each of `n` replicates draws as many units as there are, with replacement, from the pooled (seed, ...) units and
    recomputes the statistic; the interval is the replicates' (1−level)/2 and (1+level)/2 quantiles. Pairing lives in
    the units: a paired difference is one value per unit (arm X − arm Y on the same seed and probe), so the interval
    is that of a paired comparison.

    Flat resampling over seeds × probes treats every unit as exchangeable: it captures probe-to-probe variation and
    the seed-to-seed variation that shows up unit by unit, but not a shift shared by all probes of one seed (a seed's
    training run is one draw). The per-seed values are reported next to every interval for that reason; with one
    seed the interval is over probes only and says nothing about rerunning training.

    Replicates where the statistic is undefined (NaN) are left out; if most are, the interval is NaN.
    """
    keys, values = unit_array(units)
    point = statistic(values)
    seeds = sorted({k[0] for k in keys}, key=str)
    per_seed = {str(s): statistic(values[[k[0] == s for k in keys]]) for s in seeds}
    lo = hi = math.nan
    if len(values) and n > 0:
        rng = np.random.default_rng(seed)
        idx = rng.integers(0, len(values), size=(n, len(values)))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # constant ranks or 0/0 in a replicate: NaN, dropped below
            draws = np.array([statistic(values[row]) for row in idx])
        draws = draws[np.isfinite(draws)]
        if len(draws) >= n / 2:
            lo, hi = (float(q) for q in np.quantile(draws, [(1 - level) / 2, (1 + level) / 2]))
    return Estimate(float(point), lo, hi, len(values), len(seeds), per_seed)


def nested_draws(
    units: Units, statistic: Statistic = mean_of, n: int = N_BOOT, seed: int = 0, drop_nonfinite: bool = True
) -> np.ndarray:
    """`n` bootstrap replicates of `statistic` with seeds as the unit: each replicate draws as many seeds as there
    are, with replacement, then within each drawn seed as many of its units (probes) as it has, with replacement, and
    pools them. A shift shared by all probes of one seed (a training run is one draw) widens the interval, which flat
    resampling misses; with one seed it is the bootstrap over probes. Undefined replicates are NaN.
    `drop_nonfinite`: as in `unit_array`."""
    keys, values = unit_array(units, drop_nonfinite)
    groups: dict[str, list[int]] = {}
    for i, k in enumerate(keys):
        groups.setdefault(str(k[0]), []).append(i)
    members = [np.array(ix) for _, ix in sorted(groups.items())]
    rng = np.random.default_rng(seed)
    draws = np.full(n, math.nan)
    if not members:
        return draws
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for b in range(n):
            picked = rng.integers(0, len(members), size=len(members))
            rows = np.concatenate([rng.choice(members[g], size=len(members[g])) for g in picked])
            draws[b] = statistic(values[rows])
    return draws


def interval_of(draws: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    """The percentile interval of bootstrap replicates, NaN ones left out (NaN if most are)."""
    finite = draws[np.isfinite(draws)]
    if len(finite) < len(draws) / 2 or not len(finite):
        return (math.nan, math.nan)
    lo, hi = np.quantile(finite, [(1 - level) / 2, (1 + level) / 2])
    return (float(lo), float(hi))


def nested_bootstrap(
    units: Units, statistic: Statistic = mean_of, n: int = N_BOOT, seed: int = 0, level: float = LEVEL
) -> Estimate:
    """Statistic over all units with the seed-level interval of `nested_draws`, and the per-seed values."""
    keys, values = unit_array(units)
    seeds = sorted({k[0] for k in keys}, key=str)
    per_seed = {str(s): statistic(values[[k[0] == s for k in keys]]) for s in seeds}
    lo, hi = interval_of(nested_draws(units, statistic, n, seed), level)
    return Estimate(float(statistic(values)), lo, hi, len(values), len(seeds), per_seed)


def paired_difference(x: Mapping[Key, float], y: Mapping[Key, float]) -> dict[Key, float]:
    """x − y on the units both have with finite values: the paired comparison of two arms on the same units."""
    return {k: x[k] - y[k] for k in x.keys() & y.keys() if math.isfinite(x[k]) and math.isfinite(y[k])}


def ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, ties sharing the average of the ranks they span (as Spearman's ρ needs)."""
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    out = np.empty(len(values), dtype=float)
    # Runs of equal values: each run gets the mean of its positions' ranks.
    starts = np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1]])
    ends = np.r_[starts[1:], len(values)]
    for s, e in zip(starts, ends):
        out[order[s:e]] = (s + 1 + e) / 2
    return out


def spearman(values: np.ndarray) -> float:
    """Spearman's ρ of components 0 (x) and 1 (y): the Pearson correlation of their ranks.

    ρ = Σ (r_x − r̄)(r_y − r̄) / sqrt(Σ (r_x − r̄)² Σ (r_y − r̄)²); NaN with fewer than 3 units or a constant side.
    """
    if len(values) < 3:
        return math.nan
    rx, ry = ranks(values[:, 0]), ranks(values[:, 1])
    rx, ry = rx - rx.mean(), ry - ry.mean()
    den = math.sqrt(float((rx**2).sum() * (ry**2).sum()))
    return float((rx * ry).sum() / den) if den > 0 else math.nan


def mean_within_group_spearman(values: np.ndarray) -> float:
    """Mean over groups (component 2, a group code) of Spearman's ρ of components 0 and 1 within the group.

    The pooled ρ over arms mixes two things: the dose–response inside an arm and the difference between arms (FAR's
    y⁻ is deeper AND FAR arms may squeeze more for other reasons). Averaging within-arm ρ keeps only the first.
    Groups where ρ is undefined are skipped.
    """
    rhos = [spearman(values[values[:, 2] == g]) for g in np.unique(values[:, 2])]
    finite = [r for r in rhos if math.isfinite(r)]
    return float(np.mean(finite)) if finite else math.nan


def merge(parts: list[dict[Key, object]]) -> dict[Key, object]:
    """Union of unit dicts from different seeds (keys start with the seed, so they never collide)."""
    return {k: v for part in parts for k, v in part.items()}


def estimate(units: dict, statistic=mean_of, n_boot: int = N_BOOT) -> dict:
    """The study's estimate: the statistic with its seed-level interval (`nested_bootstrap`: seeds, then the
    probes or prompts inside each), as a dict."""
    return nested_bootstrap(units, statistic, n=n_boot).to_dict()


def wilson_interval(successes: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval for a proportion `successes / n` (95% by default): unlike the normal approximation it
    stays inside [0, 1] and is informative at 0 or n successes, the case of a detector's false alarms.

    >>> [round(x, 4) for x in wilson_interval(0, 9)]  # 0 false alarms in 9 nulls: the true rate may be up to 30%
    [0.0, 0.2991]
    >>> [round(x, 4) for x in wilson_interval(12, 12)]
    [0.7575, 1.0]
    """
    if n <= 0:
        return (math.nan, math.nan)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return (max(0.0, centre - half), min(1.0, centre + half))
