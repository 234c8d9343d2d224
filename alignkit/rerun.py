"""A rerun into a run folder that already holds work: what it may reuse, decided before any work, and the folder's
record of every run that wrote into it.

`check_run_folder` compares the settings each stage folder was made with (its `stage_complete.json`, or the
`fingerprint.json` an interrupted stage left) with the rerun's config, before a tokenizer, data or model is loaded. A
difference stops the run with one error that lists, stage by stage, each changed field (old -> new) and the two ways
on; with `overwrite` it is logged, and each stage deletes and retrains its own folder when it comes to it
(`alignkit.stages.claim_folder`, which also checks what only the data can tell: the digest of the rows it trains on).
A stage after a changed one is listed too: it starts from the changed one, so it is trained again as well.

`record_config` keeps `config.yaml` (the latest run's resolved config: rerun with `--config` on it) and appends one
line per run to `config_history.jsonl`: when it started, whether `overwrite` was set, the fields that changed since
the run before (`{"field": [old, new]}`) and the whole config.
"""

from __future__ import annotations

import json
import logging
import shutil
from datetime import datetime, timezone
from pathlib import Path

import yaml
from accelerate import PartialState

from alignkit.config import RecipeConfig
from alignkit.fingerprint import (
    FINGERPRINT,
    RECIPE_WAYS,
    StaleWork,
    changed_fields,
    config_part,
    describe_changes,
    read_json,
    stage_fingerprint,
)
from alignkit.jsonl import append_jsonl, json_safe
from alignkit.stages import STAGE_DONE

logger = logging.getLogger(__name__)
STAGES = ("sft", "preference")  # in the order they train: a change in one reaches every later one
CONFIG = "config.yaml"
HISTORY = "config_history.jsonl"


def _recorded(stage_dir: Path) -> tuple[bool, dict | None]:
    """(whether the folder holds work, the fingerprint it was made with: None when it has none)."""
    if not stage_dir.is_dir() or not any(stage_dir.iterdir()):
        return False, None
    done = read_json(stage_dir / STAGE_DONE)
    return True, done.get("fingerprint") if done is not None else read_json(stage_dir / FINGERPRINT)


# out -> (config.yaml's text before this run, or None; config_history.jsonl's size before this run's line)
_BEFORE: dict[Path, tuple[str | None, int]] = {}


def stale_stages(cfg: RecipeConfig, out: Path, num_processes: int) -> list[tuple[str, str]]:
    """(stage, why) for every stage folder in `out` that this config would not reuse, in training order."""
    stale: list[tuple[str, str]] = []
    for stage in STAGES:
        holds_work, recorded = _recorded(out / stage)
        if not holds_work:
            continue
        if recorded is None:
            stale.append((stage, "  made without a settings fingerprint (by an older alignkit): cannot be checked"))
            continue
        current = config_part(stage_fingerprint(cfg, stage, "", [], num_processes))
        if changes := changed_fields(config_part(recorded), current):
            stale.append((stage, describe_changes(changes)))
        elif stale:
            stale.append((stage, f"  upstream: starts from stage '{stale[-1][0]}', which changed"))
    return stale


def check_run_folder(cfg: RecipeConfig, out: Path) -> None:
    """Stop now, naming each changed field, when `out` holds stages made with other settings (module docstring);
    with `overwrite`, say which stages will be trained again (and delete a stage's folder that this run skips)."""
    _BEFORE.pop(out, None)  # a new run into `out` starts: an earlier run's record is not this run's to take back
    state = PartialState()
    stale = stale_stages(cfg, out, state.num_processes)
    if not stale:
        return
    listing = "\n".join(f"stage '{stage}' in {out / stage}:\n{why}" for stage, why in stale)
    if not cfg.run.overwrite:
        raise StaleWork(
            f"{out} holds work made with other settings:\n{listing}\nNothing was reused or changed. {RECIPE_WAYS}"
        )
    logger.warning("overwrite is set: these stages are trained again, with every stage after them:\n%s", listing)
    state.wait_for_everyone()  # every process has read the folders
    if cfg.sft.sft_mode == "none" and any(stage == "sft" for stage, _ in stale) and state.is_main_process:
        shutil.rmtree(out / "sft")  # this run trains no SFT stage: its old one must not describe the run
    state.wait_for_everyone()


def record_config(cfg: RecipeConfig, out: Path) -> None:
    """Write `config.yaml` (this run's config) and append this run to `config_history.jsonl` (module docstring)."""
    path, history = out / CONFIG, out / HISTORY
    config = json_safe(cfg.to_dict())
    _BEFORE[out] = (path.read_text() if path.is_file() else None, history.stat().st_size if history.is_file() else 0)
    previous = yaml.safe_load(path.read_text()) if path.is_file() else None
    if previous is not None and not history.exists():  # a folder from before the history was kept
        append_jsonl(history, {"started": None, "note": "a run from before this history was kept", "config": previous})
    entry = {"started": datetime.now(timezone.utc).isoformat(timespec="seconds"), "overwrite": cfg.run.overwrite}
    if previous is not None:
        entry["changed"] = {name: [old, new] for name, old, new in changed_fields(previous, config)}
    append_jsonl(history, {**entry, "config": config})
    cfg.save_yaml(path)
    if previous is not None and entry["changed"]:
        logger.warning("%s: changed since the last run into this folder: %s (history: %s)", path,
                       json.dumps(entry["changed"], default=str), history)  # fmt: skip


def unrecord_config(out: Path) -> None:
    """Undo this process's `record_config` into `out`: a stage refused the run (StaleWork, found only once the data was
    read), and a refused run must leave the folder describing the runs that did happen."""
    if (before := _BEFORE.pop(out, None)) is None:
        return
    text, size = before
    path, history = out / CONFIG, out / HISTORY
    if text is None:
        path.unlink(missing_ok=True)
    else:
        path.write_text(text)
    if size == 0:
        history.unlink(missing_ok=True)
    elif history.is_file():
        with history.open("r+b") as f:
            f.truncate(size)
