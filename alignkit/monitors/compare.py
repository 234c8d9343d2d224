"""Put runs side by side on the reading that compares them: did a change of recipe squeeze less at equal learning?

    python -m alignkit.monitors.compare outputs/plain outputs/dpop                  # two runs, preference stage
    python -m alignkit.monitors.compare a_s0,a_s1,a_s2 b_s0,b_s1,b_s2 --names dpo dpop   # seeds joined by commas

Each argument is one arm: a run folder (`<run>/<stage>/probe_records.jsonl`), a stage folder or a callback's
`output_dir` (`probe_records.jsonl` in it), or a `probe_records.jsonl[.gz]` file; several comma-joined = the arm's
seeds. From each run's first and last evaluation of the stage, per probe: the off-target fall and the y⁻ fall
(nats/token, alignkit.monitors.scoring.mechanism_per_probe; training and held-out probes, as the monitor reads them).

The reading is the collateral ratio κ = mean off-target fall / mean y⁻ fall over the arm's probes: nats of
off-target text lost per nat that the negative gradient took from y⁻. The off-target fall alone grows with the
learning rate and the stage's length (0.157 / 0.398 / 1.157 nats/token at 1e-4 / 2e-4 / 4e-4 on the development runs,
bench/results/detector_calibration/dev_table.md) while κ stays flat (0.620 / 0.645 / 0.670), so two recipes that
push y⁻ down by different amounts are compared per unit of that push. A remedy that lowers the off-target fall only
by learning less leaves κ where it was; one that removes collateral damage lowers κ. κ is undefined when y⁻ fell by
less than 0.05 nats/token (no negative gradient at work).

Intervals are 95% bootstraps with seeds as the unit (alignkit.stats.nested_draws: seeds resampled, probes resampled
within each); with one run per arm they are over probes only and say nothing about retraining. The difference of
each arm from the first comes from the two arms' independent replicates. Writes a table to stdout (and `--json`) and
a figure (`--figure`, default compare.png).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from alignkit.errors import AlignkitError
from alignkit.jsonl import json_safe, read_jsonl
from alignkit.monitors.scoring import RATIO_MIN_FALL, mechanism_per_probe
from alignkit.monitors.stage_files import evaluations
from alignkit.stats import interval_of, mean_of, nested_draws, unit_array

RECORDS = "probe_records.jsonl"
N_BOOT = 2000


@dataclass
class Arm:
    """One arm: its name and, per run (seed), each probe's (off-target fall, y⁻ fall) over the stage (NaN where the
    probe has no such family, e.g. no y⁻ for a held-out prompt without pairs)."""

    name: str
    runs: list[Path]
    units: dict[tuple[int, str], tuple[float, float]]


def records_path(path: Path, stage: str) -> Path:
    """The probe records of `stage` that `path` names (a run folder, a stage folder, or the file itself)."""
    for candidate in (path, path / stage / RECORDS, path / stage / f"{RECORDS}.gz", path / RECORDS,
                      path / f"{RECORDS}.gz"):  # fmt: skip
        if candidate.is_file():
            return candidate
    raise AlignkitError(
        f"{path}: no probe records of stage '{stage}' ({path / stage / RECORDS} or {path / RECORDS}); give a run "
        "folder, a stage folder, a callback's output_dir or a probe_records.jsonl file"
    )


def stage_changes(path: Path, stage: str) -> dict[str, tuple[float, float]]:
    """{probe: (off-target fall, y⁻ fall)} from the stage's first to its last evaluation in one run, over the
    training and held-out probes alike, as the monitor's own `collateral_ratio` is (its report and this agree)."""
    evals = evaluations(row for _, row in read_jsonl(path) if row.get("stage", stage) == stage)
    steps = {step for step, _, _ in evals}
    if len(steps) < 2:
        raise AlignkitError(f"{path}: stage '{stage}' has evaluations at {len(steps)} step(s); a change needs two")
    first, last = evals[0][2], evals[-1][2]
    probes = sorted(first.keys() & last.keys())
    splits = [next(iter(first[p].values()))["split"] for p in probes]
    per = mechanism_per_probe([first[p] for p in probes], [last[p] for p in probes], splits)
    return {p: (off, rej) for p, off, rej in zip(probes, per["off_target_fall"], per["rejected_fall"])}


def load_arm(spec: str, name: str | None, stage: str) -> Arm:
    runs = [Path(part) for part in spec.split(",") if part]
    units = {}
    for seed, run in enumerate(runs):
        for probe, values in stage_changes(records_path(run, stage), stage).items():
            units[(seed, probe)] = values
    return Arm(name or runs[0].name, runs, units)


def ratio_if_moved(values: np.ndarray) -> float:
    """κ as the monitor computes it (alignkit.monitors.scoring: NaN-skipping means of each column over the probes,
    then their ratio), or NaN when y⁻ fell by less than RATIO_MIN_FALL on average."""
    if not len(values) or not np.isfinite(values[:, 1]).any():
        return math.nan
    off, rejected = np.nanmean(values[:, 0]), np.nanmean(values[:, 1])
    return float(off / rejected) if rejected >= RATIO_MIN_FALL else math.nan


def summarise(arms: list[Arm], n_boot: int = N_BOOT) -> list[dict]:
    """Per arm: κ, off-target fall and y⁻ fall with seed-level intervals; κ's difference from the first arm."""
    out, base = [], None
    for i, arm in enumerate(arms):
        row = {"arm": arm.name, "runs": len(arm.runs), "probes": len(arm.units)}
        draws = {}
        for key, stat, units, partial in (
            ("collateral_ratio", ratio_if_moved, arm.units, True),  # a probe without y⁻ still counts off-target
            ("off_target_fall", mean_of, {k: v[0] for k, v in arm.units.items()}, False),
            ("rejected_fall", mean_of, {k: v[1] for k, v in arm.units.items()}, False),
        ):
            _, values = unit_array(units, drop_nonfinite=not partial)
            draws[key] = nested_draws(units, stat, n_boot, seed=i, drop_nonfinite=not partial)
            row[key] = {"value": stat(values), "interval": interval_of(draws[key])}
        if base is None:
            base = draws["collateral_ratio"]
        else:
            diff = draws["collateral_ratio"] - base
            row["collateral_ratio_minus_first"] = {
                "value": row["collateral_ratio"]["value"] - out[0]["collateral_ratio"]["value"],
                "interval": interval_of(diff),
            }
        out.append(row)
    return out


def _cell(entry: dict | None, digits: int = 3) -> str:
    if not entry or not math.isfinite(entry["value"]):
        return "undefined"
    lo, hi = entry["interval"]
    bracket = f" [{lo:.{digits}f}, {hi:.{digits}f}]" if math.isfinite(lo) and math.isfinite(hi) else ""
    return f"{entry['value']:.{digits}f}{bracket}"


def table(rows: list[dict], stage: str) -> str:
    lines = [
        f"Stage '{stage}', all probes, change from the stage's first to its last evaluation; 95% intervals with "
        "seeds as the unit (over probes only for one run).",
        "",
        "| arm | runs | probes | collateral_ratio (nats per nat of y⁻ fall) | minus the first arm | off_target_fall "
        "(nats/token) | y⁻ fall (nats/token) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['arm']} | {r['runs']} | {r['probes']} | {_cell(r['collateral_ratio'])} | "
            f"{_cell(r.get('collateral_ratio_minus_first')) if 'collateral_ratio_minus_first' in r else '–'} | "
            f"{_cell(r['off_target_fall'])} | {_cell(r['rejected_fall'])} |"
        )
    return "\n".join(lines)


def figure(arms: list[Arm], rows: list[dict], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for i, (arm, row) in enumerate(zip(arms, rows)):
        entry = row["collateral_ratio"]
        if math.isfinite(entry["value"]):
            lo, hi = entry["interval"]
            err = [[entry["value"] - lo], [hi - entry["value"]]] if math.isfinite(lo) and math.isfinite(hi) else None
            left.errorbar(i, entry["value"], yerr=err, fmt="o", color=f"C{i}", capsize=4)
        seeds = sorted({s for s, _ in arm.units})
        for s in seeds:
            pts = np.array([v for (seed, _), v in arm.units.items() if seed == s])
            label = arm.name if s == seeds[0] else None
            right.plot(np.nanmean(pts[:, 1]), np.nanmean(pts[:, 0]), "o", color=f"C{i}", label=label)
        if math.isfinite(entry["value"]):  # the arm's ratio as a slope through the origin
            reach = max(np.nanmean(np.array([v[1] for v in arm.units.values()], dtype=float)) * 1.3, 0.0)
            right.plot([0, reach], [0, entry["value"] * reach], "--", color=f"C{i}", lw=1)
    left.set_xticks(range(len(arms)), [a.name for a in arms])
    left.set_ylabel("collateral ratio (off-target fall per nat of y⁻ fall)")
    left.set_title("The reading that compares runs (95% interval)", fontsize=9)
    right.axhline(0, color="grey", lw=0.5)
    right.axvline(0, color="grey", lw=0.5)
    right.set_xlabel("y⁻ fall (nats/token): how hard the negative gradient pushed")
    right.set_ylabel("off-target fall (nats/token)")
    right.set_title("Each run (dot) and each arm's ratio (dashed slope)", fontsize=9)
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m alignkit.monitors.compare", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    parser.add_argument("arms", nargs="+", help="one per arm: a run (or stage) folder, or seeds joined by commas")
    parser.add_argument("--names", nargs="*", help="the arms' names (default: the first run folder's name)")
    parser.add_argument("--stage", default="preference", help="the stage compared (a callback alone: its stage, "
                        "e.g. dpo; its records have no other)")  # fmt: skip
    parser.add_argument("--figure", type=Path, default=Path("compare.png"))
    parser.add_argument("--json", type=Path, help="also write the table's numbers here")
    parser.add_argument("--n_boot", type=int, default=N_BOOT)
    args = parser.parse_args(argv)
    if args.names and len(args.names) != len(args.arms):
        parser.error(f"--names gives {len(args.names)} names for {len(args.arms)} arms")
    try:
        names = args.names or [None] * len(args.arms)
        arms = [load_arm(spec, name, args.stage) for spec, name in zip(args.arms, names)]
    except AlignkitError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    rows = summarise(arms, args.n_boot)
    print(table(rows, args.stage))
    print(f"\nfigure: {figure(arms, rows, args.figure)}")
    if args.json:
        args.json.write_text(json.dumps(json_safe(rows), indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
