"""The decomposition's per-token table as a heatmap: observed tokens × update tokens, one symmetric colour scale."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on training machines
import matplotlib.pyplot as plt  # noqa: E402


def token_label(tokenizer, token_id: int) -> str:
    """A token as readable text (escapes shown, quotes stripped)."""
    return repr(tokenizer.decode([token_id]))[1:-1]


def heatmap(decomposition, tokenizer, path: Path) -> None:
    """per_token as an image: rows = observed tokens, columns = update tokens, symmetric colour scale."""
    data = decomposition.per_token.float().numpy()
    m_len, l_len = data.shape
    limit = float(abs(data).max()) or 1.0
    fig, ax = plt.subplots(figsize=(max(4, 0.3 * l_len + 2.5), max(3, 0.3 * m_len + 1.5)))
    image = ax.imshow(data, cmap="RdBu_r", vmin=-limit, vmax=limit, aspect="auto")
    sides = decomposition.residual.sides
    ax.set_xticks(
        range(l_len),
        [
            token_label(tokenizer, t) + ("⁻" if s == "rejected" else "")
            for t, s in zip(decomposition.update_tokens, sides)
        ],
        rotation=90,
        fontsize=7,
    )
    ax.set_yticks(range(m_len), [token_label(tokenizer, t) for t in decomposition.observed_tokens], fontsize=7)
    ax.set_xlabel("update token l (⁻: rejected)")
    ax.set_ylabel("observed token m")
    d = decomposition
    ax.set_title(f"per_token Δlog π ({d.loss}, lr={d.lr:g}, total {d.predicted:.3g})")
    fig.colorbar(image, ax=ax)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
