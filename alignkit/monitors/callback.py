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
from alignkit.jsonl import json_safe, write_jsonl_atomic
from alignkit.monitors.config import MonitorConfig
from alignkit.monitors.grpo import GRPO_STAGE, grpo_probe_rows
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
from alignkit.monitors.probes import ProbeSet, build_probe_set
from alignkit.monitors.scoring import auto_probe_due, plan_capped, spaced_probe_due
from alignkit.monitors.stage_files import (
    GUARD_STATE,
    PROBE_RECORDS,
    GuardState,
    append_evaluation,
    append_probe_records,
    load_guard_state,
    records_up_to,
    save_guard_state,
)
from alignkit.monitors.trainer_data import probe_rows
from alignkit.preempt import Interrupted

logger = logging.getLogger("alignkit.monitors")

GUARD_NAME = "the squeezing guard"  # a stage's status then reads "stopped early by the squeezing guard"
REPORT_NAME = "squeezing_report.md"  # what a callback used alone writes into the trainer's output_dir
# Stage names of a callback used alone, by trainer class (its own or a base class's); other trainers: "train".
TRAINER_STAGES = {"DPOTrainer": "dpo", "SFTTrainer": "sft", "GRPOTrainer": "grpo"}
MIN_PROBES_PER_SPLIT = 2  # what a cost cap never cuts below (probe_max_overhead)
FEW_EVALUATIONS = 3  # a cost cap that leaves fewer evaluations in a stage says so


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
        self.clock = time.perf_counter  # what the schedule times with (a test may put a fake clock here)
        self.overhead: float | None = None  # the stage's realised probing share of training time, at its end
        # The cost cap's measurements (probe_max_overhead): training time step by step, probing excluded.
        self._train_seconds = 0.0
        self._trained_steps = 0
        self._step_t0: float | None = None
        self._full_seconds = 0.0  # what the stage's first evaluation cost (or stands for, when handed over)
        self._step_seconds: float | None = None  # what the last mid-stage evaluation cost
        self._start_stats: list[dict] | None = None
        self._keep: list[int] | None = None  # indices of the probes still scored, when the cap cut them
        self._planned = False

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
        seed = args.seed if self.seed is None else self.seed
        self.stage = self.stage or trainer_stage(trainer)
        notes = []
        if self.stage == GRPO_STAGE:  # prompts only: completions sampled now, split by the trainer's rewards
            c = self.config
            sample = (trainer, model, tokenizer)
            options = (c.probe_num_prompts, c.probe_max_new_tokens, c.probe_generate_batch_size, seed)
            train_rows, note = grpo_probe_rows(*sample, train, *options)
            heldout_rows, held = grpo_probe_rows(*sample, heldout, *options) if heldout is not None else ([], "")
            notes = [note] + ([f"held-out split: {held}"] if heldout_rows else [])
        else:
            train_rows = probe_rows(train, tokenizer.eos_token, "training")
            heldout_rows = probe_rows(heldout, tokenizer.eos_token, "evaluation")
        if not train_rows:
            raise AlignkitError(f"SqueezingCallback: no probe rows could be made from the trainer's data ({notes})")
        probe_set = build_probe_set(train_rows, heldout_rows or None, self.config, seed=seed, cache_dir=out)
        probe_set.notes[:0] = notes
        self.monitor = SqueezingMonitor(probe_set, self.config, tokenizer, out)
        self.tokenizer = tokenizer
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
        self._t_begin = self.clock()
        if restored and self.stopped_early:
            # The guard had stopped this stage and its checkpoint was saved, but the run died before the stage was
            # marked complete: end it here again rather than train on past the stop (and say so to the stage).
            stop_training(state, control, GUARD_NAME)
            self._last_eval_step = state.global_step
            return control
        self._evaluate("resume" if restored else "begin", args, state, control, model)
        return control

    def on_step_begin(self, args, state, control, **kwargs):
        self._step_t0 = self.clock()
        if self.stopped_early:  # see on_train_begin: a resumed, guard-stopped stage trains no further
            stop_training(state, control, GUARD_NAME)
        return control

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if not self.config.probe_enabled:
            return control
        if self._step_t0 is not None:  # this step's training time (before any probing at its end)
            self._train_seconds += self.clock() - self._step_t0
            self._trained_steps += 1
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
        if self.alone or self.config.probe_max_overhead > 0:
            self._cost_note()
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

    def guard_state(self, args=None) -> GuardState:
        """Everything a resumed stage needs to judge and guard exactly as if it had not stopped (one record, saved and
        restored whole: `stage_files.GuardState`)."""
        slot = sft_weight_slot(self.trainer, args)
        return GuardState(
            stage=self.stage,
            offset=self._offset,
            start_metrics=self._start_metrics,
            start_values=self._start_values,
            start_texts=self._start_texts,
            above=self._above,
            guard_acted=self._guard_acted,
            stopped_early=self.stopped_early,
            sft_weight=slot[0][slot[1]] if slot is not None else None,
            negative_floor=getattr(getattr(self.trainer, "objective", None), "negative_floor", None),
            events=[e for e in self.monitor.events if e["stage"] == self.stage],
            probe_seconds=self.probe_seconds,
            last_probe_seconds=self._last_probe_seconds,
            train_seconds=self._train_seconds,
            trained_steps=self._trained_steps,
            full_seconds=self._full_seconds,
            step_seconds=self._step_seconds,
            probe_keep=self._keep,
        )

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
        self._offset = saved.offset
        self._start_metrics = saved.start_metrics
        self._start_values = saved.start_values
        self._start_texts = saved.start_texts
        self._above = saved.above
        self._guard_acted = saved.guard_acted
        self.stopped_early = saved.stopped_early
        self.probe_seconds = saved.probe_seconds
        self._last_probe_seconds = saved.last_probe_seconds
        self._train_seconds = saved.train_seconds
        self._trained_steps = saved.trained_steps
        self._full_seconds = saved.full_seconds if saved.full_seconds is not None else saved.last_probe_seconds
        self._step_seconds = saved.step_seconds
        self._keep = saved.probe_keep  # start values were saved for these probes only
        self._planned = True  # the cap planned (and cut) at step 1, before any checkpoint
        known = {(e["stage"], e["step"]) for e in self.monitor.events}
        self.monitor.events += [e for e in saved.events if (e["stage"], e["step"]) not in known]
        if saved.sft_weight is not None and (slot := sft_weight_slot(self.trainer, args)) is not None:
            slot[0][slot[1]] = saved.sft_weight  # in place: the list the trainer reads at every step
        if saved.negative_floor is not None:  # a floor the guard turned on (alignkit/monitors/guard.py)
            switch_on_floor(self.trainer, saved.negative_floor)
        self._reload_records(state.global_step)
        self.resumed_guard_state = True
        logger.warning(
            "[%s] resumed the guard state of step %d: baseline kept, %d alert(s), sft weight %s%s",
            self.stage, state.global_step, len(saved.events), saved.sft_weight,
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

    @property
    def probes(self) -> ProbeSet:
        """The probes this stage scores: the monitor's, or those a cost cap kept (`probe_max_overhead`)."""
        full = self.monitor.probe_set
        if self._keep is None:
            return full
        return ProbeSet([full.probes[i] for i in self._keep], full.families, full.notes)

    def _due(self, step: int, max_steps: int, args) -> bool:
        if self.config.probe_every > 0:
            return step % self.config.probe_every == 0
        capped = self.config.probe_max_overhead > 0
        if not capped and spaced_probe_due(step, max_steps, self.config.probe_min_evaluations):
            return True  # the same on every rank: no broadcast needed
        # Timing differs between ranks, and every rank must take part in each evaluation: the main process decides.
        if capped:
            decision = self._capped_decision(step, max_steps)
        else:
            train_seconds = self.clock() - self._t_begin - self.probe_seconds
            budget = self.config.probe_time_budget
            decision = (auto_probe_due(budget, train_seconds, self.probe_seconds, self._last_probe_seconds), None)
        if args.world_size > 1:
            box = [decision]
            torch.distributed.broadcast_object_list(box, src=0)
            decision = box[0]
        due, keep = decision
        if keep is not None:
            self._cut_probes(keep)
        return due

    def _capped_decision(self, step: int, max_steps: int) -> tuple[bool, int | None]:
        """Under `probe_max_overhead`: (evaluate at this step?, how many probes to keep from now on, or None).

        Planned afresh at every step from what was measured (`plan_capped`). At the first step it also decides
        whether the stage's last evaluation needs fewer probes to fit, and warns when the cap leaves fewer than
        `FEW_EVALUATIONS` evaluations in the stage.
        """
        cap, last = self.config.probe_max_overhead, self._last_eval_step or 0
        n_all, n_now = len(self.monitor.probe_set.probes), len(self.probes.probes)

        def plan(n_scored: int):
            end = self._full_seconds * n_scored / n_all
            step_cost = self._step_seconds if self._step_seconds is not None else end
            return plan_capped(
                cap, max_steps, last, self._train_seconds, self._trained_steps, self.probe_seconds, step_cost, end
            )

        current, keep = plan(n_now), None
        if not self._planned:
            self._planned = True
            if current.keep_fraction < 1:
                keep = len(kept_probes(self.monitor.probe_set, int(n_all * current.keep_fraction)))
                current = plan(keep)
            evaluations = sum(r["stage"] == self.stage for r in self.monitor.records) + current.evaluations_left + 1
            if evaluations < FEW_EVALUATIONS:
                message = (
                    f"[{self.stage}] probe_max_overhead={cap:g} leaves {evaluations} evaluation(s) in this stage of "
                    f"{max_steps} steps (fewer than {FEW_EVALUATIONS}): the curves will be coarse; a larger cap, "
                    "fewer probes (probe_num_prompts) or lighter mid-stage evaluations (probe_step_families) buy more"
                )
                self._note(message, warn=True)
        due = current.every > 0 and step < max_steps and step - last >= current.every
        return due, keep

    def _cut_probes(self, keep: int) -> None:
        """Score `keep` of the probes from now on (`kept_probes`), and re-read the stage's first evaluation on them,
        so that every change (the alert's, the report's start -> end) compares the same probes."""
        full = self.monitor.probe_set
        self._keep = kept_probes(full, keep)
        self._start_values = [self._start_values[i] for i in self._keep]
        if self._start_texts is not None:
            self._start_texts = [self._start_texts[i] for i in self._keep]
        self._start_metrics, _ = family_values(self.probes, [self._start_stats[i] for i in self._keep])
        first = next(r for r in self.monitor.records if r["stage"] == self.stage)
        first.update(self._start_metrics)
        first["probes_kept"] = len(self._keep)
        if self.monitor.on_main_process() and self.jsonl_path is not None:
            stage_records = [json_safe(r) for r in self.monitor.records if r["stage"] == self.stage]
            write_jsonl_atomic(self.jsonl_path, stage_records)
        self._note(
            f"[{self.stage}] probe_max_overhead={self.config.probe_max_overhead:g}: {len(self._keep)} of "
            f"{len(full.probes)} probes scored after the first evaluation (the stage's last evaluation would not fit "
            "with all of them); every change in this stage is over those probes",
            warn=True,
        )

    def _note(self, message: str, warn: bool = False) -> None:
        """A line for the report (the monitor's notes), and for the log."""
        self.monitor.notes.append(message)
        if self.monitor.on_main_process():
            (logger.warning if warn else logger.info)("%s", message)

    def _cost_note(self) -> None:
        """The realised share of training time that probing took in this stage, and the evaluation steps."""
        steps = [r["step"] for r in self.monitor.records if r["stage"] == self.stage]
        self.overhead = self.probe_seconds / self._train_seconds if self._train_seconds > 0 else math.nan
        cap = self.config.probe_max_overhead
        self._note(
            f"[{self.stage}] probing took {self.probe_seconds:.1f} s, {self.overhead:.1%} of the stage's "
            f"{self._train_seconds:.1f} s of training"
            + (f" (probe_max_overhead {cap:.1%})" if cap else "")
            + f"; evaluations at steps {', '.join(map(str, steps))}"
        )

    # --- one evaluation

    def _evaluate(self, event: str, args, state, control, model) -> None:
        t0 = self.clock()
        probe_set = self.probes
        handover = self._handover(model, args) if event == "begin" else None
        if handover is not None:
            measured = taken_over(handover)
        else:
            # Bars for the stage-boundary evaluations only: mid-stage ones would break the trainer's own bar.
            bar = event != "step" and self.monitor.on_main_process()
            progress = f"[{self.stage}] probes at {event}" if bar else None
            try:
                measured = measure(
                    model, self.tokenizer, probe_set, self.config, args, event, self._start_texts, progress
                )
            except Interrupted:  # a preemption signal (alignkit/preempt.py); at a stage's start nothing is lost
                if event in ("begin", "resume"):
                    raise
                logger.warning("[%s] probes at step %d dropped for the preemption checkpoint; the resumed run "
                               "evaluates there", self.stage, state.global_step)  # fmt: skip
                return
        metrics, values = family_values(probe_set, measured.stats)

        first = self._start_values is None
        if first:
            self._start_metrics = dict(metrics)
            self._start_values = values
            self._start_texts = measured.texts
            self._start_stats = measured.stats
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

        elapsed = self.clock() - t0
        self.probe_seconds += elapsed
        # The schedule plans with the cost of a full evaluation, which a handed-over one only stands for.
        self._last_probe_seconds = handover.seconds if handover is not None else elapsed
        if first:
            self._full_seconds = self._last_probe_seconds
        elif event == "step":
            self._step_seconds = elapsed
        if event == "end" and measured.fingerprint is not None and self._keep is None:
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


def kept_probes(probe_set: ProbeSet, keep: int) -> list[int]:
    """Indices of about `keep` probes, the first of each split in proportion to its size (at least
    `MIN_PROBES_PER_SPLIT` of each, or all it has)."""
    n = len(probe_set.probes)
    by_split: dict[str, list[int]] = {}
    for i, probe in enumerate(probe_set.probes):
        by_split.setdefault(probe.split, []).append(i)
    kept = []
    for indices in by_split.values():
        share = max(MIN_PROBES_PER_SPLIT, round(keep * len(indices) / n))
        kept += indices[:share]
    return sorted(kept)


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
