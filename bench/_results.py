"""Each bench's figures as a small committed file: bench/results/<bench>/result.json.

Benches write their working files (models, checkpoints, logs) to the ignored outputs/; the figures they print go
here as well, with the command that produced them, the date and the machine, so that a document quoting a figure can
name the file that holds it. A rerun of the same bench overwrites its file; commit it to publish the new figures.

`BENCH_RESULTS_DIR` (an environment variable) moves the folder, e.g. for tests: <BENCH_RESULTS_DIR>/<bench>/.
A shell bench writes its file through this one too (it needs only the standard library and the repository):

    PYTHONPATH=. python3 bench/_results.py docker_smoke '{"build_seconds": 412}' [the bench's arguments...]
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import sys
from datetime import UTC, datetime
from pathlib import Path

from alignkit.jsonl import json_safe

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results"


def results_dir(bench: str) -> Path:
    """The folder of `bench`'s committed figures (not created here)."""
    return Path(os.environ.get("BENCH_RESULTS_DIR") or RESULTS) / bench


def machine() -> dict:
    """What the figures were measured on: cores (all, and usable by this process), load, Python and torch."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    info = {
        "cpu_count": os.cpu_count(),
        "usable_cores": usable,
        "processor": platform.processor() or platform.machine(),
        "system": platform.platform(terse=True),
        "python": platform.python_version(),
        "load_average": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
    }
    torch = sys.modules.get("torch")  # only when the bench imported it: a judge bench does not need torch
    if torch is not None:
        info |= {"torch": torch.__version__, "torch_threads": torch.get_num_threads()}
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    return info


def command_of(bench: str) -> list[str]:
    """How the bench is started: `bash bench/<bench>.sh` for a shell bench, else `python bench/<bench>.py`."""
    return ["bash", f"bench/{bench}.sh"] if (BENCH / f"{bench}.sh").is_file() else ["python", f"bench/{bench}.py"]


def write_result(bench: str, argv: list[str] | None, figures: dict) -> Path:
    """Writes `figures` (the numbers the bench prints, under the names it prints them) to
    <results_dir(bench)>/result.json with the command line, the date and the machine; returns the file's path.

    `argv` is the bench's arguments (None: this process's own, sys.argv[1:])."""
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    record = {
        "bench": bench,
        "command": shlex.join([*command_of(bench), *argv]),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "figures": json_safe(figures),
    }
    path = results_dir(bench) / "result.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1, ensure_ascii=False, default=str) + "\n")
    print(f"figures written to {path}", file=sys.stderr)
    return path


if __name__ == "__main__":  # for shell benches: <bench> <figures as a JSON object> [the bench's arguments...]
    write_result(sys.argv[1], sys.argv[3:], json.loads(sys.argv[2]))
