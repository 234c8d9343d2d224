"""One stage's probes, as a TrainerCallback: when to evaluate, the alert and the guard, the stage's files, resume.

A `SqueezingMonitor` (`alignkit.monitors.monitor`) hands out one `SqueezingCallback` per stage and keeps what they
record for the whole run; the callback works with any transformers/TRL trainer (the model comes from the callback
arguments). What one evaluation measures is `measure`'s job; what the alert says and how the guard acts, `guard`'s;
the files written and read back on resume, `stage_files`'.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import torch
from transformers import Trainer, TrainerCallback

from alignkit.callbacks import stop_training
from alignkit.errors import AlignkitError
from alignkit.monitors.guard import alert_message, check_mitigation, raise_sft_weight, sft_weight_slot
from alignkit.monitors.measure import (
    Handover,
    change_metrics,
    check_handover,
    family_values,
    headline,
    measure,
    taken_over,
)
from alignkit.monitors.scoring import auto_probe_due, spaced_probe_due
from alignkit.monitors.stage_files import (
    GUARD_STATE,
    PROBE_RECORDS,
    append_evaluation,
    append_probe_records,
    load_guard_state,
    records_up_to,
    save_guard_state,
)

logger = logging.getLogger("alignkit.monitors")

GUARD_NAME = "the squeezing guard"  # a stage's status then reads "stopped early by the squeezing guard"


class SqueezingCallback(TrainerCallback):
    """Probes the model at the stage's first step, on the schedule, and at its last step; alerts and guards.

    Use `attach(trainer)` so that the metrics reach the trainer's loggers (TensorBoard, W&B) at the step they were
    measured, and so that `mitigate` can reach the trainer's loss weights whatever the config. Unattached, metrics are
    merged into the trainer's next log entry (its log history, and callbacks registered after this one).

    The guard's state (stage-start baseline, alert history, a weight raised by `mitigate`, "stopped early") is saved
    in every checkpoint (`GUARD_STATE`) and restored when the stage resumes from it.

    Args:
        monitor: the `SqueezingMonitor` handing this callback out (`SqueezingMonitor.callback`): its probe set,
            config and tokenizer are read here, and the stage's records and guard events go into it. Not annotated:
            naming its class here would make the two modules import each other.
        stage: the stage's name in records, logs and the report.
        stage_dir: where the stage's files go (`stage_files`); None writes none.
    """

    def __init__(self, monitor, stage: str, stage_dir: str | Path | None = None):
        self.monitor = monitor
        self.config = monitor.config
        self.stage = stage
        self.stage_dir = Path(stage_dir) if stage_dir is not None else None
        self.jsonl_path = self.stage_dir / "probes.jsonl" if self.stage_dir is not None else None
        self.records_path = self.stage_dir / PROBE_RECORDS if self.stage_dir is not None else None
        self.trainer = None
        self.tokenizer = monitor.tokenizer
        self.stopped_early = False
        self.resumed_guard_state = False  # True when a resume restored the guard state from a checkpoint
        self._pending: dict[str, float] = {}
        self._start_metrics: dict[str, float] | None = None
        self._start_values: list[dict[str, dict]] | None = None  # per probe: family -> probe_values, at stage start
        self._start_texts: list[str | None] | None = None  # per probe: the stage-start greedy decoding
        self._above = False
        self._guard_acted = False
        self._mitigation_note: str | None = None
        self._offset = 0
        self._last_eval_step: int | None = None
        self._t_begin = 0.0
        self.probe_seconds = 0.0
        self._last_probe_seconds = 0.0

    def attach(self, trainer) -> SqueezingCallback:
        """Give the callback its trainer: for logging through `Trainer.log` and for `mitigate`."""
        self.trainer = trainer
        return self

    # --- trainer events

    def on_train_begin(self, args, state, control, model=None, processing_class=None, **kwargs):
        if not self.config.probe_enabled:
            return control
        self.tokenizer = self.monitor.tokenizer or processing_class
        if self.tokenizer is None:
            raise AlignkitError("SqueezingMonitor has no tokenizer: pass one, or use a trainer with processing_class")
        if self.config.guard_action == "mitigate":
            self._mitigation_note = check_mitigation(self.trainer, args, self.stage)
        self.monitor.is_main_process = state.is_world_process_zero
        self.monitor.save_probe_set()
        self._offset = self.monitor.next_offset
        restored = self._restore(args, state) if state.global_step > 0 else False
        self.monitor.boundaries.append((self._offset, self.stage))
        if self.monitor.on_main_process() and self.stage_dir is not None:
            self.stage_dir.mkdir(parents=True, exist_ok=True)
            if state.global_step == 0:  # a fresh stage; a resumed one keeps what it wrote up to its checkpoint
                self.jsonl_path.write_text("")
                self.records_path.write_text("")
        self._t_begin = time.perf_counter()
        if restored and self.stopped_early:
            # The guard had stopped this stage and its checkpoint was saved, but the run died before the stage was
            # marked complete: end it here again rather than train on past the stop (and say so to the stage).
            stop_training(state, control, GUARD_NAME)
            self._last_eval_step = state.global_step
            return control
        self._evaluate("resume" if restored else "begin", args, state, control, model)
        return control

    def on_step_begin(self, args, state, control, **kwargs):
        if self.stopped_early:  # see on_train_begin: a resumed, guard-stopped stage trains no further
            stop_training(state, control, GUARD_NAME)
        return control

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if not self.config.probe_enabled:
            return control
        last = control.should_training_stop or state.global_step >= state.max_steps
        if last or self._due(state.global_step, state.max_steps, args):
            self._evaluate("end" if last else "step", args, state, control, model)
        return control

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self._pending and logs is not None:  # unattached: ride along with the trainer's next log entry
            logs.update(self._pending)
            if state.log_history:
                state.log_history[-1].update(self._pending)
            self._pending = {}
        return control

    def on_save(self, args, state, control, **kwargs):
        """Save the guard state beside the checkpoint the trainer has just written."""
        if not self.config.probe_enabled or not self.monitor.on_main_process() or self._start_values is None:
            return control
        checkpoint = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if checkpoint.is_dir():
            save_guard_state(checkpoint, self.guard_state(args))
        return control

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if not self.config.probe_enabled:
            return control
        if self._last_eval_step != state.global_step:  # the loop ended some other way than at max_steps
            self._evaluate("end", args, state, control, model)
        self.monitor.next_offset = self._offset + state.global_step
        return control

    # --- state across a resume

    def guard_state(self, args=None) -> dict:
        """Everything a resumed stage needs to judge and guard exactly as if it had not stopped."""
        slot = sft_weight_slot(self.trainer, args)
        return {
            "stage": self.stage,
            "offset": self._offset,
            "start_metrics": self._start_metrics,
            "start_values": self._start_values,
            "start_texts": self._start_texts,
            "above": self._above,
            "guard_acted": self._guard_acted,
            "stopped_early": self.stopped_early,
            "sft_weight": slot[0][slot[1]] if slot is not None else None,
            "events": [e for e in self.monitor.events if e["stage"] == self.stage],
            "probe_seconds": self.probe_seconds,
            "last_probe_seconds": self._last_probe_seconds,
        }

    def _restore(self, args, state) -> bool:
        """Read the guard state of the checkpoint being resumed; False (with a warning) when there is none."""
        checkpoint = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        saved = load_guard_state(checkpoint)
        if saved is None:
            logger.warning(
                "[%s] resuming at step %d without a saved guard state (%s): the baseline is re-taken here",
                self.stage, state.global_step, checkpoint / GUARD_STATE,
            )  # fmt: skip
            return False
        self._offset = saved["offset"]
        self._start_metrics = saved["start_metrics"]
        self._start_values = saved["start_values"]
        self._start_texts = saved["start_texts"]
        self._above = saved["above"]
        self._guard_acted = saved["guard_acted"]
        self.stopped_early = saved["stopped_early"]
        self.probe_seconds = saved.get("probe_seconds", 0.0)
        self._last_probe_seconds = saved.get("last_probe_seconds", 0.0)
        known = {(e["stage"], e["step"]) for e in self.monitor.events}
        self.monitor.events += [e for e in saved["events"] if (e["stage"], e["step"]) not in known]
        if saved["sft_weight"] is not None and (slot := sft_weight_slot(self.trainer, args)) is not None:
            slot[0][slot[1]] = saved["sft_weight"]  # in place: the list the trainer reads at every step
        self._reload_records(state.global_step)
        self.resumed_guard_state = True
        logger.warning(
            "[%s] resumed the guard state of step %d: baseline kept, %d alert(s), sft weight %s%s",
            self.stage, state.global_step, len(saved["events"]), saved["sft_weight"],
            ", stopped early by the guard" if self.stopped_early else "",
        )  # fmt: skip
        return True

    def _reload_records(self, step: int) -> None:
        """The stage's evaluations up to the checkpoint, back into memory (for the report) and alone in its files."""
        for path, keep_in_memory in ((self.jsonl_path, True), (self.records_path, False)):
            if path is None:
                continue
            kept = records_up_to(path, step, rewrite=self.monitor.on_main_process())
            if keep_in_memory:
                self.monitor.records += kept

    # --- schedule

    def _due(self, step: int, max_steps: int, args) -> bool:
        if self.config.probe_every > 0:
            return step % self.config.probe_every == 0
        if spaced_probe_due(step, max_steps, self.config.probe_min_evaluations):
            return True  # the same on every rank: no broadcast needed
        # Timing differs between ranks, and every rank must take part in each evaluation: the main process decides.
        train_seconds = time.perf_counter() - self._t_begin - self.probe_seconds
        due = auto_probe_due(
            self.config.probe_time_budget, train_seconds, self.probe_seconds, self._last_probe_seconds
        )
        if args.world_size > 1:
            decision = [due]
            torch.distributed.broadcast_object_list(decision, src=0)
            due = decision[0]
        return due

    # --- one evaluation

    def _evaluate(self, event: str, args, state, control, model) -> None:
        t0 = time.perf_counter()
        probe_set = self.monitor.probe_set
        handover = self._handover(model, args) if event == "begin" else None
        if handover is not None:
            measured = taken_over(handover)
        else:
            # Bars for the stage-boundary evaluations only: mid-stage ones would break the trainer's own bar.
            bar = event != "step" and self.monitor.on_main_process()
            progress = f"[{self.stage}] probes at {event}" if bar else None
            measured = measure(model, self.tokenizer, probe_set, self.config, args, event, self._start_texts, progress)
        metrics, values = family_values(probe_set, measured.stats)

        first = self._start_values is None
        if first:
            self._start_metrics = dict(metrics)
            self._start_values = values
            self._start_texts = measured.texts
        step = state.global_step
        splits = [p.split for p in probe_set.probes]
        squeeze = change_metrics(
            metrics, self._start_metrics, self._start_values, values, splits, self.config.probe_bootstrap, seed=step
        )
        if (slot := sft_weight_slot(self.trainer, args)) is not None:
            metrics["guard/sft_weight"] = slot[0][slot[1]]

        record = {"stage": self.stage, "event": event, "step": step, "global_step": self._offset + step}
        value = self.alert_value(metrics)
        above = not first and math.isfinite(value) and value >= self.config.squeeze_threshold
        if above and not self._above:
            record["alert"] = self._alert(value, metrics, squeeze, args, state, control, last=event == "end")
            if self.stopped_early:
                record["event"] = event = "end"
        self._above = above
        metrics["squeeze/alert"] = float(above)
        metrics["squeeze/alert_value"] = value

        elapsed = time.perf_counter() - t0
        self.probe_seconds += elapsed
        # The schedule plans with the cost of a full evaluation, which a handed-over one only stands for.
        self._last_probe_seconds = handover.seconds if handover is not None else elapsed
        if event == "end" and measured.fingerprint is not None:
            self.monitor.handover = Handover(
                self.stage, measured.stats, measured.texts, measured.greedy_samples, measured.fingerprint, elapsed
            )
        self._last_eval_step = step
        metrics["probe/seconds"] = elapsed
        if handover is not None:
            record["handed_over_from"] = handover.stage
        record.update(metrics)
        record["greedy_samples"] = measured.greedy_samples
        self.monitor.records.append(record)
        if self.monitor.on_main_process() and self.jsonl_path is not None:
            append_evaluation(self.jsonl_path, record)
            append_probe_records(self.records_path, record, probe_set.probes, values)
        if self.monitor.on_main_process() and event != "step":
            logger.info("[%s] probes at %s (step %d): %s", self.stage, event, step, headline(metrics))
        self._log(metrics, control)

    def alert_value(self, metrics: dict[str, float]) -> float:
        """What the alert compares with the threshold: the configured metric, or the lower end of its interval."""
        metric = self.config.squeeze_metric
        if metric == "score":  # no interval: the score is a min of two means over families, not a mean over probes
            return metrics.get("squeeze/score", math.nan)
        suffix = "_lo" if self.config.squeeze_alert_on == "lower" else ""
        return metrics.get(f"mech/{metric}{suffix}", math.nan)

    def _handover(self, model, args) -> Handover | None:
        """The previous stage's end evaluation, taken (once) when it measured the model this stage starts from."""
        handover, self.monitor.handover = self.monitor.handover, None
        if handover is None:
            return None
        return check_handover(handover, model, self.tokenizer, self.monitor.probe_set, self.config, args)

    def _alert(self, value: float, metrics: dict[str, float], squeeze, args, state, control, last: bool) -> str:
        message = alert_message(
            self.stage, state.global_step, self.config.squeeze_metric, value, self.config.squeeze_threshold,
            metrics, squeeze, bound=self.config.squeeze_alert_on,
        )  # fmt: skip
        action = "warn"
        if not self._guard_acted and self.config.guard_action == "stop":
            if last:
                action = "stop: the stage was ending at this step anyway"
            else:
                stop_training(state, control, GUARD_NAME)  # the stage reads the reason from the trainer's state
                control.should_save = True  # the trainer saves a checkpoint before leaving the loop
                self.stopped_early = True
                action = f"stopped the stage at step {state.global_step} of {state.max_steps} and saved a checkpoint"
            self._guard_acted = True
        elif not self._guard_acted and self.config.guard_action == "mitigate":
            changed = raise_sft_weight(self.trainer, args, self.config.guard_sft_weight)
            if changed is not None:
                action = (
                    f"raised the SFT-on-y+ loss weight from {changed[0]:g} to {changed[1]:g} for the rest of the stage"
                )
            else:
                action = f"warn ({self._mitigation_note})"
            self._guard_acted = True
        if self.monitor.on_main_process():
            logger.warning("%s Guard: %s", message, action)
        self.monitor.events.append(
            {"stage": self.stage, "step": state.global_step, "global_step": self._offset + state.global_step,
             "metric": self.config.squeeze_metric, "value": value, "message": message, "action": action}
        )  # fmt: skip
        return message

    def _log(self, metrics: dict[str, float], control) -> None:
        if self.trainer is None:
            self._pending.update(metrics)
            return
        # `Trainer.log` ends in `callback_handler.on_log`, which clears `should_log`: without restoring it, the
        # trainer's own log entry due at this step would be skipped.
        should_log = control.should_log
        if isinstance(self.trainer, Trainer):
            # The base method on purpose: TRL's DPO/SFT trainers override `log` to flush their own running metric
            # averages into every call, which would cut their logging windows at each probe.
            Trainer.log(self.trainer, dict(metrics))
        else:
            self.trainer.log(dict(metrics))
        control.should_log = should_log
