"""The files a stage's monitor writes, and what it reads back when the stage resumes from a checkpoint.

    stage_dir/probes.jsonl                             one line per evaluation: every metric, the alert, greedy samples
    stage_dir/probe_records.jsonl                      one line per evaluation, probe and family: the raw numbers
    stage_dir/checkpoint-N/squeezing_guard_state.json  the guard's state when the trainer saved checkpoint N

Evaluation lines are appended with the file reopened each time, so a crash loses at most the line being written; a
resume keeps the lines up to its checkpoint and rewrites the files whole (see `records_up_to`).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from alignkit.jsonl import json_safe, read_jsonl_cache, write_jsonl_atomic
from alignkit.monitors.probes import Probe

GUARD_STATE = "squeezing_guard_state.json"  # saved in every checkpoint folder; read back on resume
PROBE_RECORDS = "probe_records.jsonl"
RECORD_DIGITS = 5  # significant digits kept per number in the per-probe records


def append_evaluation(path: Path, record: dict) -> None:
    """One evaluation's line in probes.jsonl (NaN/inf as null: JSON has no NaN)."""
    with path.open("a", encoding="utf-8") as f:  # reopened per evaluation: flushed even on a crash
        f.write(json.dumps(json_safe(record), ensure_ascii=False) + "\n")


def append_probe_records(path: Path, record: dict, probes: list[Probe], values: list[dict[str, dict]]) -> None:
    """One line per probe and family of this evaluation (the raw numbers behind every mean and interval)."""
    head = {k: record[k] for k in ("stage", "event", "step", "global_step")}
    with path.open("a", encoding="utf-8") as f:
        for probe, families in zip(probes, values):
            for family, v in families.items():
                line = {**head, "probe": probe.probe_id, "split": probe.split, "family": family}
                line.update({k: _round(x) for k, x in v.items()})
                f.write(json.dumps(line, ensure_ascii=False, separators=(",", ":")) + "\n")


def records_up_to(path: Path, step: int, rewrite: bool) -> list[dict]:
    """The file's evaluations up to `step`, the checkpoint being resumed; with `rewrite`, the file keeps only those.

    Evaluations after the checkpoint belong to training that the resume repeats, so they are dropped. A kill can cut
    the last line short mid-write: the cache reader skips it, and the rewrite drops it.
    """
    if not path.is_file():
        return []
    kept = [record for _, record in read_jsonl_cache(path) if record["step"] <= step]
    if rewrite:
        write_jsonl_atomic(path, kept)
    return kept


def save_guard_state(checkpoint: Path, state: dict) -> None:
    """The guard's state beside the checkpoint the trainer has just written."""
    (checkpoint / GUARD_STATE).write_text(json.dumps(json_safe(state), ensure_ascii=False), encoding="utf-8")


def load_guard_state(checkpoint: Path) -> dict | None:
    """What `save_guard_state` wrote beside `checkpoint`; None when there is nothing."""
    path = checkpoint / GUARD_STATE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def _round(value):
    if isinstance(value, float):
        return float(f"{value:.{RECORD_DIGITS}g}") if math.isfinite(value) else None
    return value
