"""The recipe under two CPU processes (torchrun, gloo) matches the single-process run with the same effective batch."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .test_recipe import ENV, RECIPE, ROOT, tiny_args

ACCELERATE_CONFIGS = sorted((ROOT / "recipes" / "accelerate_configs").glob("*.yaml"))


def run(tiny_model_dir, out: Path, processes: int, **overrides) -> subprocess.CompletedProcess:
    args = tiny_args(tiny_model_dir, out, per_device_train_batch_size=2 // processes, save_steps=2, **overrides)
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]
    proc = subprocess.run(
        [*launcher, str(RECIPE), *args], env=ENV, capture_output=True, text=True, timeout=600, cwd=ROOT
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def outputs(out: Path) -> set[str]:
    """Every file the run wrote, except checkpoints (one RNG state per process by design) and datasets' caches."""
    files = {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()}
    return {f for f in files if "checkpoint-" not in f and "/cache-" not in f}


def probe_records(out: Path, stage: str) -> list[dict]:
    return [json.loads(line) for line in (out / stage / "probes.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def single_and_double(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("dist")
    one = run(tiny_model_dir, root / "one", 1)
    two = run(tiny_model_dir, root / "two", 2)
    return root / "one", root / "two", one, two


def test_two_processes_match_one(single_and_double):
    one, two, _, proc = single_and_double
    assert "effective batch 2 = 1 per device x 1 accumulation x 2 process(es)" in proc.stderr
    for stage in ("sft", "preference"):
        done_one = json.loads((one / stage / "stage_complete.json").read_text())
        done_two = json.loads((two / stage / "stage_complete.json").read_text())
        assert done_one["steps"] == done_two["steps"] > 0, stage
        records_one, records_two = probe_records(one, stage), probe_records(two, stage)
        assert len(records_one) == len(records_two)
        assert [sorted(r) for r in records_one] == [sorted(r) for r in records_two]
    assert outputs(one) == outputs(two)  # one set of files: nothing per rank, nothing written twice
    assert proc.stderr.count("done: ") == 1  # only the main process reports


def test_resume_from_a_two_process_checkpoint(single_and_double, tiny_model_dir):
    _, two, _, _ = single_and_double
    stage = two / "preference"
    # Pretend the run died after checkpoint-2: drop what came later, then run the same command again.
    (stage / "stage_complete.json").unlink()
    shutil.rmtree(stage / "adapter")
    for ckpt in stage.glob("checkpoint-*"):
        if int(ckpt.name.split("-")[1]) > 2:
            shutil.rmtree(ckpt)
    proc = run(tiny_model_dir, two, 2)
    assert "[sft] already complete" in proc.stderr
    assert f"[preference] resuming from {stage / 'checkpoint-2'}" in proc.stderr
    done = json.loads((stage / "stage_complete.json").read_text())
    assert done == {**done, "steps": 3, "status": "resumed from checkpoint-2"}


@pytest.mark.parametrize("path", ACCELERATE_CONFIGS, ids=lambda p: p.name)
def test_accelerate_configs_are_valid(path):
    from accelerate.commands.config.config_args import ClusterConfig
    from accelerate.utils import DistributedType

    config = ClusterConfig.from_yaml_file(str(path))  # accelerate's own loader: unknown keys raise
    expected = {
        "ddp.yaml": DistributedType.MULTI_GPU,
        "fsdp.yaml": DistributedType.FSDP,
        "zero2.yaml": DistributedType.DEEPSPEED,
        "zero3.yaml": DistributedType.DEEPSPEED,
    }[path.name]
    assert config.distributed_type == expected
    if path.name.startswith("zero"):
        assert config.deepspeed_config["zero_stage"] == int(path.name[4])
    if path.name == "zero3.yaml":
        assert config.deepspeed_config["zero3_save_16bit_model"] is True  # stages reload gathered weights
    if path.name == "fsdp.yaml":
        assert config.fsdp_config["fsdp_state_dict_type"] == "FULL_STATE_DICT"
