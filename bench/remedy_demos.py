"""The README's demo job with each squeezing remedy switched on, as a user does it: one flag changed, then a rerun.

    python bench/remedy_demos.py                 # plain DPO, then each remedy of docs/remedies.md
    python bench/remedy_demos.py --only dpop     # one remedy (plain DPO runs first if its folder is missing)

The plain run is `accelerate launch recipes/extended_dpo.py --config recipes/configs/demo.yaml`. Each remedy reruns the
same command in the same output folder with its flag (docs/remedies.md's table) and `--overwrite`: the stale-rerun
check keeps the unchanged SFT stage and retrains the preference stage, as a user who saw the alert would. After each
run the report, metrics, figure and probe records (per evaluation, and gzipped per probe for
`python -m alignkit.monitors.compare`) are copied to bench/results/remedy_demos/<name>/, and
bench/results/remedy_demos/result.json collects, per run, the remedy line of the report, the last logged `loss/*`
terms, the DPO margin and accuracy, the alert's step and the off-target fall with its interval.

This is the remedies' run-through on the real model; their three-seed comparison is bench/remedies.py.
"""

from __future__ import annotations

import argparse
import gzip
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from _results import results_dir, write_result

ROOT = Path(__file__).resolve().parents[1]
RUN = ROOT / "outputs" / "remedy_demos"
# docs/remedies.md's table: the flag a user adds, with its recommended value.
REMEDIES = {
    "dpo": [],
    "dpop": ["--loss", "dpop"],
    "cal_dpo": ["--loss", "cal_dpo"],
    "sft_mix": ["--sft_weight", "1.0"],
    "preflight_filter": ["--preflight_filter_fraction", "0.25"],
    "negative_floor": ["--negative_floor", "0.5"],
}
KEEP = ["report.md", "metrics.json", "config.yaml", "squeezing.png"]


def summary(run: Path) -> dict:
    """What the report and the run's files say about the preference stage."""
    report = (run / "report.md").read_text().splitlines()
    log = json.loads((run / "metrics.json").read_text())["preference"]["log_history"]
    logged = [row for row in log if "rewards/margins" in row]
    last = logged[-1] if logged else {}
    shown = ("step", "rewards/margins", "rewards/accuracies", "loss")
    verdict = next((line for line in report if line.startswith("- **preference**")), None)
    return {
        "remedy_line": next((line for line in report if line.startswith("- squeezing remedies")), None),
        "loss_terms_last_logged": {k: v for k, v in last.items() if k.startswith("loss/")},
        "dpo_last_logged": {k: last[k] for k in shown if k in last},
        "report_verdict_preference": verdict,
    }


def run_one(name: str, flags: list[str]) -> dict:
    accelerate = str(Path(sys.executable).parent / "accelerate")  # the venv's, active or not
    cmd = [accelerate, "launch", "recipes/extended_dpo.py", "--config", "recipes/configs/demo.yaml",
           "--output_dir", str(RUN), *flags, "--overwrite"]  # fmt: skip
    print(f"[remedy_demos] {name}: {' '.join(cmd)}", flush=True)
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT)
    wall = time.perf_counter() - start
    if proc.returncode:
        raise SystemExit(f"[remedy_demos] {name} exited with {proc.returncode}")
    out = results_dir("remedy_demos") / name
    out.mkdir(parents=True, exist_ok=True)
    for keep in KEEP:
        if (RUN / keep).exists():
            shutil.copy(RUN / keep, out / keep)
    shutil.copy(RUN / "preference" / "probes.jsonl", out / "preference.probes.jsonl")
    records = (RUN / "preference" / "probe_records.jsonl").read_bytes()
    (out / "preference.probe_records.jsonl.gz").write_bytes(gzip.compress(records, mtime=0))
    return {"command": " ".join(["accelerate", *cmd[1:]]).replace(str(ROOT) + "/", ""),
            "wall_seconds": round(wall, 1), **summary(RUN)}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="*", choices=list(REMEDIES), help="run these remedies only")
    args = parser.parse_args(argv)
    path = results_dir("remedy_demos") / "result.json"
    figures = json.loads(path.read_text())["figures"] if path.exists() else {}
    names = ["dpo", *[n for n in REMEDIES if n != "dpo"]] if not args.only else args.only
    if "dpo" not in names and not (RUN / "sft").exists():
        names = ["dpo", *names]
    for name in names:
        figures[name] = run_one(name, REMEDIES[name])
        write_result("remedy_demos", argv, figures)  # after each run: a kill keeps the finished ones
    print(json.dumps({k: v["dpo_last_logged"] for k, v in figures.items()}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
