"""Choose the squeezing detector's reading and threshold on the development runs, and freeze them in a file before
any held-out run exists.

    python bench/detector_freeze.py            # reads bench/results/detector_calibration/per_run/*.json
                                               # writes bench/results/detector_calibration/frozen.json, dev_table.md

The development runs are the calibration's (bench/detector_calibration.py): 24-step stages from the base model, 3
seeds per condition, labels from the design (positive: DPO on far y⁻; null: continued SFT, on-policy DPO, DPO at
1e-6; `ref_near_lr1e-4` is reported apart, its label arguable). Each candidate reading is computed from the run's last
evaluation (the monitor's mechanism metrics, mean over probes, since the stage began):

- `off_target_fall`: the current alert's metric (nats/token);
- `collateral_ratio`: off-target fall per nat of y⁻ fall (both per token, means over probes); undefined, and so no
  alert, when y⁻ fell by less than `RATIO_MIN_FALL` = 0.05 nats/token: no negative gradient at work, nothing for
  squeezing to be a side effect of;
- `gated_fall`: min(off_target_fall, concentration_alt): off-target fall that counts only while the mass at y⁻'s
  positions moves to another token.

The choice, stated before the numbers: among the readings that separate the development nulls from the positives
(every positive above every null), the one whose positive readings vary least with the learning rate (the
coefficient of variation of the three per-rate means over seeds): the reading must compare runs that learn different
amounts. Its threshold is the geometric midpoint of the gap (√(largest null × smallest positive)); an undefined
reading counts as no alert. frozen.json records the reading, the threshold, the rule, every development run's value and
the commit the development files were read at; the held-out runs must come after it in the history.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CALIBRATION = ROOT / "bench" / "results" / "detector_calibration"
CANDIDATES = ("off_target_fall", "collateral_ratio", "gated_fall")


def reading(evaluation: dict, name: str) -> float | None:
    """The candidate `name` at one evaluation (None when undefined)."""
    if name == "gated_fall":
        off, alt = evaluation.get("mech/off_target_fall"), evaluation.get("mech/concentration_alt")
        return None if off is None or alt is None else min(off, alt)
    value = evaluation.get(f"mech/{name}")
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else value


def dev_runs(folder: Path) -> list[dict]:
    runs = []
    for path in sorted(folder.glob("*.json")):
        run = json.loads(path.read_text())
        last = run["evaluations"][-1]
        runs.append({
            "run": path.stem, "condition": run["condition"], "label": run["label"],
            "learning_rate": run["learning_rate"], "seed": run["seed"], "steps": run["steps"],
            **{name: reading(last, name) for name in CANDIDATES},
            "rejected_fall": last.get("mech/rejected_fall"), "concentration_alt": last.get("mech/concentration_alt"),
        })  # fmt: skip
    return runs


def assess(runs: list[dict], name: str) -> dict:
    """Separation on the development runs and the spread of the positives over learning rates."""
    pos = [r[name] for r in runs if r["label"] == "positive"]
    null = [r[name] for r in runs if r["label"] == "null" and r[name] is not None]
    lowest_positive = min((v for v in pos if v is not None), default=None)
    highest_null = max(null, default=None)
    separates = None not in pos and (highest_null is None or lowest_positive > highest_null)
    by_rate: dict[float, list[float]] = {}
    for r in runs:
        if r["label"] == "positive" and r[name] is not None:
            by_rate.setdefault(r["learning_rate"], []).append(r[name])
    means = {str(rate): statistics.fmean(v) for rate, v in sorted(by_rate.items())}
    cv = statistics.pstdev(means.values()) / statistics.fmean(means.values()) if len(means) > 1 else math.nan
    threshold = None
    if separates and lowest_positive > 0:
        threshold = math.sqrt(max(highest_null, 0) * lowest_positive) if highest_null and highest_null > 0 else None
    return {
        "separates": separates, "lowest_positive": lowest_positive, "highest_null": highest_null,
        "nulls_undefined": sum(r[name] is None for r in runs if r["label"] == "null"),
        "positive_mean_by_learning_rate": means, "cv_over_learning_rates": cv, "threshold": threshold,
    }  # fmt: skip


def table(runs: list[dict], assessed: dict[str, dict], chosen: str) -> str:
    def fmt(v):
        return "undefined" if v is None else f"{v:.3f}"

    lines = [
        "# Detector v2: development runs (frozen before any held-out run)",
        "",
        "Last evaluation of each 24-step stage (mean over probes, since the stage began). `collateral_ratio` is",
        "off-target fall per nat of y⁻ fall; undefined where y⁻ fell by < 0.05 nats/token. Written by",
        "`python bench/detector_freeze.py`.",
        "",
        "| run | label | lr | off_target_fall | rejected_fall | collateral_ratio | gated_fall |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in runs:
        values = " | ".join(fmt(r[k]) for k in ("off_target_fall", "rejected_fall", "collateral_ratio", "gated_fall"))
        lines.append(f"| {r['run']} | {r['label']} | {r['learning_rate']:g} | {values} |")
    lines += [
        "",
        "| reading | separates | largest null | smallest positive | positive means at 1e-4 / 2e-4 / 4e-4 | "
        "CV over rates | threshold (gap's geometric midpoint) |",
        "|---|---|---:|---:|---|---:|---:|",
    ]
    for name, a in assessed.items():
        means = " / ".join(f"{v:.3f}" for v in a["positive_mean_by_learning_rate"].values())
        shown = f"**{name}**" if name == chosen else name
        lines.append(f"| {shown} | {a['separates']} | {fmt(a['highest_null'])} | {fmt(a['lowest_positive'])} | "
                     f"{means} | {a['cv_over_learning_rates']:.2f} | {fmt(a['threshold'])} |")  # fmt: skip
    lines += ["", "A threshold is undefined where the largest null is <= 0 (no gap to take a geometric midpoint of)."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=CALIBRATION, help="the calibration's result folder")
    args = parser.parse_args(argv)
    runs = dev_runs(args.out / "per_run")
    counted = [r for r in runs if r["label"] in ("positive", "null")]
    assessed = {name: assess(counted, name) for name in CANDIDATES}
    usable = {n: a for n, a in assessed.items() if a["separates"] and a["threshold"] is not None}
    if not usable:
        raise SystemExit("no candidate separates the development runs: nothing to freeze")
    chosen = min(usable, key=lambda n: usable[n]["cv_over_learning_rates"])
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    frozen = {
        "reading": chosen,
        "threshold": round(usable[chosen]["threshold"], 3),
        "alert_on": "mean over probes, at any evaluation of a stage; an undefined reading is no alert",
        "unit": "nats/token of off-target fall per nat/token of y- fall"
        if chosen == "collateral_ratio"
        else "nats/token",
        "rule": "among readings that separate the development nulls from the positives, the least sensitive to the "
        "learning rate (CV of the per-rate positive means); threshold = sqrt(largest null x smallest positive)",
        "development": {
            "runs": len(counted),
            "positives": sum(r["label"] == "positive" for r in counted),
            "nulls": sum(r["label"] == "null" for r in counted),
            "files": "per_run/*.json",
            "read_at_commit": commit,
        },  # fmt: skip
        "candidates": assessed,
        "per_run": runs,
        "frozen_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    (args.out / "frozen.json").write_text(json.dumps(frozen, indent=1) + "\n")
    (args.out / "dev_table.md").write_text(table(runs, assessed, chosen))
    print(json.dumps({k: frozen[k] for k in ("reading", "threshold", "unit")}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
