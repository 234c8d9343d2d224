"""The run's probe figure, laid out like the paper's: a panel per family group, stages marked, log-prob over steps."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from alignkit.monitors.scoring import metric_key

PANELS = [  # (title, families, metric)
    ("chosen / rejected", ("chosen", "rejected"), "logp"),
    (
        "rephrases / reformats",
        ("chosen_rephrase", "rejected_rephrase", "chosen_reformat", "rejected_reformat"),
        "logp",
    ),
    ("irrelevant", ("irrelevant_train", "irrelevant_test", "irrelevant_human"), "logp"),
    ("shuffled / non-human", ("shuffled", "non_human"), "logp"),
    ("greedy / argmax", ("greedy", "argmax"), "logp"),
    ("concentration: argmax prob", ("chosen", "rejected"), "argmax_prob"),
    ("concentration: entropy (nats)", ("chosen", "rejected"), "entropy"),
]
SPLIT_STYLE = {"train": "-", "test": "--"}
MECHANISM_PANELS = [  # (title, metrics): each drawn with its 95% bootstrap band over probes
    ("off-target fall (nats/token, EOS apart)", ("off_target_fall",)),
    ("y- decrease and y+ decrease (nats/token)", ("rejected_fall", "chosen_fall")),
    ("concentration along y- (Δ log-odds/token)", ("concentration_alt", "concentration_top")),
    ("greedy likelihood (Δ nats/token)", ("greedy_start_rise", "greedy_rise")),
]


def plot_probes(
    records: Sequence[dict],
    boundaries: Sequence[tuple[int, str]],
    path: str | Path,
    threshold: float | None = None,
    title: str | None = None,
    alert_metric: str = "score",
) -> Path:
    """Draw every evaluation record (flat metric dicts with `global_step`) into one PNG.

    Args:
        records: evaluations in order, as written to probes.jsonl.
        boundaries: (global step where a stage began, stage name), drawn as labelled vertical lines.
        path: where the PNG goes.
        threshold: the alert threshold, drawn with the alerts on the panel of `alert_metric`, the metric the alert
            reads (`score` or a mechanism metric).
    """
    import matplotlib  # loads slowly: only a run that draws its figure pays for it

    matplotlib.use("Agg")  # no display on training machines; set before pyplot is first imported
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, 4, figsize=(20, 12.5))
    steps = [r["global_step"] for r in records]
    for ax, (panel_title, families, metric) in zip(axes.flat, PANELS):
        for n, family in enumerate(families):
            for split, style in SPLIT_STYLE.items():
                key = metric_key(split, family, metric)
                # Mid-stage evaluations may score fewer families (probe_step_families): join the ones that have it.
                points = [(s, _num(r[key])) for s, r in zip(steps, records) if key in r]
                if not points or all(math.isnan(v) for _, v in points):
                    continue
                ax.plot(*zip(*points), style, marker=".", color=f"C{n}", label=f"{family} ({split})")
        ax.set_title(panel_title if metric != "logp" else f"{panel_title}: log π(y|x)", fontsize=10)
        if ax.lines:
            ax.legend(fontsize=7, loc="best")
        else:
            ax.text(0.5, 0.5, "not measured", ha="center", va="center", transform=ax.transAxes, color="grey")
    score_ax = axes.flat[len(PANELS)]
    for stage in dict.fromkeys(r["stage"] for r in records):  # one curve per stage: each starts again from 0
        own = [r for r in records if r["stage"] == stage]
        scores = [r.get("squeeze/score", math.nan) for r in own]
        score_ax.plot([r["global_step"] for r in own], scores, "-k", marker=".")
    score_ax.set_title("original squeezing score (nats/token)", fontsize=10)
    for ax, (panel_title, metrics) in zip(axes.flat[len(PANELS) + 1 :], MECHANISM_PANELS):
        for n, name in enumerate(metrics):
            for stage in dict.fromkeys(r["stage"] for r in records):  # each stage starts again from 0
                own = [r for r in records if r["stage"] == stage and f"mech/{name}" in r]
                x = [r["global_step"] for r in own]
                y, lo, hi = ([_num(r.get(f"mech/{name}{k}")) for r in own] for k in ("", "_lo", "_hi"))
                label = name if stage == records[0]["stage"] else None
                ax.plot(x, y, "-", marker=".", color=f"C{n}", label=label)
                ax.fill_between(x, lo, hi, color=f"C{n}", alpha=0.2, linewidth=0)
        ax.axhline(0, color="grey", linewidth=0.6)
        ax.set_title(panel_title, fontsize=10)
        ax.legend(fontsize=7, loc="best")
    for ax in axes.flat[len(PANELS) + 1 + len(MECHANISM_PANELS) :]:
        ax.axis("off")
    # The threshold and the alerts go where the metric the alert reads is drawn.
    alert_ax = score_ax
    for ax, (_, metrics) in zip(axes.flat[len(PANELS) + 1 :], MECHANISM_PANELS):
        if alert_metric in metrics:
            alert_ax = ax
    alerts = [r for r in records if "alert" in r]
    if alerts:
        values = [_num(r.get("squeeze/alert_value", r.get("squeeze/score"))) for r in alerts]
        alert_ax.plot([r["global_step"] for r in alerts], values, "rx", markersize=9, label="alert")
    if threshold is not None:
        alert_ax.axhline(threshold, color="r", linestyle=":", label=f"alert threshold {threshold:g}")
    for ax in (score_ax, alert_ax):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="best")
    for ax in axes.flat:
        ax.set_xlabel("global step", fontsize=8)
        ax.tick_params(labelsize=7)
        for step, name in boundaries:
            ax.axvline(step, color="grey", linewidth=0.8, linestyle="-.")
            ax.text(step, 1.0, f" {name}", transform=ax.get_xaxis_transform(), fontsize=7, va="top", color="grey")
    fig.suptitle(title or "Probe families through training (solid: train prompts, dashed: held-out prompts)")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _num(value) -> float:
    return value if isinstance(value, float | int) else math.nan  # None (NaN written to JSON) -> a gap in the line
