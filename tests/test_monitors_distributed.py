"""The monitor under two real processes (torchrun, gloo, CPU): each rank scores its own share, every probe once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from alignkit.data.builtin import load_builtin
from alignkit.monitors import MonitorConfig, build_probe_set, family_metrics
from alignkit.monitors.evaluate import evaluate_probes

from .conftest import build_tiny_model

ROOT = Path(__file__).resolve().parents[1]
FAMILIES = ["chosen", "rejected", "irrelevant_train", "shuffled", "argmax"]

SCRIPT = """
import json, sys
from pathlib import Path

from datasets import Dataset
from transformers import Trainer, TrainingArguments

sys.path.insert(0, {root!r})
import alignkit.monitors.measure as measure_module
from alignkit.data.builtin import load_builtin
from alignkit.monitors import MonitorConfig, SqueezingMonitor, build_probe_set
from tests.conftest import build_tiny_model, build_tiny_tokenizer

out = Path(sys.argv[1])
scored = []  # probe ids this rank scored, per evaluation
original = measure_module.evaluate_probes


def counting(model, tokenizer, probes, *args, **kwargs):
    scored.append([p.probe_id for p in probes])
    return original(model, tokenizer, probes, *args, **kwargs)


measure_module.evaluate_probes = counting
tokenizer = build_tiny_tokenizer()
model = build_tiny_model(tokenizer)
data = load_builtin()
config = MonitorConfig(probe_num_prompts=3, probe_families={families!r}, probe_every=0, probe_min_evaluations=2,
                       probe_time_budget=1e-9)  # automatic: the broadcast time budget alone, which affords no extra
monitor = SqueezingMonitor(build_probe_set(data["train"], data["test"], config, seed=0), config, tokenizer, out)
ids = tokenizer("The capital of France is Paris.")["input_ids"]
args = TrainingArguments(
    output_dir=str(out / "trainer"), max_steps=2, per_device_train_batch_size=1, use_cpu=True, report_to=[],
    save_strategy="no", logging_steps=1, disable_tqdm=True,
)
trainer = Trainer(model=model, args=args, train_dataset=Dataset.from_list([{{"input_ids": ids, "labels": ids}}] * 8))
trainer.add_callback(monitor.callback("stage", out / "stage", trainer=trainer))
trainer.train()
(out / f"scored_rank{{args.process_index}}.json").write_text(json.dumps(scored))
if args.process_index == 0:
    monitor.finish()
"""


def test_two_ranks_shard_and_gather_every_probe_once(tmp_path, tiny_tokenizer):
    script = tmp_path / "run.py"
    script.write_text(SCRIPT.format(root=str(ROOT), families=FAMILIES))
    out = tmp_path / "out"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    proc = subprocess.run([*launcher, str(script), str(out)], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]

    probes = build_probe_set(load_builtin()["train"], load_builtin()["test"], MonitorConfig(
        probe_num_prompts=3, probe_families=FAMILIES), seed=0)  # fmt: skip
    ranks = [json.loads((out / f"scored_rank{r}.json").read_text()) for r in range(2)]
    assert len(ranks[0]) == len(ranks[1]) == 2  # begin and end of the stage, on both ranks
    for rank0, rank1 in zip(*ranks):
        assert rank0 and rank1 and not set(rank0) & set(rank1)  # each rank scored its own share...
        assert sorted(rank0 + rank1) == sorted(p.probe_id for p in probes.probes)  # ...and together, every probe

    records = [json.loads(line) for line in (out / "stage" / "probes.jsonl").read_text().splitlines()]
    assert [(r["event"], r["step"]) for r in records] == [("begin", 0), ("end", 2)]  # written once, by rank 0
    assert (out / "squeezing.png").exists()
    # The gathered step-0 metrics are those of one process scoring every probe with the same (seeded) model.
    model = build_tiny_model(tiny_tokenizer).eval()
    results = evaluate_probes(model, tiny_tokenizer, probes.probes, probes.families)
    expected = family_metrics([(p.split, f, s) for p, r in zip(probes.probes, results) for f, s in r.stats.items()])
    assert {k: records[0][k] for k in expected} == pytest.approx(expected, abs=1e-4)
