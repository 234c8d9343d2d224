"""The pre-flight's words: the verdict line, the ranked table (`preflight.md`) and the run report's section."""

from __future__ import annotations

from collections.abc import Sequence

# The table's columns: (record key, header). Log-probs in nats; per token = mean over the response's tokens.
COLUMNS = (
    ("rank", "rank"),
    ("row", "row"),
    ("id", "id"),
    ("task", "task"),
    ("rejected_logp_per_token", "y- per token"),
    ("rejected_min_logp", "y- min token"),
    ("chosen_logp_per_token", "y+ per token"),
    ("chosen_min_logp", "y+ min token"),
    ("margin", "margin"),
    ("ches", "CHES (ln)"),
    ("offtarget_delta", "off-target Δ/token"),
    ("at_risk", "at risk"),
)


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else ""
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value).replace("|", "\\|")


def markdown_table(records: Sequence[dict], limit: int | None = None) -> list[str]:
    rows = records[:limit] if limit else records
    lines = ["| " + " | ".join(h for _, h in COLUMNS) + " |", "|---" * len(COLUMNS) + "|"]
    lines += ["| " + " | ".join(_cell(r.get(k)) for k, _ in COLUMNS) + " |" for r in rows]
    return lines


def verdict(n_risky: int, n_pairs: int, threshold: float, model: str, sft_mode: str, decided_on_base: bool) -> str:
    """One line: how many pairs are at risk under which model, and what to do about it."""
    share = f"{n_risky} of {n_pairs} pairs ({100 * n_risky / max(n_pairs, 1):.0f}%)"
    head = f"{share} have y- deeper than {threshold:g} nats/token under {model}"
    if n_risky == 0:
        return f"{head}: none at risk of squeezing; no action needed."
    if decided_on_base or sft_mode != "extended":
        todo = (
            "train SFT on their y- too (sft_mode: extended, or preflight: act with preflight_action: extend_sft), "
            "or drop them (preflight_action: drop)"
        )
    else:
        todo = "extended SFT left them deep: more SFT steps (sft_max_steps), or drop them (preflight: act, drop)"
    return f"{head}: at risk of squeezing. Do: {todo}."


def preflight_markdown(records: Sequence[dict], header: Sequence[str], verdict_line: str) -> str:
    """The whole `preflight.md`: what was scored, the verdict, every pair ranked riskiest first."""
    lines = ["# Pre-flight", "", *header, "", f"**Verdict:** {verdict_line}", "", *markdown_table(records)]
    lines += ["", *LEGEND]
    return "\n".join(lines) + "\n"


LEGEND = (
    "Per token: the mean of log π over the response's tokens (EOS included); min token: the least likely token; "
    "margin: log π(y+|x) − log π(y-|x), summed; CHES (ln): length-normalised CHES of Razin et al. (high: y- is "
    "represented like y+); off-target Δ/token: one-step predicted change of a held-out answer (sampled pairs only). "
    "docs/preflight.md explains each score.",
)


def report_section(records: Sequence[dict], header: Sequence[str], verdict_line: str, actions: Sequence[str],
                   files: Sequence[str], top: int = 10) -> str:  # fmt: skip
    """The section `write_report` appends to the run's report.md."""
    lines = ["## Pre-flight (docs/preflight.md)", "", *header, "", f"**Verdict:** {verdict_line}", ""]
    if actions:
        lines += [*[f"- {a}" for a in actions], ""]
    lines += [f"The {min(top, len(records))} riskiest pairs:", "", *markdown_table(records, top), ""]
    lines += [f"Files: {', '.join(f'`{f}`' for f in files)}"]
    return "\n".join(lines)
