"""Preemptible jobs: on the scheduler's warning signal, checkpoint at the next step boundary, exit 75, resume on rerun.

Slurm (`--signal=USR1@120`, or SIGTERM at preemption), Kubernetes and `docker stop` (SIGTERM, then SIGKILL after a
grace period: 30 s and 10 s by default) warn a job before they kill it. While the recipe runs, `Preemption` handles
`preempt_signals` (default SIGTERM and SIGUSR1): the handler only sets a flag, and the work stops at the next safe
point:

* inside a stage (or an on-policy round), at the end of the current optimizer step (`PreemptionCallback`): every
  process finishes the step, the trainer saves a full checkpoint (weights or adapter, optimizer, scheduler, RNG, and
  what other callbacks save with it: the squeezing monitor's and guard's state), and the stage ends;
* between stages, and before each on-policy round trains (after its samples and pairs are on disk), at once;
* in work that can be dropped and done again, at its next safe point (`interrupt_point`, `generation_stops`): a probe
  evaluation (between two batches, or between two decoded tokens), on-policy sampling, any `alignkit.generation`
  decoding. A probe evaluation at a step's end is dropped and the checkpoint of that step saved (the resumed run
  evaluates at that checkpoint); one at a stage's start, or sampling, ends the run at once (`Interrupted`): nothing
  was trained since the last checkpoint. With several processes such work is collective, so it runs to its end.

Then `Preempted` unwinds the recipe, the main process writes `preempted.json` in the run folder (signal, where,
checkpoint), and the command exits with `PREEMPTED_EXIT_CODE` (75, EX_TEMPFAIL: "try again later"). Rerunning the same
command into the same output_dir resumes: finished stages and rounds are skipped by their done-markers, the stopped
one resumes from the checkpoint written at the signalled step, and the result equals an uninterrupted run's.

This is transformers' just-in-time checkpoint (`TrainingArguments.enable_jit_checkpoint`,
`transformers/trainer_jit_checkpoint.py`: a signal sets a flag, the trainer saves at a step boundary and stops) with
what the recipe needs on top:

* any signals (transformers handles SIGTERM only, and requests the checkpoint from a timer thread 3 s after it);
* the checkpoint of a finished step: transformers may also save from `on_pre_optimizer_step`, before the step's
  optimizer update, under the previous step's number, which a resumed run would not reproduce exactly;
* several processes: the flag is combined over all processes at each step boundary (one all-reduce of one number),
  so every process saves the same step together, even when one gets the signal a step later, and none deadlocks;
* an atomic save: the checkpoint is written to `<stage>/.preempt-save/checkpoint-N` and renamed to
  `<stage>/checkpoint-N` once complete (every process's files and the monitor's state in it); a second signal during
  the save is only logged, and a kill during it leaves no `checkpoint-N` to resume from (the rerun resumes from the
  one before, or starts the stage again);
* the exit code and the marker file, which the launchers (recipes/slurm/extended_dpo.sbatch, the Dockerfile) read.

The config refuses `enable_jit_checkpoint` in a stage's TRL pass-through: both would handle SIGTERM.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.distributed as dist
from transformers import StoppingCriteria, StoppingCriteriaList, TrainerCallback

logger = logging.getLogger(__name__)

PREEMPTED_EXIT_CODE = 75  # EX_TEMPFAIL (sysexits.h); the launchers requeue on it
PREEMPTED_MARKER = "preempted.json"  # in the run folder while the run stands preempted; removed by the next run
DEFAULT_SIGNALS = ("SIGTERM", "SIGUSR1")
SAVE_DIR = ".preempt-save"  # in a stage folder: where the checkpoint is written before it is renamed
UNCATCHABLE = ("SIGKILL", "SIGSTOP")


def signal_names(names: Sequence[str]) -> list[str]:
    """`names` as canonical signal names ("TERM", "sigusr1", "SIGTERM" -> "SIGTERM", "SIGUSR1"; ["none"] -> []);
    ValueError naming the first one that is no signal a handler can catch."""
    if [str(name).strip().lower() for name in names] == ["none"]:
        return []
    resolved = []
    for name in names:
        canonical = str(name).strip().upper()
        canonical = canonical if canonical.startswith("SIG") else f"SIG{canonical}"
        if canonical in UNCATCHABLE or not isinstance(getattr(signal, canonical, None), signal.Signals):
            raise ValueError(f"{name!r} is not a signal that can be caught (e.g. SIGTERM, SIGUSR1, SIGUSR2, SIGINT)")
        if canonical not in resolved:
            resolved.append(canonical)
    return resolved


class Preempted(Exception):
    """Raised once the work is safely stopped (checkpoint written, or between two pieces of work): the run is to exit
    with PREEMPTED_EXIT_CODE and be run again."""

    def __init__(self, signal_name: str, where: str, checkpoint: Path | None = None):
        self.signal_name, self.where, self.checkpoint = signal_name, where, checkpoint
        saved = f"; checkpoint {checkpoint}" if checkpoint else ""
        super().__init__(f"preempted by {signal_name} {where}{saved}")

    def record(self, received_at: float | None) -> dict:
        """What `preempted.json` holds."""
        waited = None if received_at is None else round(time.monotonic() - received_at, 3)
        return {"signal": self.signal_name, "where": self.where, "checkpoint": str(self.checkpoint or ""),
                "seconds_since_signal": waited, "exit_code": PREEMPTED_EXIT_CODE}  # fmt: skip


class Interrupted(Preempted):
    """Raised at a safe point of work that can be dropped and done again (`interrupt_point`): a probe evaluation,
    on-policy sampling, a decoding."""


def _any_process(flag: bool) -> bool:
    """Whether `flag` is set in any process (one all-reduce when several processes run; `flag` itself otherwise)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return flag
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
    value = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item() > 0)


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def _is_main_process() -> bool:
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def _single_process() -> bool:
    return not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1


class Preemption:
    """Handles `signals` while in use (`with Preemption(signals) as preemption:`), restoring the previous handlers at
    the end. A signal only sets the flag; `check(where)` and `callback()` stop the work at safe points."""

    def __init__(self, signals: Sequence[str] = DEFAULT_SIGNALS):
        self.signals = [getattr(signal, name) for name in signal_names(signals)]
        self.received: signal.Signals | None = None
        self.received_at: float | None = None  # time.monotonic() of the first signal
        self.saving = False
        self._previous: dict[signal.Signals, object] = {}

    def __enter__(self) -> Preemption:
        global _active
        _active = self
        if threading.current_thread() is not threading.main_thread():
            logger.warning("preempt_signals are not handled: the recipe runs outside the main thread")
            return self
        for signum in self.signals:
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        global _active
        _active = None
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous.clear()

    def _handle(self, signum, frame) -> None:
        # Runs between two bytecodes of the main thread: set the flag and return; the work stops at a safe point.
        if self.received is None:
            self.received, self.received_at = signal.Signals(signum), time.monotonic()
        elif self.saving:  # e.g. a launcher that forwards the signal again: the save goes on
            os.write(2, f"{signal.Signals(signum).name} again while the checkpoint is being saved: saving goes on\n"
                     .encode())  # fmt: skip

    @property
    def signal_name(self) -> str:
        return self.received.name if self.received is not None else "a signal in another process"

    def requested(self) -> bool:
        """Whether a signal reached this process (no communication: for code that only this process runs)."""
        return self.received is not None

    def agreed(self) -> bool:
        """Whether any process got a signal. Collective: every process must call it at the same point."""
        return _any_process(self.requested())

    def check(self, where: str) -> None:
        """Raise `Preempted` when any process got a signal (collective, like `agreed`). `where`: e.g. 'after sft'."""
        if self.agreed():
            logger.warning("%s received: stopping %s", self.signal_name, where)
            raise Preempted(self.signal_name, where)

    def callback(self) -> PreemptionCallback:
        """A TrainerCallback that stops a trainer at the end of the step during which the signal came, with a
        checkpoint of that step. Register it after the callbacks that save state beside a checkpoint (`on_save`)."""
        return PreemptionCallback(self)


class PreemptionCallback(TrainerCallback):
    """Stops training at the end of the current optimizer step once any process got a signal, has the trainer save the
    checkpoint of that step into a temporary folder, renames it to `checkpoint-N`, then raises `Preempted`.

    The trainer's own save (`_save_checkpoint`, then every callback's `on_save`) writes the checkpoint, so it holds all
    it usually does, and what other callbacks save beside it (their `on_save` runs before this one's); only its folder
    is redirected (`args.output_dir`, for the time of the save).
    """

    def __init__(self, preemption: Preemption):
        self.preemption = preemption
        self.stage_dir: Path | None = None  # set while a checkpoint is being saved into SAVE_DIR

    def on_train_begin(self, args, state, control, **kwargs):
        if _is_main_process():  # what a kill during an earlier save left (never resumed from: it was not renamed)
            shutil.rmtree(Path(args.output_dir) / SAVE_DIR, ignore_errors=True)

    def on_step_end(self, args, state, control, **kwargs):
        if not self.preemption.agreed():
            return
        self.preemption.saving = True
        self.stage_dir = Path(args.output_dir)
        logger.warning("%s received: saving checkpoint-%d of %s and stopping", self.preemption.signal_name,
                       state.global_step, self.stage_dir)  # fmt: skip
        if _is_main_process():
            shutil.rmtree(self.stage_dir / SAVE_DIR, ignore_errors=True)  # what a kill during a save left
        _barrier()
        args.output_dir = str(self.stage_dir / SAVE_DIR)
        control.should_save = True
        control.should_training_stop = True

    def on_save(self, args, state, control, **kwargs):
        if self.stage_dir is None:  # a periodic checkpoint, saved where it belongs
            return
        stage_dir, self.stage_dir = self.stage_dir, None
        args.output_dir = str(stage_dir)
        name = f"checkpoint-{state.global_step}"
        final = stage_dir / name
        _barrier()  # every process has written its part (its RNG state at least)
        if _is_main_process():
            if final.exists():  # an incomplete save of the same step by an earlier run: never resumed from
                shutil.rmtree(final)
            os.replace(stage_dir / SAVE_DIR / name, final)
            shutil.rmtree(stage_dir / SAVE_DIR, ignore_errors=True)
        _barrier()
        self.preemption.saving = False
        raise Preempted(self.preemption.signal_name, f"in {stage_dir.name} at step {state.global_step}", final)


def clear_marker(run_dir: Path) -> None:
    """Remove the marker of an earlier preemption (main process): this run takes over."""
    if _is_main_process():
        (run_dir / PREEMPTED_MARKER).unlink(missing_ok=True)


def write_marker(run_dir: Path, stop: Preempted, preemption: Preemption) -> Path:
    """Write `preempted.json` (main process) and log how to resume; returns its path."""
    path = run_dir / PREEMPTED_MARKER
    if _is_main_process():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(stop.record(preemption.received_at), indent=1))
        logger.warning("%s; exiting with %d: rerun the same command to resume", stop, PREEMPTED_EXIT_CODE)
    return path


_active: Preemption | None = None  # the Preemption in use (`with`), which `interrupt_point` reads


def interrupt_point(what: str) -> None:
    """Raise `Interrupted` when a signal of the Preemption in use has reached this process, in a single-process run
    (with several processes the work is collective: it runs to its end, and the run stops at the next step boundary).
    Call it where `what` (e.g. "probe scoring") can be dropped and done again."""
    if _active is not None and _active.requested() and _single_process():
        raise Interrupted(_active.signal_name, f"during {what}")


class _StopOnSignal(StoppingCriteria):
    def __call__(self, input_ids, scores, **kwargs):
        stop = _active is not None and _active.requested()
        return torch.full((input_ids.shape[0],), stop, dtype=torch.bool, device=input_ids.device)


def generation_stops() -> StoppingCriteriaList:
    """Stopping criteria for `model.generate` that end the decoding at the next token once a signal came (then call
    `interrupt_point`: the cut texts are to be dropped); none outside a Preemption or with several processes."""
    return StoppingCriteriaList([_StopOnSignal()] if _active is not None and _single_process() else [])
