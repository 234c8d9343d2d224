"""The recipe's two training stages, on TRL's trainers: extended (or chosen-only) SFT, then DPO/IPO.

Each stage works in its own folder and is restartable: a finished stage leaves `stage_complete.json` and is skipped by
a rerun; an interrupted one resumes from its newest `checkpoint-*`. With LoRA, a stage trains a fresh adapter on top of
the previous stage's merged weights, so in the preference stage "adapter disabled" is exactly the SFT model: the
reference costs no second copy of the weights.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate import PartialState
from datasets import Dataset
from peft import LoraConfig, PeftModel
from transformers.trainer_utils import get_last_checkpoint
from trl import DPOConfig, DPOTrainer, SFTConfig, SFTTrainer

from alignkit.config import RecipeConfig
from alignkit.models import resolve_dtype
from alignkit.monitors import SqueezingCallback

logger = logging.getLogger(__name__)
STAGE_DONE = "stage_complete.json"


@dataclass
class StageResult:
    name: str
    model: torch.nn.Module
    status: str  # "trained", "resumed", "skipped (already complete)", "off", "stopped early: <why>"
    seconds: float = 0.0
    steps: int = 0
    rows: dict[str, int] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    log_history: list[dict] = field(default_factory=list)


def lora_config(cfg: RecipeConfig) -> LoraConfig:
    m = cfg.model
    targets = m.lora_target_modules[0] if m.lora_target_modules == ["all-linear"] else m.lora_target_modules
    return LoraConfig(
        r=m.lora_r, lora_alpha=m.lora_alpha, lora_dropout=m.lora_dropout, target_modules=targets, task_type="CAUSAL_LM"
    )


def sft_rows(pairs: Dataset, mode: str) -> tuple[Dataset, Counter]:
    """Prompt-completion rows for SFT: y+ only ('chosen') or y+ and y- ('extended'), with counts of each."""
    sides = ("chosen", "rejected") if mode == "extended" else ("chosen",)
    rows = [{"prompt": row["prompt"], "completion": row[side]} for row in pairs for side in sides]
    return Dataset.from_list(rows), Counter({side: len(pairs) for side in sides})


def _training_kwargs(cfg: RecipeConfig, stage_dir: Path, lr: float, max_steps: int, epochs: float) -> dict:
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
        "lr_scheduler_type": "cosine",
        "logging_steps": r.logging_steps,
        "save_steps": r.save_steps,
        "save_total_limit": r.save_total_limit,
        "save_only_model": False,
        "report_to": r.report_to,
        "seed": r.seed,
        "use_cpu": r.use_cpu,
        "bf16": on_gpu and dtype == torch.bfloat16,
        "fp16": on_gpu and dtype == torch.float16,
        "dataloader_num_workers": r.dataloader_num_workers,
        "max_length": cfg.data.max_length,
        "disable_tqdm": False,
    }


def _finished(stage_dir: Path) -> dict | None:
    marker = stage_dir / STAGE_DONE
    return json.loads(marker.read_text()) if marker.exists() else None


def _load_stage_weights(base, stage_dir: Path, use_lora: bool):
    """Rebuild a finished stage's output from its saved adapter (merged into `base`) or full weights."""
    if use_lora:
        return PeftModel.from_pretrained(base, stage_dir / "adapter").merge_and_unload()
    return type(base).from_pretrained(stage_dir / "model", dtype=base.dtype)


def _attach(trainer, callbacks) -> None:
    """Monitors log through the trainer and (guard 'mitigate') change its loss weights, so they need it."""
    for callback in callbacks:
        if isinstance(callback, SqueezingCallback):
            callback.attach(trainer)


def _train(trainer, stage_dir: Path, name: str) -> tuple[str, float]:
    checkpoint = get_last_checkpoint(str(stage_dir)) if stage_dir.exists() else None
    if checkpoint:
        logger.warning("[%s] resuming from %s", name, checkpoint)
    start = time.perf_counter()
    trainer.train(resume_from_checkpoint=checkpoint)
    return ("resumed from " + Path(checkpoint).name) if checkpoint else "trained", time.perf_counter() - start


def _finish(trainer, result: StageResult, stage_dir: Path, use_lora: bool) -> torch.nn.Module:
    """Save the stage (once, by the main process), write its marker, and return the merged model."""
    for callback in trainer.callback_handler.callbacks:
        if isinstance(callback, SqueezingCallback) and callback.stopped_early:
            result.status = "stopped early by the squeezing guard"
    trainer.save_model(str(stage_dir / ("adapter" if use_lora else "model")))
    result.steps = trainer.state.global_step
    result.log_history = trainer.state.log_history
    result.metrics = {k: v for entry in trainer.state.log_history for k, v in entry.items() if k != "step"}
    state = PartialState()
    if state.is_main_process:
        (stage_dir / "metrics.json").write_text(json.dumps(result.log_history, indent=1))
        done = {
            "status": result.status,
            "steps": result.steps,
            "seconds": round(result.seconds, 1),
            "rows": result.rows,
        }
        (stage_dir / STAGE_DONE).write_text(json.dumps(done, indent=1))
    state.wait_for_everyone()
    model = trainer.model
    return model.merge_and_unload() if use_lora else model


def run_sft_stage(model, tokenizer, pairs: Dataset, cfg: RecipeConfig, stage_dir: Path, callbacks=()) -> StageResult:
    """Stage 1: SFT on (x, y+) and, in extended mode, (x, y-). Completion-only loss."""
    mode = cfg.sft.sft_mode
    if mode == "none":
        return StageResult("sft", model, "off")
    if done := _finished(stage_dir):
        logger.warning("[sft] already complete in %s: skipping", stage_dir)
        merged = _load_stage_weights(model, stage_dir, cfg.model.use_lora)
        return StageResult("sft", merged, "skipped (already complete)", done["seconds"], done["steps"], done["rows"])
    rows, counts = sft_rows(pairs, mode)
    logger.warning("[sft] mode=%s: %d rows (%s)", mode, len(rows), ", ".join(f"{k}: {v}" for k, v in counts.items()))
    args = SFTConfig(
        **_training_kwargs(
            cfg, stage_dir, cfg.sft.sft_learning_rate, cfg.sft.sft_max_steps, cfg.sft.sft_num_train_epochs
        ),
        completion_only_loss=True,
        packing=False,
    )
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=rows,
        processing_class=tokenizer,
        peft_config=lora_config(cfg) if cfg.model.use_lora else None,
        callbacks=list(callbacks),
    )
    _attach(trainer, callbacks)
    result = StageResult("sft", model, "", rows=dict(counts))
    result.status, result.seconds = _train(trainer, stage_dir, "sft")
    result.model = _finish(trainer, result, stage_dir, cfg.model.use_lora)
    return result


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


def preference_loss(cfg: RecipeConfig) -> tuple[list[str], list[float]]:
    """TRL `loss_type` and `loss_weights`: the preference loss, plus an SFT term on y+ when it is weighted."""
    p = cfg.preference
    # With the guard set to mitigate, the SFT term is present from the start (weight 0) so the guard can raise it.
    if p.sft_weight > 0 or cfg.monitor.guard_action == "mitigate":
        return [p.trl_loss_type, "sft"], [1.0, p.sft_weight]
    return [p.trl_loss_type], [1.0]


def run_preference_stage(
    model, tokenizer, pairs: Dataset, cfg: RecipeConfig, stage_dir: Path, callbacks=()
) -> StageResult:
    """Stage 2: DPO/IPO starting from the SFT model, with the SFT model as reference."""
    if done := _finished(stage_dir):
        logger.warning("[preference] already complete in %s: skipping", stage_dir)
        merged = _load_stage_weights(model, stage_dir, cfg.model.use_lora)
        return StageResult("preference", merged, "skipped (already complete)", done["seconds"], done["steps"])
    p = cfg.preference
    loss_type, loss_weights = preference_loss(cfg)
    pairs = pairs_for_steps(pairs, p.preference_max_steps, cfg)
    columns = [c for c in pairs.column_names if c not in ("prompt", "chosen", "rejected")]
    args = DPOConfig(
        **_training_kwargs(
            cfg, stage_dir, p.preference_learning_rate, p.preference_max_steps, p.preference_num_train_epochs
        ),
        loss_type=loss_type,
        loss_weights=loss_weights,
        beta=p.beta,
        precompute_ref_log_probs=p.precompute_ref_log_probs,
        truncation_mode="keep_start",
    )
    trainer = DPOTrainer(
        model=model,
        ref_model=None,
        args=args,
        train_dataset=pairs.remove_columns(columns),
        processing_class=tokenizer,
        peft_config=lora_config(cfg) if cfg.model.use_lora else None,
        callbacks=list(callbacks),
    )
    _attach(trainer, callbacks)
    result = StageResult("preference", model, "", rows={"pairs": len(pairs)})
    result.status, result.seconds = _train(trainer, stage_dir, "preference")
    result.model = _finish(trainer, result, stage_dir, cfg.model.use_lora)
    return result
