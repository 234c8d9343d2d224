"""The paper's claims, decided by explicit rules from a study summary (alignkit/study/analysis.py).

A directional claim is reproduced when its 95% interval lies wholly on the predicted side, not reproduced otherwise
(with the largest effect the interval still allows); a claim resting on a failed manipulation check is invalid, and
one resting on a check that could not be made is untestable here.
"""

from __future__ import annotations

import math

from alignkit.stats import Estimate
from alignkit.study.quality import PAPER_WIN_RATES


def finite(x: float | None) -> bool:
    """Whether a summary number is defined (NaN is written to summary.json as null)."""
    return x is not None and math.isfinite(x)


def directional(est: dict | None, sign: int, ref: float = 0.0) -> str:
    """reproduced when the interval lies wholly on the predicted side of `ref`; untestable without an interval."""
    if est is None or not (finite(est["lo"]) and finite(est["hi"])):
        return "untestable here"
    side = Estimate(est["mean"], est["lo"], est["hi"], 0, 0).excludes(ref)
    return "reproduced" if side == sign else "not reproduced"


def describe(est: dict | None, sign: int = 0, ref: float = 0.0, digits: int = 3) -> str:
    """'mean [lo, hi]' and, when the interval contains `ref`, the bound it puts on an effect in direction `sign`."""
    if est is None or not finite(est["mean"]):
        return "n/a"
    lo, hi = (f"{v:.{digits}g}" if finite(v) else "n/a" for v in (est["lo"], est["hi"]))
    text = f"{est['mean']:.{digits}g} [{lo}, {hi}]"
    if sign and finite(est["lo"]) and finite(est["hi"]) and est["lo"] <= ref <= est["hi"]:
        bound = est["hi"] - ref if sign > 0 else ref - est["lo"]
        text += f"; no effect larger than {bound:.{digits}g} in the predicted direction was found"
    return text


def gate(verdict: str, checks: dict, rests_on: list[str]) -> str:
    """A claim resting on a failed manipulation check is invalid; on an untestable one, untestable."""
    failed = [c for c in rests_on if checks.get(c, {}).get("status") == "failed"]
    if failed:
        return f"invalid (manipulation check {', '.join(failed)} failed)"
    if any(checks.get(c, {}).get("status") != "passed" for c in rests_on):
        return "untestable here"
    return verdict


def claim(cid: str, text: str, verdict: str, evidence: str, rests_on: list[str], checks: dict, note: str = "") -> dict:
    return {
        "id": cid,
        "claim": text,
        "verdict": gate(verdict, checks, rests_on),
        "evidence": evidence,
        "rests_on": rests_on,
        "note": note,
    }


def decide_claims(summary: dict) -> list[dict]:
    """C1–C7 with verdicts by explicit rules on the end-of-DPO estimates of the primary loss.

    Directional claims are reproduced when the 95% interval excludes 0 on the predicted side, else not reproduced
    (with the bound the interval puts on the effect). C1 and C7 have parts: all parts = reproduced, some = partly.
    """
    loss = summary["primary_loss"]
    grid = {(v["sft_mode"], v["rejected"], v["loss"]): arm for arm, v in summary["arms"].items()}
    checks = summary["manipulation"]["checks"]
    a_far = grid.get(("chosen", "far", loss))
    end = summary["outcomes"].get(a_far, {}).get("end", {})
    con = summary["contrasts"].get(loss, {}).get("end", {})
    out = []

    parts = {m: (end.get(m), directional(end.get(m), +1)) for m in ("off_target_fall", "concentration_alt")}
    rejected = directional(end.get("rejected_fall"), +1)
    n_ok = sum(v == "reproduced" for _, v in parts.values())
    c1 = "untestable here" if rejected == "untestable here" else "not reproduced"
    if rejected == "reproduced" and n_ok:
        c1 = "reproduced" if n_ok == 2 else "partly"
    evidence = "; ".join(f"{m} {describe(e, +1)}" for m, (e, _) in parts.items())
    text = f"Off-policy DPO squeezes ({a_far}: off-target mass falls, concentration rises, y⁻ falls)"
    evidence += f"; rejected_fall {describe(end.get('rejected_fall'), +1)}"
    out.append(claim("C1", text, c1, evidence, [], checks))

    for cid, text, name, rests in (
        ("C2", "Squeezing is stronger for a y⁻ deep in the valley (far − near under A, off-target fall)",
         "far-near|A", ["M1"]),
        ("C3", "Extended SFT reduces squeezing ((A − B) under far, off-target fall)", "A-B|far", ["M2"]),
        ("C4", "The benefit of extended SFT is larger where the valley is deeper (interaction far − near)",
         "interaction", ["M1", "M2"]),
    ):  # fmt: skip
        est = con.get(name, {}).get("off_target_fall")
        out.append(claim(cid, text, directional(est, +1), describe(est, +1), rests, checks))
    # The paper's mechanism, not only its symptom: per nat that DPO pushes y⁻ down, a y⁻ lifted out of the valley
    # should drag the rest of the distribution down less. C3 alone could hold because y⁻ is pushed down less.
    est = con.get("A-B|far", {}).get("collateral_ratio")
    text = "Per nat of y⁻ decrease, extended SFT squeezes less ((A − B) under far of off-target fall / y⁻ fall)"
    out.append(claim("C8", text, directional(est, +1), describe(est, +1), ["M2"], checks))

    dose = summary["dose_response"]
    pooled, within = directional(dose.get("pooled"), -1), directional(dose.get("within_arm_mean"), -1)
    c5 = "reproduced" if within == "reproduced" else "partly" if pooled == "reproduced" else pooled
    text = "Dose–response: deeper start valley → larger off-target fall (Spearman ρ < 0)"
    evidence = f"pooled ρ {describe(dose.get('pooled'), -1)}; within-arm mean ρ "
    evidence += describe(dose.get("within_arm_mean"), -1)
    note = "reproduced needs the within-arm ρ below 0; the pooled ρ alone gives partly"
    out.append(claim("C5", text, c5, evidence, [], checks, note))

    chosen = end.get("chosen_change")
    text = f"y⁺ also falls under off-policy DPO ({a_far}: chosen change < 0)"
    out.append(claim("C6", text, directional(chosen, -1), describe(chosen, -1), [], checks))
    out.append(c7(summary, grid, loss, checks))
    return out


def c7(summary: dict, grid: dict, loss: str, checks: dict) -> dict:
    """Extended SFT improves held-out quality: B vs A (same y⁻) win rate, ours protocol, at the last checkpoint."""
    rates, found, evidence = summary["quality"]["win_rates"], [], []
    for rejected in ("far", "near"):
        arm, base = grid.get(("extended", rejected, loss)), grid.get(("chosen", rejected, loss))
        by_cp = rates.get(f"{arm}_vs_{base}", {})
        last = max((cp for cp in by_cp if cp != "epoch0"), key=lambda c: int(c.removeprefix("epoch")), default=None)
        if last:
            est = by_cp[last]["ours"]
            found.append(directional(est, +1, 0.5))
            evidence.append(f"{arm} vs {base} ({last}) {describe(est, +1, 0.5)}")
    n_ok = found.count("reproduced")
    verdict = "untestable here" if not found or "untestable here" in found else "not reproduced"
    if n_ok:
        verdict = "reproduced" if n_ok == len(found) else "partly"
    reference = ", ".join(f"{v:.2%} ({k})" for k, v in PAPER_WIN_RATES.items())
    text = "Extended SFT improves quality (B vs A win rate > 50%, ties as half, verifier)"
    note = f"paper: {reference} with a ChatGPT judge"
    return claim("C7", text, verdict, "; ".join(evidence) or "n/a", [], checks, note)


# --- the paper's claims against the study v2 arms (docs/study.md, "The paper's claims")

NEWSLETTER_WIN_RATE = (0.65, 0.69)  # a summary of the paper: extended-SFT DPO vs plain DPO, ChatGPT judge


def _comparison(summary: dict, name: str) -> dict:
    return summary.get("comparisons", {}).get(name, {})


def _matched(comp: dict, measure: str, metric: str = "off_target_fall") -> dict | None:
    return comp.get("matched", {}).get(measure, {}).get(metric)


def _both(raw: str, matched: str) -> str:
    """A remedy's verdict from its raw and its matched-margin verdict: both reproduced = reproduced; raw only =
    partly (it may squeeze less because it learns less)."""
    if raw == "reproduced":
        return "reproduced" if matched == "reproduced" else "partly"
    return raw


def paper_verdicts(summary: dict) -> list[dict]:
    """One row per claim of the paper (and the newsletter's win rate) with a verdict by the rules of `directional`
    on the study's seed-level estimates; a row whose arms did not run is untestable here."""
    rows = []

    def row(cid: str, text: str, verdict: str, evidence: str, note: str = "") -> None:
        rows.append({"id": cid, "claim": text, "verdict": verdict, "evidence": evidence, "note": note})

    sft = summary.get("sft_effect", {}).get("A_far", {})
    plus, gap = sft.get("yplus_change"), sft.get("gap")
    verdict = directional(plus, +1)
    if verdict == "reproduced":
        verdict = "reproduced" if directional(gap, +1) == "reproduced" else "partly"
    row("P1", "SFT on some prompts' y⁺ raises other prompts' responses, y⁺ more than y⁻ (held-out pairs, A's SFT "
        "vs the base model, per token)", verdict,
        f"held-out y⁺ {describe(plus, +1)}; y⁺ − y⁻ {describe(gap, +1)}")  # fmt: skip

    c1 = next((c for c in summary.get("claims", []) if c["id"] == "C1"), None)
    if c1:
        row("P2", "Off-policy DPO squeezes: off-target mass falls, concentration rises, y⁻ falls (A_far)",
            c1["verdict"], c1["evidence"])  # fmt: skip

    for cid, text, name in (
        ("P3", "Extended SFT reduces squeezing at equal steps (A_far − B_far, off-target fall)", "B_far vs A_far"),
        ("P4", "... at equal y⁺ exposure (Ah_far − B_far)", "B_far vs Ah_far"),
        ("P5", "On-policy DPO squeezes less than off-policy (A_far − A_far_onpolicy)", "A_far_onpolicy vs A_far"),
    ):
        comp = _comparison(summary, name)
        raw, margin = comp.get("raw", {}).get("off_target_fall"), _matched(comp, "heldout_margin")
        raw_verdict = directional(raw, +1)
        verdict = _both(raw_verdict, directional(margin, +1)) if comp else "untestable here"
        # The caveat belongs only to a claim seen at the end of DPO and lost at matched learning.
        note = (
            "raw only: the arm may squeeze less because it learns less"
            if (raw_verdict == "reproduced" and verdict == "partly")
            else ""
        )
        row(cid, text, verdict, f"at the end {describe(raw, +1)}; at matched held-out margin {describe(margin, +1)}",
            note)  # fmt: skip

    ipo = summary.get("outcomes", {}).get("A_far_ipo", {}).get("end", {}).get("off_target_fall")
    row("P6", "IPO squeezes too (A_far_ipo: off-target fall > 0)", directional(ipo, +1), describe(ipo, +1))

    quality = summary.get("arm_quality", {}).get("A_far", {})
    last = max((cp for cp in quality if cp != "epoch0"), key=lambda c: int(c[5:]), default=None)
    change = summary.get("quality_change", {}).get("A_far", {})
    rise, stop = change.get("repetition"), change.get("terminated")
    verdict = directional(rise, +1)
    if verdict == "reproduced" and directional(stop, -1) != "reproduced":
        verdict = "partly"
    row("P7", "Repeater phenomenon: after off-policy DPO long answers repeat themselves and stop ending (A_far, end − "
        "SFT model, per prompt)", verdict if last else "untestable here",
        f"repeated 3-gram share {describe(rise, +1)}; answers ending before the cap {describe(stop, -1)}")  # fmt: skip

    lo, hi = NEWSLETTER_WIN_RATE
    rate = (_comparison(summary, "B_far vs A_far").get("win_rate") or {}).get("ours")
    row("P8", f"Extended-SFT DPO wins {lo:.0%}–{hi:.0%} against plain DPO (here: B_far vs A_far, the verifier, ties "
        "half)", win_rate_verdict(rate), describe(rate, +1, 0.5),
        "the paper's judge is ChatGPT; here a verifier on checkable tasks: partly = better than 50% but below the "
        "quoted range")  # fmt: skip
    judged = summary.get("judge_win_rates") or {}
    rate = ((judged.get("comparisons", {}).get("B_far vs A_far") or {}).get("win_rate") or {}).get("ours")
    if rate is not None:
        model = judged.get("judge", {}).get("model") or judged.get("judge", {}).get("base_url")
        row("P8j", f"... judged by an LLM (here: {model}, both orders, ties and inconsistent orders half)",
            win_rate_verdict(rate), describe(rate, +1, 0.5),
            "python -m alignkit.study.judge; complete" if judged.get("complete") else
            "python -m alignkit.study.judge; incomplete: some pairs have no verdict yet")  # fmt: skip
    return rows


def win_rate_verdict(rate: dict | None) -> str:
    """The newsletter's win-rate claim against a seed-level estimate: reproduced when the interval excludes 50% and
    reaches the quoted range, partly when it only excludes 50%."""
    lo, hi = NEWSLETTER_WIN_RATE
    if rate is None or not (finite(rate["lo"]) and finite(rate["hi"])):
        return "untestable here"
    if rate["lo"] > 0.5 and rate["hi"] >= lo:
        return "reproduced" if rate["lo"] <= hi else "partly"
    return "partly" if rate["lo"] > 0.5 else "not reproduced"
