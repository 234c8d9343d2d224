"""Squeezing monitors: the paper's probe families tracked through every training stage (docs/monitors.md).

In any TRL script, one line (probes from the trainer's data, report and figure into its output_dir at the end):

    trainer = DPOTrainer(..., callbacks=[SqueezingCallback()])

In the recipe, one monitor spans the stages and hands each its callback (the same class):

    from alignkit.monitors import MonitorConfig, SqueezingMonitor, build_probe_set

    probes = build_probe_set(data["train"], data["test"], config, seed=42)
    monitor = SqueezingMonitor(probes, config, tokenizer, run_dir)
    callback = monitor.callback("preference", run_dir / "preference")  # a SqueezingCallback; .attach(trainer)
    ...
    markdown = monitor.finish()

Modules: `config` (the settings), `probes` (the probe set), `scoring` (metrics as pure functions), `evaluate` (batched
scoring of probes), `monitor` (the run: records, figure, report), `callback` (one stage: schedule, alert, guard,
resume; used alone, a whole monitor for one trainer), `trainer_data` (a trainer's dataset as probe rows), `measure`
(one evaluation's numbers, across ranks), `stage_files` (a stage's JSONL files and guard state), `summary` (the report
section), `guard` (the alert's words, `mitigate`), `plot`, `rephrase` (rewrite families by LLM).
"""

from alignkit.monitors.callback import SqueezingCallback
from alignkit.monitors.config import ALL_FAMILIES, GUARD_ACTIONS, MonitorConfig
from alignkit.monitors.monitor import SqueezingMonitor
from alignkit.monitors.probes import Probe, ProbeSet, build_probe_set
from alignkit.monitors.scoring import (
    family_metrics,
    mechanism_per_probe,
    mechanism_summary,
    probe_values,
    response_token_stats,
    squeezing_score,
)

__all__ = [
    "ALL_FAMILIES",
    "GUARD_ACTIONS",
    "MonitorConfig",
    "Probe",
    "ProbeSet",
    "SqueezingCallback",
    "SqueezingMonitor",
    "build_probe_set",
    "family_metrics",
    "mechanism_per_probe",
    "mechanism_summary",
    "probe_values",
    "response_token_stats",
    "squeezing_score",
]
