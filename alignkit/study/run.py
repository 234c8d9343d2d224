"""Running the study: for each seed, the SFT models its arms need, then one DPO run per arm, each written to files.

Per seed s, on `num_train_pairs` training pairs drawn with s:

0. The held-out pairs (the answered prompts' own y⁺ and y⁻) scored under the base model, once per seed
   (`base.heldout_pairs.jsonl.gz`): what SFT did to prompts it never trained on.
1. SFT (alignkit.stages.run_sft_stage) in each mode the arms need: chosen-only (y⁺; shared by A_near and A_far, whose
   y⁺ are the same, and by their variants), chosen-only for half the steps (Ah: each y⁺ seen as often as under
   extended SFT), and extended with the near or the far y⁻ (B_near, B_far), A and B for the same number of steps.
2. DPO (alignkit.stages.run_preference_stage; the on-policy arm: alignkit.onpolicy, one round sampled from the SFT
   model) from that SFT model, `dpo_epochs` epochs over the same pairs at a constant learning rate, with the arm's
   loss or remedy switched on through the recipe's own config fields (alignkit.study.config.VARIANTS). The squeezing
   monitor probes every training pair (and some held-out prompts) at the start, after each of `eval_epochs`, and at
   the end; held-out prompts no stage of the seed trained on are answered (greedy, with the decoder's stop reason)
   and verified at the start and after each of `answer_epochs` (all `final_eval_num_prompts` at the start and the
   end), and their pairs scored at the start and the end (`HeldoutAnswers`). The start's answers and scores are the
   SFT model's, computed once per SFT model and read back by the other arms from it (`StartCache`).

An `_act_` arm (A_far_act_extend, A_far_act_drop) runs the recipe's pre-flight `act` through the recipe's own
functions (alignkit.preflight.recipe): extend_sft scores the pairs under the base model before SFT and adds the y⁻ of
those at risk to SFT's rows (its own SFT model); drop scores them under the SFT model and DPO trains its steps on the
others. Everything else, probes included (every training pair, dropped or not), is as in the arm without `_act_`.

Each finished (seed, arm) leaves its files in `<study_dir>/runs/s<seed>/` (alignkit/study/analysis.py reads them and
nothing else): `<arm>.json` (settings, sizes, timing, the monitor's per-evaluation metrics; for an `_act_` arm also
what the pre-flight marked and changed), `<arm>.probe_records.jsonl.gz` (one record per evaluation × probe × family),
`<arm>.generations.jsonl.gz` (one verified held-out answer per checkpoint × prompt), `<arm>.heldout_pairs.jsonl.gz`
(the held-out pairs' scores at DPO's start and end), `<arm>.preflight.jsonl.gz` (each training pair's pre-flight
scores under the model DPO starts from); an `_act_` arm adds `<arm>.act_preflight.jsonl.gz`, the recipe's pre-flight
records it acted on. A rerun skips every (seed, arm) whose JSON exists and every finished SFT stage (its
stage-complete marker), each only when it was made with the same settings (the JSON's `fingerprint`: the study's
settings that shape the run, the arm, the seed and the digest of its pairs; an older JSON's `settings`): otherwise the
rerun stops before any work and names each changed setting, or with `overwrite` runs it again. A DPO run cut short is
run again from its SFT model.
"""

from __future__ import annotations

import gzip
import logging
import math
import random
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import torch
from datasets import Dataset
from transformers import TrainerCallback

from alignkit.config import (
    DataConfig,
    EvaluationConfig,
    ModelConfig,
    PreferenceStageConfig,
    RecipeConfig,
    RunConfig,
    SFTStageConfig,
)
from alignkit.data import load_preference_data
from alignkit.data.far import far_rejected
from alignkit.data.verifier import verify
from alignkit.errors import AlignkitError
from alignkit.fingerprint import changed_fields, describe_changes, rows_digest
from alignkit.generation import generate
from alignkit.jsonl import json_safe, read_jsonl, write_jsonl_atomic
from alignkit.models import load_model, load_tokenizer, merged_copy
from alignkit.monitors import MonitorConfig, SqueezingMonitor, build_probe_set
from alignkit.onpolicy import run_onpolicy_preference_stage
from alignkit.preflight import recipe as preflight_recipe
from alignkit.preflight.config import PreflightConfig
from alignkit.preflight.passes import score_pairs
from alignkit.preflight.run import PreflightResult
from alignkit.preflight.scores import pair_scores
from alignkit.sequences import user_text
from alignkit.stages import StageResult, load_stage_model, run_preference_stage, run_sft_stage
from alignkit.study.config import Arm, StudyConfig
from alignkit.study.records import read_records, write_records

logger = logging.getLogger("alignkit")
# No rewrite families: the data's rejected_rephrase rewrites the near y⁻, which would be wrong beside a far one.
FAMILIES = ["chosen", "rejected", "irrelevant_train", "irrelevant_test", "irrelevant_human", "shuffled", "non_human",
            "greedy", "argmax"]  # fmt: skip


def runs_dir(study: StudyConfig, seed: int) -> Path:
    return Path(study.study_dir) / "runs" / f"s{seed}"


def run_done(study: StudyConfig, seed: int, arm: str) -> bool:
    return (runs_dir(study, seed) / f"{arm}.json").exists()


# Study settings that do not shape a (seed, arm) run's files: where they go, which runs there are, speed, the analysis.
NOT_IN_FINGERPRINT = ("study_dir", "seeds", "arms", "extra_arms", "extra_seeds", "cpu_threads", "bootstrap", "analyze",
                      "overwrite")  # fmt: skip
ACT_ONLY = ("preflight_threshold", "preflight_dynamics_pairs")  # read by the `_act_` arms alone


def arm_fingerprint(settings: dict, arm: Arm, seed: int, data: str | None = None) -> dict:
    """What shapes one (seed, arm) run (alignkit/fingerprint.py): the arm, the seed, the study's settings but those in
    NOT_IN_FINGERPRINT (and ACT_ONLY for an arm without `_act_`), and the digest of its training pairs."""
    skip = NOT_IN_FINGERPRINT + (() if arm.act else ACT_ONLY)
    fingerprint = {"arm": arm.name, "seed": seed, **{k: v for k, v in settings.items() if k not in skip}}
    return fingerprint | ({"data": data} if data is not None else {})


def stale_runs(study: StudyConfig) -> list[tuple[int, Arm, str]]:
    """(seed, arm, what changed) for every finished run in study_dir made with other settings. A JSON written before
    runs kept a fingerprint is compared on the settings it recorded."""
    stale = []
    settings = asdict(study)
    for seed in study.seeds:
        finished = [a for a in study.seed_arms(seed) if run_done(study, seed, a.name)]
        if not finished:
            continue
        data = seed_data(study, seed)
        for arm in finished:
            (summary,) = [r for _, r in read_jsonl(runs_dir(study, seed) / f"{arm.name}.json")]
            current = arm_fingerprint(settings, arm, seed, rows_digest(data[arm.rejected]))
            if "fingerprint" in summary:
                changes = changed_fields(summary["fingerprint"], current)
            else:
                changes = changed_fields(arm_fingerprint(summary.get("settings", {}), arm, seed), current, True)
            if changes:
                stale.append((seed, arm, describe_changes(changes)))
    return stale


# --- settings: the recipe's own config objects, so the study trains exactly as the recipe does


def recipe_config(study: StudyConfig, arm: Arm, seed: int, output_dir: Path) -> RecipeConfig:
    spe = study.steps_per_epoch
    probe_every = spe * math.gcd(*study.eval_epochs)  # every eval epoch's last step is a probe step
    return RecipeConfig(
        model=ModelConfig(
            model_name_or_path=study.model_name_or_path,
            use_lora=study.use_lora,
            lora_r=study.lora_r,
            lora_alpha=study.lora_alpha,
            lora_target_modules=list(study.lora_target_modules),
        ),
        data=DataConfig(max_train_samples=None),  # the study hands its own pairs to the stages (seed_data)
        sft=SFTStageConfig(
            sft_mode=arm.sft_mode, sft_learning_rate=study.sft_learning_rate, sft_max_steps=sft_steps(study, arm)
        ),  # fmt: skip
        preference=PreferenceStageConfig(
            **arm.preference_fields(),  # the loss, remedy or sampling, as a user switches it on
            **(onpolicy_fields(study) if arm.variant == "onpolicy" else {}),
            beta=study.beta,
            preference_learning_rate=study.dpo_learning_rate,
            preference_max_steps=study.dpo_epochs * spe,
            # The paper's regime: repeated pushes on the same y⁻ at a steady rate, not a decaying one.
            preference_trainer_args={"lr_scheduler_type": "constant"},
        ),
        monitor=MonitorConfig(
            probe_families=list(FAMILIES),
            probe_num_prompts=study.num_train_pairs,  # every training pair is a probe
            probe_every=probe_every,
            probe_step_families=list(study.probe_step_families),
            probe_max_new_tokens=study.probe_max_new_tokens,
            probe_bootstrap=200,  # the study's intervals come from analysis.py; these are the monitor's own
        ),
        evaluation=EvaluationConfig(),
        preflight=preflight_config(study, arm),
        run=RunConfig(
            output_dir=str(output_dir),
            seed=seed,
            per_device_train_batch_size=study.batch_size,
            warmup_ratio=0.0,
            logging_steps=spe,
            save_steps=1_000_000,  # no checkpoints: a DPO run is minutes long and is rerun whole after a kill
            overwrite=study.overwrite,  # an SFT model in work/ made with other settings is trained again
            report_to=["none"],
            cpu_threads=study.cpu_threads,
            use_cpu=not torch.cuda.is_available(),
        ),
    )


def sft_steps(study: StudyConfig, arm: Arm) -> int:
    """SFT's steps: sft_steps, halved for Ah (chosen-only rows, so each y⁺ is seen as often as under extended SFT)."""
    return max(1, study.sft_steps // 2) if arm.half_sft else study.sft_steps


def onpolicy_fields(study: StudyConfig) -> dict:
    """The on-policy arm's sampling: one round from the SFT model over every training prompt, k = 4 samples ranked
    by the built-in verifier (docs/onpolicy.md), answers as long as the held-out ones."""
    return {"onpolicy_prompts_per_round": study.num_train_pairs, "onpolicy_num_samples": 4,
            "onpolicy_max_new_tokens": study.eval_max_new_tokens, "ranker": "builtin_verifier"}  # fmt: skip


def preflight_config(study: StudyConfig, arm: Arm) -> PreflightConfig:
    """Off, or for an `_act_` arm the recipe's `act` with the arm's action over all of its pairs. Only drop scores
    under the model DPO starts from, so only drop gets the one-step predictions (the pre-flight validation's data)."""
    if arm.act is None:
        return PreflightConfig()
    dynamics = study.preflight_dynamics_pairs if arm.act == "drop" else 0
    return PreflightConfig(preflight="act", preflight_action=arm.act, preflight_threshold=study.preflight_threshold,
                           preflight_pairs="all", preflight_dynamics_pairs=dynamics)  # fmt: skip


# --- data


def seed_data(study: StudyConfig, seed: int) -> dict[str, list[dict]]:
    """The seed's training pairs with near and with far y⁻ (the same prompts and y⁺), held-out probe rows and the
    held-out prompts answered at each checkpoint (the same for every seed, so answers pair across seeds)."""
    # The whole training split: the recipe's DataConfig default (max_train_samples) is its CPU demo's cut, which
    # would change the pairs every seed draws and break the comparison with committed runs.
    data = load_preference_data(DataConfig(max_train_samples=None))
    train = [dict(r) for r in data["train"]]
    far = far_rejected(train)  # over the whole split: each y⁻ comes from the full pool of other tasks
    picked = sorted(random.Random(seed).sample(range(len(train)), study.num_train_pairs))
    test = [dict(r) for r in data["test"]]
    return {
        "near": [train[i] for i in picked],
        "far": [far[i] for i in picked],
        "heldout_probes": test[: study.num_heldout_probes],
        "eval": eval_rows(study, seed, train, test, set(picked)),
    }


def eval_rows(study: StudyConfig, seed: int, train: list[dict], test: list[dict], picked: set[int]) -> list[dict]:
    """The held-out prompts answered (`final_prompts` of them; the intermediate evaluations use the first
    `eval_num_prompts`). 'test': the test split's first rows. 'heldout': the test split, then training-split rows this
    seed never trains on, in a seeded order: prompts no stage of this seed saw."""
    pool = list(test)
    if study.eval_prompts == "heldout":
        unseen = [train[i] for i in range(len(train)) if i not in picked]
        random.Random(10_000 + seed).shuffle(unseen)
        pool += unseen
    if study.final_prompts > len(pool):
        where = "the held-out split" if study.eval_prompts == "test" else "the held-out split and untrained rows"
        raise AlignkitError(f"study field final_eval_num_prompts={study.final_prompts}: {where} have {len(pool)}")
    return pool[: study.final_prompts]


# --- held-out answers during DPO


class HeldoutAnswers(TrainerCallback):
    """Greedy answers to the held-out prompts, verified against their reference answers, with the decoder's stop
    reason (`cap_hit`): all `rows` at the start of DPO (`epoch0`: the SFT model) and after the last epoch, the first
    `mid_prompts` after each other epoch in `epochs`. At the start and the end it also scores the held-out pairs (the
    rows' own y⁺ and y⁻, `preflight_records`): y⁺'s log-likelihood and the pair's ranking.

    Steps are counted here, not read off the trainer's state, so an on-policy stage's rounds (one trainer each) share
    one axis. `start`: the stage-start answers and pair scores of the same SFT model from an earlier arm
    (`StartCache`); None computes them.
    """

    def __init__(self, rows: list[dict], mid_prompts: int, epochs: list[int], last_epoch: int, steps_per_epoch: int,
                 tokenizer, max_new_tokens: int, start: dict | None = None):  # fmt: skip
        self.rows, self.mid, self.epochs, self.last = rows, mid_prompts, set(epochs) | {last_epoch}, last_epoch
        self.spe, self.tokenizer, self.max_new_tokens = steps_per_epoch, tokenizer, max_new_tokens
        self.records: list[dict] = list(start["generations"]) if start else []
        self.pairs: list[dict] = list(start["pairs"]) if start else []
        self.started, self.steps, self.seconds = start is not None, 0, 0.0

    def _answer(self, model, epoch: int) -> None:
        t0 = time.perf_counter()
        rows = self.rows if epoch in (0, self.last) else self.rows[: self.mid]
        model = merged_copy(model)  # decoding a LoRA model merged is faster; the trained weights are left alone
        texts, caps = generate(model, self.tokenizer, [r["prompt"] for r in rows], max_new_tokens=self.max_new_tokens,
                               batch_size=100, with_cap_hit=True)  # fmt: skip
        for row, (text,), (cap,) in zip(rows, texts, caps):
            self.records.append({"checkpoint": f"epoch{epoch}", "epoch": epoch, "prompt_id": row["id"],
                                 "task": row["task"], "prompt_text": user_text(row["prompt"]), "response": text,
                                 "cap_hit": cap, "score": verify(text, row)})  # fmt: skip
        if epoch in (0, self.last):
            scored = preflight_records(model, self.tokenizer, rows, probe_prefix="heldout")
            self.pairs += [{"checkpoint": f"epoch{epoch}", "epoch": epoch, **r} for r in scored]
        self.seconds += time.perf_counter() - t0
        scores = [r["score"] for r in self.records if r["epoch"] == epoch and r["score"] is not None]
        logger.warning("[study] held-out accuracy at epoch %d: %.2f (%d answers, %.0f s)", epoch,
                       sum(scores) / max(1, len(scores)), len(texts), time.perf_counter() - t0)  # fmt: skip

    def start_records(self) -> dict:
        return {"generations": [r for r in self.records if r["epoch"] == 0],
                "pairs": [r for r in self.pairs if r["epoch"] == 0]}  # fmt: skip

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if not self.started:
            self.started = True
            self._answer(model, 0)
        return control

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.steps += 1
        if self.steps % self.spe == 0 and self.steps // self.spe in self.epochs:
            self._answer(model, self.steps // self.spe)
        return control


class StartCache:
    """The stage-start held-out answers and pair scores of one SFT model, kept beside it: every arm that starts DPO
    from that model (A_far, its remedies, its IPO arm) reads them instead of decoding the same answers again. Valid
    for the SFT stage's fingerprint and the answered prompts' settings only."""

    def __init__(self, sft_dir: Path, sft: StageResult, rows: list[dict], max_new_tokens: int):
        self.path = sft_dir / "heldout_start.jsonl.gz"
        self.key = {"sft": sft.fingerprint, "prompts": [r["id"] for r in rows], "max_new_tokens": max_new_tokens}

    def load(self) -> dict | None:
        if not self.path.exists():
            return None
        (head, *rest) = read_records(self.path)
        if head.get("key") != json_safe(self.key):
            return None
        records = {"generation": [], "pair": []}
        for r in rest:
            records[r["kind"]].append({k: v for k, v in r.items() if k != "kind"})
        return {"generations": records["generation"], "pairs": records["pair"]}

    def save(self, start: dict) -> None:
        rows = [{"key": self.key}] + [{"kind": "generation", **r} for r in start["generations"]]
        rows += [{"kind": "pair", **r} for r in start["pairs"]]
        tmp = self.path.with_suffix(".tmp")
        write_records(tmp, rows)
        tmp.replace(self.path)


# --- one seed


def recipe_data(pairs: list[dict], data: dict) -> dict[str, Dataset]:
    """The arm's pairs as the recipe's pre-flight functions take them: train, and held-out rows (the one-step
    prediction's off-target answers)."""
    return {"train": Dataset.from_list(pairs), "test": Dataset.from_list(data["heldout_probes"])}


def sft_model(
    study: StudyConfig, arm: Arm, seed: int, pairs: list[dict], work: Path, tokenizer, data: dict
) -> tuple[object, StageResult, PreflightResult | None]:
    """The arm's SFT model (trained once per seed and SFT key, then loaded from its folder), and for extend_sft the
    recipe's pre-flight under the base model that chose the extra y⁻ (kept in the SFT folder, so a rerun reuses it)."""
    cfg = recipe_config(study, arm, seed, work / f"sft_{arm.sft_key}")
    out = Path(cfg.run.output_dir)
    checked = preflight_recipe.before_sft(cfg, tokenizer, recipe_data(pairs, data), out)
    extra = checked.risky_rows if checked else ()
    result = run_sft_stage(None, tokenizer, Dataset.from_list(pairs), cfg, out / "sft", also_rejected=extra)
    return load_stage_model(cfg, [result]), result, checked


def exposure(result: StageResult, study: StudyConfig, arm: Arm) -> dict:
    """How often SFT showed each training pair's y⁺ and y⁻ (A and B: the same steps, so extended SFT halves y⁺'s;
    Ah: half of A's steps, the y⁺ exposure of B)."""
    rows = sum(result.rows.values())
    seen = sft_steps(study, arm) * study.batch_size / rows if rows else 0.0
    mode = arm.sft_mode
    return {"rows": rows, "row_counts": result.rows, "y_plus_exposure": seen,
            "y_minus_exposure": seen if mode == "extended" else 0.0}  # fmt: skip


def pair_updates(steps: int, pairs: int, batch_size: int) -> int:
    """How many pair-gradients `steps` optimizer steps apply to `pairs` pairs at `batch_size` (the trainer's loader
    restarts each epoch, its last batch short): equal steps over fewer pairs (drop) are fewer updates."""
    per_epoch = math.ceil(pairs / batch_size)
    epochs, rest = divmod(steps, per_epoch)
    return epochs * pairs + min(rest * batch_size, pairs)


def act_summary(cfg, checked: PreflightResult, pairs: list[dict], trained: int, steps: int, batch: int) -> dict:
    """What the pre-flight marked and what it changed: the manipulation an `_act_` arm is checked on."""
    ids = {i: p["id"] for i, p in enumerate(pairs)}
    return {
        "action": cfg.preflight.preflight_action, "threshold": checked.threshold, "scored_under": checked.model,
        "scored": len(checked.records), "at_risk": len(checked.risky_rows),
        "at_risk_probes": [f"train/{ids[r]}" for r in checked.risky_rows],
        "dpo_pairs": trained, "dpo_pair_updates": pair_updates(steps, trained, batch),
        "baseline_pair_updates": pair_updates(steps, len(pairs), batch),
        "preflight_seconds": round(checked.seconds, 1), "dynamics_seconds": round(checked.dynamics_seconds, 1),
        "report": preflight_recipe.actions(cfg, checked),
    }  # fmt: skip


def preflight_records(policy, tokenizer, pairs: list[dict], probe_prefix: str = "train") -> list[dict]:
    """Each pair's pre-flight scores (alignkit.preflight: its y⁺'s and y⁻'s log-likelihood, margin, CHES) under
    `policy`, keyed by a probe id. For the training pairs under the model DPO starts from, what the pre-flight
    validation correlates with the off-target fall measured on the same pair's probe."""
    passes = score_pairs(policy, tokenizer, [p["prompt"] for p in pairs], [p["chosen"] for p in pairs],
                         [p["rejected"] for p in pairs])  # fmt: skip
    return [{"probe": f"{probe_prefix}/{p['id']}", "id": p["id"], "task": p["task"],
             **pair_scores(s.chosen_logps, s.rejected_logps, s.ches)} for p, s in zip(pairs, passes)]  # fmt: skip


def run_arm(study: StudyConfig, arm: Arm, seed: int, data: dict, tokenizer) -> dict:
    """SFT (or its saved model) → DPO with probes and held-out answers; writes the arm's four files."""
    t0 = time.perf_counter()
    work = Path(study.study_dir) / "work" / f"s{seed}"
    pairs = data[arm.rejected]
    policy, sft, checked = sft_model(study, arm, seed, pairs, work, tokenizer, data)
    preflight = preflight_records(policy, tokenizer, pairs)
    arm_dir = work / arm.name
    if arm_dir.exists():
        shutil.rmtree(arm_dir)  # a DPO run that died half-way starts again from its SFT model
    cfg = recipe_config(study, arm, seed, arm_dir)
    # The recipe's own steps (recipes/extended_dpo.py): drop scores under the SFT model and keeps the pairs not at
    # risk; without `act` both return what they were given.
    checked = preflight_recipe.after_sft(cfg, tokenizer, recipe_data(pairs, data), arm_dir, sft, checked)
    dpo_pairs = preflight_recipe.preference_pairs(cfg, Dataset.from_list(pairs), checked)
    probes = build_probe_set(pairs, data["heldout_probes"], cfg.monitor, seed=seed)  # every pair, dropped or not
    monitor = SqueezingMonitor(probes, cfg.monitor, tokenizer, arm_dir)
    cache = StartCache(work / f"sft_{arm.sft_key}", sft, data["eval"], study.eval_max_new_tokens)
    answers = HeldoutAnswers(data["eval"], study.eval_num_prompts, study.answer_epochs or study.eval_epochs,
                             study.dpo_epochs,
                             study.steps_per_epoch, tokenizer, study.eval_max_new_tokens, cache.load())  # fmt: skip
    stage_dir = arm_dir / "preference"
    callbacks = [monitor.callback("preference", stage_dir), answers]
    if arm.variant == "onpolicy":  # the recipe's on-policy stage: sample from the SFT model, rank, train (one round)
        del policy  # the stage loads its own policy from the SFT stage's weights
        result = run_onpolicy_preference_stage(tokenizer, dpo_pairs, cfg, stage_dir, [sft], callbacks)
        if not result.rows.get("pairs"):
            raise AlignkitError(
                f"seed {seed}, arm {arm.name}: on-policy sampling gave no pair ({result.rows}): every prompt's "
                "samples tied under the ranker, so there is nothing to train or compare"
            )
    else:
        result = run_preference_stage(policy, tokenizer, dpo_pairs, cfg, stage_dir, callbacks, [sft])
    if cache.load() is None:
        cache.save(answers.start_records())
    spe = study.steps_per_epoch
    evaluations = [{k: v for k, v in r.items() if k != "greedy_samples"} for r in monitor.records]
    for e in evaluations:
        e["epoch"] = e.get("step", 0) / spe
    summary = {
        "fingerprint": arm_fingerprint(asdict(study), arm, seed, rows_digest(pairs)),
        "arm": arm.name, "seed": seed, "sft_mode": arm.sft_mode, "rejected": arm.rejected, "loss": arm.loss,
        "variant": arm.variant, "half_sft": arm.half_sft, "factorial": arm.factorial, "baseline": arm.baseline,
        "preference_fields": arm.preference_fields(),
        "sft": {"steps": sft_steps(study, arm), "seconds": round(sft.seconds, 1), "status": sft.status,
                **exposure(sft, study, arm)},
        "dpo": {"steps": result.steps, "epochs": study.dpo_epochs, "steps_per_epoch": spe,
                "pairs": result.rows.get("pairs"), "seconds": round(result.seconds, 1), "status": result.status,
                "final_loss": result.metrics.get("train_loss"),
                "epoch_steps": {str(e): e * spe for e in study.eval_epochs},
                "log_history": result.log_history},
        "probes": {s: probes.count(s) for s in ("train", "test")}, "families": probes.families,
        "probe_seconds": round(sum(e.get("probe/seconds", 0.0) for e in evaluations), 1),
        "answer_seconds": round(answers.seconds, 1),
        "onpolicy_rows": result.rows if arm.variant == "onpolicy" else None,
        "evaluations": evaluations,
        "seconds": round(time.perf_counter() - t0, 1),
        "settings": asdict(study),
    }  # fmt: skip
    if checked is not None:
        summary["act"] = act_summary(cfg, checked, pairs, len(dpo_pairs), result.steps, study.batch_size)
    out = runs_dir(study, seed)
    out.mkdir(parents=True, exist_ok=True)
    with gzip.open(out / f"{arm.name}.probe_records.jsonl.gz", "wt", encoding="utf-8") as f:
        f.write((stage_dir / "probe_records.jsonl").read_text())
    write_records(out / f"{arm.name}.generations.jsonl.gz", answers.records)
    write_records(out / f"{arm.name}.preflight.jsonl.gz", preflight)
    write_records(out / f"{arm.name}.heldout_pairs.jsonl.gz", answers.pairs)
    if checked is not None:
        acted = [{"probe": f"train/{r['id']}", **r} for r in checked.records]
        write_records(out / f"{arm.name}.act_preflight.jsonl.gz", acted)
    # The JSON last: its presence marks the (seed, arm) finished for a rerun.
    write_jsonl_atomic(out / f"{arm.name}.json", [json_safe(summary)])
    shutil.rmtree(arm_dir, ignore_errors=True)  # the DPO weights are not needed again; the SFT models are
    return summary


def base_scores(study: StudyConfig, seed: int, data: dict, tokenizer) -> None:
    """The held-out pairs scored under the base model, once per seed (`runs/s<seed>/base.heldout_pairs.jsonl.gz`):
    against the SFT model's scores (each arm's `epoch0`), SFT's effect on prompts it never trained on."""
    path = runs_dir(study, seed) / "base.heldout_pairs.jsonl.gz"
    if path.exists():
        return
    model = load_model(ModelConfig(model_name_or_path=study.model_name_or_path))
    records = [{"checkpoint": "base", **r} for r in preflight_records(model, tokenizer, data["eval"], "heldout")]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    write_records(tmp, records)
    tmp.replace(path)


def run_study(study: StudyConfig) -> list[dict]:
    """Every (seed, arm) not yet finished, seeds outer (a partial study has every arm at its first seeds); returns
    the summaries of the runs done now."""
    torch.set_num_threads(study.cpu_threads)
    if stale := stale_runs(study):  # before any work: a finished run is reused only with the same settings
        listing = "\n".join(f"seed {seed}, arm {arm.name}:\n{why}" for seed, arm, why in stale)
        if not study.overwrite:
            raise AlignkitError(
                f"{study.study_dir} holds runs made with other settings:\n{listing}\nNothing was reused or changed. "
                "To keep them, rerun with a new --study_dir; to replace them, rerun with --overwrite (they are run "
                "again)."
            )
        logger.warning("[study] overwrite is set: these runs are run again:\n%s", listing)
        for seed, arm, _ in stale:  # without its JSON a run counts as not done, also if this rerun is killed
            (runs_dir(study, seed) / f"{arm.name}.json").unlink()
    tokenizer = load_tokenizer(ModelConfig(model_name_or_path=study.model_name_or_path))
    todo = [(s, a) for s in study.seeds for a in study.seed_arms(s) if not run_done(study, s, a.name)]
    total = sum(len(study.seed_arms(s)) for s in study.seeds)
    if len(todo) < total:
        logger.warning("[study] %d of %d runs already finished: skipped", total - len(todo), total)
    done: list[dict] = []
    t0 = time.perf_counter()
    data_seed, data = None, None
    for i, (seed, arm) in enumerate(todo):
        if seed != data_seed:
            data_seed, data = seed, seed_data(study, seed)
            base_scores(study, seed, data, tokenizer)
        logger.warning("[study] run %d/%d: seed %d, arm %s", i + 1, len(todo), seed, arm.name)
        done.append(run_arm(study, arm, seed, data, tokenizer))
        elapsed = time.perf_counter() - t0
        logger.warning("[study] %s seed %d done in %.0f s; %.0f min elapsed, about %.0f min to go", arm.name, seed,
                       done[-1]["seconds"], elapsed / 60, elapsed / (i + 1) * (len(todo) - i - 1) / 60)  # fmt: skip
        if all(run_done(study, seed, a.name) for a in study.seed_arms(seed)):
            shutil.rmtree(Path(study.study_dir) / "work" / f"s{seed}", ignore_errors=True)
    return done
