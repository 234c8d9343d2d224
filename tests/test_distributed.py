"""The recipe under two CPU processes (torchrun, gloo) matches the single-process run with the same effective batch.

Value by value, not only in shape. Measured on the tiny model (CPU, gloo, one thread per process), the two runs agree
to float noise: step-0 probe values agree to fp32 rounding (usually bit for bit; once -21.45400094985962 vs
-21.45400071144104, 1.1e-8 relative: the same model and probes, summed in another order); every logged training
metric and every later probe value agrees within 1e-6 absolute (relative 2e-7 on the losses); the SFT adapter within
5e-7 and the preference adapter within 3e-5 absolute (relative norm 1e-4: Adam divides near-zero gradient entries by
near-zero second moments, which magnifies the noise). Nothing needed fixing: LoRA init is seeded alike; the data
order matches because accelerate deals the batches of the one seeded sampler out in turn (process k of n gets every
n-th, so a global step sees the same pairs as the 1-process batch); and the gradient is the same mean, because the
DPO loss is a mean over pairs and the SFT loss is normalised by the token count of the whole global batch
(transformers' `average_tokens_across_devices`, on by default), which DDP's gradient averaging then reproduces.
The tolerances below sit 10-100x above that noise and far below what training moves (the loss changes by O(1), the
adapters by O(0.1)): the 2-process run with the preference learning rate 1% off fails them (tried once, by hand).
`rewards/accuracies` is the share of a step's pairs whose margin is > 0, a step function of each pair's margin: one
pair whose margin sits within float noise of 0 flips it between the runs (0.5 vs 0.0 at step 2 of the preference
stage, where the logged mean margin was -1.8e-3 in both; the pairs' own margins are not logged), so it is compared
through the margins it comes from (`rewards/margins`, `rewards/chosen`, `rewards/rejected`, compared at every step),
and each run's value is checked to be a share of the step's pairs.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from .test_recipe import ENV, RECIPE, ROOT, tiny_args

ACCELERATE_CONFIGS = sorted((ROOT / "recipes" / "accelerate_configs").glob("*.yaml"))
RTOL, ATOL = 1e-4, 1e-5  # logged metrics and probe values (measured noise: 1e-6 absolute at most)
ADAPTER_RTOL = 1e-3  # per-tensor ||w1 - w2|| / ||w1|| (measured: 3e-7 SFT, 1e-4 preference)
# Step 0: the same model scores the same probes in both runs, but the reductions inside (matrix products, log-softmax
# over the vocabulary, the sum of per-token log-probs over a response) can run in another order (batches, padding,
# threads), and fp32 rounds each partial sum (eps = 2**-23 = 1.2e-7). A probe value sums a few dozen per-token
# log-probs (|sum| ~ 10-300 nats), so its rounding error is a small multiple of eps relative to that magnitude: 1e-6
# (~8 eps) of the record's largest summed log-prob bounds every value of the record, differences of sums (a change
# or margin near 0) included, whose absolute error is that of the sums they come from.
STEP0_RTOL = 1e-6
# A discontinuous metric -> the continuous one it is computed from, compared in its place (see the module docstring).
THROUGH = {"rewards/accuracies": "rewards/margins"}
PAIRS_PER_STEP = 2  # the effective batch of both runs
# Not values of the model: wall-clock timings (an evaluation's `probe/seconds` in the probe records, logged as
# `squeeze/probe/seconds`), and total_flos, which counts the padding of a 2-pair batch that two 1-pair batches do not
# have.
NOT_COMPARED = (
    "probe/seconds", "squeeze/probe/seconds", "total_flos", "train_runtime", "train_samples_per_second",
    "train_steps_per_second",
)  # fmt: skip


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


def log_history(out: Path, stage: str) -> list[dict]:
    return json.loads((out / "metrics.json").read_text())[stage]["log_history"]


def numbers(record: dict) -> dict[str, float]:
    return {k: v for k, v in record.items() if isinstance(v, int | float) and not isinstance(v, bool)}


def close(a: float, b: float, rtol: float = RTOL, atol: float = ATOL) -> bool:
    """Within tolerance; NaN matches only NaN (a metric undefined in both runs, e.g. a rise at the first step)."""
    return (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=rtol, abs_tol=atol)


def differences(one: list[dict], two: list[dict], rtol: float = RTOL, atol: float = ATOL) -> list[str]:
    """Every value of `one` that `two` does not match within the tolerance (records paired in order, same keys).
    A discontinuous metric is compared through the continuous value it comes from (`THROUGH`), which is in the
    record and compared like any other."""
    assert len(one) == len(two)
    bad = []
    for i, (a, b) in enumerate(zip(one, two)):
        assert a.keys() == b.keys(), (i, a.keys() ^ b.keys())
        for key, value in numbers(a).items():
            if key in THROUGH:
                assert THROUGH[key] in a, (i, key)
            elif key not in NOT_COMPARED and not close(value, b[key], rtol, atol):
                bad.append(f"record {i} (step {a.get('step')}) {key}: {value} vs {b[key]}")
    return bad


def summed_logp_scale(record: dict) -> float:
    """The largest magnitude among a probe record's log-prob values (sums of per-token log-probs)."""
    return max(abs(v) for k, v in numbers(record).items() if "logp" in k and math.isfinite(v))


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


def test_step_zero_probe_values_match_to_fp32_rounding(single_and_double):
    one, two, _, _ = single_and_double
    first_one, first_two = probe_records(one, "sft")[0], probe_records(two, "sft")[0]
    assert (first_one["event"], first_one["step"]) == ("begin", 0)
    assert sum(k.startswith("probe/train/") for k in first_one) > 10
    scale = summed_logp_scale(first_one)
    assert scale > 1  # sums over responses: the tolerance below is relative to a real magnitude
    # same model, same probes: equal up to the order of fp32 reductions (STEP0_RTOL)
    assert differences([first_one], [first_two], rtol=STEP0_RTOL, atol=STEP0_RTOL * scale) == []


def test_accuracies_are_compared_through_their_margins():
    one = {"step": 2, "rewards/margins": -1.7876e-3, "rewards/accuracies": 0.5}  # as seen: one pair at float noise
    assert differences([one], [one | {"rewards/margins": -1.7891e-3, "rewards/accuracies": 0.0}]) == []
    assert differences([one], [one | {"rewards/margins": -1.9e-3}]) == [  # the margin itself is compared
        "record 0 (step 2) rewards/margins: -0.0017876 vs -0.0019"
    ]
    with pytest.raises(AssertionError):
        differences([{"rewards/accuracies": 0.5}], [{"rewards/accuracies": 0.5}])  # never without its margins


@pytest.mark.parametrize("stage", ["sft", "preference"])
def test_loss_history_and_probe_values_match_one_process(single_and_double, stage):
    one, two, _, _ = single_and_double
    history_one, history_two = log_history(one, stage), log_history(two, stage)
    assert sum("loss" in r for r in history_one) >= 3 and sum("grad_norm" in r for r in history_one) >= 3
    assert differences(history_one, history_two) == []
    for record in history_one + history_two:  # compared through the margins; each a share of the step's pairs
        if "rewards/accuracies" in record:
            assert record["rewards/accuracies"] * PAIRS_PER_STEP in range(PAIRS_PER_STEP + 1), record
    assert differences(probe_records(one, stage), probe_records(two, stage)) == []


@pytest.mark.parametrize("stage", ["sft", "preference"])
def test_adapter_weights_match_one_process(single_and_double, stage):
    one, two, _, _ = single_and_double
    weights_one = load_file(str(one / stage / "adapter" / "adapter_model.safetensors"))
    weights_two = load_file(str(two / stage / "adapter" / "adapter_model.safetensors"))
    assert weights_one.keys() == weights_two.keys()
    assert any(w.abs().max() > 0 for k, w in weights_one.items() if "lora_B" in k)  # trained: B starts at zero
    for name, w in weights_one.items():
        gap = (torch.linalg.vector_norm(w - weights_two[name]) / torch.linalg.vector_norm(w).clamp_min(1e-12)).item()
        assert gap <= ADAPTER_RTOL, f"{stage} {name}: relative difference {gap:.2e}"


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
