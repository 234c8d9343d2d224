"""`SqueezingCallback`: the squeezing monitor as one TrainerCallback, for any TRL script or one stage of the recipe.

In a script of your own, one line (it builds its probes from the trainer's data and writes its report at the end):

    trainer = DPOTrainer(..., callbacks=[SqueezingCallback()])          # or SFTTrainer, GRPOTrainer
    trainer.add_callback(SqueezingCallback(trainer))                    # the same, as TRL's own callbacks are added

In the recipe, a `SqueezingMonitor` (`alignkit.monitors.monitor`) spanning the run hands out one per stage
(`monitor.callback(stage, stage_dir)`) and keeps what they record. Either way this class does the work: when to
evaluate, the alert and the guard, the stage's files, resume. What one evaluation measures is `measure`'s job; what
the alert says and how the guard acts, `guard`'s; the files written and read back on resume, `stage_files`'.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import sys
import time
from pathlib import Path

import torch
from transformers import ProcessorMixin, Trainer, TrainerCallback

from alignkit.callbacks import stop_training
from alignkit.errors import AlignkitError
from alignkit.monitors.config import MonitorConfig
from alignkit.monitors.guard import alert_message, check_mitigation, mitigate, sft_weight_slot, switch_on_floor
from alignkit.monitors.measure import (
    Handover,
    change_metrics,
    check_handover,
    family_values,
    headline,
    measure,
    taken_over,
)
from alignkit.monitors.monitor import SqueezingMonitor
from alignkit.monitors.probes import build_probe_set
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
from alignkit.monitors.trainer_data import probe_rows

logger = logging.getLogger("alignkit.monitors")

GUARD_NAME = "the squeezing guard"  # a stage's status then reads "stopped early by the squeezing guard"
REPORT_NAME = "squeezing_report.md"  # what a callback used alone writes into the trainer's output_dir
# Stage names of a callback used alone, by trainer class (its own or a base class's); other trainers: "train".
TRAINER_STAGES = {"DPOTrainer": "dpo", "SFTTrainer": "sft", "GRPOTrainer": "grpo"}


class SqueezingCallback(TrainerCallback):
    """The squeezing monitor as a TrainerCallback: probes the model at the stage's first step, on the schedule, and
    at its last step; alerts and guards; logs `squeeze/*` through the trainer (TensorBoard, W&B: `report_to`).

    Alone, in any TRL script (DPO, SFT, GRPO: docs/api.md):

        from alignkit import SqueezingCallback

        trainer = DPOTrainer(model=model, args=training_args, train_dataset=dataset["train"],
                             eval_dataset=dataset["test"], processing_class=tokenizer,
                             callbacks=[SqueezingCallback()])
        trainer.train()  # then output_dir has squeezing_report.md, squeezing.png, probes.jsonl, probe_set.jsonl

    At the start of training it takes the model, the tokenizer, the training and held-out data and `output_dir`
    from the trainer, builds the probe set from that data (any TRL format: `alignkit.monitors.trainer_data`), and
    at the end writes the report and the figure into `output_dir`. Options are the recipe's monitor fields
    (`MonitorConfig`), e.g. `SqueezingCallback(probe_families=[...], squeeze_threshold=0.1, guard_action="stop")`;
    `max_overhead` is `probe_max_overhead`.

    In the recipe (one per stage, from a `SqueezingMonitor` spanning the run): `monitor.callback(stage, stage_dir)`.

    The trainer is needed to log through `Trainer.log` at the step measured and for `mitigate`: given as `trainer`,
    by `attach(trainer)`, or else found at the start of training as the `Trainer` whose `train()` runs the event
    (HF passes callbacks no trainer). Without one, metrics ride along with the trainer's next log entry.

    The guard's state (stage-start baseline, alert history, a weight raised by `mitigate`, "stopped early") is saved
    in every checkpoint (`GUARD_STATE`) and restored when the stage resumes from it.

    Args:
        trainer: the trainer this callback is added to (optional; see above).
        monitor: the recipe's `SqueezingMonitor` handing this callback out: its probe set, config and tokenizer are
            read here, and the stage's records and guard events go into it. None: the callback builds its own at the
            start of training, from `options` and the trainer's data.
        stage: the stage's name in records, logs and the report (alone: from the trainer, e.g. "dpo").
        stage_dir: where the stage's files go (`stage_files`); None writes none (alone: the trainer's output_dir).
        seed: seeds the choice of probes when the callback builds them (alone; default: the trainer's `args.seed`).
        **options: `MonitorConfig` fields (alone only; with `monitor`, its config rules).
    """

    def __init__(
        self,
        trainer=None,
        *,
        monitor: SqueezingMonitor | None = None,
        stage: str | None = None,
        stage_dir: str | Path | None = None,
        seed: int | None = None,
        **options,
    ):
        if monitor is not None and options:
            raise AlignkitError(f"SqueezingCallback: options {sorted(options)} are the monitor's config's to set")
        self.monitor = monitor
        self.config = monitor.config if monitor is not None else monitor_config(options)
        self.alone = monitor is None  # builds its own probes and monitor, and writes the report at the end
        self.stage = stage
        self.seed = seed
        self.stage_dir = Path(stage_dir) if stage_dir is not None else None
        self.trainer = trainer
        self.tokenizer = monitor.tokenizer if monitor is not None else None
        self.report_path: Path | None = None  # alone: the report written at the end of training
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

    @property
    def jsonl_path(self) -> Path | None:
        return self.stage_dir / "probes.jsonl" if self.stage_dir is not None else None

    @property
    def records_path(self) -> Path | None:
        return self.stage_dir / PROBE_RECORDS if self.stage_dir is not None else None

    def attach(self, trainer) -> SqueezingCallback:
        """Give the callback its trainer: for logging through `Trainer.log` and for `mitigate`."""
        self.trainer = trainer
        return self

    def _join(self, args, model, processing_class, train_dataloader=None, eval_dataloader=None) -> None:
        """Alone: find the trainer, tokenizer, data and output_dir, build the probe set and the monitor."""
        if self.trainer is None:
            self.trainer = calling_trainer()
        trainer = self.trainer
        tokenizer = processing_class if processing_class is not None else getattr(trainer, "processing_class", None)
        if isinstance(tokenizer, ProcessorMixin):
            tokenizer = tokenizer.tokenizer
        if tokenizer is None:
            raise AlignkitError("SqueezingCallback has no tokenizer: use a trainer with a processing_class")
        train = getattr(trainer, "train_dataset", None)
        if train is None and train_dataloader is not None:
            train = train_dataloader.dataset
        heldout = getattr(trainer, "eval_dataset", None)
        if heldout is None and eval_dataloader is not None:
            heldout = eval_dataloader.dataset
        if isinstance(heldout, dict):  # several eval sets: the first one
            heldout = next(iter(heldout.values()), None)
        out = Path(args.output_dir)
        eos = tokenizer.eos_token
        probe_set = build_probe_set(
            probe_rows(train, eos, "training"),
            probe_rows(heldout, eos, "evaluation") or None,
            self.config,
            seed=args.seed if self.seed is None else self.seed,
            cache_dir=out,
        )
        self.monitor = SqueezingMonitor(probe_set, self.config, tokenizer, out)
        self.tokenizer = tokenizer
        self.stage = self.stage or trainer_stage(trainer)
        self.stage_dir = self.stage_dir or out

    # --- trainer events

    def on_train_begin(self, args, state, control, model=None, processing_class=None, **kwargs):
        if not self.config.probe_enabled:
            return control
        if self.alone:
            self._join(args, model, processing_class, kwargs.get("train_dataloader"), kwargs.get("eval_dataloader"))
        self.tokenizer = self.monitor.tokenizer or processing_class
        if self.tokenizer is None:
            raise AlignkitError("SqueezingMonitor has no tokenizer: pass one, or use a trainer with processing_class")
        if self.config.guard_action == "mitigate":
            self._mitigation_note = check_mitigation(self.trainer, args, self.stage, self.config.guard_mitigation)
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
        if self.alone:
            self._write_report()
        return control

    def _write_report(self) -> None:
        """Alone: the figure and `REPORT_NAME` in the stage's folder (the trainer's output_dir), main process."""
        markdown = self.monitor.finish()
        if self.monitor.on_main_process() and self.stage_dir is not None:
            self.report_path = self.stage_dir / REPORT_NAME
            self.report_path.write_text(markdown + "\n")
            logger.info("[%s] squeezing report: %s", self.stage, self.report_path)

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
            "negative_floor": getattr(getattr(self.trainer, "objective", None), "negative_floor", None),
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
        if saved.get("negative_floor") is not None:  # a floor the guard turned on (alignkit/monitors/guard.py)
            switch_on_floor(self.trainer, saved["negative_floor"])
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
            action = mitigate(self.trainer, args, self.config) or f"warn ({self._mitigation_note})"
            self._guard_acted = True
        if self.monitor.on_main_process():
            logger.warning("%s Guard: %s", message, action)
        self.monitor.events.append(
            {"stage": self.stage, "step": state.global_step, "global_step": self._offset + state.global_step,
             "metric": self.config.squeeze_metric, "value": value, "message": message, "action": action}
        )  # fmt: skip
        return message

    def _log(self, metrics: dict[str, float], control) -> None:
        metrics = {k if k.startswith("squeeze/") else f"squeeze/{k}": v for k, v in metrics.items()}
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


def monitor_config(options: dict) -> MonitorConfig:
    """`MonitorConfig(**options)`, with `max_overhead` for `probe_max_overhead`; an unknown option is an error."""
    options = dict(options)
    if "max_overhead" in options:
        options["probe_max_overhead"] = options.pop("max_overhead")
    known = {f.name for f in dataclasses.fields(MonitorConfig)}
    if unknown := sorted(options.keys() - known):
        raise AlignkitError(
            f"SqueezingCallback: unknown option(s) {unknown}; the options are the recipe's monitor fields: "
            f"{', '.join(sorted(known))}"
        )
    return MonitorConfig(**options)


def trainer_stage(trainer) -> str:
    """The stage name of a callback used alone: dpo, sft or grpo by the trainer's class (or a base's), else train."""
    for cls in type(trainer).__mro__:
        if cls.__name__ in TRAINER_STAGES:
            return TRAINER_STAGES[cls.__name__]
    return "train"


def calling_trainer() -> Trainer | None:
    """The `transformers.Trainer` whose method is running this event, or None.

    HF hands callbacks the model, tokenizer, optimizer and dataloaders but not the trainer; a callback given in
    `callbacks=[...]` finds it here, once, as the `self` of the nearest calling frame that is a Trainer.
    """
    frame = sys._getframe(1)
    while frame is not None:
        candidate = frame.f_locals.get("self")
        if isinstance(candidate, Trainer):
            return candidate
        frame = frame.f_back
    return None
