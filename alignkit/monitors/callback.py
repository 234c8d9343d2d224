"""The squeezing monitor: probe families tracked through every stage of a run, with alerts, a guard and a figure.

    monitor = SqueezingMonitor(probe_set, config, tokenizer, run_dir)
    trainer = SFTTrainer(..., callbacks=[monitor.callback("sft", run_dir / "sft")])
    trainer.train()
    trainer = DPOTrainer(..., callbacks=[cb := monitor.callback("preference", run_dir / "preference")])
    cb.attach(trainer)  # metrics to TensorBoard/W&B at the probe step; `mitigate` with any loss_weights
    trainer.train()
    markdown = monitor.finish()  # writes squeezing.png, returns the report section

One `SqueezingMonitor` spans the run: it owns the probe set, the global step axis across stages (each stage's steps
continue where the previous stage ended), every evaluation record and the alert/guard log. Each stage gets its own
`SqueezingCallback`, which works with any transformers/TRL trainer: the model comes from the callback arguments.
"""

from __future__ import annotations

import json
import logging
import math
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import PartialState
from transformers import Trainer, TrainerCallback

from alignkit.callbacks import stop_training
from alignkit.errors import AlignkitError
from alignkit.jsonl import read_jsonl_cache, write_jsonl_atomic
from alignkit.monitors.config import ALL_FAMILIES, MonitorConfig, alert_unavailable
from alignkit.monitors.evaluate import evaluate_probes
from alignkit.monitors.guard import alert_message, check_mitigation, raise_sft_weight, sft_weight_slot
from alignkit.monitors.plot import plot_probes
from alignkit.monitors.probes import SPLITS, ProbeSet
from alignkit.monitors.scoring import (
    CONCENTRATION_FAMILIES,
    FIXED_GREEDY,
    MECHANISM_METRICS,
    auto_probe_due,
    family_metrics,
    mechanism_per_probe,
    mechanism_summary,
    merge_shards,
    metric_key,
    probe_values,
    shard,
    squeezing_score,
)

logger = logging.getLogger("alignkit.monitors")

GREEDY_SAMPLES = 2  # greedy decodings per split kept in each JSONL record, to read what "greedy" was
FINGERPRINT_PROBES = 2  # probes re-scored to check that a stage starts from the model the last one ended with
# A stage's end evaluation also scores its own greedy decodings as fixed text, under this name: the next stage's
# `greedy_start` when the end evaluation is handed over to it.
HANDOVER_GREEDY = "greedy_end"
GUARD_NAME = "the squeezing guard"  # a stage's status then reads "stopped early by the squeezing guard"
GUARD_STATE = "squeezing_guard_state.json"  # saved in every checkpoint folder; read back on resume
PROBE_RECORDS = "probe_records.jsonl"
RECORD_DIGITS = 5  # significant digits kept per number in the per-probe records


@dataclass
class Handover:
    """A stage's last evaluation, offered to the next stage as its first (see `SqueezingCallback._handover`)."""

    stage: str
    stats: list[dict[str, dict[str, float]]]  # per probe: family -> response_token_stats sums
    texts: list[str | None]  # per probe: the greedy decoding at that evaluation
    greedy_samples: dict[str, list[str]]
    fingerprint: list[float]  # `chosen` log-probs of the first FINGERPRINT_PROBES probes
    seconds: float  # what the evaluation cost


class SqueezingMonitor:
    """Owns the probe set and the records of a whole run; hands out one callback per stage.

    Args:
        probe_set: from `build_probe_set` (saved to `<run_dir>/probe_set.jsonl` here, on the main process).
        config: the monitor settings.
        tokenizer: the tokenizer to encode probes with; None takes the trainer's `processing_class`.
        run_dir: where the probe set and the figure go; stage JSONL files go to each callback's `stage_dir`.
    """

    def __init__(self, probe_set: ProbeSet, config: MonitorConfig, tokenizer=None, run_dir: str | Path | None = None):
        self.probe_set = probe_set
        self.config = config
        self.tokenizer = tokenizer
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.records: list[dict] = []  # every evaluation of every stage, in order
        self.boundaries: list[tuple[int, str]] = []  # (global step where a stage began, stage name)
        self.events: list[dict] = []  # alerts and the guard's actions
        self.notes: list[str] = list(probe_set.notes)
        self.next_offset = 0  # global step at which the next stage's step 0 sits
        # Known for sure only once a trainer has set up the distributed state (a PartialState made before the
        # TrainingArguments can report a single process under torchrun on CPU), so callbacks fill it in.
        self.is_main_process: bool | None = None
        self._probe_set_saved = False
        self.handover: Handover | None = None  # the last stage's end evaluation, for the next stage's begin
        self._check_alert_inputs()

    def _check_alert_inputs(self) -> None:
        """No silent disarming: an alert metric the tracked families cannot produce is said at start-up.

        An error when the guard is to act (stop, mitigate): a run that trusts the guard must not run without one. A
        warning and a report note when it would only warn.
        """
        if not self.config.probe_enabled:
            return
        why = alert_unavailable(self.config.squeeze_metric, self.probe_set.families)
        if why is None:
            return
        message = f"the squeezing alert is disarmed: {why}, and the probe set tracks {self.probe_set.families}"
        if self.config.guard_action != "warn":
            raise AlignkitError(f"{message}; guard_action='{self.config.guard_action}' could never act")
        logger.warning("%s", message)
        self.notes.append(message)

    def _save_probe_set(self) -> None:
        if self.run_dir is not None and not self._probe_set_saved and self._main():
            self.probe_set.save(self.run_dir / "probe_set.jsonl")
            self._probe_set_saved = True

    def _main(self) -> bool:
        return self.is_main_process if self.is_main_process is not None else PartialState().is_main_process

    def callback(self, stage: str, stage_dir: str | Path | None = None, trainer=None) -> SqueezingCallback:
        """A TrainerCallback probing the stage named `stage`; its JSONL goes to `<stage_dir>/probes.jsonl`."""
        if stage_dir is None and self.run_dir is not None:
            stage_dir = self.run_dir / stage
        callback = SqueezingCallback(self, stage, stage_dir)
        return callback.attach(trainer) if trainer is not None else callback

    def finish(self, figure_name: str = "squeezing.png") -> str:
        """Write the figure (main process, when there is a run_dir) and return the report's markdown section."""
        figure = None
        self._save_probe_set()
        if self._main() and self.run_dir is not None and self.records:
            figure = plot_probes(
                self.records,
                self.boundaries,
                self.run_dir / figure_name,
                self.config.squeeze_threshold,
                alert_metric=self.config.squeeze_metric,
            )
        return self.summary_markdown(figure.name if figure else None)

    def summary_markdown(self, figure: str | None = None) -> str:
        """Start → end of every family and split, per stage; the alerts and what the guard did."""
        lines = ["## Squeezing monitor", ""]
        counts = " + ".join(f"{self.probe_set.count(s)} {s}" for s in SPLITS if self.probe_set.count(s))
        lines.append(f"Probes: {counts} prompts; families: {', '.join(self.probe_set.families)}.")
        lines += [f"- note: {n}" for n in self.notes]
        if not self.records:
            return "\n".join([*lines, "", "No evaluation was recorded."]) + "\n"
        if figure:
            lines += ["", f"![probe families through training]({figure})"]
        stages = list(dict.fromkeys(r["stage"] for r in self.records))
        first = self.records[0]
        lines += [
            "",
            "Mean log π(y|x) over the probes (summed over response tokens); in brackets the change within that stage. "
            "`argmax prob` and `entropy` are per-token means along the response.",
            "",
            "| family | split | run start | " + " | ".join(f"end of {s}" for s in stages) + " |",
            "|---|---|---:|" + "---:|" * len(stages),
        ]
        rows = [(f, "logp", f) for f in ALL_FAMILIES if f in self.probe_set.families]
        if "greedy" in self.probe_set.families:
            rows.append((FIXED_GREEDY, "logp", f"{FIXED_GREEDY} (the stage's first decoding, fixed)"))
        rows += [
            (f, name, f"{f} {name.replace('_', ' ')}")
            for f in CONCENTRATION_FAMILIES
            for name in ("argmax_prob", "entropy")
        ]
        for family, name, label in rows:
            for split in SPLITS:
                key = metric_key(split, family, name)
                if key not in first and not any(key in r for r in self.records):
                    continue
                digits = 2 if name == "logp" else 3
                cells = [_fmt(first.get(key), digits)]
                for stage in stages:
                    stage_records = [r for r in self.records if r["stage"] == stage and key in r]
                    if not stage_records:
                        cells.append("–")
                        continue
                    start, end = stage_records[0][key], stage_records[-1][key]
                    cells.append(f"{_fmt(end, digits)} ({end - start:+.{digits}f})")
                lines.append(f"| {label} | {split} | " + " | ".join(cells) + " |")
        score_cells = []
        for stage in stages:
            scored = [r for r in self.records if r["stage"] == stage and "squeeze/score" in r]
            if scored:
                end = scored[-1]
                score_cells.append(
                    f"{stage}: end {end['squeeze/score']:.3f} (greedy/argmax rise {end['squeeze/rise']:+.3f}, "
                    f"others' fall {end['squeeze/fall']:+.3f}), max {max(r['squeeze/score'] for r in scored):.3f}"
                )
        lines += ["", "Original squeezing score, min(rise, fall) in nats/token: " + "; ".join(score_cells) + "."]
        lines += self._mechanism_table(stages)
        lines += ["", "### Alerts and guard actions", ""]
        if not self.events:
            lines.append(f"No squeezing alert (guard action '{self.config.guard_action}').")
        for event in self.events:
            lines.append(f"- **{event['stage']}, step {event['step']}** — {event['message']} Guard: {event['action']}")
        return "\n".join(lines) + "\n"

    def _mechanism_table(self, stages: list[str]) -> list[str]:
        """Each mechanism metric at the end of each stage, with its 95% bootstrap interval over probes."""
        c = self.config
        if c.squeeze_metric == "score":
            bound = "no interval: a min of two means over families"
        elif c.squeeze_alert_on == "lower":
            bound = "the lower end of its 95% interval"
        else:
            bound = "its mean over probes"
        lines = [
            "",
            "### Mechanism metrics",
            "",
            f"Change since the stage's first evaluation, mean over probes [95% bootstrap interval over probes] "
            f"(definitions: docs/monitors.md). The alert reads `{c.squeeze_metric}` ({bound}) against "
            f"{c.squeeze_threshold:g}.",
            "",
            "| metric | unit | " + " | ".join(f"end of {s}" for s in stages) + " |",
            "|---|---|" + "---|" * len(stages),
        ]
        for name in MECHANISM_METRICS:
            cells = []
            for stage in stages:
                own = [r for r in self.records if r["stage"] == stage and f"mech/{name}" in r]
                end = own[-1] if own else {}
                mean, lo, hi = (end.get(f"mech/{name}{x}") for x in ("", "_lo", "_hi"))
                cell = _fmt(mean, 3)
                if _finite(lo) and _finite(hi):
                    cell += f" [{lo:.3f}, {hi:.3f}]"
                cells.append(cell)
            lines.append(f"| {name} | {MECHANISM_UNITS[name]} | " + " | ".join(cells) + " |")
        return lines


MECHANISM_UNITS = {
    "off_target_fall": "nats/token",
    "off_target_eos_change": "nats (EOS)",
    "rejected_fall": "nats/token",
    "chosen_fall": "nats/token",
    "collateral_ratio": "nats per nat",
    "concentration_alt": "log-odds/token",
    "concentration_top": "log-odds/token",
    "greedy_start_rise": "nats/token",
    "greedy_rise": "nats/token",
}


def _finite(value) -> bool:
    return isinstance(value, float | int) and math.isfinite(value)


def _fmt(value, digits: int = 2) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


class SqueezingCallback(TrainerCallback):
    """Probes the model at the stage's first step, on the schedule, and at its last step; alerts and guards.

    Use `attach(trainer)` so that the metrics reach the trainer's loggers (TensorBoard, W&B) at the step they were
    measured, and so that `mitigate` can reach the trainer's loss weights whatever the config. Unattached, metrics are
    merged into the trainer's next log entry (its log history, and callbacks registered after this one).

    The guard's state (stage-start baseline, alert history, a weight raised by `mitigate`, "stopped early") is saved
    in every checkpoint (`GUARD_STATE`) and restored when the stage resumes from it.
    """

    def __init__(self, monitor: SqueezingMonitor, stage: str, stage_dir: str | Path | None = None):
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
        self.monitor._save_probe_set()
        self._offset = self.monitor.next_offset
        restored = self._restore(args, state) if state.global_step > 0 else False
        self.monitor.boundaries.append((self._offset, self.stage))
        if self.monitor._main() and self.stage_dir is not None:
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
        if last or self._due(state.global_step, args):
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
        if not self.config.probe_enabled or not self.monitor._main() or self._start_values is None:
            return control
        checkpoint = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if checkpoint.is_dir():
            saved = json.dumps(_json_safe_deep(self.guard_state(args)), ensure_ascii=False)
            (checkpoint / GUARD_STATE).write_text(saved, encoding="utf-8")
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
        path = Path(args.output_dir) / f"checkpoint-{state.global_step}" / GUARD_STATE
        if not path.is_file():
            logger.warning(
                "[%s] resuming at step %d without a saved guard state (%s): the baseline is re-taken here",
                self.stage, state.global_step, path,
            )  # fmt: skip
            return False
        saved = json.loads(path.read_text(encoding="utf-8"))
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
        """The stage's evaluations up to the checkpoint, back into memory (for the report) and alone in its files.

        Evaluations after the checkpoint belong to training that the resume repeats, so they are dropped.
        """
        for path, keep_in_memory in ((self.jsonl_path, True), (self.records_path, False)):
            if path is None or not path.is_file():
                continue
            # A kill can cut the last line short mid-write: the cache reader skips it, and the rewrite drops it.
            kept = [record for _, record in read_jsonl_cache(path) if record["step"] <= step]
            if keep_in_memory:
                self.monitor.records += kept
            if self.monitor._main():
                write_jsonl_atomic(path, kept)

    # --- schedule

    def _due(self, step: int, args) -> bool:
        if self.config.probe_every > 0:
            return step % self.config.probe_every == 0
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
        probes = self.monitor.probe_set.probes
        families = self.monitor.probe_set.families
        handover = self._handover(model, args) if event == "begin" else None
        if handover is not None:
            # The last stage's end decodings, scored there as fixed text, are this stage's starting decodings.
            stats = [
                {(FIXED_GREEDY if f == HANDOVER_GREEDY else f): v for f, v in d.items() if f != FIXED_GREEDY}
                for d in handover.stats
            ]
            texts, greedy_samples = handover.texts, handover.greedy_samples
            fingerprint = None
        else:
            fixed, greedy_as = None, None
            if "greedy" in families:
                if self._start_texts is None:
                    greedy_as = FIXED_GREEDY
                else:
                    fixed = [{FIXED_GREEDY: t} if t is not None else {} for t in self._start_texts]
                    greedy_as = HANDOVER_GREEDY if event == "end" else None
            merged = self._measure(event, model, args, fixed, greedy_as)
            stats = [r["stats"] for r in merged]
            texts = [r["greedy"] for r in merged]
            greedy_samples = {
                s: [r["greedy"] for p, r in zip(probes, merged) if p.split == s and r["greedy"] is not None][
                    :GREEDY_SAMPLES
                ]
                for s in SPLITS
            }
            fingerprint = [d["chosen"]["logp"] for d in stats[:FINGERPRINT_PROBES]] if "chosen" in families else None

        scored = [(p.split, f, st) for p, d in zip(probes, stats) for f, st in d.items() if f != HANDOVER_GREEDY]
        metrics = family_metrics(scored, argmax="argmax" in families)
        values = [_probe_values(d, "argmax" in families) for d in stats]

        first = self._start_values is None
        if first:
            self._start_metrics = dict(metrics)
            self._start_values = values
            self._start_texts = texts
        squeeze = squeezing_score(self._start_metrics, metrics)
        if squeeze is not None:
            metrics.update(
                {"squeeze/score": squeeze.score, "squeeze/rise": squeeze.rise, "squeeze/fall": squeeze.fall}
            )
        per_probe = mechanism_per_probe(self._start_values, values, [p.split for p in probes])
        step = state.global_step
        for name, interval in mechanism_summary(per_probe, self.config.probe_bootstrap, seed=step).items():
            metrics[f"mech/{name}"] = interval.mean
            metrics[f"mech/{name}_lo"] = interval.lo
            metrics[f"mech/{name}_hi"] = interval.hi
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
        if event == "end" and fingerprint is not None:
            self.monitor.handover = Handover(self.stage, stats, texts, greedy_samples, fingerprint, elapsed)
        self._last_eval_step = step
        metrics["probe/seconds"] = elapsed
        if handover is not None:
            record["handed_over_from"] = handover.stage
        record.update(metrics)
        record["greedy_samples"] = greedy_samples
        self.monitor.records.append(record)
        if self.monitor._main() and self.jsonl_path is not None:
            with self.jsonl_path.open("a", encoding="utf-8") as f:  # reopened per evaluation: flushed even on a crash
                f.write(json.dumps(_json_safe(record), ensure_ascii=False) + "\n")
            self._write_probe_records(record, values)
        if self.monitor._main() and event != "step":
            logger.info("[%s] probes at %s (step %d): %s", self.stage, event, step, _headline(metrics))
        self._log(metrics, control)

    def alert_value(self, metrics: dict[str, float]) -> float:
        """What the alert compares with the threshold: the configured metric, or the lower end of its interval."""
        metric = self.config.squeeze_metric
        if metric == "score":  # no interval: the score is a min of two means over families, not a mean over probes
            return metrics.get("squeeze/score", math.nan)
        suffix = "_lo" if self.config.squeeze_alert_on == "lower" else ""
        return metrics.get(f"mech/{metric}{suffix}", math.nan)

    def _write_probe_records(self, record: dict, values: list[dict[str, dict]]) -> None:
        """One line per probe and family of this evaluation (the raw numbers behind every mean and interval)."""
        head = {k: record[k] for k in ("stage", "event", "step", "global_step")}
        with self.records_path.open("a", encoding="utf-8") as f:
            for probe, families in zip(self.monitor.probe_set.probes, values):
                for family, v in families.items():
                    line = {**head, "probe": probe.probe_id, "split": probe.split, "family": family}
                    line.update({k: _round(x) for k, x in v.items()})
                    f.write(json.dumps(line, ensure_ascii=False, separators=(",", ":")) + "\n")

    def _measure(self, event: str, model, args, fixed=None, greedy_as: str | None = None) -> list[dict]:
        """Every probe scored once across the ranks; the merged results, in probe order, on every rank."""
        probes = self.monitor.probe_set.probes
        mine = shard(probes, args.process_index, args.world_size)
        with _eval_mode(model):
            results = evaluate_probes(
                model,
                self.tokenizer,
                [p for _, p in mine],
                self.monitor.probe_set.families,
                batch_size=self.config.probe_batch_size,
                max_length=self.config.probe_max_length,
                max_new_tokens=self.config.probe_max_new_tokens,
                generate_batch_size=self.config.probe_generate_batch_size,
                # Bars for the stage-boundary evaluations only: mid-stage ones would break the trainer's own bar.
                progress=f"[{self.stage}] probes at {event}" if event != "step" and self.monitor._main() else None,
                fixed=[fixed[i] for i, _ in mine] if fixed is not None else None,
                greedy_as=greedy_as,
            )
        part = [(i, {"stats": r.stats, "greedy": r.greedy}) for (i, _), r in zip(mine, results)]
        return merge_shards(_gather(part, args.world_size), len(probes))  # all ranks get all, so all decide alike

    def _handover(self, model, args) -> Handover | None:
        """The previous stage's last evaluation, when this stage starts from the very model it measured.

        A recipe hands each stage the merged result of the last one with a fresh (zero) LoRA adapter: the same
        function, so a second full evaluation at the boundary would cost minutes on a CPU and measure nothing new.
        The claim is checked, not assumed: the first probes' `chosen` log-probs must match what was recorded.
        """
        handover, self.monitor.handover = self.monitor.handover, None
        if handover is None:
            return None
        probes = self.monitor.probe_set.probes[:FINGERPRINT_PROBES]
        with _eval_mode(model):
            results = evaluate_probes(
                model, self.tokenizer, probes, ["chosen"], max_length=self.config.probe_max_length
            )
        now = [r.stats["chosen"]["logp"] for r in results]
        same = [all(abs(a - b) <= 1e-3 * max(1.0, abs(b)) for a, b in zip(now, handover.fingerprint))]
        if args.world_size > 1:  # every rank must take the same branch: the full evaluation gathers across ranks
            torch.distributed.broadcast_object_list(same, src=0)
        return handover if same[0] else None

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
        if self.monitor._main():
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


@contextmanager
def _eval_mode(model):
    """No dropout while probing; the trainer's mode is restored after."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        if was_training:
            model.train()


def _gather(part: list, world: int) -> list[list]:
    """Every rank's shard, on every rank (a list with this rank's shard alone when not distributed)."""
    if world == 1:
        return [part]
    parts: list = [None] * world
    torch.distributed.all_gather_object(parts, part)
    return parts


def _json_safe(record: dict) -> dict:
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}


def _json_safe_deep(value):
    """NaN/inf -> None at any depth (JSON has no NaN; Python's json would write a non-standard token)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _json_safe_deep(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe_deep(v) for v in value]
    return value


def _round(value):
    if isinstance(value, float):
        return float(f"{value:.{RECORD_DIGITS}g}") if math.isfinite(value) else None
    return value


def _probe_values(stats: dict[str, dict[str, float]], argmax: bool) -> dict[str, dict]:
    """One probe's compact records: every scored family, and `argmax` read off the `chosen` pass."""
    out = {f: probe_values(f, st) for f, st in stats.items()}
    if argmax and "chosen" in stats:
        out["argmax"] = probe_values("argmax", stats["chosen"])
    return out


def _headline(metrics: dict[str, float]) -> str:
    keys = [metric_key("train", f, "logp") for f in ("chosen", "rejected", "greedy", "argmax")]
    keys += ["squeeze/score", *(f"mech/{m}" for m in MECHANISM_METRICS)]
    return ", ".join(f"{k.removeprefix('probe/train/')} {metrics[k]:.2f}" for k in keys if k in metrics)
