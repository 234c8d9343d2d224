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
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from alignkit.errors import AlignkitError
from alignkit.jsonl import json_safe, read_jsonl_cache, write_jsonl_atomic
from alignkit.monitors.probes import Probe

GUARD_STATE = "squeezing_guard_state.json"  # saved in every checkpoint folder; read back on resume
PROBE_RECORDS = "probe_records.jsonl"
RECORD_DIGITS = 5  # significant digits kept per number in the per-probe records

Evaluation = dict[str, dict[str, dict]]  # probe id -> family -> record, at one evaluation
_EVENT_ORDER = {"begin": 0, "step": 1, "end": 2}  # at one step: the stage's begin first, its end last


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


def evaluations(records: Iterable[dict]) -> list[tuple[int, str, Evaluation]]:
    """probe_records lines grouped into the evaluations that wrote them, in order: (step, event, probe -> family ->
    record)."""
    grouped: dict[tuple[int, str], Evaluation] = defaultdict(lambda: defaultdict(dict))
    for r in records:
        grouped[(r["step"], r["event"])][r["probe"]][r["family"]] = r
    ordered = sorted(grouped.items(), key=lambda kv: (kv[0][0], _EVENT_ORDER.get(kv[0][1], 1)))
    return [(step, event, dict(evaluation)) for (step, event), evaluation in ordered]


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


@dataclass
class GuardState:
    """Everything a resumed stage needs to judge and guard exactly as if it had not stopped, as one record: the
    callback builds it whole (`SqueezingCallback.guard_state`), it is saved whole in every checkpoint and restored
    whole (`SqueezingCallback._restore`). A field added here is saved and restored with the rest; a file written before
    a field existed gives that field its default."""

    stage: str
    offset: int = 0  # the stage's first step on the run's global step axis
    start_metrics: dict | None = None  # the stage-start evaluation's metrics: the baseline
    start_values: list | None = None  # per probe: family -> probe values, at stage start
    start_texts: list | None = None  # per probe: the stage-start greedy decoding
    above: bool = False  # the alert metric is at or above its threshold
    guard_acted: bool = False
    stopped_early: bool = False  # the guard stopped the stage
    sft_weight: float | None = None  # the SFT-on-y+ loss weight, as `mitigate` may have raised it
    negative_floor: float | None = None  # the negative-gradient floor the guard turned on, if it did
    events: list[dict] = field(default_factory=list)  # the stage's alerts
    probe_seconds: float = 0.0
    last_probe_seconds: float = 0.0
    train_seconds: float = 0.0
    trained_steps: int = 0
    full_seconds: float | None = None  # the cost of a full evaluation (the cost cap); None: the last evaluation's
    step_seconds: float | None = None
    probe_keep: list | None = None  # the probes the cost cap kept (start values were saved for these only)


def save_guard_state(checkpoint: Path, state: GuardState) -> None:
    """The guard's state beside the checkpoint the trainer has just written."""
    text = json.dumps(json_safe(asdict(state)), ensure_ascii=False)
    (checkpoint / GUARD_STATE).write_text(text, encoding="utf-8")


def load_guard_state(checkpoint: Path) -> GuardState | None:
    """What `save_guard_state` wrote beside `checkpoint`; None when there is nothing. A key that is no field of
    GuardState is an error naming it: a state this version cannot restore whole is not restored in part."""
    path = checkpoint / GUARD_STATE
    if not path.is_file():
        return None
    saved = json.loads(path.read_text(encoding="utf-8"))
    if unknown := sorted(set(saved) - {f.name for f in fields(GuardState)}):
        raise AlignkitError(f"{path}: field '{unknown[0]}' is not part of the guard state this alignkit restores; "
                            "resume with the alignkit that wrote it, or delete the checkpoint")  # fmt: skip
    return GuardState(**saved)


def _round(value):
    if isinstance(value, float):
        return float(f"{value:.{RECORD_DIGITS}g}") if math.isfinite(value) else None
    return value
