"""The pre-flight's figure: how deep y+ and y- sit, with the at-risk threshold marked."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on training machines
import matplotlib.pyplot as plt  # noqa: E402


def histogram(records: Sequence[dict], threshold: float, title: str, path: Path) -> Path:
    """Histograms of the mean per-token log-prob of y- and y+ over the pairs, a line at `threshold`."""
    rejected = [r["rejected_logp_per_token"] for r in records]
    chosen = [r["chosen_logp_per_token"] for r in records]
    low = min(rejected + chosen + [threshold]) - 0.25
    high = max(rejected + chosen + [threshold]) + 0.25
    bins = [low + (high - low) * i / 40 for i in range(41)]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.hist(rejected, bins=bins, alpha=0.6, color="tab:red", label="y- (rejected)")
    ax.hist(chosen, bins=bins, alpha=0.5, color="tab:blue", label="y+ (chosen)")
    at_risk = sum(v < threshold for v in rejected)
    ax.axvline(threshold, color="black", linestyle="--", label=f"threshold {threshold:g}: {at_risk} at risk")
    ax.set_xlabel("mean log π per response token (nats)")
    ax.set_ylabel("pairs")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
