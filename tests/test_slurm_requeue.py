"""The Slurm script's preemption path, with `srun` and `scontrol` replaced by stubs: the script passes its USR1 on to
the training step and requeues the job when the step leaves preempted.json (or exits 75), and only then."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

SBATCH = Path(__file__).parents[1] / "recipes" / "slurm" / "extended_dpo.sbatch"

SCONTROL = """#!/bin/bash
case "$1" in
  show) echo node1 ;;
  requeue) echo "requeue $2" >>"$STUB_LOG" ;;
esac
"""
# The training step as the launcher ends it: on USR1 the recipe saves, writes preempted.json, and the multi-process
# launcher exits 1 (or, with STUB_RC, the step just exits with that code).
SRUN = """#!/bin/bash
if [ -n "${STUB_RC:-}" ]; then exit "$STUB_RC"; fi
trap 'echo "{}" >"$OUT_DIR/preempted.json"; echo "step got USR1" >>"$STUB_LOG"; exit 1' USR1
touch "$STUB_READY"
while true; do sleep 0.05; done
"""


def start(tmp_path: Path, **env) -> tuple[subprocess.Popen, Path]:
    stubs = tmp_path / "bin"
    stubs.mkdir()
    for name, text in (("srun", SRUN), ("scontrol", SCONTROL)):
        (stubs / name).write_text(text)
        (stubs / name).chmod(0o755)
    out = tmp_path / "outputs" / "alignkit-7"
    out.mkdir(parents=True)
    log = tmp_path / "stub.log"
    env = {**os.environ, "PATH": f"{stubs}:{os.environ['PATH']}", "SLURM_JOB_NAME": "alignkit", "SLURM_JOB_ID": "7",
           "SLURM_JOB_NODELIST": "node1", "SLURM_NNODES": "2", "STUB_LOG": str(log), "OUT_DIR": str(out),
           "STUB_READY": str(tmp_path / "ready"), **env}  # fmt: skip
    proc = subprocess.Popen(["bash", str(SBATCH)], cwd=tmp_path, env=env, stdout=subprocess.PIPE, text=True)
    return proc, log


def test_usr1_reaches_the_step_and_the_job_is_requeued(tmp_path):
    proc, log = start(tmp_path)
    for _ in range(600):  # the step is up once its stub has written the file (no timing is asserted)
        if (tmp_path / "ready").exists() or proc.poll() is not None:
            break
        time.sleep(0.05)
    assert (tmp_path / "ready").exists(), proc.communicate()[0]
    proc.send_signal(signal.SIGUSR1)
    stdout, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, stdout
    assert "USR1 received: passing it to the training processes" in stdout
    assert log.read_text().splitlines() == ["step got USR1", "requeue 7"]


@pytest.mark.parametrize(("rc", "requeued", "exit_code"), [("75", True, 0), ("0", False, 0), ("3", False, 3)])
def test_requeue_only_on_preemption(tmp_path, rc, requeued, exit_code):
    proc, log = start(tmp_path, STUB_RC=rc)
    stdout, _ = proc.communicate(timeout=60)
    assert proc.returncode == exit_code, stdout
    assert (log.exists() and log.read_text() == "requeue 7\n") == requeued
