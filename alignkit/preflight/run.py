"""Running the pre-flight: pick the model, score the pairs, write the table, figure and verdict, reuse a finished one.

Folder `<output_dir>/preflight/`: `preflight.jsonl` (one record per pair, riskiest first), `preflight.md`,
`preflight_hist.png` and `preflight_complete.json` (written last). A rerun that finds the marker for the same model
reads the records back instead of scoring again, so a resumed recipe makes the same decisions.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate import PartialState
from datasets import Dataset
from peft import get_peft_model

from alignkit.config import RecipeConfig
from alignkit.errors import AlignkitError
from alignkit.fingerprint import (
    changed_fields,
    describe_changes,
    fingerprint_digest,
    read_json,
    recipe_fields,
    rows_digest,
)
from alignkit.jsonl import read_jsonl, write_jsonl_atomic
from alignkit.preflight.onestep import offtarget_probes, predict_offtarget, sample_pairs
from alignkit.preflight.passes import score_pairs
from alignkit.preflight.plot import histogram
from alignkit.preflight.scores import at_risk, pair_scores, rank
from alignkit.preflight.table import preflight_markdown, report_section, verdict
from alignkit.stages import (
    REFERENCE_COLUMNS,
    STAGE_DONE,
    StageResult,
    load_stage_model,
    lora_config,
    pairs_for_steps,
    weights_dir,
)

logger = logging.getLogger(__name__)
DONE = "preflight_complete.json"
ROW = "preflight_row"  # helper column: the pair's index in the training split, kept through subsetting
SCORE_KEYS = (
    "rejected_logp_per_token", "rejected_min_logp", "chosen_logp_per_token", "chosen_min_logp", "margin", "ches",
)  # fmt: skip


@dataclass
class PreflightResult:
    records: list[dict]  # riskiest first; `row` = index in the training split
    model: str  # which model scored them, in words
    threshold: float
    seconds: float  # the whole pre-flight: model load, scoring passes, one-step predictions
    dynamics_seconds: float  # of which the one-step predictions
    folder: Path
    pairs: Dataset  # the scored pairs (with the ROW column)
    header: list[str] = field(default_factory=list)
    verdict: str = ""

    @property
    def risky_rows(self) -> list[int]:
        return sorted(r["row"] for r in self.records if r["at_risk"])

    def kept_pairs(self, keep_row: bool = False, dropped: list[int] | None = None) -> Dataset:
        """The scored pairs without the ones at risk (what preflight_action=drop trains on), or without the rows
        `dropped`; `keep_row`: with the ROW column, for `with_reference`."""
        drop = set(self.risky_rows if dropped is None else dropped)
        kept = self.pairs.filter(lambda row: row[ROW] not in drop)
        return kept if keep_row else kept.remove_columns(ROW)

    def riskiest(self, fraction: float) -> list[dict]:
        """The records of the riskiest `fraction` of the scored pairs (floor(fraction * n) of them), riskiest first."""
        return self.records[: math.floor(fraction * len(self.records) + 1e-9)]

    def with_reference(self, pairs: Dataset) -> tuple[Dataset, str]:
        """`pairs` (scored pairs, with the ROW column, which is removed) with each one's reference log-probs as
        columns (alignkit.stages.REFERENCE_COLUMNS), and a sentence saying so; without them, and why, when a pair has
        none (its tokens differ from TRL's, or exceed max_length)."""
        by_row = {r["row"]: r for r in self.records}
        missing = [row for row in pairs[ROW] if by_row[row].get("ref_digest") is None]
        plain = pairs.remove_columns(ROW)
        if missing:
            return plain, (f"{len(missing)} of {len(pairs)} pairs have no reference log-probs from the pre-flight "
                           "(tokens differ from TRL's, or longer than max_length): TRL computes its own")  # fmt: skip
        for name in REFERENCE_COLUMNS:
            plain = plain.add_column(name, [by_row[row][name] for row in pairs[ROW]])
        return plain, f"reference log-probs of the {len(pairs)} pairs handed to the preference stage"

    def files(self) -> list[str]:
        return [str(self.folder / name) for name in ("preflight.md", "preflight.jsonl", "preflight_hist.png")]


def sft_weights(cfg: RecipeConfig) -> Path | None:
    """The recipe's finished SFT stage in the run's output_dir (adapter or full model), or None."""
    stage_dir = Path(cfg.run.output_dir) / "sft"
    weights = weights_dir(stage_dir, cfg.model.use_lora)
    return weights if (stage_dir / STAGE_DONE).exists() and weights.exists() else None


def describe(cfg: RecipeConfig, after_sft: Path | None) -> str:
    """The starting model in words (also the key that says whether saved scores can be reused)."""
    if after_sft is None:
        return f"the base model `{cfg.model.model_name_or_path}`"
    return f"the SFT model (sft_mode {cfg.sft.sft_mode}, `{after_sft}`)"


def starting_model(cfg: RecipeConfig, after_sft: Path | None):
    """The base model, or the base with the SFT stage saved at `after_sft` merged in (as the preference stage gets
    it)."""
    return load_stage_model(cfg, [] if after_sft is None else [StageResult("sft", "complete", after_sft)])


def scored_pairs(cfg: RecipeConfig, train: Dataset) -> tuple[Dataset, str]:
    """The pairs to score (with the ROW column) and a sentence saying which."""
    indexed = train.add_column(ROW, list(range(len(train))))
    if cfg.preflight.preflight_pairs == "all":
        return indexed, f"all {len(train)} training pairs"
    pairs = pairs_for_steps(indexed, cfg.preference.preference_max_steps, cfg)
    if len(pairs) == len(train):
        return pairs, f"all {len(train)} training pairs (the preference stage uses every one)"
    return pairs, (
        f"the {len(pairs)} of {len(train)} training pairs the preference stage trains on "
        f"(preference_max_steps {cfg.preference.preference_max_steps}; preflight_pairs: all scores every pair)"
    )


def _records(cfg: RecipeConfig, model, tokenizer, pairs: Dataset) -> list[dict]:
    passes = score_pairs(
        model, tokenizer, pairs["prompt"], pairs["chosen"], pairs["rejected"],
        cfg.preflight.preflight_batch_size, cfg.data.max_length,
    )  # fmt: skip
    records = []
    ids = pairs["id"] if "id" in pairs.column_names else [None] * len(pairs)
    tasks = pairs["task"] if "task" in pairs.column_names else [None] * len(pairs)  # the built-in data's task type
    for row, pair_id, task, scored in zip(pairs[ROW], ids, tasks, passes):
        record = {"row": row, "id": pair_id, "task": task}
        record |= pair_scores(scored.chosen_logps, scored.rejected_logps, scored.ches)
        record |= {"offtarget_delta": None, "offtarget_argmax_delta": None}
        # TRL's reference log-probs of the pair if this model is the preference stage's start (alignkit.preflight.
        # reference); None where its tokens differ from TRL's
        record |= {k: getattr(scored, k) for k in REFERENCE_COLUMNS}
        records.append(record)
    return records


def _one_step(cfg: RecipeConfig, model, tokenizer, pairs: Dataset, records: list[dict], pool) -> float:
    """Fill the one-step off-target prediction of a seeded sample of `records` (in place); returns the seconds."""
    n = cfg.preflight.preflight_dynamics_pairs
    if n == 0:
        return 0.0
    begun = time.perf_counter()
    # A fresh adapter (B = 0) as the preference stage starts with: the model is its own reference at the first step.
    # Its A matrices are random and the prediction depends on them, so they are seeded (rerun = same numbers).
    torch.manual_seed(cfg.run.seed)
    policy = get_peft_model(model, lora_config(cfg)) if cfg.model.use_lora else model
    loss = cfg.preference.loss if cfg.preference.loss in ("dpo", "ipo") else "dpo"
    picked = sample_pairs(len(records), n, cfg.run.seed)
    probes = offtarget_probes(pool, len(picked), cfg.run.seed)
    for k, (i, observed) in enumerate(zip(picked, probes)):
        started = time.perf_counter()
        records[i] |= predict_offtarget(
            policy, tokenizer, pairs[i], observed, loss, cfg.preference.preference_learning_rate,
            cfg.preference.beta,
        )  # fmt: skip
        logger.info("[preflight] one-step prediction %d/%d: %.0f s", k + 1, len(picked), time.perf_counter() - started)
    return time.perf_counter() - begun


def scores_fingerprint(cfg: RecipeConfig, pairs: Dataset, after_sft: Path | None) -> dict:
    """What saved scores depend on (alignkit/fingerprint.py): the model scored under (the base model's fields, or the
    fingerprint of the SFT stage that made it), the pairs scored, and the settings of the scoring and of the one-step
    predictions. The threshold is not in it: it is applied to the scores afresh at every run."""
    sft = read_json(after_sft.parent / STAGE_DONE) if after_sft is not None else None
    fields = recipe_fields(cfg, "preference")
    keep = ("max_length", "preflight_dynamics_pairs", "seed", "loss", "beta", "lora_r", "lora_alpha", "lora_dropout",
            "lora_target_modules", "model_name_or_path", "model_revision", "torch_dtype", "precision")  # fmt: skip
    return {
        "model": describe(cfg, after_sft),
        "starts_from": fingerprint_digest(sft.get("fingerprint")) if sft is not None else None,
        "pairs": rows_digest(pairs, ["prompt", "chosen", "rejected"]),
        **{k: (fields | {"preflight_dynamics_pairs": cfg.preflight.preflight_dynamics_pairs})[k] for k in keep},
    }


def _load(folder: Path, fingerprint: dict) -> tuple[list[dict], float, float] | None:
    """The records of a finished pre-flight made with the same fingerprint, or None (scored again)."""
    marker = folder / DONE
    if not marker.exists():
        return None
    done = json.loads(marker.read_text())
    if changes := changed_fields(done.get("fingerprint") or {"model": done.get("model")}, fingerprint):
        logger.warning("[preflight] %s was scored with other settings: scoring again\n%s", folder,
                       describe_changes(changes))  # fmt: skip
        return None
    records = []
    for line, record in read_jsonl(folder / "preflight.jsonl"):
        missing = [k for k in ("row", *SCORE_KEYS) if k not in record]
        if missing:
            raise AlignkitError(f"{folder / 'preflight.jsonl'}:{line}: field '{missing[0]}' missing; delete {folder}")
        records.append(record)
    logger.warning("[preflight] already complete in %s: reusing its scores", folder)
    return records, done["seconds"], done.get("dynamics_seconds", 0.0)


def run_preflight(
    cfg: RecipeConfig, tokenizer, train: Dataset, heldout: Dataset | None, folder: Path, after_sft: Path | None
) -> PreflightResult:
    """Score the pairs under the model the preference stage would start from, write the outputs, return them.

        from alignkit import parse_recipe_config, run_preflight
        from alignkit.data import load_preference_data
        from alignkit.models import load_tokenizer

        cfg = parse_recipe_config(["--config", "recipes/configs/demo.yaml"])
        data = load_preference_data(cfg.data, seed=cfg.run.seed)
        result = run_preflight(cfg, load_tokenizer(cfg.model), data["train"], data.get("test"), Path("out"), None)
        print(result.verdict)  # out/ has preflight.jsonl (riskiest pair first), preflight.md and the histogram

    The same from a shell: `python -m alignkit.preflight --config ...` or `alignkit-preflight`.

    Args:
        train, heldout: the training split, and the held-out split (the one-step prediction's off-target answers;
            None: other training pairs' y+ stand in).
        after_sft: the SFT stage's weights, or None to score under the base model.
    """
    folder.mkdir(parents=True, exist_ok=True)
    pairs, scope = scored_pairs(cfg, train)
    model_words = describe(cfg, after_sft)
    fingerprint = scores_fingerprint(cfg, pairs, after_sft)
    loaded = _load(folder, fingerprint)
    if loaded is not None:
        records, seconds, dynamics_seconds = loaded
    else:
        started = time.perf_counter()
        model = starting_model(cfg, after_sft)
        records = _records(cfg, model, tokenizer, pairs)
        pool = list(heldout) if heldout is not None and len(heldout) else list(train)
        dynamics_seconds = _one_step(cfg, model, tokenizer, pairs, records, pool)
        seconds = time.perf_counter() - started
        del model
    threshold = cfg.preflight.preflight_threshold
    for record in records:
        record["at_risk"] = at_risk(record["rejected_logp_per_token"], threshold)
    records = [{"rank": k + 1} | {n: v for n, v in r.items() if n != "rank"} for k, r in enumerate(rank(records))]
    n_risky = sum(r["at_risk"] for r in records)
    line = verdict(n_risky, len(records), threshold, model_words, cfg.sft.sft_mode, after_sft is None)
    header = [
        f"- scored: {scope}",
        f"- under: {model_words}",
        f"- at risk: mean log π per token of y- < {threshold:g} nats (preflight_threshold)",
        f"- time: {seconds:.0f} s (model load and batched scoring of y+ and y-; {dynamics_seconds:.0f} s of it for "
        f"{sum(r['offtarget_delta'] is not None for r in records)} one-step predictions)",
    ]
    if PartialState().is_main_process:  # the other processes of a multi-process run read what the main one wrote
        write_jsonl_atomic(folder / "preflight.jsonl", records)
        (folder / "preflight.md").write_text(preflight_markdown(records, header, line))
        title = f"pre-flight: {len(records)} pairs under {model_words}"
        histogram(records, threshold, title, folder / "preflight_hist.png")
        done = {
            "model": model_words,
            "pairs": len(records),
            "seconds": seconds,
            "dynamics_seconds": dynamics_seconds,
            "fingerprint": fingerprint,
        }
        (folder / DONE).write_text(json.dumps(done, indent=1))
        logger.warning("[preflight] %s", line)
    return PreflightResult(records, model_words, threshold, seconds, dynamics_seconds, folder, pairs, header, line)


def section(result: PreflightResult, actions: list[str]) -> str:
    """The run report's pre-flight section."""
    return report_section(result.records, result.header, result.verdict, actions, result.files())
