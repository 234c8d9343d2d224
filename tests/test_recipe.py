"""The extended-DPO recipe end to end on a tiny model: stages, outputs, reference model, resume, errors."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from alignkit.config import parse_recipe_config

from .conftest import smollm2_or_skip

ROOT = Path(__file__).parents[1]
RECIPE = ROOT / "recipes" / "extended_dpo.py"
# One thread: tiny models gain nothing from two, and lose a lot when the CPU is shared.
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1",
       "OMP_NUM_THREADS": "1"}  # fmt: skip


def tiny_args(model_dir, out, **overrides) -> list[str]:
    args = {
        "model_name_or_path": model_dir,
        "output_dir": out,
        "max_train_samples": 12,
        "max_length": 256,
        "per_device_train_batch_size": 2,
        "sft_max_steps": -1,  # one epoch: 12 rows (chosen) or 24 (extended) at batch 2
        "sft_learning_rate": 1e-2,
        "preference_max_steps": 3,
        "preference_learning_rate": 1e-2,
        "logging_steps": 1,
        "save_steps": 50,
        "probe_num_prompts": 2,
        "probe_max_new_tokens": 4,
        "probe_every": 2,
        "use_cpu": True,
        "cpu_threads": 1,
    }
    args.update(overrides)
    return [s for k, v in args.items() for s in (f"--{k}", str(v))]


def run_recipe_in_process(argv: list[str]) -> Path:
    spec = importlib.util.spec_from_file_location("extended_dpo", RECIPE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.run_recipe(parse_recipe_config(argv))


def lora_b_norm(adapter_dir: Path) -> float:
    weights = load_file(str(adapter_dir / "adapter_model.safetensors"))
    return sum(w.norm().item() for k, w in weights.items() if "lora_B" in k)


@pytest.fixture(scope="module")
def launched_run(tiny_model_dir, tmp_path_factory) -> Path:
    """One full run through `accelerate launch`, as a user would start it."""
    out = tmp_path_factory.mktemp("run") / "out"
    cmd = ["accelerate", "launch", "--cpu", "--num_processes", "1", "--num_machines", "1", "--mixed_precision", "no",
           "--dynamo_backend", "no", str(RECIPE), *tiny_args(tiny_model_dir, out)]  # fmt: skip
    proc = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out


def test_launch_writes_every_output(launched_run):
    out = launched_run
    expected = ["report.md", "config.yaml", "metrics.json", "probe_set.jsonl", "squeezing.png", "sft/probes.jsonl",
                "sft/adapter/adapter_model.safetensors", "preference/adapter/adapter_model.safetensors",
                "final/model.safetensors", "final/tokenizer.json", "preference/probes.jsonl"]  # fmt: skip
    for name in expected:
        assert (out / name).exists(), name
    report = (out / "report.md").read_text()
    assert "| sft | trained | 12 |" in report and "| preference | trained | 3 |" in report
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["sft"]["rows"] == {"chosen": 12, "rejected": 12}
    assert any("rewards/margins" in entry for entry in metrics["preference"]["log_history"])


def test_adapters_train_and_base_weights_do_not_change(launched_run, tiny_model_dir):
    out = launched_run
    assert lora_b_norm(out / "sft" / "adapter") > 0  # LoRA B starts at zero: non-zero means it trained
    assert lora_b_norm(out / "preference" / "adapter") > 0
    base = load_file(str(Path(tiny_model_dir) / "model.safetensors"))
    final = load_file(str(out / "final" / "model.safetensors"))
    for name, weight in base.items():
        adapted = any(t in name for t in ("q_proj", "k_proj", "v_proj", "o_proj"))
        assert torch.equal(weight, final[name]) != adapted, name  # only the LoRA targets moved


def test_reference_is_the_sft_model(launched_run, tiny_model_dir):
    out = launched_run
    # 1) DPO's first logged rewards are 0: at step 1 the policy (fresh adapter, B = 0) equals the reference, which
    #    only holds if the reference is the SFT model the policy starts from (the base model would give rewards != 0).
    history = json.loads((out / "metrics.json").read_text())["preference"]["log_history"]
    first = next(entry for entry in history if "rewards/chosen" in entry)
    assert first["step"] == 1
    assert abs(first["rewards/chosen"]) < 1e-5 and abs(first["rewards/rejected"]) < 1e-5
    # 2) final = SFT model + preference adapter, and the adapter disabled gives back the SFT model's log-probs.
    ids = torch.tensor([[5, 17, 42, 99, 150, 7, 3]])
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    sft = PeftModel.from_pretrained(base, out / "sft" / "adapter").merge_and_unload()
    sft_logits = sft(ids).logits
    policy = PeftModel.from_pretrained(sft, out / "preference" / "adapter")
    with policy.disable_adapter():
        torch.testing.assert_close(policy(ids).logits, sft_logits)
    final = AutoModelForCausalLM.from_pretrained(out / "final")
    torch.testing.assert_close(final(ids).logits, policy(ids).logits, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(final(ids).logits, sft_logits, atol=1e-4)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert not torch.allclose(base(ids).logits, sft_logits, atol=1e-4)


@pytest.mark.parametrize(("mode", "rows", "steps"), [("chosen", {"chosen": 12}, 6), ("none", None, 0)])
def test_sft_modes(tiny_model_dir, tmp_path, mode, rows, steps):
    out = run_recipe_in_process(tiny_args(tiny_model_dir, tmp_path / "out", sft_mode=mode, preference_max_steps=1))
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["sft"]["steps"] == steps
    assert "training uses the first 12 of 314 training pairs" in (out / "report.md").read_text()  # a cut is said
    if rows:
        assert metrics["sft"]["rows"] == rows
        assert json.loads((out / "sft" / "stage_complete.json").read_text())["steps"] == steps
    else:
        assert metrics["sft"]["status"] == "off" and not (out / "sft").exists()


# The recipe, run by `python -c` with one callback added to its preference stage: the process SIGKILLs itself right
# after it has saved checkpoint-<step> (a kill at a known step, instead of a race against a polling timer).
KILL_AFTER_SAVE = """
import os, signal, sys
from transformers import TrainerCallback
import alignkit.stages as stages
from alignkit.recipe import main

class KillAfterSave(TrainerCallback):
    def on_save(self, args, state, control, **kwargs):  # the checkpoint is complete on disk by then
        if state.global_step == int(os.environ["KILL_AFTER_SAVE_STEP"]):
            os.kill(os.getpid(), signal.SIGKILL)  # no chance to clean up, as with a lost machine

callbacks_for_stage = stages.callbacks_for_stage
stages.callbacks_for_stage = lambda callbacks, name, stage_dir: [
    *callbacks_for_stage(callbacks, name, stage_dir), *([KillAfterSave()] if name == "preference" else [])]
main(sys.argv[1:])
"""


def test_interrupted_run_resumes(tiny_model_dir, tmp_path):
    out = tmp_path / "out"
    args = tiny_args(tiny_model_dir, out, preference_max_steps=12, save_steps=4, preference_learning_rate=1e-4,
                     probe_every=1000)  # fmt: skip
    killed = subprocess.run([sys.executable, "-c", KILL_AFTER_SAVE, *args], env={**ENV, "KILL_AFTER_SAVE_STEP": "8"},
                            capture_output=True, text=True, timeout=600, cwd=ROOT)  # fmt: skip
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    stage = out / "preference"
    assert not (stage / "stage_complete.json").exists() and (stage / "checkpoint-8" / "trainer_state.json").exists()
    assert not (stage / "checkpoint-12").exists()
    sft_adapter = out / "sft" / "adapter" / "adapter_model.safetensors"
    sft_mtime = sft_adapter.stat().st_mtime_ns
    # A kill can land mid-save: a checkpoint without its trainer_state.json must be skipped, not resumed from.
    torn = stage / "checkpoint-10"
    shutil.copytree(stage / "checkpoint-8", torn)
    (torn / "trainer_state.json").unlink()

    rerun = subprocess.run([sys.executable, str(RECIPE), *args], env=ENV, capture_output=True, text=True, timeout=600,
                           cwd=ROOT)  # fmt: skip
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "[sft] already complete" in rerun.stderr
    assert f"[preference] resuming from {stage / 'checkpoint-8'}" in rerun.stderr
    assert sft_adapter.stat().st_mtime_ns == sft_mtime  # the finished stage was not redone
    done = json.loads((stage / "stage_complete.json").read_text())
    assert done["steps"] == 12 and done["status"] == "resumed from checkpoint-8"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model_name_or_path", "./no/such/model"], "error: model path ./no/such/model does not exist"),
        (["--dataset_name", "missing.jsonl"], "error: data file missing.jsonl does not exist"),
        (["--lossy", "dpo"], "error: unknown command-line argument '--lossy'"),
    ],
)
def test_bad_input_exits_with_a_message_not_a_traceback(args, message):
    proc = subprocess.run([sys.executable, str(RECIPE), *args], env=ENV, capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.real_model
def test_real_smollm2_few_steps(tmp_path):
    smollm2_or_skip()  # the recipe's default model is this wheel's GGUF
    # 8 pairs: the precomputed reference pass scores every training pair, not just the 2 steps' worth
    args = ["--output_dir", str(tmp_path / "out"), "--max_train_samples", "8", "--sft_max_steps", "2",
            "--preference_max_steps", "2",
            "--per_device_train_batch_size", "2", "--probe_num_prompts", "2", "--probe_max_new_tokens", "8",
            "--use_cpu", "true"]  # fmt: skip
    out = run_recipe_in_process(args)
    # cpu_threads 0: every usable core for the single process, whatever OMP_NUM_THREADS (accelerate launch sets 1).
    assert torch.get_num_threads() == len(os.sched_getaffinity(0))
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["sft"]["steps"] == 2 and metrics["preference"]["steps"] == 2
    assert lora_b_norm(out / "preference" / "adapter") > 0
    assert (out / "final" / "model.safetensors").exists()


def test_recipe_ends_with_a_win_rate_report(tiny_model_dir, tmp_path):
    from alignkit.data import load_builtin
    from tests.fake_judge_server import FakeJudgeServer, prefer_longer

    baseline = tmp_path / "baseline.jsonl"  # a baseline given as outputs: one long answer per held-out prompt
    prompts = load_builtin()["test"]["prompt"][:3]
    baseline.write_text(
        "".join(json.dumps({"prompt": p, "output": "a long baseline answer " * 5}) + "\n" for p in prompts)
    )
    with FakeJudgeServer(policy=prefer_longer()) as server:
        args = tiny_args(tiny_model_dir, tmp_path / "out", preference_max_steps=1, probe_enabled=False,
                         eval_win_rate=True, eval_baseline=baseline, eval_judge_base_url=server.base_url,
                         eval_judge_model="fake-judge", eval_num_prompts=3, eval_max_new_tokens=8)  # fmt: skip
        out = run_recipe_in_process(args)
        assert server.requests == 6  # 3 prompts x both orders
    report = (out / "report.md").read_text()
    assert "## Win rate" in report and "judged by `fake-judge` in both orders on 3 held-out prompts" in report
    assert "win rate 0.0%" in report  # the judge prefers the longer answer: the baseline's, in both orders
    assert (out / "win_rate" / "report.html").exists() and (out / "win_rate" / "win_rate.png").exists()
