"""Every command a user is told to run answers `--help` with its options and exit status 0.

argparse formats help text with %-interpolation, so one stray "%" in a field's help (e.g. "95% interval") turns
`--help` into a traceback; these tests run each front end as a user would, in a subprocess.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

COMMANDS = {
    "recipe": ["recipes/extended_dpo.py"],
    "recipe_module": ["-m", "alignkit.recipe"],  # accelerate launch -m alignkit.recipe: no checkout needed
    "win_rate_module": ["-m", "alignkit.judge"],
    "study": ["recipes/squeezing_study.py"],
    "preflight": ["-m", "alignkit.preflight"],
    "dynamics": ["-m", "alignkit.dynamics"],
    "win_rate": ["eval/win_rate.py"],
    "judge_quality": ["eval/judge_quality.py"],
}


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_help_lists_options_and_exits_zero(name):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, *COMMANDS[name], "--help"], cwd=ROOT, capture_output=True, text=True, timeout=300, env=env
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    assert "--" in done.stdout and ("usage" in done.stdout.lower() or "options" in done.stdout.lower())
