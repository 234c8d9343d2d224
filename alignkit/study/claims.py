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
