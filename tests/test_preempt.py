"""Preemptible jobs on a tiny model: a signal during SFT, between the stages or during the preference stage makes the
recipe save a checkpoint of the signalled step and exit 75; the rerun resumes from that step and ends with exactly
the adapters of an uninterrupted run (CPU, float32, same seed). Signals are sent by a callback at a given step, never
by a timer."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from alignkit.config import parse_recipe_config
from alignkit.errors import AlignkitError
from alignkit.fingerprint import stage_fingerprint
from alignkit.generation import generate
from alignkit.monitors.stage_files import GUARD_STATE
from alignkit.preempt import (
    PREEMPTED_EXIT_CODE,
    PREEMPTED_MARKER,
    SAVE_DIR,
    Interrupted,
    Preemption,
    generation_stops,
    signal_names,
)

from .test_recipe import ENV, RECIPE, ROOT, tiny_args

# The recipe, run by `python -c`, with a callback added to the stage PREEMPT_STAGE ("sft", "preference", or a round:
# "preference round 2") that sends PREEMPT_SIGNAL to its own process: during optimizer step PREEMPT_STEP (at its
# start); with PREEMPT_STEP=end, once the stage's last step is done (the stage then finishes and the signal is seen
# after it); with PREEMPT_STEP=begin, as the stage starts, before the monitor's first probe evaluation (the callback
# goes first). PREEMPT_DURING_SAVE=signal|kill sends the same signal again, or SIGKILL, while the preemption
# checkpoint is being written (its RNG state, the last file).
SIGNAL_AT_STEP = """
import os, signal, sys
import transformers
from transformers import TrainerCallback
import alignkit.onpolicy.stage as onpolicy_stage
import alignkit.stages as stages
from alignkit.preempt import SAVE_DIR
from alignkit.recipe import main

sig = getattr(signal, os.environ["PREEMPT_SIGNAL"])
step = os.environ["PREEMPT_STEP"]
stage = os.environ["PREEMPT_STAGE"]

class SignalAtStep(TrainerCallback):
    def on_step_begin(self, args, state, control, **kwargs):
        if step != "end" and state.global_step == int(step) - 1:
            os.kill(os.getpid(), sig)

    def on_train_begin(self, args, state, control, **kwargs):
        if step == "begin":
            os.kill(os.getpid(), sig)

    def on_train_end(self, args, state, control, **kwargs):
        if step == "end":
            os.kill(os.getpid(), sig)

during_save = os.environ.get("PREEMPT_DURING_SAVE")
save_rng_state = transformers.Trainer._save_rng_state

def save_rng_state_then_signal(self, output_dir):
    if during_save and SAVE_DIR in output_dir:
        os.kill(os.getpid(), signal.SIGKILL if during_save == "kill" else sig)
    return save_rng_state(self, output_dir)

transformers.Trainer._save_rng_state = save_rng_state_then_signal
callbacks_for_stage = stages.callbacks_for_stage

def with_signal(callbacks, name, stage_dir):
    callbacks = list(callbacks_for_stage(callbacks, name, stage_dir))
    if name == stage:
        callbacks.insert(0 if step == "begin" else len(callbacks), SignalAtStep())
    return callbacks

stages.callbacks_for_stage = onpolicy_stage.callbacks_for_stage = with_signal  # stages, on-policy rounds
main(sys.argv[1:])
"""


def run_args(model_dir, out: Path) -> list[str]:
    # 8 pairs: SFT 8 steps (extended: 16 rows at batch 2), preference 4 steps; periodic checkpoints never happen
    # (save_steps 1000), so a resume can only start from the preemption's checkpoint. Probes on: the monitor's and
    # guard's state ride in the checkpoint.
    return tiny_args(model_dir, out, max_train_samples=8, preference_max_steps=4, save_steps=1000, probe_every=2,
                     lora_dropout=0.1)  # fmt: skip


def run(args: list[str], **env) -> subprocess.CompletedProcess:
    code = ["-c", SIGNAL_AT_STEP] if env else [str(RECIPE)]
    return subprocess.run([sys.executable, *code, *args], env={**ENV, **env}, capture_output=True, text=True,
                          timeout=600, cwd=ROOT)  # fmt: skip


STAGES = ("sft", "preference")


def adapters(out: Path) -> dict[str, dict[str, torch.Tensor]]:
    return {stage: load_file(str(out / stage / "adapter" / "adapter_model.safetensors")) for stage in STAGES}


def assert_same_adapters(out: Path, reference: Path) -> None:
    got, want = adapters(out), adapters(reference)
    for stage in want:
        assert got[stage].keys() == want[stage].keys()
        for name, weight in want[stage].items():
            assert torch.equal(got[stage][name], weight), f"{stage}: {name} differs from the uninterrupted run's"


@pytest.fixture(scope="module")
def uninterrupted(tiny_model_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("uninterrupted") / "out"
    proc = run(run_args(tiny_model_dir, out))
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert not (out / PREEMPTED_MARKER).exists()
    return out


def preempted(out: Path, proc: subprocess.CompletedProcess) -> dict:
    assert proc.returncode == PREEMPTED_EXIT_CODE, proc.stderr[-4000:]
    assert "rerun the same command to resume" in proc.stderr and "Traceback" not in proc.stderr
    return json.loads((out / PREEMPTED_MARKER).read_text())


def test_signal_during_sft_resumes_from_the_signalled_step(tiny_model_dir, tmp_path, uninterrupted):
    out = tmp_path / "out"
    args = run_args(tiny_model_dir, out)
    marker = preempted(out, run(args, PREEMPT_SIGNAL="SIGTERM", PREEMPT_STAGE="sft", PREEMPT_STEP="3"))
    sft = out / "sft"
    assert marker["signal"] == "SIGTERM" and marker["checkpoint"] == str(sft / "checkpoint-3")
    assert sorted(p.name for p in sft.glob("checkpoint-*")) == ["checkpoint-3"]
    checkpoint = sft / "checkpoint-3"
    for name in ("trainer_state.json", "optimizer.pt", "scheduler.pt", "rng_state.pth", "adapter_model.safetensors",
                 GUARD_STATE):  # fmt: skip
        assert (checkpoint / name).exists(), name
    assert json.loads((checkpoint / "trainer_state.json").read_text())["global_step"] == 3
    assert not (sft / "stage_complete.json").exists() and not (out / "preference").exists()
    assert not (sft / SAVE_DIR).exists()

    rerun = run(args)
    assert rerun.returncode == 0, rerun.stderr[-4000:]
    assert f"[sft] resuming from {checkpoint}" in rerun.stderr
    assert not (out / PREEMPTED_MARKER).exists()  # the rerun took over
    assert_same_adapters(out, uninterrupted)


def test_signal_between_stages_finishes_sft_and_stops_before_preference(tiny_model_dir, tmp_path, uninterrupted):
    out = tmp_path / "out"
    args = run_args(tiny_model_dir, out)
    marker = preempted(out, run(args, PREEMPT_SIGNAL="SIGUSR1", PREEMPT_STAGE="sft", PREEMPT_STEP="end"))
    assert marker["signal"] == "SIGUSR1" and marker["where"] == "after the sft stage" and marker["checkpoint"] == ""
    assert (out / "sft" / "stage_complete.json").exists()
    assert not list((out / "preference").glob("checkpoint-*"))

    rerun = run(args)
    assert rerun.returncode == 0, rerun.stderr[-4000:]
    assert "[sft] already complete" in rerun.stderr and "resuming from" not in rerun.stderr
    assert_same_adapters(out, uninterrupted)


def test_signal_during_preference_and_again_during_the_save(tiny_model_dir, tmp_path, uninterrupted):
    out = tmp_path / "out"
    args = run_args(tiny_model_dir, out)
    proc = run(
        args, PREEMPT_SIGNAL="SIGTERM", PREEMPT_STAGE="preference", PREEMPT_STEP="2", PREEMPT_DURING_SAVE="signal"
    )
    marker = preempted(out, proc)
    assert "SIGTERM again while the checkpoint is being saved" in proc.stderr
    # probe_every 2: the evaluation at the end of step 2 stops at its first batch, so the checkpoint comes first
    assert "[preference] probes at step 2 dropped for the preemption checkpoint" in proc.stderr
    stage = out / "preference"
    checkpoint = stage / "checkpoint-2"
    assert marker["checkpoint"] == str(checkpoint) and marker["where"] == "in preference at step 2"
    assert (checkpoint / "trainer_state.json").exists() and (checkpoint / "rng_state.pth").exists()
    assert (checkpoint / GUARD_STATE).exists() and not (stage / SAVE_DIR).exists()

    rerun = run(args)
    assert rerun.returncode == 0, rerun.stderr[-4000:]
    assert "[sft] already complete" in rerun.stderr and f"[preference] resuming from {checkpoint}" in rerun.stderr
    assert json.loads((stage / "stage_complete.json").read_text())["status"] == "resumed from checkpoint-2"
    assert_same_adapters(out, uninterrupted)


def test_signal_during_the_first_probe_evaluation_ends_the_run_at_once(tiny_model_dir, tmp_path, uninterrupted):
    out = tmp_path / "out"
    args = run_args(tiny_model_dir, out)
    marker = preempted(out, run(args, PREEMPT_SIGNAL="SIGTERM", PREEMPT_STAGE="sft", PREEMPT_STEP="begin"))
    assert marker["where"].startswith("during ") and marker["checkpoint"] == ""  # nothing trained yet: no checkpoint
    assert not list((out / "sft").glob("checkpoint-*")) and not (out / "sft" / "stage_complete.json").exists()

    rerun = run(args)
    assert rerun.returncode == 0, rerun.stderr[-4000:]
    assert "[sft] resuming from" not in rerun.stderr
    assert_same_adapters(out, uninterrupted)


def test_kill_during_the_save_leaves_no_checkpoint_to_resume_from(tiny_model_dir, tmp_path, uninterrupted):
    out = tmp_path / "out"
    args = run_args(tiny_model_dir, out)
    proc = run(
        args, PREEMPT_SIGNAL="SIGTERM", PREEMPT_STAGE="preference", PREEMPT_STEP="2", PREEMPT_DURING_SAVE="kill"
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-4000:]
    stage = out / "preference"
    assert (stage / SAVE_DIR / "checkpoint-2").exists()  # the torn save stays in the temporary folder
    assert not list(stage.glob("checkpoint-*"))

    rerun = run(args)
    assert rerun.returncode == 0, rerun.stderr[-4000:]
    assert "[preference] resuming from" not in rerun.stderr  # trained again from its start
    assert not (stage / SAVE_DIR).exists()  # the torn save is removed as the stage starts again
    assert_same_adapters(out, uninterrupted)


def test_signal_names_and_the_config_field():
    assert signal_names(["TERM", "sigusr1", "SIGTERM"]) == ["SIGTERM", "SIGUSR1"]
    assert signal_names(["none"]) == []
    for bad in ("KILL", "SIGSTOP", "NOPE"):
        with pytest.raises(ValueError, match=repr(bad)):
            signal_names([bad])
    assert parse_recipe_config([]).run.preempt_signals == ["SIGTERM", "SIGUSR1"]
    assert parse_recipe_config(["--preempt_signals", "USR2"]).run.preempt_signals == ["SIGUSR2"]
    with pytest.raises(AlignkitError, match="'preempt_signals': 'KILL'"):
        parse_recipe_config(["--preempt_signals", "KILL"])
    with pytest.raises(AlignkitError, match="use preempt_signals"):  # transformers' own handler would compete
        parse_recipe_config(["--sft_trainer_args", '{"enable_jit_checkpoint": true}'])
    # a rerun may change the signals: they decide when a stage stops, not what it trains
    on, off = parse_recipe_config([]), parse_recipe_config(["--preempt_signals", "none"])
    assert stage_fingerprint(on, "sft", {"rows": 1}, [], 1) == stage_fingerprint(off, "sft", {"rows": 1}, [], 1)


def test_decoding_stops_at_the_next_batch_or_token(tiny_model, tiny_tokenizer):
    prompts = ["Say something.", "Say more."]
    assert len(generate(tiny_model, tiny_tokenizer, prompts, max_new_tokens=2)) == 2  # no Preemption: never stops
    with Preemption(["SIGUSR2"]) as preemption:
        stop = generation_stops()
        ids = torch.zeros((2, 3), dtype=torch.long)
        assert not stop[0](ids, None).any()
        signal.raise_signal(signal.SIGUSR2)
        assert stop[0](ids, None).all()  # model.generate ends the decoding at the next token
        with pytest.raises(Interrupted, match="during probe greedy"):
            generate(tiny_model, tiny_tokenizer, prompts, max_new_tokens=2, desc="probe greedy")
        assert preemption.requested()
    assert not generation_stops()  # outside a Preemption nothing stops


def test_handlers_are_restored_and_a_signal_only_sets_the_flag():
    before = signal.getsignal(signal.SIGUSR2)
    with Preemption(["SIGUSR2"]) as preemption:
        assert not preemption.requested()
        signal.raise_signal(signal.SIGUSR2)  # handled in this thread before raise_signal returns
        assert preemption.requested() and preemption.agreed() and preemption.signal_name == "SIGUSR2"
    assert signal.getsignal(signal.SIGUSR2) is before


def test_two_processes_save_together_when_one_gets_the_signal(tiny_model_dir, tmp_path):
    """`accelerate launch --multi_gpu --num_processes 2`, 2 CPU processes (gloo): only rank 1 gets SIGTERM, during
    preference step 2. Both processes agree at that step's end, save checkpoint-2 together (model once, one RNG state
    each) and exit 75 (the launcher, torch.distributed's, then exits 1: preempted.json says what happened),
    with no deadlock; the rerun resumes there and ends with the uninterrupted 2-process run's adapters."""
    script = tmp_path / "signal_at_step.py"
    script.write_text(SIGNAL_AT_STEP.replace("os.kill(", "int(os.environ['RANK']) == 1 and os.kill("))
    launcher = [str(Path(sys.executable).parent / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2",
                "--main_process_port", "0"]  # fmt: skip

    def launch(out: Path, *cmd, **env) -> subprocess.CompletedProcess:
        args = [*run_args(tiny_model_dir, out), "--per_device_train_batch_size", "1"]
        return subprocess.run([*launcher, *cmd, *args], env={**ENV, **env}, capture_output=True, text=True,
                              timeout=900, cwd=ROOT)  # fmt: skip

    reference = tmp_path / "uninterrupted"
    proc = launch(reference, str(RECIPE))
    assert proc.returncode == 0, proc.stderr[-4000:]

    out = tmp_path / "out"
    proc = launch(out, str(script), PREEMPT_SIGNAL="SIGTERM", PREEMPT_STAGE="preference", PREEMPT_STEP="2")
    # The launcher's summary: rank 0 exits 75 once the checkpoint and preempted.json are written. Rank 1 leaves the
    # same collective save and exits 75 too, unless the launcher, seeing rank 0 gone first, terminates it in the
    # milliseconds between (exitcode -15: seen once under load); either way after the save, which the files check.
    codes = re.findall(r"exitcode\s*: (-?\d+)", proc.stderr)
    assert proc.returncode == 1 and "75" in codes and set(codes) <= {"75", "-15"}, proc.stderr[-4000:]
    marker = json.loads((out / PREEMPTED_MARKER).read_text())
    checkpoint = out / "preference" / "checkpoint-2"
    assert marker["checkpoint"] == str(checkpoint) and marker["signal"] == "a signal in another process"
    for name in ("trainer_state.json", "adapter_model.safetensors", "rng_state_0.pth", "rng_state_1.pth"):
        assert (checkpoint / name).exists(), name
    assert not (out / "preference" / SAVE_DIR).exists()

    rerun = launch(out, str(RECIPE))
    assert rerun.returncode == 0, rerun.stderr[-4000:]
    assert f"[preference] resuming from {checkpoint}" in rerun.stderr
    assert_same_adapters(out, reference)


def test_on_policy_rounds_stop_during_sampling_and_during_training(tiny_model_dir, tmp_path):
    """Two on-policy rounds of 2 steps. A signal as round 1 ends is seen when round 2 samples: the run ends there
    (round 1 complete, nothing of round 2 kept but what it saved); a signal during round 2's step 1 checkpoints it.
    Each rerun resumes, and the last ends with the uninterrupted run's adapters."""

    def args(out: Path) -> list[str]:
        return tiny_args(tiny_model_dir, out, sampling="on_policy", ranker="callable",
                         ranker_path="tests.test_onpolicy:length_ranker", onpolicy_prompts_per_round=4,
                         onpolicy_num_samples=2, onpolicy_max_new_tokens=6, preference_max_steps=4, sft_max_steps=2,
                         probe_every=1000, save_steps=1000)  # fmt: skip

    reference = tmp_path / "uninterrupted"
    proc = run(args(reference))
    assert proc.returncode == 0, proc.stderr[-4000:]

    out = tmp_path / "out"
    stage = out / "preference"
    marker = preempted(out, run(args(out), PREEMPT_SIGNAL="SIGTERM", PREEMPT_STAGE="preference round 1",
                                PREEMPT_STEP="end"))  # fmt: skip
    assert marker["where"].startswith("during ") and marker["checkpoint"] == ""  # round 2's sampling
    assert (stage / "round-1" / "round_complete.json").exists() and not (stage / "round-2" / "pairs.jsonl").exists()

    marker = preempted(out, run(args(out), PREEMPT_SIGNAL="SIGUSR1", PREEMPT_STAGE="preference round 2",
                                PREEMPT_STEP="1"))  # fmt: skip
    assert marker["checkpoint"] == str(stage / "round-2" / "checkpoint-1")

    rerun = run(args(out))
    assert rerun.returncode == 0, rerun.stderr[-4000:]
    assert f"resuming from {stage / 'round-2' / 'checkpoint-1'}" in rerun.stderr
    assert_same_adapters(out, reference)
