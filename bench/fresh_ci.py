"""The README's test command as a new user meets it: a fresh clone, a new virtualenv, empty caches, CI=true.

    python bench/fresh_ci.py                     # one run, alone
    python bench/fresh_ci.py --beside_load       # one run with a CPU-heavy process beside it (a shared machine)
    python bench/fresh_ci.py --beside "python bench/remedy_demos.py"   # ... or with real work beside it

Clones the repository's HEAD into a temporary folder, points XDG_CACHE_HOME, PIP_CACHE_DIR and HF_HOME at an empty
folder, runs `CI=true bash .ci/run` there, and appends one JSON line to bench/results/fresh_ci/runs.jsonl: the commit,
the date, whether a load ran beside it, the wall time, pytest's own summary line and seconds, and the exit code.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "fresh_ci" / "runs.jsonl"
# Two processes that keep one core each busy with float32 matrix products, as another training job would.
LOAD = "import torch\ntorch.set_num_threads(1)\na = torch.randn(512, 512)\nwhile True:\n    a = (a @ a).tanh()\n"


def summary_line(output: str) -> tuple[str, float | None]:
    """pytest's closing line (`520 passed, 1 skipped in 426.10s (0:07:06)`) and its seconds."""
    lines = [s.strip("= ") for s in output.splitlines() if re.search(r"\d+ (passed|failed|error)", s)]
    if not lines:
        return "", None
    seconds = re.search(r" in ([\d.]+)s", lines[-1])
    return lines[-1], float(seconds.group(1)) if seconds else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--beside_load", action="store_true", help="run two CPU-heavy processes beside the suite")
    parser.add_argument(
        "--beside",
        help="a shell command run beside the suite instead of the synthetic load; it is "
        "recorded, and waited for after the suite (its own work is kept)",
    )
    parser.add_argument("--beside_note", help="what else runs on the machine, started separately (recorded only)")
    parser.add_argument("--python", default=sys.executable, help="the interpreter that runs the load processes")
    args = parser.parse_args(argv)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                            check=True).stdout.strip()  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="alignkit_fresh_") as tmp:
        clone, caches = Path(tmp) / "alignkit", Path(tmp) / "caches"
        subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
        caches.mkdir()
        env = {**os.environ, "CI": "true", "XDG_CACHE_HOME": str(caches), "PIP_CACHE_DIR": str(caches / "pip"),
               "HF_HOME": str(caches / "huggingface")}  # fmt: skip
        env.pop("VIRTUAL_ENV", None)  # a new user's shell: no virtualenv active, none on PATH
        env["PATH"] = os.pathsep.join(p for p in env["PATH"].split(os.pathsep) if not Path(p, "activate").exists())
        if args.beside:
            load = [subprocess.Popen(args.beside, shell=True, cwd=ROOT)]
        else:
            load = [subprocess.Popen([args.python, "-c", LOAD]) for _ in range(2)] if args.beside_load else []
        load_before = os.getloadavg()[0]
        start = time.perf_counter()
        try:
            proc = subprocess.run(["bash", ".ci/run"], cwd=clone, env=env, capture_output=True, text=True)
        finally:
            wall = time.perf_counter() - start
            for p in load:
                p.wait() if args.beside else p.kill()
        lines = (proc.stdout + proc.stderr).splitlines()
        output = "\n".join(s for s in lines if not s.startswith("WARNING: Location"))  # pip's local-index noise
        log = ROOT / "outputs" / "fresh_ci" / f"{commit}_{int(time.time())}.log"  # the whole run, for a trace
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text(output)
        line, pytest_s = summary_line(output)
        record = {
            "commit": commit, "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "beside_load": args.beside_load or bool(args.beside or args.beside_note),
            **({"beside": args.beside} if args.beside else {}),
            **({"beside_note": args.beside_note} if args.beside_note else {}),
            "wall_s": round(wall, 1), "pytest_s": pytest_s, "pytest": line,
            "rc": proc.returncode, "cores": os.cpu_count(),
            "failed": [s.split()[1] for s in output.splitlines() if s.startswith(("FAILED ", "ERROR "))],
            # other work on the machine shows here even without --beside_load: 1-minute load at the start and the end
            "load_average_start_end": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        }  # fmt: skip
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        with RESULTS.open("a") as f:
            f.write(json.dumps(record) + "\n")
        print(json.dumps(record))
        if proc.returncode:
            print(output[-6000:], file=sys.stderr)
            print(f"the whole output: {log}", file=sys.stderr)
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
