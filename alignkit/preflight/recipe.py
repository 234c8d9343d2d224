"""The pre-flight inside the recipe: where it runs, what `act` changes, and the report's section.

Where it runs: the scores should come from the model the preference stage starts from, i.e. after SFT. That works
for `report` and for `act` with `drop`. `extend_sft` changes what SFT trains on, so it must decide before SFT: it
scores under the base model, and its section says so.
"""

from __future__ import annotations

import logging
from pathlib import Path

from accelerate import PartialState
from datasets import Dataset

from alignkit.config import RecipeConfig
from alignkit.errors import AlignkitError
from alignkit.preflight.run import ROW, PreflightResult, run_preflight, section
from alignkit.stages import StageResult

logger = logging.getLogger(__name__)


def check_preflight(cfg: RecipeConfig) -> None:
    """Settings the pre-flight cannot honour, as one-line errors before anything runs."""
    p = cfg.preflight
    if not p.runs:
        return
    if cfg.preference.sampling != "off_policy":
        field = "preflight_filter_fraction" if p.mode == "off" else "preflight"
        raise AlignkitError(
            f"config field '{field}' is {getattr(p, field)!r} with sampling '{cfg.preference.sampling}': the "
            "pre-flight scores the dataset's pairs, which on-policy rounds do not train on; turn it off or use "
            "sampling: off_policy"
        )
    if p.mode == "act" and p.preflight_action == "extend_sft" and cfg.sft.sft_mode == "none":
        raise AlignkitError(
            "config field 'preflight_action' is 'extend_sft' but sft_mode is 'none': there is no SFT stage to extend; "
            "use sft_mode: chosen (or extended), or preflight_action: drop"
        )


def decides_before_sft(cfg: RecipeConfig) -> bool:
    return cfg.preflight.mode == "act" and cfg.preflight.preflight_action == "extend_sft"


def _run(cfg: RecipeConfig, tokenizer, data, out: Path, after_sft: Path | None) -> PreflightResult:
    # The main process scores and writes; the others then find its finished folder and read the same records.
    with PartialState().main_process_first():
        return run_preflight(cfg, tokenizer, data["train"], data.get("test"), out / "preflight", after_sft)


def before_sft(cfg: RecipeConfig, tokenizer, data, out: Path) -> PreflightResult | None:
    """extend_sft only: score under the base model, so SFT can also train on y- of the pairs at risk."""
    return _run(cfg, tokenizer, data, out, None) if decides_before_sft(cfg) else None


def after_sft(cfg: RecipeConfig, tokenizer, data, out: Path, sft: StageResult, earlier: PreflightResult | None):
    """report / drop: score under the SFT model (the preference stage's start). Returns `earlier` when set."""
    if not cfg.preflight.runs or earlier is not None:
        return earlier
    return _run(cfg, tokenizer, data, out, sft.weights)


def shares_reference(cfg: RecipeConfig, result: PreflightResult | None) -> bool:
    """Whether the pre-flight's sums can be the preference stage's reference log-probs: it scored the stage's
    starting model (after SFT, i.e. not extend_sft's base-model scoring) and the stage precomputes them."""
    return result is not None and not decides_before_sft(cfg) and cfg.preference.precompute_ref_log_probs


def preference_pairs(cfg: RecipeConfig, train: Dataset, result: PreflightResult | None) -> Dataset:
    """The preference stage's pairs: `train`, or with drop the scored pairs minus those at risk. When the pre-flight
    scored the stage's starting model (`shares_reference`), the pairs carry its reference log-probs so that TRL skips
    its own reference pass: the scored pairs are then handed over, which are the ones the stage would pick from
    `train` (`preflight_pairs: stage`: the same seeded subset; `all`: all of them)."""
    if result is None:
        return train
    pairs = result.pairs
    if cfg.preflight.preflight_filter_fraction > 0:  # pre-flight filtering: the riskiest share, by rank
        pairs = result.kept_pairs(keep_row=True, dropped=[r["row"] for r in filtered(cfg, result)])
    elif cfg.preflight.mode == "act" and cfg.preflight.preflight_action == "drop":
        pairs = result.kept_pairs(keep_row=True)
        if len(pairs) == 0:
            raise AlignkitError(
                f"preflight_action 'drop' would drop all {len(result.records)} scored pairs (every y- is below "
                f"preflight_threshold {result.threshold:g}); lower the threshold or use preflight_action: extend_sft"
            )
    elif not shares_reference(cfg, result):
        return train
    if not shares_reference(cfg, result):
        return pairs.remove_columns(ROW)
    pairs, how = result.with_reference(pairs)
    logger.warning("[preflight] %s", how)
    return pairs


def filtered(cfg: RecipeConfig, result: PreflightResult) -> list[dict]:
    """The records of the pairs pre-flight filtering drops (preflight_filter_fraction; none when it is 0)."""
    return result.riskiest(cfg.preflight.preflight_filter_fraction)


def actions(cfg: RecipeConfig, result: PreflightResult) -> list[str]:
    """What the pre-flight changed, with counts, for the report."""
    risky, n = len(result.risky_rows), len(result.records)
    if (fraction := cfg.preflight.preflight_filter_fraction) > 0:
        dropped = filtered(cfg, result)
        listed = "; ".join(
            f"row {r['row']}" + (f" `{r['id']}`" if r.get("id") is not None else "")
            + (f" ({r['task']})" if r.get("task") else "") + f" y- {r['rejected_logp_per_token']:.2f}/token"
            for r in dropped
        )  # fmt: skip
        return [f"preflight_filter_fraction {fraction:g}: the {len(dropped)} riskiest of the {n} scored pairs "
                f"dropped from the preference stage, which trained on the other {n - len(dropped)}"
                + (f". Dropped: {listed}" if dropped else " (fewer than one pair: none dropped)")]  # fmt: skip
    if cfg.preflight.mode == "report":
        return [f"preflight: report: nothing changed ({risky} of {n} pairs at risk); preflight: act applies "
                "preflight_action"]  # fmt: skip
    if cfg.preflight.preflight_action == "drop":
        return [f"preflight_action drop: {risky} pairs at risk removed; the preference stage trained on the other "
                f"{n - risky} of the {n} scored pairs"]  # fmt: skip
    if cfg.sft.sft_mode == "extended":
        return [f"preflight_action extend_sft: no change; sft_mode extended already trains on every y- "
                f"({risky} of {n} pairs were at risk under the base model)"]  # fmt: skip
    return [f"preflight_action extend_sft: the SFT stage also trained on y- of the {risky} pairs at risk (scored "
            "under the base model, since the choice comes before SFT)"]  # fmt: skip


def report_section(cfg: RecipeConfig, result: PreflightResult | None) -> list[str]:
    """The report's pre-flight section as a one-item list (empty when the pre-flight is off)."""
    return [] if result is None else [section(result, actions(cfg, result))]
