"""The run's `report.md`: what ran, how it went, and where everything is."""

from __future__ import annotations

import json
from pathlib import Path

from alignkit.config import RecipeConfig
from alignkit.stages import StageResult

HEADLINE_METRICS = (
    "train_loss", "loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies",
    "logps/chosen", "logps/rejected",
)  # fmt: skip


def _fmt(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def remedy_line(cfg: RecipeConfig, stages: list[StageResult]) -> str | None:
    """The squeezing remedies the run used (docs/remedies.md), with their last logged `loss/*` terms; None if none."""
    p, fraction = cfg.preference, cfg.preflight.preflight_filter_fraction
    parts = []
    if p.loss == "dpop":
        parts.append(f"DPOP (dpop_lambda {p.dpop_lambda:g})")
    if p.loss == "cal_dpo":
        parts.append(f"Cal-DPO (calibration targets +-{1 / (2 * p.beta):g})")
    if p.negative_floor is not None:
        parts.append(f"negative-gradient floor {p.negative_floor:g} nats/token")
    if p.sft_weight > 0:
        parts.append(f"SFT mix (sft_weight {p.sft_weight:g})")
    if fraction > 0:
        parts.append(f"pre-flight filtering (preflight_filter_fraction {fraction:g}; the Pre-flight section lists "
                     "the dropped pairs)")  # fmt: skip
    if not parts:
        return None
    preference = next((s for s in stages if s.name == "preference"), None)
    terms = {k: v for k, v in (preference.metrics if preference else {}).items() if k.startswith("loss/")}
    shown = ", ".join(f"`{k}` {_fmt(v)}" for k, v in sorted(terms.items()))
    logged = f"; last logged: {shown}" if shown else ""
    return f"- squeezing remedies (docs/remedies.md): {'; '.join(parts)}{logged}"


def write_metrics(out: Path, stages: list[StageResult]) -> Path:
    path = out / "metrics.json"
    summary = {
        s.name: {"status": s.status, "steps": s.steps, "seconds": round(s.seconds, 1), "rows": s.rows,
                 "log_history": s.log_history}
        for s in stages
    }  # fmt: skip
    path.write_text(json.dumps(summary, indent=1))
    return path


def write_report(
    out: Path,
    cfg: RecipeConfig,
    stages: list[StageResult],
    final_dir: Path | None,
    extra_sections: list[str] = (),
    notes: list[str] = (),
) -> Path:
    training = f"LoRA r={cfg.model.lora_r}" if cfg.model.use_lora else "full fine-tuning"
    lines = [
        f"# alignkit run: `{out}`",
        "",
        f"- model: `{cfg.model.model_name_or_path}` ({training})",
        f"- data: `{cfg.data.dataset_name}`, max_length {cfg.data.max_length}",
        f"- SFT mode: `{cfg.sft.sft_mode}`; preference loss: `{cfg.preference.loss}` (beta {cfg.preference.beta}, "
        f"SFT mix-in weight {cfg.preference.sft_weight})",
        *filter(None, [remedy_line(cfg, stages)]),
        "",
        "## Stages",
        "",
        "| stage | status | steps | time (s) | rows | " + " | ".join(HEADLINE_METRICS) + " |",
        "|---" * (5 + len(HEADLINE_METRICS)) + "|",
    ]  # fmt: skip
    for s in stages:
        rows = ", ".join(f"{k}: {v}" for k, v in s.rows.items()) or "-"
        metrics = " | ".join(_fmt(s.metrics[m]) if m in s.metrics else "-" for m in HEADLINE_METRICS)
        lines.append(f"| {s.name} | {s.status} | {s.steps} | {s.seconds:.0f} | {rows} | {metrics} |")
    lines += ["", "Metrics are the last logged values of the stage (TRL names; `logps/*` are summed log-probs)."]
    if notes:
        lines += ["", "## Notes", "", *[f"- {n}" for n in notes]]
    for section in extra_sections:
        lines += ["", section.rstrip()]
    lines += [
        "",
        "## Files",
        "",
        "- `config.yaml`: the resolved configuration (rerun with `--config` on it)",
        "- `metrics.json`: every logged training metric of every stage",
        "- `sft/adapter/`, `preference/adapter/`: the LoRA adapters of each stage"
        if cfg.model.use_lora
        else "- `sft/model/`, `preference/model/`: full weights after each stage",
    ]
    if final_dir is not None:
        lines.append(f"- `{final_dir.name}/`: the final merged model with its tokenizer (load with `from_pretrained`)")
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path
