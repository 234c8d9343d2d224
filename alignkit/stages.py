"""The recipe's two training stages, on TRL's trainers: extended (or chosen-only) SFT, then DPO/IPO.

Each stage works in its own folder and is restartable: a finished stage leaves `stage_complete.json` and is skipped by
a rerun; an interrupted one resumes from its newest `checkpoint-*`. Both only when the folder's fingerprint (the
settings it was made with, alignkit/fingerprint.py) equals the rerun's: otherwise the rerun stops before any work, or
with `overwrite` deletes the folder and trains the stage again (`claim_folder`). With LoRA, a stage trains a fresh
adapter on top of the previous stage's merged weights, so in the preference stage "adapter disabled" is exactly the
SFT model: the reference costs no second copy of the weights.

Callbacks are handed to a stage by contract (alignkit/callbacks.py): one with `attach(trainer)` gets the trainer, and
one that ends the stage early says why on the trainer's state; the stage knows no callback's class.

Just over 400 lines because the stage engine (skip, resume, train, save, finish) and the one DPOTrainer subclass the
preference stage trains with (taking the pre-flight's reference log-probs) are read together: the subclass's
fallbacks are the engine's.
"""

from __future__ import annotations

import gc
import hashlib
import json
import logging
import shutil
import time
from collections import Counter
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate import PartialState
from datasets import Dataset, load_from_disk
from peft import LoraConfig, PeftModel
from trl import DPOConfig, DPOTrainer, SFTConfig, SFTTrainer

from alignkit.callbacks import attach_callbacks, callbacks_for_stage, early_stop_reason
from alignkit.config import RecipeConfig
from alignkit.errors import AlignkitError
from alignkit.fingerprint import FINGERPRINT, check_reuse, read_json, rows_digest, stage_fingerprint
from alignkit.models import load_model, resolve_dtype
from alignkit.objectives import Objective, ObjectiveDPOTrainer, objective_for

logger = logging.getLogger(__name__)
STAGE_DONE = "stage_complete.json"


@dataclass
class StageResult:
    name: str
    status: str  # "trained", "resumed from checkpoint-N", "skipped (already complete)", "off", "stopped early ..."
    weights: Path | None = None  # the stage's saved adapter (LoRA) or full model; None when the stage did not run
    seconds: float = 0.0
    steps: int = 0
    rows: dict[str, int] = field(default_factory=dict)
    log_history: list[dict] = field(default_factory=list)
    stopped_by: str | None = None  # who ended the stage before its last step (alignkit/callbacks.py), else None
    fingerprint: dict = field(default_factory=dict)  # the settings it was trained with (alignkit/fingerprint.py)

    @property
    def metrics(self) -> dict[str, float]:
        """The last logged value of every metric."""
        return {k: v for entry in self.log_history for k, v in entry.items() if k != "step"}


def load_stage_model(cfg: RecipeConfig, stages: list[StageResult]):
    """The model after `stages`: the base model with each stage's adapter merged in order (or the last full model).

    Rebuilding from what the stages saved, instead of merging the trainer's model in place, gives every process full
    weights whatever the backend (under ZeRO-3 or FSDP the trained model's parameters are shards) and makes a resumed
    or skipped stage yield exactly what a fresh one does.
    """
    done = [s for s in stages if s.weights is not None]
    if not cfg.model.use_lora and done:
        return load_model(cfg.model, source=done[-1].weights)
    model = load_model(cfg.model)
    for stage in done:
        model = PeftModel.from_pretrained(model, stage.weights).merge_and_unload()
    return model


def lora_config(cfg: RecipeConfig) -> LoraConfig:
    m = cfg.model
    targets = m.lora_target_modules[0] if m.lora_target_modules == ["all-linear"] else m.lora_target_modules
    return LoraConfig(
        r=m.lora_r, lora_alpha=m.lora_alpha, lora_dropout=m.lora_dropout, target_modules=targets, task_type="CAUSAL_LM"
    )


def sft_rows(pairs: Dataset, mode: str, also_rejected: Collection[int] = ()) -> tuple[Dataset, Counter]:
    """Prompt-completion rows for SFT: y+ only ('chosen') or y+ and y- ('extended'), with counts of each.

    `also_rejected`: indices of pairs whose y- is trained on too in 'chosen' mode (the pre-flight's extend_sft
    action, docs/preflight.md); counted as 'rejected (pre-flight)'.
    """
    sides = ("chosen", "rejected") if mode == "extended" else ("chosen",)
    rows = [{"prompt": row["prompt"], "completion": row[side]} for row in pairs for side in sides]
    counts = Counter({side: len(pairs) for side in sides})
    if mode != "extended" and also_rejected:
        rows += [{"prompt": pairs[i]["prompt"], "completion": pairs[i]["rejected"]} for i in sorted(also_rejected)]
        counts["rejected (pre-flight)"] = len(also_rejected)
    return Dataset.from_list(rows), counts


# What a stage sets that has no alignkit field: today's choices, which a stage's pass-through (sft_trainer_args,
# preference_trainer_args) may override. Everything else alignkit sets comes from its own fields, and the config
# refuses those keys in a pass-through (alignkit/config.py, OWNED_TRAINER_ARGS).
STAGE_DEFAULTS = {"lr_scheduler_type": "cosine", "save_only_model": False, "disable_tqdm": False}
SFT_DEFAULTS = {"completion_only_loss": True, "packing": False}
DPO_DEFAULTS = {"truncation_mode": "keep_start"}


def _training_kwargs(cfg: RecipeConfig, stage_dir: Path, lr: float, max_steps: int, epochs: float) -> dict:
    """The TrainingArguments alignkit sets from its own fields (alignkit/config.py OWNED_TRAINER_ARGS lists them)."""
    r = cfg.run
    on_gpu = torch.cuda.is_available() and not r.use_cpu
    dtype = resolve_dtype(cfg.model.torch_dtype)
    return {
        "output_dir": str(stage_dir),
        "learning_rate": lr,
        "max_steps": max_steps,
        "num_train_epochs": epochs,
        "per_device_train_batch_size": r.per_device_train_batch_size,
        "gradient_accumulation_steps": r.gradient_accumulation_steps,
        "gradient_checkpointing": r.gradient_checkpointing,
        "warmup_steps": r.warmup_ratio,  # transformers 5 reads a float < 1 as a ratio
        "logging_steps": r.logging_steps,
        "save_steps": r.save_steps,
        "save_total_limit": r.save_total_limit,
        "seed": r.seed,
        # transformers rebuilds the process state from this flag; without a GPU it must say CPU, or CPU processes
        # launched together (torchrun, gloo) would each train alone.
        "use_cpu": not on_gpu,
        # always decided here: TRL's own bf16 default (None: bf16 unless fp16) would train a CPU run in bf16
        "bf16": on_gpu and dtype == torch.bfloat16,
        "fp16": on_gpu and dtype == torch.float16,
        "dataloader_num_workers": r.dataloader_num_workers,
        "max_length": cfg.data.max_length,
    }


def _with_passthrough(owned: dict, defaults: dict, passthrough: dict, report_to: list[str]) -> dict:
    """`owned` plus the defaults, with the stage's pass-through on top of the defaults (never of `owned`: the config
    refuses those keys, checked again here so that a config built in code cannot slip one past)."""
    if clash := sorted(owned.keys() & passthrough.keys()):
        raise AlignkitError(f"the stage's TRL pass-through sets {clash}, which alignkit sets from its own fields")
    return {**defaults, "report_to": report_to, **passthrough, **owned}


def sft_config(cfg: RecipeConfig, stage_dir: Path) -> SFTConfig:
    """TRL's SFTConfig for the SFT stage: alignkit's fields, today's defaults, then `sft_trainer_args`."""
    s = cfg.sft
    owned = _training_kwargs(cfg, stage_dir, s.sft_learning_rate, s.sft_max_steps, s.sft_num_train_epochs)
    defaults = STAGE_DEFAULTS | SFT_DEFAULTS
    return SFTConfig(**_with_passthrough(owned, defaults, s.sft_trainer_args, cfg.run.report_to))


def dpo_config(cfg: RecipeConfig, stage_dir: Path, max_steps: int) -> DPOConfig:
    """TRL's DPOConfig for the preference stage (or one on-policy round of `max_steps` steps): alignkit's fields,
    today's defaults, then `preference_trainer_args`."""
    p = cfg.preference
    loss_type, loss_weights = preference_loss(cfg)
    owned = _training_kwargs(cfg, stage_dir, p.preference_learning_rate, max_steps, p.preference_num_train_epochs)
    owned |= {
        "loss_type": loss_type,
        "loss_weights": loss_weights,
        "beta": p.beta,
        "precompute_ref_log_probs": p.precompute_ref_log_probs,
    }
    defaults = STAGE_DEFAULTS | DPO_DEFAULTS
    return DPOConfig(**_with_passthrough(owned, defaults, p.preference_trainer_args, cfg.run.report_to))


# --- the stage engine: skip, resume and train, save, finish. The off-policy stages and every on-policy round use it.


@dataclass
class TrainOutcome:
    """What one `train()` of a stage (or of an on-policy round) did."""

    status: str  # "trained", "resumed from checkpoint-N", or "stopped early by <who>" (alignkit/callbacks.py)
    seconds: float
    steps: int
    log_history: list[dict]
    stopped_by: str | None = None  # <who>, when a callback ended the stage early


def weights_dir(folder: Path, use_lora: bool) -> Path:
    """Where a stage (or round) working in `folder` saves what it trained: its LoRA adapter or its full model."""
    return folder / ("adapter" if use_lora else "model")


def claim_folder(what: str, folder: Path, fingerprint: dict, overwrite: bool, marker: str = STAGE_DONE) -> dict | None:
    """Check the work in `folder` against `fingerprint` before doing any: its done-marker (a finished stage or round
    made with the same settings, to skip), or None to work in the folder (resuming what it holds, which was made with
    the same settings, or from nothing). Work made with other settings stops the run with an error naming each changed
    field, or with `overwrite` is deleted. The folder's `FINGERPRINT` is written before any work goes into it."""
    done = read_json(folder / marker)
    holds_work = folder.is_dir() and any(p.name != FINGERPRINT for p in folder.iterdir())
    reuse = True  # an empty folder, or none
    if done is not None:
        reuse = check_reuse(what, folder, done.get("fingerprint"), fingerprint, overwrite)
    elif holds_work:
        checkpoint = last_complete_checkpoint(folder)
        what += f" (interrupted{', at ' + Path(checkpoint).name if checkpoint else ''})"
        reuse = check_reuse(what, folder, read_json(folder / FINGERPRINT), fingerprint, overwrite)
    state = PartialState()
    state.wait_for_everyone()  # every process has read the folder before the main one changes it
    if state.is_main_process:
        if not reuse:
            shutil.rmtree(folder)
        if done is None or not reuse:
            folder.mkdir(parents=True, exist_ok=True)
            (folder / FINGERPRINT).write_text(json.dumps(fingerprint, indent=1, default=str))
    state.wait_for_everyone()
    return done if reuse else None


def skipped_stage(
    name: str, stage_dir: Path, use_lora: bool, fingerprint: dict, overwrite: bool
) -> StageResult | None:
    """The record of a stage that a previous run finished with the same settings (its `STAGE_DONE` marker), or None
    when it is to be trained (or resumed): `claim_folder` has checked the folder, and deleted it under `overwrite`."""
    done = claim_folder(f"stage '{name}'", stage_dir, fingerprint, overwrite)
    if done is None:
        return None
    logger.warning("[%s] already complete in %s with the same settings: skipping", name, stage_dir)
    history = json.loads((stage_dir / "metrics.json").read_text()) if (stage_dir / "metrics.json").exists() else []
    if "weights" in done:  # the folder the stage recorded (None: it trained nothing, e.g. no round had pairs)
        weights = stage_dir / done["weights"] if done["weights"] else None
    else:  # a marker written before stages recorded it
        weights = weights_dir(stage_dir, use_lora)
    status = "skipped (already complete)"
    if done.get("stopped_by"):  # the guard's verdict outlives the run that reached it
        status = f"{done['status']}; {status}"
    return StageResult(name, status, weights, done["seconds"], done["steps"], done["rows"], history,
                       done.get("stopped_by"), done["fingerprint"])  # fmt: skip


def last_complete_checkpoint(stage_dir: Path) -> str | None:
    """The newest `checkpoint-N` that was written to the end (its trainer_state.json is saved last).

    A run killed while saving leaves a checkpoint folder without it, which the trainer cannot resume from.
    """
    checkpoints = sorted(stage_dir.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]), reverse=True)
    for checkpoint in checkpoints:
        if (checkpoint / "trainer_state.json").exists():
            return str(checkpoint)
        logger.warning("ignoring %s: incomplete (the run stopped while saving it)", checkpoint)
    return None


def train_stage(trainer, stage_dir: Path, name: str) -> TrainOutcome:
    """Train, resuming from the newest complete checkpoint in `stage_dir`; an early stop is read from the trainer's
    state, where a callback that ended the stage put its reason."""
    checkpoint = last_complete_checkpoint(stage_dir) if stage_dir.exists() else None
    if checkpoint:
        logger.warning("[%s] resuming from %s", name, checkpoint)
    start = time.perf_counter()
    trainer.train(resume_from_checkpoint=checkpoint)
    status = ("resumed from " + Path(checkpoint).name) if checkpoint else "trained"
    if reason := early_stop_reason(trainer.state):
        status = f"stopped early by {reason}"
    seconds = time.perf_counter() - start
    return TrainOutcome(status, seconds, trainer.state.global_step, trainer.state.log_history, reason)


def save_and_release(trainer, folder: Path, use_lora: bool) -> Path:
    """Save what the trainer trained into `weights_dir(folder)` (gathered from ZeRO-3/FSDP shards, written by the
    main process only), then free the trainer's memory; returns the folder."""
    weights = weights_dir(folder, use_lora)
    trainer.save_model(str(weights))
    trainer.accelerator.free_memory()
    gc.collect()
    return weights


def write_marker(path: Path, record: dict) -> None:
    """A done-marker (stage or round), written by the main process once everything it records exists; all wait."""
    state = PartialState()
    if state.is_main_process:
        path.write_text(json.dumps(record, indent=1))
    state.wait_for_everyone()


def finish_stage(stage_dir: Path, result: StageResult, **extra) -> StageResult:
    """Write the stage's metrics.json and its done-marker (with `extra` fields), which a rerun skips on."""
    if PartialState().is_main_process:
        (stage_dir / "metrics.json").write_text(json.dumps(result.log_history, indent=1))
    done = {
        "status": result.status,
        "steps": result.steps,
        "seconds": round(result.seconds, 1),
        "rows": result.rows,
        "weights": str(result.weights.relative_to(stage_dir)) if result.weights is not None else None,
        "stopped_by": result.stopped_by,
        "fingerprint": result.fingerprint,
        **extra,
    }
    write_marker(stage_dir / STAGE_DONE, done)
    return result


def _trained_stage(trainer, name: str, stage_dir: Path, rows: dict, use_lora: bool, fingerprint: dict) -> StageResult:
    """Train the stage's trainer (resuming if a checkpoint is there), save its weights and mark it done."""
    outcome = train_stage(trainer, stage_dir, name)
    weights = save_and_release(trainer, stage_dir, use_lora)
    result = StageResult(name, outcome.status, weights, outcome.seconds, outcome.steps, rows, outcome.log_history,
                         outcome.stopped_by, fingerprint)  # fmt: skip
    return finish_stage(stage_dir, result)


def run_sft_stage(
    model, tokenizer, pairs: Dataset, cfg: RecipeConfig, stage_dir: Path, callbacks=(), also_rejected=()
) -> StageResult:
    """Stage 1: SFT on (x, y+) and, in extended mode, (x, y-) (in chosen mode, y- of `also_rejected` pairs too).
    Completion-only loss. `callbacks`: a list, or `callbacks_for(stage_name, stage_dir)` (alignkit/callbacks.py).
    `model`: the model to train, or None to load `cfg.model` only when the stage trains (not when it is skipped or
    refused)."""
    mode = cfg.sft.sft_mode
    if mode == "none":
        return StageResult("sft", "off")
    rows, counts = sft_rows(pairs, mode, also_rejected)
    fingerprint = stage_fingerprint(cfg, "sft", rows_digest(rows), [], PartialState().num_processes)
    if done := skipped_stage("sft", stage_dir, cfg.model.use_lora, fingerprint, cfg.run.overwrite):
        return done
    model = load_model(cfg.model) if model is None else model
    logger.warning("[sft] mode=%s: %d rows (%s)", mode, len(rows), ", ".join(f"{k}: {v}" for k, v in counts.items()))
    callbacks = callbacks_for_stage(callbacks, "sft", stage_dir)
    trainer = SFTTrainer(
        model=model,
        args=sft_config(cfg, stage_dir),
        train_dataset=rows,
        processing_class=tokenizer,
        peft_config=lora_config(cfg) if cfg.model.use_lora else None,
        callbacks=callbacks,
    )
    attach_callbacks(trainer, callbacks)
    return _trained_stage(trainer, "sft", stage_dir, dict(counts), cfg.model.use_lora, fingerprint)


def pairs_for_steps(pairs: Dataset, max_steps: int, cfg: RecipeConfig) -> Dataset:
    """The pairs `max_steps` optimizer steps will use: a seeded random subset when that is fewer than all.

    The reference log-probs are precomputed for every pair handed to the trainer, so handing it only the pairs it will
    train on keeps that pass from scoring data no step uses.
    """
    r = cfg.run
    needed = max_steps * r.per_device_train_batch_size * r.gradient_accumulation_steps * PartialState().num_processes
    if max_steps <= 0 or needed >= len(pairs):
        return pairs
    logger.warning(
        "[preference] %d steps use %d of the %d pairs (a seeded random subset)", max_steps, needed, len(pairs)
    )
    return pairs.shuffle(seed=r.seed).select(range(needed))


def dataset_on_disk(dataset: Dataset, path: Path) -> Dataset:
    """The dataset as saved in `path` (written once by the main process; a resumed stage reuses the saved copy).

    TRL caches the precomputed reference log-probs next to the dataset's files; an in-memory dataset has them in a
    per-process temporary folder that the other processes cannot see, which breaks multi-process runs.
    """
    state = PartialState()
    if state.is_main_process and not path.exists():
        dataset.save_to_disk(str(path))
    state.wait_for_everyone()
    return load_from_disk(str(path))


def preference_loss(cfg: RecipeConfig) -> tuple[list[str], list[float]]:
    """TRL `loss_type` and `loss_weights`: the preference loss, plus an SFT term on y+ when the config has one
    (`RecipeConfig.sft_term_in_preference_loss`: weighted, or at weight 0 for the guard's `mitigate` to raise).
    When alignkit computes the preference loss (alignkit/objectives.py), TRL's is 'sigmoid' at weight 0."""
    p = cfg.preference
    first, weight = ("sigmoid", 0.0) if stage_objective(cfg) is not None else (p.trl_loss_type, 1.0)
    if cfg.sft_term_in_preference_loss:
        return [first, "sft"], [weight, p.sft_weight]
    return [first], [weight]


def stage_objective(cfg: RecipeConfig) -> Objective | None:
    """The preference loss alignkit computes on TRL's log-probs (dpop, cal_dpo, the floor), or None for TRL's own."""
    return objective_for(cfg.preference, floor_later=cfg.floor_by_guard)


# Reference log-probs computed before the stage (the pre-flight's pass, alignkit/preflight/reference.py): TRL's own
# column names, plus a digest of the token ids they were computed on, checked against TRL's tokenization.
REFERENCE_COLUMNS = ("ref_chosen_logps", "ref_rejected_logps", "ref_digest")


def reference_digest(prompt_ids: list[int], chosen_ids: list[int], rejected_ids: list[int]) -> str:
    """A digest of a pair's token ids as TRL splits them (prompt, chosen completion, rejected completion)."""
    text = ";".join(",".join(map(str, ids)) for ids in (prompt_ids, chosen_ids, rejected_ids))
    return hashlib.sha1(text.encode()).hexdigest()


class PrecomputedReferenceDPOTrainer(ObjectiveDPOTrainer):
    """TRL's DPOTrainer that takes the training pairs' reference log-probs from the dataset when they were computed
    on exactly the tokens it trains on, instead of running its own reference pass (`precompute_ref_log_probs`).

    The columns (REFERENCE_COLUMNS) are used only when every row's `ref_digest` equals the digest of TRL's own
    `prompt_ids`/`chosen_ids`/`rejected_ids`, no sequence is truncated by `max_length`, and the reference is the model
    handed in (no `ref_model`, no `ld_alpha`); otherwise they are dropped, a log line says why, and TRL computes its
    own. Whoever adds the columns vouches that they come from the model handed in (the recipe: the pre-flight after
    SFT scores the preference stage's starting model).
    """

    def _precompute_ref_logps(self, dataset: Dataset, name: str, batch_size: int) -> Dataset:
        if not set(REFERENCE_COLUMNS) <= set(dataset.column_names):
            return super()._precompute_ref_logps(dataset, name, batch_size)
        reason = self._reference_mismatch(dataset)
        if reason is None:
            logger.warning(
                "[preference] reference log-probs of the %d %s pairs taken from the pre-flight's pass (same model, "
                "same tokens): TRL's reference pass skipped", len(dataset), name,
            )  # fmt: skip
            return dataset.remove_columns("ref_digest")
        logger.warning(
            "[preference] the pre-flight's reference log-probs are not used (%s): TRL computes its own", reason
        )
        return super()._precompute_ref_logps(dataset.remove_columns(list(REFERENCE_COLUMNS)), name, batch_size)

    def _reference_mismatch(self, dataset: Dataset) -> str | None:
        """Why the dataset's reference log-probs cannot stand in for TRL's, or None when they can."""
        if self.ref_model is not None or self.ld_alpha is not None:
            return "the reference is a separate model" if self.ref_model is not None else "ld_alpha is set"
        limit = self.args.max_length
        for i, row in enumerate(dataset):
            if row["ref_chosen_logps"] is None or row["ref_rejected_logps"] is None:
                return f"pair {i} has none"
            longest = len(row["prompt_ids"]) + max(len(row["chosen_ids"]), len(row["rejected_ids"]))
            if limit is not None and longest > limit:
                return f"pair {i} is truncated to max_length {limit}"
            if row["ref_digest"] != reference_digest(row["prompt_ids"], row["chosen_ids"], row["rejected_ids"]):
                return f"pair {i}: TRL's tokens differ from the ones scored"
        return None


def dpo_trainer(model, tokenizer, pairs: Dataset, cfg: RecipeConfig, stage_dir: Path, max_steps: int, callbacks=(),
                ref_model=None) -> DPOTrainer:  # fmt: skip
    """TRL's DPOTrainer with the recipe's settings; without `ref_model` the reference is the model as handed in.
    Reference log-probs in `pairs` (REFERENCE_COLUMNS) replace TRL's reference pass where they are valid."""
    trainer = PrecomputedReferenceDPOTrainer(
        model=model,
        ref_model=ref_model,
        args=dpo_config(cfg, stage_dir, max_steps),
        train_dataset=pairs,
        processing_class=tokenizer,
        peft_config=lora_config(cfg) if cfg.model.use_lora else None,
        callbacks=list(callbacks),
    )
    trainer.objective = stage_objective(cfg)  # None: TRL's own loss
    attach_callbacks(trainer, callbacks)
    return trainer


def run_preference_stage(
    model, tokenizer, pairs: Dataset, cfg: RecipeConfig, stage_dir: Path, callbacks=(), start_stages=()
) -> StageResult:
    """Stage 2: DPO/IPO starting from the SFT model, with the SFT model as reference. `callbacks`: a list, or
    `callbacks_for(stage_name, stage_dir)` (alignkit/callbacks.py). `start_stages`: the stages `model` comes from
    (the SFT stage's StageResult; none: the base model), whose fingerprints are part of this stage's."""
    p = cfg.preference
    pairs = pairs_for_steps(pairs, p.preference_max_steps, cfg)
    upstream = [s.fingerprint for s in start_stages if s.fingerprint]
    data = rows_digest(pairs, ["prompt", "chosen", "rejected"])
    fingerprint = stage_fingerprint(cfg, "preference", data, upstream, PartialState().num_processes)
    if done := skipped_stage("preference", stage_dir, cfg.model.use_lora, fingerprint, cfg.run.overwrite):
        return done
    pairs = dataset_on_disk(pairs, stage_dir / "pairs")
    columns = [c for c in pairs.column_names if c not in ("prompt", "chosen", "rejected", *REFERENCE_COLUMNS)]
    callbacks = callbacks_for_stage(callbacks, "preference", stage_dir)
    trainer = dpo_trainer(
        model, tokenizer, pairs.remove_columns(columns), cfg, stage_dir, p.preference_max_steps, callbacks
    )
    return _trained_stage(trainer, "preference", stage_dir, {"pairs": len(pairs)}, cfg.model.use_lora, fingerprint)
