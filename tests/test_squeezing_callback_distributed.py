"""`SqueezingCallback()` alone in a DPO script under two processes, started as a user starts them
(`accelerate launch --multi_gpu --num_processes 2`: accelerate's name for its torch.distributed launcher, which on a
CPU-only machine runs gloo processes): one report, written by rank 0, and the same readings as one process with the
same effective batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = """
import json, sys
from pathlib import Path

sys.path.insert(0, {root!r})
from trl import DPOConfig, DPOTrainer

from alignkit import SqueezingCallback
from alignkit.data.builtin import load_builtin
from tests.conftest import build_tiny_model, build_tiny_tokenizer

out, processes = Path(sys.argv[1]), int(sys.argv[2])
tokenizer = build_tiny_tokenizer()
data = load_builtin()
pairs = {{s: data[s].select(range(8)).select_columns(["prompt", "chosen", "rejected"]) for s in ("train", "test")}}
callback = SqueezingCallback(probe_num_prompts=3, probe_every=2,
                             probe_families=["chosen", "rejected", "irrelevant_test", "non_human", "argmax"])
args = DPOConfig(
    output_dir=str(out), max_steps=4, per_device_train_batch_size=2 // processes, learning_rate=1e-3,
    logging_steps=1, save_strategy="no", report_to=[], gradient_checkpointing=False, use_cpu=True, max_length=96,
    disable_tqdm=True, seed=0, bf16=False,  # float32: TRL would train a CPU run under bf16 autocast
)
trainer = DPOTrainer(model=build_tiny_model(tokenizer), ref_model=build_tiny_model(tokenizer), args=args,
                     train_dataset=pairs["train"], eval_dataset=pairs["test"], processing_class=tokenizer,
                     callbacks=[callback])
trainer.train()
(out / f"rank{{args.process_index}}.json").write_text(json.dumps({{"report": str(callback.report_path)}}))
"""


def _run(tmp_path: Path, processes: int) -> Path:
    script = tmp_path / "run.py"
    script.write_text(SCRIPT.format(root=str(ROOT)))
    out = tmp_path / f"p{processes}"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    launcher = [
        str(Path(sys.executable).parent / "accelerate"),
        "launch",
        "--num_processes",
        str(processes),
        *(["--multi_gpu", "--main_process_port", "0"] if processes > 1 else []),
    ]  # port 0: a free one
    proc = subprocess.run([*launcher, str(script), str(out), str(processes)], env=env, capture_output=True, text=True,
                          timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out


def test_two_processes_write_one_report_with_the_one_process_readings(tmp_path):
    one, two = _run(tmp_path, 1), _run(tmp_path, 2)
    ranks = [json.loads((two / f"rank{r}.json").read_text())["report"] for r in range(2)]
    assert ranks == [str(two / "squeezing_report.md"), "None"]  # rank 0 writes it; rank 1 writes nothing
    records = {n: [json.loads(line) for line in (d / "probes.jsonl").read_text().splitlines()]
               for n, d in (("one", one), ("two", two))}  # fmt: skip
    steps = [(r["event"], r["step"]) for r in records["two"]]
    assert steps == [(r["event"], r["step"]) for r in records["one"]] == [("begin", 0), ("step", 2), ("end", 4)]
    for a, b in zip(records["one"], records["two"]):
        for key, value in a.items():
            if key.startswith(("probe/", "mech/")) and key != "probe/seconds" and isinstance(value, float):
                assert b[key] == pytest.approx(value, rel=1e-4, abs=1e-5), (a["step"], key)
    end_one, end_two = records["one"][-1], records["two"][-1]
    lo, hi = end_one["mech/off_target_fall_lo"], end_one["mech/off_target_fall_hi"]
    assert lo <= end_two["mech/off_target_fall"] <= hi  # within the one-process run's interval over probes
    assert "end of dpo" in (two / "squeezing_report.md").read_text()
