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


def plot_probes(
    records: Sequence[dict],
    boundaries: Sequence[tuple[int, str]],
    path: str | Path,
    threshold: float | None = None,
    title: str | None = None,
) -> Path:
    """Draw every evaluation record (flat metric dicts with `global_step`) into one PNG.

    Args:
        records: evaluations in order, as written to probes.jsonl.
        boundaries: (global step where a stage began, stage name), drawn as labelled vertical lines.
        path: where the PNG goes.
        threshold: the alert threshold, drawn on the squeezing-score panel.
    """
    import matplotlib

    matplotlib.use("Agg")  # no display on training machines
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 4, figsize=(20, 8.5))
    steps = [r["global_step"] for r in records]
    for ax, (panel_title, families, metric) in zip(axes.flat, PANELS):
        for n, family in enumerate(families):
            for split, style in SPLIT_STYLE.items():
                values = [r.get(metric_key(split, family, metric), math.nan) for r in records]
                if all(math.isnan(v) for v in values):
                    continue
                ax.plot(steps, values, style, marker=".", color=f"C{n}", label=f"{family} ({split})")
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
    alerts = [r for r in records if "alert" in r]
    if alerts:
        alert_steps = [r["global_step"] for r in alerts]
        score_ax.plot(alert_steps, [r["squeeze/score"] for r in alerts], "rx", markersize=9, label="alert")
    if threshold is not None:
        score_ax.axhline(threshold, color="r", linestyle=":", label=f"threshold {threshold:g}")
    if score_ax.get_legend_handles_labels()[0]:
        score_ax.legend(fontsize=7)
    score_ax.set_title("squeezing score (nats/token)", fontsize=10)
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
