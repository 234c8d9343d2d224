"""The on-policy preference stage: R rounds of sample k responses from the policy → rank → DPO/IPO on (best, worst).

    stage_dir/
      round-1/ samples.jsonl  pairs.jsonl  train_pairs/  checkpoint-*  adapter/ (or model/)  probes.jsonl
               round_complete.json
      round-2/ ...
      adapter/ (LoRA: the stage's result as one adapter on the SFT model)  metrics.json  stage_complete.json

A round's data (prompts, samples, ranked pairs, training set) comes from `alignkit.onpolicy.collect`; here it trains,
saves and marks itself done with the stage engine of `alignkit.stages` (`train_stage`, `save_and_release`,
`write_marker`), as the off-policy stages do. Every round resumes on its own: a finished round
(`round_complete.json`) is skipped, a round whose `pairs.jsonl` exists trains on the saved pairs without sampling or
ranking again, one whose `samples.jsonl` exists is only ranked again (an LLM judge's verdicts come from its cache), and
an interrupted training run resumes from its newest `checkpoint-*`. All of that only when the round's folder was made
with the same settings: each round's fingerprint (`fingerprint.json`, and in its marker) is the stage's plus the
round's number and steps, and one made with other settings stops the run before any work, or with `overwrite` is
deleted and done again (`alignkit.stages.claim_folder`). The policy at the start of a round is rebuilt from
what the finished rounds saved, never carried over in memory, so a resumed run trains exactly what an uninterrupted
one would.

The reference model (`onpolicy_reference`):

* fixed: the SFT model in every round. With LoRA one adapter keeps training across rounds on the SFT weights (a
  round starts from the previous round's adapter weights), so "adapter disabled" is the SFT model throughout;
* updated: the policy at the start of the round. With LoRA each round's adapter is merged and a fresh one starts on
  top, so "adapter disabled" is the previous round's policy.

Without LoRA the reference is an explicit copy of the SFT model (fixed) or of the round's starting policy (updated).
"""

from __future__ import annotations

import copy
import gc
import json
import logging
import math
import shutil
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate import PartialState
from datasets import Dataset
from peft import PeftModel
from peft.utils import load_peft_weights, set_peft_model_state_dict
from safetensors.torch import load_file, save_file

from alignkit.callbacks import callbacks_for_stage
from alignkit.config import RecipeConfig
from alignkit.errors import AlignkitError
from alignkit.fingerprint import rows_digest, stage_fingerprint
from alignkit.models import load_model
from alignkit.onpolicy.collect import prompt_pool, round_prompts, round_records, training_set
from alignkit.onpolicy.rankers import load_callable
from alignkit.stages import (
    StageResult,
    claim_folder,
    dataset_on_disk,
    dpo_trainer,
    finish_stage,
    load_stage_model,
    pairs_for_steps,
    save_and_release,
    skipped_stage,
    train_stage,
    write_marker,
)

logger = logging.getLogger(__name__)
ROUND_DONE = "round_complete.json"


def round_steps(total: int, rounds: int) -> list[int]:
    """`preference_max_steps` split over the rounds (earlier rounds take the remainder); -1 stays -1 (epochs).

    >>> round_steps(40, 2), round_steps(7, 3), round_steps(-1, 2)
    ([20, 20], [3, 2, 2], [-1, -1])
    """
    if total <= 0:
        return [total] * rounds
    return [total // rounds + (1 if r < total % rounds else 0) for r in range(rounds)]


def concat_adapters(adapter_dirs: list[Path], out_dir: Path) -> Path:
    """One LoRA adapter equal to applying `adapter_dirs` one after the other (each merged before the next).

    LoRA adds scale·B·A to a weight, so a sum of adapters of rank r is one adapter of rank n·r with the A matrices
    stacked and the B matrices side by side; lora_alpha grows with the rank so that the scale stays the same. This is
    how 'updated' rounds become a single `weights` folder that `load_stage_model` merges like any stage's adapter.
    """
    configs = [json.loads((d / "adapter_config.json").read_text()) for d in adapter_dirs]
    first = configs[0]
    keys = ("r", "lora_alpha", "target_modules", "use_rslora")
    if (
        any(c.get(k) != first.get(k) for c in configs for k in keys)
        or first.get("rank_pattern")
        or first.get("alpha_pattern")
    ):
        raise AlignkitError(
            f"cannot combine the adapters in {[str(d) for d in adapter_dirs]}: their LoRA settings differ"
        )
    tensors = [load_file(str(d / "adapter_model.safetensors")) for d in adapter_dirs]
    combined = {}
    for key in tensors[0]:
        parts = [t[key] for t in tensors]
        if ".lora_A." in key:
            combined[key] = torch.cat(parts, dim=0)
        elif ".lora_B." in key:
            combined[key] = torch.cat(parts, dim=1)
        else:
            raise AlignkitError(
                f"cannot combine adapters with non-LoRA weights ({key}); use onpolicy_reference: fixed"
            )
    n = len(adapter_dirs)
    # scale = alpha / r (alpha / sqrt(r) with rsLoRA) must not change when r becomes n·r
    alpha = first["lora_alpha"] * (math.sqrt(n) if first.get("use_rslora") else n)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(combined, str(out_dir / "adapter_model.safetensors"))
    (out_dir / "adapter_config.json").write_text(json.dumps({**first, "r": first["r"] * n, "lora_alpha": alpha}))
    return out_dir


@dataclass
class Round:
    """One sample -> rank -> train round, as its `round_complete.json` records it."""

    index: int
    dir: Path
    rows: dict[str, int]  # prompts, on_policy_pairs, dataset_pairs (mixed), tie, unscored
    status: str = "no pairs"  # else its TrainOutcome's: "trained", "resumed from checkpoint-N", "stopped early by .."
    steps: int = 0
    seconds: float = 0.0
    weights: str | None = None  # the folder in `dir` that holds what the round trained; None when it trained nothing
    log_history: list[dict] = field(default_factory=list)
    stopped_by: str | None = None  # who ended the round before its last step (then no further round runs)
    fingerprint: dict = field(default_factory=dict)  # the settings it was made with (alignkit/fingerprint.py)

    @property
    def weights_path(self) -> Path | None:
        return self.dir / self.weights if self.weights else None

    @property
    def stopped_early(self) -> bool:
        return self.stopped_by is not None

    def save(self) -> None:
        record = {"rows": self.rows, "steps": self.steps, "weights": self.weights, "log_history": self.log_history,
                  "status": self.status, "seconds": self.seconds, "stopped_by": self.stopped_by,
                  "fingerprint": self.fingerprint}  # fmt: skip
        write_marker(self.dir / ROUND_DONE, record)

    @classmethod
    def from_marker(cls, index: int, round_dir: Path, done: dict) -> Round:
        return cls(index, round_dir, done["rows"], done["status"], done["steps"], done["seconds"], done.get("weights"),
                   done.get("log_history", []), done.get("stopped_by"), done.get("fingerprint", {}))  # fmt: skip

    @classmethod
    def load(cls, index: int, round_dir: Path) -> Round | None:
        """The round as a previous run finished it, or None when it did not (its settings are not checked here:
        `run_onpolicy_preference_stage` reads rounds through `claim_folder`)."""
        marker = round_dir / ROUND_DONE
        return cls.from_marker(index, round_dir, json.loads(marker.read_text())) if marker.exists() else None


def _round_weights(finished: list[Round]) -> list[Path]:
    return [r.weights_path for r in finished if r.weights_path is not None]


def _start_of_round(cfg: RecipeConfig, start_stages: list[StageResult], finished: list[Round]):
    """(policy weights to train, adapter to continue or None): the round's starting point, rebuilt from disk."""
    weights = _round_weights(finished)
    if not cfg.model.use_lora:
        return (load_model(cfg.model, source=weights[-1]) if weights else load_stage_model(cfg, start_stages)), None
    base = load_stage_model(cfg, start_stages)
    if cfg.preference.onpolicy_reference == "fixed":
        return base, (weights[-1] if weights else None)
    for adapter in weights:
        base = PeftModel.from_pretrained(base, adapter).merge_and_unload()
    return base, None


def _train_round(round_: Round, model, adapter, ref_model, tokenizer, train: Dataset, cfg, steps: int, callbacks):
    """DPO/IPO on the round's pairs; records the outcome and the saved weights in `round_`."""
    trainer = dpo_trainer(model, tokenizer, train, cfg, round_.dir, steps, callbacks, ref_model=ref_model)
    if adapter is not None:
        # The adapter continues from the previous round. Loaded after the trainer is built: a PeftModel handed to
        # DPOTrainer would get a frozen copy of its adapter as the reference, i.e. an 'updated' reference.
        set_peft_model_state_dict(trainer.model, load_peft_weights(str(adapter)))
    outcome = train_stage(trainer, round_.dir, round_.dir.name)
    round_.weights = save_and_release(trainer, round_.dir, cfg.model.use_lora).name
    round_.status, round_.steps, round_.stopped_by = outcome.status, outcome.steps, outcome.stopped_by
    round_.log_history = [{**entry, "round": round_.index} for entry in outcome.log_history]


def _stage_weights(cfg: RecipeConfig, stage_dir: Path, finished: list[Round]) -> Path | None:
    """The stage's result as one folder that `load_stage_model` applies to the SFT model (None: nothing trained)."""
    weights = _round_weights(finished)
    if not weights:
        return None
    if not cfg.model.use_lora:
        return weights[-1]
    out = stage_dir / "adapter"
    if PartialState().is_main_process:
        shutil.rmtree(out, ignore_errors=True)
        if cfg.preference.onpolicy_reference == "fixed":  # the last round's adapter holds every round's training
            shutil.copytree(weights[-1], out)
        else:
            concat_adapters(weights, out)
    return out


def _run_round(r: int, tokenizer, pool: Dataset, pairs: Dataset, cfg: RecipeConfig, stage_dir: Path,
               start_stages: list[StageResult], finished: list[Round], steps: int, callbacks,
               fingerprint: dict) -> Round:  # fmt: skip
    """Round r from the policy the finished rounds left: sample, rank, train on the pairs; its marker written.
    The round's folder has been claimed for `fingerprint` (what it holds was made with the same settings)."""
    p = cfg.preference
    round_dir = stage_dir / f"round-{r}"
    name = f"preference round {r}"
    base, adapter = _start_of_round(cfg, start_stages, finished)
    prompts = round_prompts(pool, r, p.onpolicy_prompts_per_round, cfg.run.seed)
    t0 = time.perf_counter()
    base, records = round_records(base, adapter, tokenizer, prompts, cfg, r, round_dir, stage_dir)
    train, counts = training_set(records, pairs, cfg, r)
    logger.warning(
        "[%s] %d prompts -> %d on-policy pairs (%d tied, %d unscored)%s",
        name, counts["prompts"], counts["on_policy_pairs"], counts["tie"], counts["unscored"],
        f" + {counts['dataset_pairs']} dataset pairs" if "dataset_pairs" in counts else "",
    )  # fmt: skip
    round_ = Round(r, round_dir, dict(counts), fingerprint=fingerprint)
    if train is not None:
        if cfg.model.use_lora:
            ref_model = None  # the adapter disabled
        elif p.onpolicy_reference == "fixed":
            ref_model = load_stage_model(cfg, start_stages)
        else:
            ref_model = copy.deepcopy(base)
        # on disk, as in the off-policy stage: TRL caches the reference log-probs next to the dataset's files,
        # which every process must see (and a resumed round finds its own pairs and cache again)
        train = dataset_on_disk(pairs_for_steps(train, steps, cfg), round_dir / "train_pairs")
        round_callbacks = callbacks_for_stage(callbacks, name, round_dir)
        _train_round(round_, base, adapter, ref_model, tokenizer, train, cfg, steps, round_callbacks)
        del ref_model
    else:
        logger.warning("[%s] no prompt gave a pair (all tied or unscored): the policy is left as it was", name)
    round_.seconds = round(time.perf_counter() - t0, 1)
    del base
    gc.collect()
    round_.save()
    return round_


def _stage_result(cfg: RecipeConfig, stage_dir: Path, rounds: list[Round], status: str) -> StageResult:
    """The stage as the sum of its rounds; `weights` is one folder to apply to the SFT model."""
    totals: Counter = Counter()
    for done in rounds:
        totals.update(done.rows)
    totals["pairs"] = totals["on_policy_pairs"] + totals["dataset_pairs"]
    rows = {k: totals[k] for k in ("prompts", "pairs", "on_policy_pairs", "dataset_pairs")}
    rows |= {"tied_prompts": totals["tie"], "unscored_prompts": totals["unscored"]}
    return StageResult(
        name="preference",
        status=status,
        weights=_stage_weights(cfg, stage_dir, rounds),
        seconds=sum(done.seconds for done in rounds),
        steps=sum(done.steps for done in rounds),
        rows=rows,
        log_history=[entry for done in rounds for entry in done.log_history],
    )


def run_onpolicy_preference_stage(
    tokenizer,
    pairs: Dataset,
    cfg: RecipeConfig,
    stage_dir: Path,
    start_stages: list[StageResult],
    callbacks=(),
) -> StageResult:
    """Stage 2, on-policy (or mixed): `onpolicy_rounds` rounds of sample → rank → train, from the model that
    `start_stages` (the SFT stage) produced.

    Args:
        tokenizer: the policy's tokenizer.
        pairs: the training split; its prompts are sampled, and (mixed) its pairs mixed in.
        cfg: the recipe config (`cfg.preference` holds the on-policy settings).
        stage_dir: the stage's folder; round r works in `stage_dir / f"round-{r}"`.
        start_stages: the stages whose weights the policy starts from (and, fixed reference, the reference is).
        callbacks: TrainerCallbacks for every round's trainer, or `callbacks_for(stage_name, stage_dir)`
            (alignkit/callbacks.py), called as `callbacks_for(f"preference round {r}", round_dir)`: the recipe gives
            each round the monitor's callback, so the plots mark every round boundary on one step axis.

    Returns:
        The stage's StageResult; `weights` is one folder (adapter or model) to apply to the SFT model.
    """
    upstream = [s.fingerprint for s in start_stages if s.fingerprint]
    fingerprint = stage_fingerprint(cfg, "preference", rows_digest(pairs), upstream, PartialState().num_processes)
    if done := skipped_stage("preference", stage_dir, cfg.model.use_lora, fingerprint, cfg.run.overwrite):
        return done
    p = cfg.preference
    if p.ranker == "callable":
        load_callable(p.ranker_path)  # a typo in ranker_path should fail now, not after the first round's sampling
    pool = prompt_pool(pairs, p.ranker)
    steps = round_steps(p.preference_max_steps, p.onpolicy_rounds)
    rounds: list[Round] = []
    reused = 0
    while len(rounds) < p.onpolicy_rounds and not (rounds and rounds[-1].stopped_early):
        r = len(rounds) + 1
        round_dir = stage_dir / f"round-{r}"
        round_fingerprint = {**fingerprint, "round": r, "round_steps": steps[r - 1]}
        if (done := claim_folder(f"on-policy round {r}", round_dir, round_fingerprint, cfg.run.overwrite,
                                 ROUND_DONE)) is not None:  # fmt: skip
            logger.warning("[preference] round %d already complete in %s with the same settings: skipping", r,
                           round_dir)  # fmt: skip
            rounds.append(Round.from_marker(r, round_dir, done))
            reused += 1
            continue
        rounds.append(_run_round(r, tokenizer, pool, pairs, cfg, stage_dir, start_stages, rounds, steps[r - 1],
                                 callbacks, round_fingerprint))  # fmt: skip
    status = f"resumed after round {reused}" if reused else "trained"
    if rounds and rounds[-1].stopped_early:  # the guard's stop ends the stage (also one a previous run reached)
        status = f"{rounds[-1].status} in round {len(rounds)}"
        logger.warning("[preference] round %d %s: no further rounds", len(rounds), rounds[-1].status)
    result = _stage_result(cfg, stage_dir, rounds, status)
    result.stopped_by, result.fingerprint = (rounds[-1].stopped_by if rounds else None), fingerprint
    return finish_stage(stage_dir, result, rounds=len(rounds))
