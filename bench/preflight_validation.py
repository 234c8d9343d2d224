"""Does pre-flight risk predict the off-target fall a pair causes? Rank correlations with bootstrap intervals.

Ready for issue 18's validation; not run yet: it needs, per seed, the pre-flight table of a run and the measured
off-target fall each training pair caused in that run (the factorial study's runs with the calibrated detector's
per-probe records, attributed to pairs; see docs/preflight.md, Validation). Inputs:

* `--preflight DIR/preflight.jsonl ...`: one pre-flight table per seed (records with `row` and the scores);
* `--falls FILE.jsonl ...`: as many files, in the same order, one record per pair: `row` (the pair's index in the
  training split, as in the table) and `offtarget_fall` (how much the off-target families' mean log-prob per token
  fell because of that pair, in nats/token; > 0 = fell).

For every score it prints Spearman's ρ between the score and the fall, per seed and pooled over seeds, with a 95%
percentile bootstrap interval over pairs. A deeper valley is a *lower* log-prob, so a score that predicts well has
ρ < 0 for the log-probs and the margin, and ρ > 0 for CHES.

    python bench/preflight_validation.py --preflight s1/preflight/preflight.jsonl s2/... --falls f1.jsonl f2.jsonl
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections.abc import Sequence
from pathlib import Path

from alignkit.errors import AlignkitError
from alignkit.jsonl import location, read_jsonl

SCORES = (
    "rejected_logp_per_token", "rejected_min_logp", "chosen_logp_per_token", "margin", "margin_per_token", "ches",
    "offtarget_delta",
)  # fmt: skip


def ranks(values: Sequence[float]) -> list[float]:
    """Ranks 1..n, ties sharing their mean rank."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    out = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            out[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return out


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's ρ: Pearson's correlation of the ranks (nan when either side is constant or n < 2)."""
    rx, ry = ranks(x), ranks(y)
    n = len(rx)
    if n < 2:
        return float("nan")
    mx, my = sum(rx) / n, sum(ry) / n
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    vx, vy = sum((a - mx) ** 2 for a in rx), sum((b - my) ** 2 for b in ry)
    return cov / (vx * vy) ** 0.5 if vx > 0 and vy > 0 else float("nan")


def bootstrap_interval(x: Sequence[float], y: Sequence[float], replicates: int = 1000, seed: int = 0):
    """95% percentile interval of ρ over pairs resampled with replacement (replicates with a constant side skipped)."""
    rng = random.Random(seed)
    n = len(x)
    values = []
    for _ in range(replicates):
        idx = [rng.randrange(n) for _ in range(n)]
        rho = spearman([x[i] for i in idx], [y[i] for i in idx])
        if rho == rho:  # not nan
            values.append(rho)
    if not values:
        return float("nan"), float("nan")
    values.sort()
    return values[int(0.025 * (len(values) - 1))], values[int(0.975 * (len(values) - 1))]


def joined(preflight: Path, falls: Path) -> list[tuple[dict, float]]:
    """(pre-flight record, fall) for every pair present in both files."""
    fall_of: dict[int, float] = {}
    for line, record in read_jsonl(falls):
        for key in ("row", "offtarget_fall"):
            if not isinstance(record.get(key), int | float) or isinstance(record.get(key), bool):
                raise AlignkitError(f"{location(falls, line, key)}: missing or not a number")
        fall_of[int(record["row"])] = float(record["offtarget_fall"])
    pairs = [(record, fall_of[record["row"]]) for _, record in read_jsonl(preflight) if record.get("row") in fall_of]
    if not pairs:
        raise AlignkitError(f"{preflight} and {falls} have no pair (field 'row') in common")
    return pairs


def table(seeds: list[list[tuple[dict, float]]], replicates: int) -> list[dict]:
    rows = []
    for score in SCORES:
        per_seed = []
        pooled_x, pooled_y = [], []
        for pairs in seeds:
            xy = [(r[score], fall) for r, fall in pairs if r.get(score) is not None]
            per_seed.append(spearman([a for a, _ in xy], [b for _, b in xy]) if xy else float("nan"))
            pooled_x += [a for a, _ in xy]
            pooled_y += [b for _, b in xy]
        low, high = bootstrap_interval(pooled_x, pooled_y, replicates) if pooled_x else (float("nan"),) * 2
        rows.append({"score": score, "pairs": len(pooled_x), "rho_per_seed": per_seed,
                     "rho_pooled": spearman(pooled_x, pooled_y), "ci95": [low, high]})  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preflight", nargs="+", required=True, type=Path)
    p.add_argument("--falls", nargs="+", required=True, type=Path)
    p.add_argument("--replicates", type=int, default=1000)
    args = p.parse_args(argv)
    try:
        if len(args.preflight) != len(args.falls):
            raise AlignkitError(f"{len(args.preflight)} pre-flight tables but {len(args.falls)} fall files")
        rows = table([joined(a, b) for a, b in zip(args.preflight, args.falls)], args.replicates)
    except AlignkitError as err:
        print(f"preflight_validation: error: {err}", file=sys.stderr)
        return 2
    for row in rows:
        print(json.dumps(row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
