"""Fingerprints: the settings that determine what a stage produced, recorded beside it and compared by a rerun.

A rerun into a folder that already holds work (a finished stage, a checkpoint, an on-policy round, a study run, a
calibration run) reuses that work only when it was made with the same settings. A fingerprint is a flat dict of named
values, so that a difference can be reported field by field:

* the model (`model_name_or_path`, `model_revision`, `torch_dtype`, the LoRA settings, ...): its name, not a digest of
  its weights;
* `data`: the number and the sha256 of the rows the stage trains on, exactly as handed to the trainer (`rows_digest`),
  which stands for every data field (`dataset_name`, `max_train_samples`, `test_fraction`, ...) and for the file's
  content, and also catches rows that the pre-flight's `act` added or dropped;
* the stage's own config fields as resolved (`sft_learning_rate`, `beta`, `preference_trainer_args`, ...), `seed`,
  the batch fields, `max_length`, and `precision` (the dtype the trainer trains in on this machine);
* `num_processes`: the effective batch and the data's sharding depend on it;
* `upstream`: the digest of the fingerprints of the stages it starts from (`None`: the base model), so a changed
  upstream stage invalidates everything downstream.

Fields left out, because none changes what a stage trains (a rerun may change them freely; `config.yaml` and its
history record them all):

* `output_dir` (where, not what), `overwrite` (the permission below);
* `logging_steps`, `report_to` (what is logged), `save_steps`, `save_total_limit`, `preempt_signals` (checkpoints: a
  resumed stage trains what an uninterrupted one does), `cpu_threads`, `dataloader_num_workers`,
  `gradient_checkpointing`, `use_cpu` (speed, memory and the device: `precision` records the dtype that results from
  them), `gguf_cache_dir` (where the converted model is cached), `trust_remote_code` (a permission);
* the data fields (`dataset_name`, `dataset_format`, `train_split`, `test_split`, `test_file`, `test_fraction`,
  `max_train_samples`, `dataset_config`): the `data` digest replaces them (`max_length`, which truncates, stays);
* the monitor's fields while `guard_action` is `warn`: the probes only watch (with `stop` or `mitigate` every
  monitor field but `probe_rephrase_cache` and the API key's variable counts, since they decide when the guard acts);
* the pre-flight's fields: what `act` changes is in the `data` digest; `report` changes nothing;
* the evaluation's fields: the win rate is judged after training and never reused (its judge cache has its own key);
* the on-policy fields in an off-policy preference stage, and `ranker_judge_api_key_env` always (a variable's name).

The rule (`check_reuse`): the same fingerprint reuses (skip or resume, as before); a different one stops the run
before any work with one `AlignkitError` that names each changed field, old -> new, and the two ways on: a new
output folder, or `overwrite` (which deletes that work and makes it again, and so everything after it).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from alignkit.config import RecipeConfig
from alignkit.errors import AlignkitError
from alignkit.models import resolve_dtype

logger = logging.getLogger(__name__)

FINGERPRINT = "fingerprint.json"  # a stage's (or round's) folder: the settings everything in it was made with
RUN_FIELDS_EXCLUDED = {
    "output_dir", "overwrite", "logging_steps", "report_to", "save_steps", "save_total_limit", "cpu_threads",
    "dataloader_num_workers", "gradient_checkpointing", "use_cpu", "preempt_signals",
}  # fmt: skip
MODEL_FIELDS_EXCLUDED = {"gguf_cache_dir", "trust_remote_code"}
DATA_FIELDS_KEPT = {"max_length"}
MONITOR_FIELDS_EXCLUDED = {"probe_rephrase_cache", "probe_rephrase_api_key_env"}
ONPOLICY_PREFIXES = ("onpolicy_", "ranker", "generation_backend")
ALWAYS_EXCLUDED = {"ranker_judge_api_key_env"}
NOT_CONFIG = ("data", "upstream", "round", "round_steps")  # known only once the stage's rows are (see `config_part`)
MISSING = "(not recorded)"
# The two ways on, for a stage of the recipe (or of the study, which trains with the recipe's stages) ...
STAGE_WAYS = (
    "To keep that work, rerun into another output folder; to replace it, rerun with --overwrite (that stage and every "
    "stage after it are trained again)."
)
# ... and for the recipe's own check of its run folder
RECIPE_WAYS = (
    "To keep that work, rerun with a new --output_dir; to replace it, rerun with --overwrite (that stage and every "
    "stage after it are trained again)."
)


def rows_digest(rows: Iterable[dict], columns: Sequence[str] | None = None) -> str:
    """'<n> rows, sha256 <first 16 hex digits>' of the rows (only `columns`, when given), in their order."""
    sha = hashlib.sha256()
    n = 0
    for row in rows:
        picked = {k: row[k] for k in columns} if columns is not None else dict(row)
        sha.update(json.dumps(picked, sort_keys=True, ensure_ascii=False, default=str).encode() + b"\n")
        n += 1
    return f"{n} rows, sha256 {sha.hexdigest()[:16]}"


def fingerprint_digest(fingerprints: Sequence[dict] | dict | None) -> str | None:
    """A short digest of one fingerprint or of a list of them (the stages a stage starts from); None for none."""
    if not fingerprints:
        return None
    return hashlib.sha256(json.dumps(fingerprints, sort_keys=True, default=str).encode()).hexdigest()[:16]


def precision(cfg: RecipeConfig) -> str:
    """The dtype the stage trains in here (alignkit.stages sets bf16/fp16 from the same rule)."""
    on_gpu = torch.cuda.is_available() and not cfg.run.use_cpu
    dtype = resolve_dtype(cfg.model.torch_dtype)
    return str(dtype).removeprefix("torch.") if on_gpu and dtype in (torch.bfloat16, torch.float16) else "float32"


def recipe_fields(cfg: RecipeConfig, stage: str) -> dict[str, Any]:
    """The config fields that determine stage `stage` ('sft' or 'preference') of the recipe (module docstring)."""
    fields: dict[str, Any] = {}
    fields |= {k: v for k, v in asdict(cfg.model).items() if k not in MODEL_FIELDS_EXCLUDED}
    fields |= {k: v for k, v in asdict(cfg.data).items() if k in DATA_FIELDS_KEPT}
    if stage == "sft":
        fields |= asdict(cfg.sft)
    else:
        off_policy = cfg.preference.sampling == "off_policy"
        fields |= {k: v for k, v in asdict(cfg.preference).items()
                   if k not in ALWAYS_EXCLUDED and not (off_policy and k.startswith(ONPOLICY_PREFIXES))}  # fmt: skip
    fields |= {k: v for k, v in asdict(cfg.run).items() if k not in RUN_FIELDS_EXCLUDED}
    fields["guard_action"] = cfg.monitor.guard_action
    if cfg.monitor.guard_action != "warn":
        fields |= {k: v for k, v in asdict(cfg.monitor).items() if k not in MONITOR_FIELDS_EXCLUDED}
    fields["precision"] = precision(cfg)
    return fields


def stage_fingerprint(
    cfg: RecipeConfig, stage: str, data: str, start_from: Sequence[dict], num_processes: int
) -> dict[str, Any]:
    """The whole fingerprint of a recipe stage: its fields, `num_processes`, the `data` digest of its rows and the
    `upstream` digest of the fingerprints of the stages it starts from (`start_from`; empty: the base model)."""
    fp = {"stage": stage, **recipe_fields(cfg, stage), "num_processes": num_processes, "data": data}
    fp["upstream"] = fingerprint_digest(list(start_from))
    return fp


def config_part(fingerprint: dict) -> dict:
    """The fields a config alone determines (what a rerun can check before loading any data)."""
    return {k: v for k, v in fingerprint.items() if k not in NOT_CONFIG}


def changed_fields(recorded: dict, current: dict, only_recorded: bool = False) -> list[tuple[str, Any, Any]]:
    """(field, old, new) for every field whose value differs; a field one side lacks shows as MISSING.

    `only_recorded`: compare only the fields `recorded` has (a record written before some field was kept).
    """
    names = list(current) + [k for k in recorded if k not in current]
    if only_recorded:
        names = [k for k in names if k in recorded]
    return [(k, recorded.get(k, MISSING), current.get(k, MISSING)) for k in names
            if _norm(recorded.get(k, MISSING)) != _norm(current.get(k, MISSING))]  # fmt: skip


def _norm(value):
    """Values as JSON gives them back (tuples as lists, ints that are floats), so a reread record compares equal."""
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def describe_changes(changes: list[tuple[str, Any, Any]], indent: str = "  ") -> str:
    lines = []
    for name, old, new in changes:
        why = " (the stage it starts from changed)" if name == "upstream" else ""
        lines.append(f"{indent}{name}: {_show(old)} -> {_show(new)}{why}")
    return "\n".join(lines)


def _show(value) -> str:
    return value if value is MISSING else json.dumps(value, default=str) if not isinstance(value, str) else value


class StaleWork(AlignkitError):
    """A rerun found work made with other settings and was not told to replace it (the message says what changed)."""


def check_reuse(
    what: str, where: Path, recorded: dict | None, current: dict, overwrite: bool, ways: str = STAGE_WAYS
) -> bool:
    """Whether the work `what` in `where`, recorded with fingerprint `recorded`, may be reused for `current`.

    True: the same settings (reuse it). False: other settings and `overwrite` (the caller deletes it and makes it
    again; logged here). Otherwise an AlignkitError that names each changed field and says `ways` (the two ways on).
    `recorded` None: the work was made without a fingerprint (by an older alignkit), so it cannot be checked.
    """
    if recorded is not None:
        changes = changed_fields(recorded, current)
        if not changes:
            return True
        detail = f"was made with other settings:\n{describe_changes(changes)}"
    else:
        detail = "was made without a settings fingerprint (by an older alignkit), so it cannot be checked"
    if overwrite:
        logger.warning("%s in %s %s\noverwrite is set: deleting it and making it again", what, where, detail)
        return False
    raise StaleWork(f"{what} in {where} {detail}\nNothing was reused. {ways}")


def read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None
