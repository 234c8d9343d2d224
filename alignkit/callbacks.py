"""The contract between a training stage and the callbacks handed to it; no stage knows a callback's class.

* A stage takes its callbacks as a list, or as a function `callbacks_for(stage_name, stage_dir) -> list` that it
  calls for itself (once per on-policy round: each round is a trainer of its own), e.g. the recipe's
  `lambda name, folder: [monitor.callback(name, folder)]`.
* A callback that needs its trainer (to log through `Trainer.log`, or to change the trainer's loss weights) has an
  `attach(trainer)` method: the stage calls it once the trainer is built (`NeedsTrainer`).
* A callback that ends a stage before its last step says why with `stop_training(state, control, reason)`. The reason
  rides on the trainer's state, where the stage reads it after `train()` returns (`early_stop_reason`). A callback that
  restores its own "stopped" verdict when a stage resumes from a checkpoint calls `stop_training` again then, so a
  resumed stage reports the stop as well.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

# The TrainerState attribute that carries the reason (TrainerState is a plain dataclass; an extra attribute lives as
# long as the state object, i.e. one `train()` call, and is not written to trainer_state.json).
STOP_REASON = "alignkit_stop_reason"


CallbacksFor = Callable[[str, Path], Sequence]


def callbacks_for_stage(callbacks: Sequence | CallbacksFor, name: str, stage_dir: Path) -> list:
    """The callbacks of stage `name` working in `stage_dir`: `callbacks(name, stage_dir)` when it is a function,
    else the list itself (a TrainerCallback is never callable)."""
    return list(callbacks(name, stage_dir) if callable(callbacks) else callbacks)


@runtime_checkable
class NeedsTrainer(Protocol):
    """A TrainerCallback that the stage hands its trainer, after building it, by calling `attach(trainer)`."""

    def attach(self, trainer) -> object: ...


def attach_callbacks(trainer, callbacks) -> None:
    """Give each callback that asks for it (`NeedsTrainer`) the trainer it was registered with."""
    for callback in callbacks:
        if isinstance(callback, NeedsTrainer):
            callback.attach(trainer)


def stop_training(state, control, reason: str) -> None:
    """End the training loop after this step and record `reason` (e.g. "the squeezing guard") for the stage."""
    control.should_training_stop = True
    setattr(state, STOP_REASON, reason)


def early_stop_reason(state) -> str | None:
    """Who ended the stage before its last step (set by `stop_training`), or None when it ran to the end."""
    return getattr(state, STOP_REASON, None)
