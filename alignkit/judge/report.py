"""report.md and a self-contained report.html (chart embedded as base64) for a WinRateResult.

Everything that came from a model or from the judge is escaped before it goes into either file: responses are
untrusted text, and a report that runs a response's <script> would be a vulnerability, not a bug.
"""

from __future__ import annotations

import base64
import html
import math
from pathlib import Path

STRONG_JUDGE_HINT = (
    "--judge-base-url https://api.openai.com/v1 --judge-model gpt-4o --judge-api-key-env OPENAI_API_KEY"
)
LABELS = {1.0: "win", 0.5: "tie", 0.0: "loss"}
FILTERS = ("all", "win", "tie", "loss", "identical", "unparseable", "error", "pending")
VERDICT_NOTE = (
    "Verdicts are the judge's own labels ([A], [B] or [tie]), first with the candidate shown as A, then with it as B; "
    "the outcome is the candidate's after both orders."
)


def _pct(x: float) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}%"


def _interval(ci) -> str:
    low, high = ci
    return "n/a" if math.isnan(low) else f"[{100 * low:.1f}%, {100 * high:.1f}%]"


def _unjudged(result) -> str:
    return ", ".join(f"{v} pair(s) {k}" for k, v in sorted(result.unjudged.items()))


def judge_warning(result) -> str | None:
    """A plain warning when the verdicts should not be trusted much, with the way to ask a stronger judge."""
    weak_local = result.judge["base_url"] == "local"
    pc = result.position_consistency
    inconsistent = not math.isnan(pc) and pc < 0.7
    if not (weak_local or inconsistent):
        return None
    text = []
    if weak_local:
        text.append(
            "The judge was the local 135M-parameter SmolLM2 model. A model that small is a weak judge: it often "
            "prefers whichever response it sees first, which the both-orders rule turns into ties, and its reasons "
            "are frequently wrong. Use this run as a smoke test of the pipeline, not as evidence."
        )
    if inconsistent:
        text.append(
            f"Position consistency is {_pct(pc)}: in the other pairs the verdict changed when the two responses "
            "swapped places, so it reflects the order rather than the responses."
        )
    text.append(f"For a verdict worth reporting, point the evaluator at a strong judge: `{STRONG_JUDGE_HINT}`.")
    return " ".join(text)


def plot(result, path: Path) -> None:
    import matplotlib  # loads slowly: only a report that draws pays for it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scored = [p for p in result.pairs if p.score is not None]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.6))
    n = max(result.n_pairs, 1)
    left = 0.0
    for count, label, color in (
        (result.wins, "win", "#2e7d32"),
        (result.ties, "tie", "#9e9e9e"),
        (result.losses, "loss", "#c62828"),
    ):
        share = count / n
        ax1.barh([0], [share], left=left, color=color, label=f"{label} ({count})")
        left += share
    if not math.isnan(result.win_rate):
        low, high = result.win_rate_ci
        ax1.errorbar(
            [result.win_rate], [0.55], xerr=[[result.win_rate - low], [high - result.win_rate]],
            fmt="o", color="black", capsize=5, label=f"win rate {_pct(result.win_rate)} (95% CI)",
        )  # fmt: skip
        if not math.isnan(result.length_controlled_win_rate):
            ax1.plot([result.length_controlled_win_rate], [0.8], "D", color="#1565c0", label="length-controlled")
    ax1.axvline(0.5, color="black", linestyle=":", linewidth=1)
    ax1.set_xlim(0, 1)
    ax1.set_ylim(-0.6, 1.2)
    ax1.set_yticks([])
    ax1.set_xlabel(f"share of {result.n_pairs} pairs ({result.candidate} vs {result.baseline})")
    ax1.legend(loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=3, fontsize=8, frameon=False)
    ax1.set_title(f"Candidate outcome, both orders judged (position consistency {_pct(result.position_consistency)})")
    lengths_c = [len(p.candidate) for p in scored] or [0]
    lengths_b = [len(p.baseline) for p in scored] or [0]
    bins = min(30, max(5, len(scored) // 3))
    ax2.hist(
        [lengths_c, lengths_b], bins=bins, label=[result.candidate, result.baseline], color=["#1565c0", "#ef6c00"]
    )
    ax2.set_xlabel("response length (characters)")
    ax2.set_ylabel("pairs")
    ax2.legend(fontsize=8)
    ax2.set_title("Response lengths")
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def _headline_rows(result) -> list[tuple[str, str]]:
    stats = result.stats
    unjudged = ", ".join(f"{k}: {v}" for k, v in sorted(result.unjudged.items())) or "none"
    retries = ", ".join(f"{k}: {v}" for k, v in sorted(stats["retries"].items())) or "none"
    shares = result.verdict_shares
    return [
        ("Win rate (ties count half)", f"{_pct(result.win_rate)} {_interval(result.win_rate_ci)} 95% bootstrap CI"),
        (
            "Length-controlled win rate",
            f"{_pct(result.length_controlled_win_rate)} {_interval(result.length_controlled_ci)}",
        ),
        ("Wins / ties / losses", f"{result.wins} / {result.ties} / {result.losses} of {result.n_pairs} pairs"),
        ("Position consistency", _pct(result.position_consistency)),
        ("Standard error", _pct(result.standard_error)),
        ("Mean length (chars), candidate / baseline",
         f"{result.mean_length_candidate:.0f} / {result.mean_length_baseline:.0f}"),
        ("Pairs where the candidate is longer", _pct(result.candidate_longer_share)),
        ("Prompts / left out of the metrics", f"{result.n_prompts} / {unjudged}"),
        ("Judge requests this run / cache hits", f"{stats['requests']} / {stats['cache_hits']}"),
        ("Cached unparseable answers read again by the current parser (no request)", str(stats.get("rescued", 0))),
        ("Raw verdicts naming position A / B / tie", " / ".join(_pct(shares[k]) for k in ("A", "B", "tie"))),
        ("Retries (reason: count) / parse failures", f"{retries} / {stats['parse_failures']}"),
        ("Judge tokens this run (prompt / completion)", _tokens(stats)),
    ]  # fmt: skip


def _tokens(stats: dict) -> str:
    text = f"{stats['prompt_tokens']} / {stats['completion_tokens']}"
    missing = stats.get("replies_without_usage", 0)  # results.json files written before the count existed lack it
    return text + (f" ({missing} of {stats['replies']} replies did not report usage)" if missing else "")


def _judge_rows(result) -> list[tuple[str, str]]:
    j = result.judge
    if j["base_url"] == "verifier":
        what = "alignkit.data.verifier.verify (built-in)" if j["verifier"] == "builtin" else j["verifier"]
        return [
            ("Judge", "verifier: each response checked against the prompt's reference answer, no model asked"),
            ("Verifier", what),
        ]
    endpoint = (
        "local llama.cpp server (llama-cpp-python), started and stopped by the evaluator"
        if j["base_url"] == "local"
        else j["base_url"]
    )
    return [
        ("Endpoint", endpoint),
        ("Model", str(j["model"])),
        ("Template", f"{j['template']} (sha256 {result.template_sha256[:12]})"),
        ("Sampling", f"temperature {j['temperature']}, max_tokens {j['max_tokens']}"),
        ("Verdict read from", LOGPROBS_NOTE.format(**j) if j.get("mode") == "logprobs" else "the judge's text"),
        ("API key", f"from ${j['api_key_env']}" if j["api_key_env"] else "none (dummy key)"),
    ]  # fmt: skip


LOGPROBS_NOTE = (
    "token log-probabilities: log P(A) - log P(B) at the verdict token, averaged over both orders (candidate's "
    "sign), a tie within ±{logprob_margin} nats"
)


LC_SIMPLIFIED = (
    "Length control uses the simplified fit (no instruction-difficulty term): these prompts were judged against one "
    "model only, and AlpacaEval 2's difficulty term needs several models judged on the same prompts."
)
VERIFIER_METHOD = (
    "The verifier judge scores each response against the prompt's reference answer (1 correct, 0 wrong, graded in "
    "between) and prefers the higher score; equal scores tie. It does not depend on the order, so both orders agree. "
    "Pairs whose prompt has no reference answer are left out and counted as unverifiable."
)
METHOD = (
    "Each pair is judged twice, with the candidate shown first (A) and second (B). A pair is a win or a loss only "
    "when both orders agree; a verdict that flips with the order counts as a tie. The win rate is "
    "(wins + ties/2) / pairs, its 95% interval a percentile bootstrap over pairs. The length-controlled win rate fits "
    "P(win) = sigmoid(a + b * tanh(length difference / its std)) by logistic regression (ties as 0.5, L2 on b) and "
    "reports sigmoid(a), the predicted win rate when both responses have the same length. Pairs with identical "
    "outputs are ties without a request; pairs with an unparseable verdict, a failed request or no budget left are "
    "left out and counted."
)


def method(result) -> str:
    verifier = [VERIFIER_METHOD] if result.judge["base_url"] == "verifier" else []
    return " ".join([*verifier, METHOD, LC_SIMPLIFIED])


def _verdict_text(j: dict | None) -> str:
    if j is None:
        return ""
    if j["status"] != "ok":
        return f"{j['status']}" + (f" ({j['error']})" if j.get("error") else "")
    if j.get("logit_a") is not None:
        return f"[{j['verdict']}] (log P(A) - log P(B) = {j['logit_a']:+.2f})"
    return f"[{j['verdict']}]"


def _outcome(p) -> str:
    return LABELS.get(p.score, p.status) if p.score is not None else p.status


def write_markdown(result, path: Path, png_name: str, max_examples: int) -> None:
    esc = lambda s: html.escape(str(s)).replace("|", "&#124;").replace("\n", "<br>")  # noqa: E731
    lines = [f"# Win rate: {esc(result.candidate)} vs {esc(result.baseline)}", ""]
    warning = judge_warning(result)
    if warning:
        lines += [f"> **Warning: weak judge.** {warning}", ""]
    if not result.complete:
        lines.append(
            f"> **Incomplete:** {result.n_prompts - result.n_pairs} pairs are not in the numbers ({result.unjudged}). "
            "Rerun with the same output directory to finish them; cached verdicts are free."
        )
        lines.append("")
    elif result.unjudged:
        lines += [f"> Left out of the numbers (final, not retried on rerun): {_unjudged(result)}.", ""]
    lines += ["| metric | value |", "|---|---|"]
    lines += [f"| {esc(k)} | {esc(v)} |" for k, v in _headline_rows(result)]
    lines += ["", f"![win rate]({png_name})", "", "## Judge", "", "| | |", "|---|---|"]
    lines += [f"| {esc(k)} | {esc(v)} |" for k, v in _judge_rows(result)]
    if result.judge["base_url"] != "verifier":
        lines += ["", f"To use a strong judge instead: `{STRONG_JUDGE_HINT}`."]
    lines += ["", "## Method", "", method(result), ""]
    lines += ["## Examples", "", VERDICT_NOTE, ""]
    lines.append("| # | prompt | candidate | baseline | candidate first | candidate second | outcome |")
    lines.append("|---|---|---|---|---|---|---|")
    for p in result.pairs[:max_examples]:
        first = p.candidate_first or {}
        second = p.candidate_second or {}
        cells = [
            p.index, p.instruction, p.candidate, p.baseline,
            f"{_verdict_text(p.candidate_first)} {first.get('reason', '')}",
            f"{_verdict_text(p.candidate_second)} {second.get('reason', '')}",
            _outcome(p),
        ]  # fmt: skip
        lines.append("| " + " | ".join(esc(c) for c in cells) + " |")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


_CSS = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1200px;color:#222;padding:0 1em}
table{border-collapse:collapse;margin:1em 0}
td,th{border:1px solid #ccc;padding:4px 8px;vertical-align:top;text-align:left}
.examples td{max-width:260px;white-space:pre-wrap;word-wrap:break-word;font-size:90%}
.warn{background:#fff3cd;border:1px solid #e0c36b;padding:.7em 1em}
.win{background:#e8f5e9}.loss{background:#ffebee}.tie{background:#f5f5f5}
code{background:#f3f3f3;padding:1px 4px}
"""

_FILTER_JS = """
function filterRows(v){for(const r of document.querySelectorAll('.examples tbody tr')){
r.style.display=(v==='all'||r.dataset.outcome===v)?'':'none';}}
"""


def write_html(result, path: Path, png_bytes: bytes, max_examples: int) -> None:
    e = html.escape
    title = f"Win rate: {result.candidate} vs {result.baseline}"
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{e(title)}</title><style>{_CSS}</style><script>{_FILTER_JS}</script></head><body>",
        f"<h1>{e(title)}</h1>",
    ]
    warning = judge_warning(result)
    if warning:
        parts.append(f"<p class='warn'><b>Warning: weak judge.</b> {e(warning)}</p>")
    if not result.complete:
        parts.append(
            f"<p class='warn'><b>Incomplete:</b> {result.n_prompts - result.n_pairs} pairs are not in the numbers "
            f"({e(str(result.unjudged))}). Rerun with the same output directory to finish them.</p>"
        )
    elif result.unjudged:
        parts.append(f"<p>Left out of the numbers (final, not retried on rerun): {e(_unjudged(result))}.</p>")
    parts.append("<table>" + "".join(f"<tr><th>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in _headline_rows(result)))
    parts.append("</table>")
    encoded = base64.b64encode(png_bytes).decode()
    parts.append(
        f"<img alt='win/tie/loss with 95% CI and length distributions' src='data:image/png;base64,{encoded}'>"
    )
    parts.append("<h2>Judge</h2><table>")
    parts.append("".join(f"<tr><th>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in _judge_rows(result)) + "</table>")
    if result.judge["base_url"] != "verifier":
        parts.append(f"<p>To use a strong judge instead: <code>{e(STRONG_JUDGE_HINT)}</code></p>")
    parts.append(f"<h2>Method</h2><p>{e(method(result))}</p>")
    shown = result.pairs[:max_examples]
    parts.append(f"<h2>Examples ({len(shown)} of {len(result.pairs)})</h2>")
    parts.append(
        "<p>Show: <select onchange='filterRows(this.value)'>"
        + "".join(f"<option value='{v}'>{v}</option>" for v in FILTERS)
        + f"</select> {e(VERDICT_NOTE)}</p>"
    )  # fmt: skip
    parts.append(
        "<table class='examples'><thead><tr><th>#</th><th>prompt</th><th>candidate</th><th>baseline</th>"
        "<th>candidate first (A)</th><th>candidate second (B)</th><th>outcome</th></tr></thead><tbody>"
    )
    for p in shown:
        outcome = _outcome(p)
        first, second = p.candidate_first or {}, p.candidate_second or {}
        cells = [
            str(p.index), p.instruction, p.candidate, p.baseline,
            f"{_verdict_text(p.candidate_first)}\n{first.get('reason', '')}",
            f"{_verdict_text(p.candidate_second)}\n{second.get('reason', '')}",
            outcome,
        ]  # fmt: skip
        parts.append(
            f"<tr class='{e(outcome)}' data-outcome='{e(outcome)}'>"
            + "".join(f"<td>{e(c)}</td>" for c in cells)
            + "</tr>"
        )
    parts.append("</tbody></table></body></html>")
    path.write_text("\n".join(parts), encoding="utf-8")


def write_report(result, output_dir: Path, max_examples: int = 50) -> dict[str, Path]:
    """Writes win_rate.png, report.md and report.html into output_dir; returns their paths."""
    output_dir = Path(output_dir)
    png = output_dir / "win_rate.png"
    plot(result, png)
    md = output_dir / "report.md"
    write_markdown(result, md, png.name, max_examples)
    page = output_dir / "report.html"
    write_html(result, page, png.read_bytes(), max_examples)
    return {"png": png, "md": md, "html": page}
