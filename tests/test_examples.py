"""examples/: each plain TRL script runs end to end on the tiny model and leaves the monitor's report and figure."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--probe_num_prompts", "2", "--probe_families", "chosen", "rejected", "irrelevant_test", "non_human", "argmax"]


# GRPO: 2 prompts x 4 completions of 8 tokens per step (the tiny model's rewards are all 0: no wrong completions)
EXTRA = {"grpo": ["--per_device_train_batch_size", "8", "--max_completion_length", "8"]}


@pytest.mark.parametrize("name", ["dpo", "sft", "grpo"])
def test_example_runs_and_writes_the_report(name, tiny_model_dir, tmp_path):
    out = tmp_path / name
    args = ["--model_name_or_path", str(tiny_model_dir), "--max_steps", "2", "--output_dir", str(out), *FAST]
    args += EXTRA.get(name, [])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, f"examples/{name}.py", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=600, env=env)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    report = (out / "squeezing_report.md").read_text()
    assert f"end of {name}" in report and "squeezing.png" in report and "evaluations at steps 0, 1, 2" in report
    assert (out / "squeezing.png").stat().st_size > 10_000 and (out / "adapter_model.safetensors").exists()
    families = json.loads((out / "probe_set.jsonl").read_text().splitlines()[0])["families"]
    # SFT trains on prompt-completion rows: no rejected answers to probe; GRPO's come from its samples' rewards
    assert ("rejected" in families) == (name == "dpo") and "irrelevant_test" in families
    if name == "grpo":
        assert "completions sampled per prompt at the start" in report
