"""The README's main job, timed: `accelerate launch recipes/extended_dpo.py --config recipes/configs/demo.yaml`.

    python bench/demo_run.py                  # from a cold GGUF cache (the conversion is part of a new user's run)
    python bench/demo_run.py --warm_cache     # reuse ~/.cache/alignkit/gguf

Runs the job as a user starts it (a subprocess through `accelerate launch`), measures its wall time, reads the probe
evaluations' own durations from the run's `<stage>/probes.jsonl` and the last logged DPO metrics from `metrics.json`,
and writes bench/results/demo_run/result.json (wall time, probe share, DPO margin and accuracy, the alert's step, the
off-target fall with its interval). The run folder's report, metrics, figure and probe files are copied beside it.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _results import results_dir, write_result

ROOT = Path(__file__).resolve().parents[1]
KEEP = ["report.md", "metrics.json", "config.yaml", "squeezing.png"]


def probe_seconds(run: Path) -> dict[str, float]:
    """Seconds spent in probe evaluations, per stage, from the monitor's own records."""
    spent = {}
    for stage in ("sft", "preference"):
        rows = [json.loads(line) for line in (run / stage / "probes.jsonl").read_text().splitlines() if line.strip()]
        spent[stage] = sum(r.get("probe/seconds", 0.0) for r in rows)
    return spent


def last_dpo_metrics(run: Path) -> dict:
    """The preference stage's last logged training values (TRL's names)."""
    metrics = json.loads((run / "metrics.json").read_text())
    logged = [row for row in metrics["preference"]["log_history"] if "rewards/margins" in row]
    last = logged[-1]
    return {k: last[k] for k in ("step", "rewards/margins", "rewards/accuracies", "loss") if k in last}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--warm_cache", action="store_true", help="reuse the GGUF cache, not a new one")
    parser.add_argument("--extra", nargs="*", default=[], help="more recipe flags, e.g. --extra --sft_max_steps 2")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="alignkit_demo_") as tmp:
        run = Path(tmp) / "demo"
        accelerate = str(Path(sys.executable).parent / "accelerate")  # the venv's, active or not
        cmd = [accelerate, "launch", "recipes/extended_dpo.py", "--config", "recipes/configs/demo.yaml",
               "--output_dir", str(run), *([] if args.warm_cache else ["--gguf_cache_dir", str(Path(tmp) / "gguf")]),
               *args.extra]  # fmt: skip
        start = time.perf_counter()
        proc = subprocess.run(cmd, cwd=ROOT)
        wall = time.perf_counter() - start
        if proc.returncode:
            print(f"the demo exited with {proc.returncode}", file=sys.stderr)
            return proc.returncode
        probes = probe_seconds(run)
        figures = {
            "wall_seconds": round(wall, 1),
            "cold_gguf_cache": not args.warm_cache,
            "probe_seconds": {k: round(v, 1) for k, v in probes.items()},
            "probe_share_of_wall": round(sum(probes.values()) / wall, 4),
            "dpo_last_logged": last_dpo_metrics(run),
            "report_first_lines": (run / "report.md").read_text().splitlines()[:12],
        }
        out = results_dir("demo_run")
        out.mkdir(parents=True, exist_ok=True)
        for name in KEEP:
            shutil.copy(run / name, out / name)
        for stage in ("sft", "preference"):
            shutil.copy(run / stage / "probes.jsonl", out / f"{stage}.probes.jsonl")
        write_result("demo_run", argv, figures)
        print(json.dumps(figures, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
