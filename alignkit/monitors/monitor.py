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
`SqueezingCallback` (`alignkit.monitors.callback`), which works with any transformers/TRL trainer; the same class,
used alone (`callbacks=[SqueezingCallback()]`), builds a monitor of its own for one trainer.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from accelerate import PartialState

from alignkit.errors import AlignkitError
from alignkit.monitors.config import MonitorConfig, alert_unavailable
from alignkit.monitors.measure import Handover
from alignkit.monitors.plot import plot_probes
from alignkit.monitors.probes import ProbeSet
from alignkit.monitors.summary import summary_markdown

if TYPE_CHECKING:
    from alignkit.monitors.callback import SqueezingCallback

logger = logging.getLogger("alignkit.monitors")


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

    def save_probe_set(self) -> None:
        """`<run_dir>/probe_set.jsonl`, once, from the main process (the first stage's callback calls it)."""
        if self.run_dir is not None and not self._probe_set_saved and self.on_main_process():
            self.probe_set.save(self.run_dir / "probe_set.jsonl")
            self._probe_set_saved = True

    def on_main_process(self) -> bool:
        """Whether this process writes the run's files (as the trainer says once one has started; see __init__)."""
        return self.is_main_process if self.is_main_process is not None else PartialState().is_main_process

    def callback(self, stage: str, stage_dir: str | Path | None = None, trainer=None) -> SqueezingCallback:
        """A TrainerCallback probing the stage named `stage`; its JSONL goes to `<stage_dir>/probes.jsonl`."""
        # Imported here: the callback module imports this one (a callback used alone builds its own monitor).
        from alignkit.monitors.callback import SqueezingCallback

        if stage_dir is None and self.run_dir is not None:
            stage_dir = self.run_dir / stage
        return SqueezingCallback(trainer, monitor=self, stage=stage, stage_dir=stage_dir)

    def finish(self, figure_name: str = "squeezing.png") -> str:
        """Write the figure (main process, when there is a run_dir) and return the report's markdown section."""
        figure = None
        self.save_probe_set()
        if self.on_main_process() and self.run_dir is not None and self.records:
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
        return summary_markdown(self.probe_set, self.config, self.records, self.events, self.notes, figure)
