"""The monitor's section of the run report: family tables per stage, the squeezing score, mechanism metrics, alerts.

A pure function of what the monitor recorded (its evaluation records, alert/guard events and notes): no trainer, model
or file is needed to write or test it.
"""

from __future__ import annotations

import math

from alignkit.monitors.config import ALL_FAMILIES, MonitorConfig
from alignkit.monitors.probes import SPLITS, ProbeSet
from alignkit.monitors.scoring import (
    CONCENTRATION_FAMILIES,
    FIXED_GREEDY,
    MECHANISM_METRICS,
    RATIO_MIN_FALL,
    metric_key,
)

MECHANISM_UNITS = {
    "off_target_fall": "nats/token",
    "off_target_eos_change": "nats (EOS)",
    "rejected_fall": "nats/token",
    "chosen_fall": "nats/token",
    "collateral_ratio": "nats per nat",
    "concentration_alt": "log-odds/token",
    "concentration_top": "log-odds/token",
    "greedy_start_rise": "nats/token",
    "greedy_rise": "nats/token",
}


def summary_markdown(
    probe_set: ProbeSet,
    config: MonitorConfig,
    records: list[dict],
    events: list[dict],
    notes: list[str],
    figure: str | None = None,
) -> str:
    """Start → end of every family and split, per stage; the alerts and what the guard did."""
    lines = ["## Squeezing monitor", ""]
    counts = " + ".join(f"{probe_set.count(s)} {s}" for s in SPLITS if probe_set.count(s))
    lines.append(f"Probes: {counts} prompts; families: {', '.join(probe_set.families)}.")
    lines += [f"- note: {n}" for n in notes]
    if not records:
        return "\n".join([*lines, "", "No evaluation was recorded."]) + "\n"
    stages = list(dict.fromkeys(r["stage"] for r in records))
    lines += ["", *verdict_lines(config, records, events, stages)]
    lines += comparable_lines(records, stages)
    if figure:
        lines += ["", f"![probe families through training]({figure})"]
    first = records[0]
    lines += [
        "",
        "Mean log π(y|x) over the probes (summed over response tokens); in brackets the change within that stage. "
        "`argmax prob` and `entropy` are per-token means along the response.",
        "",
        "| family | split | run start | " + " | ".join(f"end of {s}" for s in stages) + " |",
        "|---|---|---:|" + "---:|" * len(stages),
    ]
    rows = [(f, "logp", f) for f in ALL_FAMILIES if f in probe_set.families]
    if "greedy" in probe_set.families:
        rows.append((FIXED_GREEDY, "logp", f"{FIXED_GREEDY} (the stage's first decoding, fixed)"))
    rows += [
        (f, name, f"{f} {name.replace('_', ' ')}")
        for f in CONCENTRATION_FAMILIES
        for name in ("argmax_prob", "entropy")
    ]
    for family, name, label in rows:
        for split in SPLITS:
            key = metric_key(split, family, name)
            if key not in first and not any(key in r for r in records):
                continue
            digits = 2 if name == "logp" else 3
            cells = [_fmt(first.get(key), digits)]
            for stage in stages:
                stage_records = [r for r in records if r["stage"] == stage and key in r]
                if not stage_records:
                    cells.append("–")
                    continue
                start, end = stage_records[0][key], stage_records[-1][key]
                cells.append(f"{_fmt(end, digits)} ({end - start:+.{digits}f})")
            lines.append(f"| {label} | {split} | " + " | ".join(cells) + " |")
    score_cells = []
    for stage in stages:
        scored = [r for r in records if r["stage"] == stage and "squeeze/score" in r]
        if scored:
            end = scored[-1]
            score_cells.append(
                f"{stage}: end {end['squeeze/score']:.3f} (greedy/argmax rise {end['squeeze/rise']:+.3f}, "
                f"others' fall {end['squeeze/fall']:+.3f}), max {max(r['squeeze/score'] for r in scored):.3f}"
            )
    lines += ["", "Original squeezing score, min(rise, fall) in nats/token: " + "; ".join(score_cells) + "."]
    lines += mechanism_table(config, records, stages)
    lines += ["", "### Alerts and guard actions", ""]
    if not events:
        lines.append(f"No squeezing alert (guard action '{config.guard_action}').")
    for event in events:
        lines.append(f"- **{event['stage']}, step {event['step']}** — {event['message']} Guard: {event['action']}")
    return "\n".join(lines) + "\n"


def verdict_lines(config: MonitorConfig, records: list[dict], events: list[dict], stages: list[str]) -> list[str]:
    """Per stage, one line that says whether squeezing happened: the alert's verdict, and the metric it reads at
    the stage's last evaluation with its 95% interval over probes."""
    metric = config.squeeze_metric
    key = "squeeze/score" if metric == "score" else f"mech/{metric}"
    unit = "nats/token" if metric == "score" else MECHANISM_UNITS[metric]
    lines = []
    for stage in stages:
        own = [r for r in records if r["stage"] == stage and key in r]
        if not own:
            lines.append(f"- **{stage}**: `{metric}` was not measured (one evaluation only).")
            continue
        end = own[-1]
        value = f"{_fmt(end[key], 3)} {unit}"
        if _finite(lo := end.get(f"{key}_lo")) and _finite(hi := end.get(f"{key}_hi")):
            value = f"{end[key]:.3f} [{lo:.3f}, {hi:.3f}] {unit}"
        elif metric == "collateral_ratio" and not _finite(end[key]):
            value = f"undefined (y⁻ did not fall by {RATIO_MIN_FALL:g} nats/token: nothing to alert on)"
        alerts = [e for e in events if e["stage"] == stage]
        if alerts:
            verdict = f"**squeezing** (alert at step {alerts[0]['step']}, guard: {alerts[0]['action']})"
        else:
            verdict = "no squeezing alert"
        lines.append(
            f"- **{stage}**: {verdict}; `{metric}` at its end (step {end['step']}): {value}, alert threshold "
            f"{config.squeeze_threshold:g}."
        )
    return ["Verdict (the alert reads the change since each stage began; 95% interval over probes):", "", *lines]


def comparable_lines(records: list[dict], stages: list[str]) -> list[str]:
    """Per stage with a change: the reading that compares runs (`collateral_ratio`: off-target fall per nat of y-
    fall, flat across learning rates where the off-target fall itself grows ~8x: docs/monitors.md, "Detector v2"),
    and a sentence on what the stage did to its stage-start greedy answer."""
    lines = []
    for stage in stages:
        own = [r for r in records if r["stage"] == stage and "mech/off_target_fall" in r]
        if not own:
            continue
        end = own[-1]
        ratio, lo, hi = (end.get(f"mech/collateral_ratio{x}") for x in ("", "_lo", "_hi"))
        fall = end.get("mech/rejected_fall")
        if _finite(ratio):
            bracket = f" [{lo:.3f}, {hi:.3f}]" if _finite(lo) and _finite(hi) else ""
            reading = f"`collateral_ratio` {ratio:.3f}{bracket} nats of off-target fall per nat of y⁻ fall"
        elif _finite(fall):
            moved = f"rose by {-fall:.3f}" if fall < 0 else f"fell by only {fall:.3f}"
            reading = (
                f"`collateral_ratio` undefined: y⁻ {moved} nats/token (a fall below {RATIO_MIN_FALL:g} defines none), "
                "no negative gradient at work for squeezing to be a side effect of"
            )
        else:
            reading = "`collateral_ratio` not measured (no rejected probes)"
        lines.append(f"- **{stage}**, the reading that compares runs: {reading}.")
        if sentence := greedy_start_sentence(own[0], end, records, stage):
            lines.append(f"  {sentence}")
    if not lines:
        return []
    return ["", "Comparable reading and the stage-start greedy answer (change since each stage began):", "", *lines]


def greedy_start_sentence(first: dict, end: dict, records: list[dict], stage: str) -> str | None:
    """What a stage did to the greedy answers decoded at its start, scored as fixed text, against the greedy answers
    decoded at its end; None when the stage has no greedy probes. Uses the training split (the held-out one where
    the training split has none)."""
    for split in SPLITS:
        fixed = metric_key(split, FIXED_GREEDY, "logp")
        greedy = metric_key(split, "greedy", "logp")
        stage_records = [r for r in records if r["stage"] == stage and fixed in r and greedy in r]
        if len(stage_records) >= 2:
            break
    else:
        return None
    start, now = stage_records[0], stage_records[-1]
    d_fixed, d_greedy = now[fixed] - start[fixed], now[greedy] - start[greedy]
    rise, lo, hi = (end.get(f"mech/greedy_start_rise{x}") for x in ("", "_lo", "_hi"))
    per_token = ""
    if _finite(rise) and _finite(lo) and _finite(hi):
        per_token = f"; `greedy_start_rise` {rise:+.3f} [{lo:+.3f}, {hi:+.3f}] nats/token"
    if d_fixed >= 0 and d_greedy >= 0:
        meaning = "the model reinforced its stage-start answers: mass moved onto them, as squeezing predicts"
    elif d_fixed < 0 <= d_greedy:
        meaning = ("the model moved away from its stage-start answers to other, now more likely, ones: a change of "
                   "answer, not mass piling onto the old argmax")  # fmt: skip
    elif d_fixed < 0 and d_greedy < 0:
        meaning = "both fell: the model became less sure of its answers, old and new (broad damage, not concentration)"
    else:
        meaning = "the new answers are less likely than the old ones were, while the old ones gained"
    return (
        f"Stage-start greedy answers ({split} prompts), scored as fixed text: {d_fixed:+.2f} nats per answer"
        f"{per_token}; the answers decoded at the stage's end score {d_greedy:+.2f} nats against the start's: "
        f"{meaning}."
    )


def mechanism_table(config: MonitorConfig, records: list[dict], stages: list[str]) -> list[str]:
    """Each mechanism metric at the end of each stage, with its 95% bootstrap interval over probes."""
    if config.squeeze_metric == "score":
        bound = "no interval: a min of two means over families"
    elif config.squeeze_alert_on == "lower":
        bound = "the lower end of its 95% interval"
    else:
        bound = "its mean over probes"
    lines = [
        "",
        "### Mechanism metrics",
        "",
        f"Change since the stage's first evaluation, mean over probes [95% bootstrap interval over probes] "
        f"(definitions: docs/monitors.md). The alert reads `{config.squeeze_metric}` ({bound}) against "
        f"{config.squeeze_threshold:g}.",
        "",
        "| metric | unit | " + " | ".join(f"end of {s}" for s in stages) + " |",
        "|---|---|" + "---|" * len(stages),
    ]
    for name in MECHANISM_METRICS:
        cells = []
        for stage in stages:
            own = [r for r in records if r["stage"] == stage and f"mech/{name}" in r]
            end = own[-1] if own else {}
            mean, lo, hi = (end.get(f"mech/{name}{x}") for x in ("", "_lo", "_hi"))
            cell = _fmt(mean, 3)
            if _finite(lo) and _finite(hi):
                cell += f" [{lo:.3f}, {hi:.3f}]"
            cells.append(cell)
        lines.append(f"| {name} | {MECHANISM_UNITS[name]} | " + " | ".join(cells) + " |")
    return lines


def _finite(value) -> bool:
    return isinstance(value, float | int) and math.isfinite(value)


def _fmt(value, digits: int = 2) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"
