"""A squeezing study's raw files, loaded: one `Run` per finished (seed, arm), its DPO evaluations by name, and the
per-probe changes between two of them (`mechanism_units`).

`<study_dir>/runs/s<seed>/<arm>.json` says what ran; `<arm>.probe_records.jsonl.gz` holds one record per evaluation
× probe × family of the DPO stage; `<arm>.generations.jsonl.gz` one verified held-out answer per checkpoint × prompt;
`<arm>.heldout_pairs.jsonl.gz` (when written) the held-out pairs' scores at DPO's begin and end, and the seed's
`base.heldout_pairs.jsonl.gz` the same pairs under the base model (alignkit/study/run.py writes them). An arm is read
off its JSON's fields, never off its file name.
"""

from __future__ import annotations

import gzip
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from alignkit.errors import AlignkitError
from alignkit.jsonl import json_safe, read_jsonl
from alignkit.monitors.scoring import mechanism_per_probe
from alignkit.monitors.stage_files import Evaluation, evaluations
from alignkit.stats import Key

PRIMARY_LOSS = "dpo"
JUDGE_RESULT = "judge_win_rates.json"  # written by alignkit.study.judge; the analysis reads it when present

Snapshot = Evaluation  # probe id -> family -> record, at one evaluation


@dataclass
class Run:
    """One finished (seed, arm): its JSON, its DPO probe records and its held-out generations."""

    meta: dict
    probes: list[dict] = field(default_factory=list)
    generations: list[dict] = field(default_factory=list)
    heldout_pairs: list[dict] = field(default_factory=list)  # held-out pairs scored at DPO's begin and end
    base_pairs: list[dict] = field(default_factory=list)  # the same pairs under the base model (the seed's file)

    @property
    def arm(self) -> str:
        return self.meta["arm"]

    @property
    def seed(self) -> int:
        return self.meta["seed"]

    @property
    def cell(self) -> tuple[str, str, str]:
        return (self.meta["sft_mode"], self.meta["rejected"], self.meta.get("loss", PRIMARY_LOSS))


# --- loading


def read_records(path: Path) -> list[dict]:
    """The objects of a JSON Lines file, gzipped (`.gz`) or not; blank lines skipped, a bad line raises naming it."""
    return [row for _, row in read_jsonl(path)]


def write_records(path: Path, records: list[dict]) -> None:
    """`records` as gzipped JSON Lines, strict JSON (NaN as null): what `read_records` reads back."""
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.writelines(json.dumps(json_safe(r), ensure_ascii=False) + "\n" for r in records)


def load_runs(study_dir: str | Path) -> dict[tuple[int, str], Run]:
    """Every finished run under `<study_dir>/runs/s*/`, keyed by (seed, arm); a run without its records files is kept
    with empty records (the report then says what is missing)."""
    runs = {}
    for meta_path in sorted(Path(study_dir, "runs").glob("s*/*.json")):
        meta = json.loads(meta_path.read_text())
        if "." in meta_path.stem or not isinstance(meta, dict) or "sft_mode" not in meta:
            continue  # not a run's own JSON (`<arm>.json` with the arm's fields)
        run = Run(meta)
        for name, attr in (("probe_records", "probes"), ("generations", "generations"),
                           ("heldout_pairs", "heldout_pairs")):  # fmt: skip
            path = meta_path.with_name(f"{run.arm}.{name}.jsonl.gz")
            if path.is_file():
                setattr(run, attr, read_records(path))
        if (base := meta_path.with_name("base.heldout_pairs.jsonl.gz")).is_file():
            run.base_pairs = read_records(base)
        runs[(run.seed, run.arm)] = run
    if not runs:
        raise AlignkitError(f"{Path(study_dir, 'runs')} has no finished run (runs/s<seed>/<arm>.json)")
    return runs


def arm_grid(runs: dict[tuple[int, str], Run]) -> dict[tuple[str, str, str], str]:
    """(sft_mode, rejected, loss) -> arm name, from the run JSONs."""
    return {run.cell: run.arm for run in runs.values()}


def checkpoints(run: Run) -> dict[str, Snapshot]:
    """`begin`, the intermediate `epoch<e>` evaluations (steps from the JSON's `dpo.epoch_steps`) and `end`."""
    snaps = evaluations(run.probes)  # the DPO stage's evaluations in order: (step, event, snapshot)
    out = {event: snap for _, event, snap in snaps if event in ("begin", "end")}
    end_step = max((s for s, e, _ in snaps if e == "end"), default=math.inf)
    for epoch, step in sorted(run.meta.get("dpo", {}).get("epoch_steps", {}).items(), key=lambda kv: int(kv[0])):
        found = [snap for s, e, snap in snaps if s == step and e != "begin"]
        if found and step < end_step:
            out[f"epoch{epoch}"] = found[0]
    return out


def probe_splits(records: list[dict]) -> dict[str, str]:
    return {r["probe"]: r["split"] for r in records}


def mechanism_units(run: Run, start: Snapshot, now: Snapshot) -> dict[str, dict[Key, float | tuple[float, float]]]:
    """Per metric, {(seed, probe): value} of the change from `start` to `now` (alignkit.monitors.scoring).

    Adds `chosen_change` = −chosen_fall (y⁺'s change, so a fall is negative as the paper plots it) and
    `collateral_ratio` units (off_target_fall, rejected_fall) for a ratio of means: off-target fall per nat of y⁻
    decrease, on training probes (where both are defined).
    """
    probes = sorted(start.keys() & now.keys())
    splits = probe_splits(run.probes)
    per_probe = mechanism_per_probe([start[p] for p in probes], [now[p] for p in probes], [splits[p] for p in probes])
    out: dict[str, dict] = {name: dict(zip(((run.seed, p) for p in probes), vals)) for name, vals in per_probe.items()}
    out["chosen_change"] = {k: -v for k, v in out["chosen_fall"].items()}
    out["collateral_ratio"] = {k: (v, out["rejected_fall"][k]) for k, v in out["off_target_fall"].items()}
    return out


def load_judge(study_dir: str | Path) -> dict | None:
    """`<study_dir>/judge_win_rates.json` (an LLM judge's win rates, `python -m alignkit.study.judge`), or None."""
    path = Path(study_dir, JUDGE_RESULT)
    if not path.is_file():
        return None
    try:
        judged = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        message = f"{path}:{err.lineno}: not valid JSON ({err.msg}); rerun python -m alignkit.study.judge"
        raise AlignkitError(message) from None
    if not isinstance(judged, dict) or not isinstance(judged.get("comparisons"), dict):
        raise AlignkitError(f"{path}: field 'comparisons' is missing; rerun python -m alignkit.study.judge")
    return judged
