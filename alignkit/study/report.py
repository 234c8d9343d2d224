"""The squeezing study's report: `study.md` and one figure per claim, drawn from the summary alone.

Everything here reads the dict that `alignkit.study.analysis.analyze` returns (or summary.json loaded back), so a
report can be redrawn without the raw files; no number is computed here that the summary does not hold, except
formatting.
"""

from __future__ import annotations

import json
from pathlib import Path

from alignkit.study.figures import FIGURES, arm_order, finite_number, fmt
from alignkit.study.matched import MATCHED_METRICS as MATCHED_COLUMNS

# collateral_ratio's contrasts are differences of ratios of means (no interaction: a ratio of ratios means little).
CONTRAST_COLUMNS = ("off_target_fall", "chosen_change", "concentration_alt", "collateral_ratio")
OUTCOME_COLUMNS = (
    "off_target_fall",
    "chosen_change",
    "rejected_fall",
    "concentration_alt",
    "concentration_top",
    "collateral_ratio",
)
INTRO = (
    "Ren & Sutherland (ICLR 2025, *Learning Dynamics of LLM Finetuning*): off-policy DPO pushes down a y⁻ that the "
    "model already finds unlikely, and the push squeezes probability mass out of nearly every response into the "
    "argmax. Their fix, *extended SFT* (SFT on y⁺ and y⁻ before DPO), lifts y⁻ out of the valley first. Arms: "
    "y⁻ ∈ {near (the data's near miss), far (another task's answer)} × SFT ∈ {A = chosen-only, Ah = chosen-only for "
    "half the steps (B's y⁺ exposure), B = extended}, optionally with another loss, remedy or on-policy pairs "
    "(`_ipo`, `_dpop`, `_caldpo`, `_sftmix`, `_floor`, `_onpolicy`) or the pre-flight's act (`_act_*`)."
)
MANIPULATION_NOTE = (
    "Per-token log π (EOS excluded) of the training pairs' responses right after SFT (the DPO `begin` evaluation), "
    "paired per (seed, probe). The claims that rest on a check are only read when it passed."
)
CLAIMS_RULES = (
    "Verdicts by the rules in `alignkit.study.claims.decide_claims`: a directional claim is reproduced when its 95% "
    "interval excludes 0 on the predicted side, not reproduced otherwise (with the largest effect the interval "
    "allows); a claim that rests on a failed manipulation check is invalid. Numbers are at the end of DPO."
)
OUTCOMES_NOTE = (
    "Change from DPO begin, mean [95% interval] over (seed, probe); collateral_ratio = off-target fall per nat of y⁻ "
    "decrease (ratio of means over training probes, bootstrapped as a ratio)."
)
WIN_RATE_NOTE = (
    "Win rates, paired per (seed, prompt): *ours* counts a tie as half, (wins + ties/2)/n; the *paper's* drops ties, "
    "wins/(wins + losses). Scores come from the built-in verifier against the reference answer, so both "
    "presentation orders give the same verdict: position bias cannot arise. The paper's numbers are extended-SFT DPO "
    "vs plain DPO with a ChatGPT judge."
)
CLAIM_FIGURES = {  # claim -> the figure that shows it
    "C1": "fig_mechanism.png", "C2": "fig_mechanism.png", "C3": "fig_mechanism.png", "C4": "fig_mechanism.png",
    "C5": "fig_dose_response.png", "C6": "fig_dpo_families.png", "C7": "fig_quality.png",
}  # fmt: skip


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    """A markdown table; `|` inside a cell is escaped so it cannot split the row."""
    cells = [[str(c).replace("|", "\\|") for c in row] for row in [header, *rows]]
    lines = ["| " + " | ".join(cells[0]) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in cells[1:]]


# --- sections


def header_section(summary: dict) -> list[str]:
    lines = [
        "# Squeezing study: DPO's negative gradient and extended SFT",
        "",
        INTRO,
        "",
        f"Seeds: {', '.join(map(str, summary.get('seeds', [])))}. Intervals: {summary.get('level', 0.95):.0%} "
        f"percentile bootstrap ({summary.get('n_boot')} replicates) with seeds as the unit, units resampled inside "
        "each seed: (seed, probe) for probe metrics, (seed, prompt) for answers; comparisons are paired per unit. "
        f"Seeds per arm: {', '.join(f'{a} {len(s)}' for a, s in summary.get('arm_seeds', {}).items()) or 'n/a'}.",
    ]
    if summary.get("caveats"):
        lines += ["", "**Caveats:**", ""] + [f"- {c}" for c in summary["caveats"]]
    return lines


def finetuning_note(settings: dict) -> list[str]:
    """How the arms were fine-tuned, and what shows that it reached the paper's regime."""
    if not settings:
        return []
    if settings.get("use_lora"):
        how = (f"LoRA (rank {settings.get('lora_r')}, α {settings.get('lora_alpha')}, on "
               f"{', '.join(settings.get('lora_target_modules') or [])}) in both stages, so that every arm and seed "
               "fits the time budget on a CPU")  # fmt: skip
    else:
        how = "full fine-tuning in both stages"
    return [
        f"Fine-tuning: {how}. Whether it reaches the paper's regime is read off the results, not assumed: "
        "manipulation check M2 (extended SFT must lift y⁻ by ≥ 1 nat/token) and claim C1 (off-policy DPO on far y⁻ "
        "must squeeze). DPO runs at a constant learning rate over the same pairs for every epoch: repeated pushes "
        "on the same y⁻."
    ]


def settings_section(summary: dict) -> list[str]:
    exposure = summary.get("manipulation", {}).get("exposure", {})
    rows = []
    arms = arm_order(summary) + [a for a in summary.get("arm_seeds", {}) if a not in summary["arms"]]
    for arm in arms:
        s = summary.get("settings", {}).get(arm, {})
        info = summary["arms"].get(arm) or {k: s.get(k) for k in ("sft_mode", "rejected", "loss")}
        info["seeds"] = summary.get("arm_seeds", {}).get(arm, info.get("seeds", []))
        sft, dpo = s.get("sft") or {}, s.get("dpo") or {}
        exp = exposure.get(info["sft_mode"], {})
        rows.append(
            [
                arm,
                info["sft_mode"],
                info["rejected"],
                info["loss"] + (f" ({s['variant']})" if s.get("variant") in ("onpolicy", "sftmix", "floor") else ""),
                ", ".join(map(str, info["seeds"])),
                sft.get("steps", ""),
                _num(sft.get("y_plus_exposure", exp.get("y_plus"))),
                _num(sft.get("y_minus_exposure", exp.get("y_minus"))),
                dpo.get("steps", ""),
                dpo.get("epochs", ""),
                dpo.get("pairs", ""),
            ]
        )
    lines = ["## Settings and timing", ""]
    lines += table(
        [
            "arm",
            "SFT",
            "y⁻",
            "loss",
            "seeds",
            "SFT steps",
            "y⁺ exposure",
            "y⁻ exposure",
            "DPO steps",
            "epochs",
            "pairs",
        ],
        rows,
    )
    timing = summary.get("timing", {})
    trows = [
        [seed, f"{t['total_s']:.0f}"] + [_num(t["runs"].get(a, {}).get("seconds"), ".0f") for a in arms]
        for seed, t in sorted(timing.get("per_seed", {}).items())
    ]
    lines += ["", f"Time (seconds, whole runs; total {timing.get('total_s', 0):.0f} s):", ""]
    lines += table(["seed", "total", *arms], trows)
    first = next(iter(summary.get("settings", {}).values()), {})
    lines += ["", *finetuning_note(first.get("settings") or {})]
    if first.get("settings"):
        lines += ["", "Run settings (lowest seed, first arm):", "", "```json", json.dumps(first["settings"])]
        lines += ["```"]
    return lines


def _num(x, spec: str = ".3g") -> str:
    return format(x, spec) if finite_number(x) else "n/a"


def manipulation_section(summary: dict) -> list[str]:
    man = summary.get("manipulation", {})
    rows = []
    for cid, check in man.get("checks", {}).items():
        rows.append([cid, check["claim"], fmt(check.get("estimate")), f"{check['threshold']:+g}", check["status"]])
    lines = ["## Manipulation checks", "", MANIPULATION_NOTE, ""]
    lines += table(["check", "what must hold", "mean [95% interval] (nats/token)", "threshold", "status"], rows)
    m2_near = man.get("checks", {}).get("M2", {}).get("near")
    yplus = man.get("y_plus_change", {})
    lines += [
        "",
        f"- Extended SFT's lift of NEAR's y⁻ (B_near − A_near, reported, not a check): {fmt(m2_near)}.",
        f"- y⁺ after extended vs chosen-only SFT (B − A of chosen): near {fmt(yplus.get('near'))}, "
        f"far {fmt(yplus.get('far'))}.",
    ]
    for mode, exp in sorted(man.get("exposure", {}).items()):
        lines.append(
            f"- {mode} SFT shows each pair's y⁺ {_num(exp.get('y_plus'))}× and y⁻ {_num(exp.get('y_minus'))}×."
        )
    levels = man.get("levels", {})
    rows = [
        [a, fmt(levels.get(a, {}).get("chosen")), fmt(levels.get(a, {}).get("rejected"))]
        for a in arm_order(summary) + [a for a in levels if a not in summary.get("arms", {})]
    ]
    lines += ["", "Levels at DPO begin (nats/token):", ""]
    lines += table(["arm", "log π(y⁺)/token", "log π(y⁻)/token"], rows)
    return lines + ["", "![manipulation](fig_manipulation.png)"]


def claims_section(summary: dict) -> list[str]:
    claims = summary.get("claims", [])
    rows = [[c["id"], c["claim"], c["verdict"], c["evidence"], ", ".join(c["rests_on"]) or "—"] for c in claims]
    return ["## Claims", "", CLAIMS_RULES, ""] + table(
        ["claim", "statement", "verdict", "mean [95% interval]", "rests on"], rows
    )


def claim_sections(summary: dict) -> list[str]:
    lines = []
    for c in summary.get("claims", []):
        lines += ["", f"### {c['id']}: {c['claim']}", "", f"**{c['verdict']}**: {c['evidence']}."]
        if c.get("note"):
            lines += ["", c["note"] + "."]
        lines += ["", f"![{c['id']}]({CLAIM_FIGURES.get(c['id'], 'fig_mechanism.png')})"]
        if c["id"] == "C1":
            lines += [
                "",
                "Families over DPO (mean Δ per-token log π since begin):",
                "",
                "![families](fig_dpo_families.png)",
            ]
    return ["## Claims one by one", *lines]


def outcomes_section(summary: dict) -> list[str]:
    lines = ["## Outcomes per arm", "", OUTCOMES_NOTE]
    outcomes = summary.get("outcomes", {})
    cps = sorted({cp for arm in outcomes.values() for cp in arm}, key=lambda c: (c == "end", c))
    for cp in cps:
        rows = [
            [a] + [fmt(outcomes.get(a, {}).get(cp, {}).get(m)) for m in OUTCOME_COLUMNS] for a in arm_order(summary)
        ]
        lines += ["", f"At `{cp}`:", ""] + table(["arm", *OUTCOME_COLUMNS], rows)
    for loss, by_cp in sorted(summary.get("contrasts", {}).items()):
        for cp, by_name in sorted(by_cp.items(), key=lambda kv: (kv[0] == "end", kv[0])):
            rows = [[name] + [fmt(ms.get(m)) for m in CONTRAST_COLUMNS] for name, ms in by_name.items()]
            lines += ["", f"Paired contrasts ({loss}, `{cp}`):", ""]
            lines += table(["contrast", *CONTRAST_COLUMNS], rows)
    return lines


MATCHED_NOTE = (
    "Chosen-only (A) minus extended (B) SFT, each read where it had learned the same amount in the same seed, not at "
    "the same step (alignkit/study/matched.py): at the held-out margin (mean over held-out probes of the change of "
    "log π(y⁺)/token − log π(y⁻)/token since DPO began) or at the y⁻ fall (training probes) that both arms reached, "
    "interpolated linearly between evaluations. Positive = A more. Seed-level 95% intervals; *at* gives each seed's "
    "matched level and the two arms' positions in evaluations since begin (1 = the first mid-stage evaluation)."
)


def matched_section(summary: dict) -> list[str]:
    """A − B at matched learning (alignkit/study/matched.py); empty without it."""
    matched = summary.get("matched", {})
    if not matched:
        return []
    rows = []
    for contrast, by_measure in matched.items():
        for measure, entry in by_measure.items():
            matching = entry["matching"].items()
            at = "; ".join(f"s{seed}: {m['level']:.3g} at {m['t_x']:.2f} / {m['t_y']:.2f}" for seed, m in matching)
            rows.append([contrast, measure, *(fmt(entry.get(m)) for m in MATCHED_COLUMNS), at])
    header = ["contrast", "matched on", *MATCHED_COLUMNS, "at"]
    return ["## At matched learning", "", MATCHED_NOTE, "", *table(header, rows)]


def quality_section(summary: dict) -> list[str]:
    q = summary.get("quality", {})
    acc = q.get("accuracy", {})
    cps = sorted({cp for arm in acc.values() for cp in arm})
    rows = [[a] + [fmt(acc.get(a, {}).get(cp)) for cp in cps] for a in arm_order(summary)]
    lines = ["## Quality", "", "Held-out verifier accuracy (mean score over (seed, prompt); epoch0 = after SFT):", ""]
    lines += table(["arm", *cps], rows)
    rows = []
    for name, by_cp in q.get("win_rates", {}).items():
        for cp, w in sorted(by_cp.items()):
            ref = q.get("paper_reference", {}).get(cp)
            rows.append(
                [
                    name.replace("_vs_", " vs "),
                    cp,
                    fmt(w["ours"]),
                    fmt(w["paper"]),
                    f"{w['wins']}/{w['ties']}/{w['losses']}",
                    f"{ref:.2%}" if ref else "—",
                ]
            )
    lines += ["", WIN_RATE_NOTE, ""]
    lines += table(["comparison", "checkpoint", "ours", "paper's protocol", "W/T/L", "paper (ChatGPT judge)"], rows)
    return lines + ["", "![quality](fig_quality.png)", "", *text_section(q.get("text", {}))]


TEXT_NOTE = (
    "What the answers look like (alignkit/text_quality.py), mean over (seed, prompt) with a seed-level 95% interval: "
    "*ended*, the share that end before the token cap (from the decoder's stop reason when recorded, else: the text "
    "ends a sentence); *repetition*, the share of word 3-grams that repeat an earlier one of the same answer (the "
    "paper's repeater phenomenon); *echo*, the share of word 4-grams copied from the prompt (only where the answers' "
    "records carry the prompt); *words*, the mean length."
)


def text_section(text: dict) -> list[str]:
    """One row per (arm, checkpoint): the text readings of the held-out answers; empty when there are none."""
    if not text:
        return []
    names = [
        n
        for n in ("terminated", "repetition", "echo", "words")
        if any(n in r for c in text.values() for r in c.values())
    ]
    heads = {"terminated": "ended", "repetition": "repetition", "echo": "echo", "words": "words"}
    rows = [[arm, cp] + [fmt(r.get(n), 2) for n in names] for arm, cps in text.items() for cp, r in cps.items()]
    return [
        "Text of the held-out answers:",
        "",
        TEXT_NOTE,
        "",
        *table(["arm", "checkpoint", *(heads[n] for n in names)], rows),
    ]


ACT_NOTE = (
    "Each `_act_` arm ran the recipe's `preflight: act` (alignkit.preflight.recipe) and is compared with the same "
    "arm without it, which is what `preflight: report` gives (nothing changed). Differences are act − baseline, "
    "paired per (seed, probe) or (seed, prompt), on the seeds both finished. A negative off-target difference means "
    "act reduced the squeezing. *at risk* / *not at risk*: the training probes of the pairs the pre-flight marked / "
    "did not mark; *held-out*: the held-out probes."
)


def act_section(summary: dict) -> list[str]:
    """The pre-flight act arms against their baselines (alignkit/study/act.py); empty without act arms."""
    if not summary.get("act"):
        return []
    lines = ["## Pre-flight act arms", "", ACT_NOTE]
    for arm, a in summary["act"].items():
        lines += ["", f"### {arm} vs {a['baseline']} (preflight_action {a['action']}; seeds {a['seeds']})", ""]
        rows = [[seed, p["scored_under"], f"{p['at_risk']}/{p['scored']}", p["dpo_pairs"],
                 f"{p['dpo_pair_updates']} ({p['baseline_pair_updates']})",
                 f"{p['dpo_steps']} ({p['baseline_dpo_steps']})"] for seed, p in a["per_seed"].items()]  # fmt: skip
        lines += table(["seed", "scored under", "at risk", "DPO pairs", "pair-gradients (baseline)",
                        "DPO steps (baseline)"], rows)  # fmt: skip
        lv = a["levels"]
        lines += ["", "Levels at DPO begin, act − baseline (nats/token): "
                  f"y⁻ at risk {fmt(lv['rejected']['at_risk'])}, not at risk {fmt(lv['rejected']['not_at_risk'])}; "
                  f"y⁺ at risk {fmt(lv['chosen']['at_risk'])}, not at risk {fmt(lv['chosen']['not_at_risk'])}.",
                  ""]  # fmt: skip
        rows = [[cp, fmt(o["act"]), fmt(o["baseline"]), fmt(o["difference"]["all"]), fmt(o["difference"]["at_risk"]),
                 fmt(o["difference"]["not_at_risk"]), fmt(o["difference"]["heldout"]), o["verdict"]]
                for cp, o in a["off_target_fall"].items()]  # fmt: skip
        lines += ["Off-target fall (nats/token since DPO begin):", ""]
        lines += table(["checkpoint", arm, a["baseline"], "difference", "at risk", "not at risk", "held-out",
                        "act's effect"], rows)  # fmt: skip
        rows = [[cp, fmt(q["act"]), fmt(q["baseline"]), fmt(q["difference"]), fmt(q["win_rate"]["ours"])]
                for cp, q in a["accuracy"].items()]  # fmt: skip
        lines += ["", "Held-out verifier accuracy:", ""]
        lines += table(["checkpoint", arm, a["baseline"], "difference", "win rate (ties ½)"], rows)
    return lines + ["", "![act arms](fig_act.png)"]


def recompute_section(summary: dict) -> list[str]:
    return [
        "## How to recompute",
        "",
        "Every number above is in `summary.json`, computed from `runs/s<seed>/<arm>.json`, "
        "`runs/s<seed>/<arm>.probe_records.jsonl.gz` and `runs/s<seed>/<arm>.generations.jsonl.gz` by",
        "",
        "```",
        f"python recipes/squeezing_study.py --study_dir {summary.get('study_dir', '<study_dir>')} --analyze",
        "```",
    ]


def write_report(study_dir: str | Path, summary: dict) -> Path:
    """Write `<study_dir>/study.md` and its figures `<study_dir>/fig_*.png`; return the markdown's path."""
    study_dir = Path(study_dir)
    for name, plot in FIGURES.items():
        plot(summary, study_dir / name)
    sections = (
        header_section, settings_section, paper_claims_section, comparisons_section, judge_section,
        arm_quality_section, sft_section, manipulation_section, claims_section, claim_sections, outcomes_section,
        matched_section, quality_section, act_section, recompute_section,
    )  # fmt: skip
    lines: list[str] = []
    for section in sections:
        lines += [*section(summary), ""]
    path = study_dir / "study.md"
    path.write_text("\n".join(lines))
    return path


# --- study v2: the paper's claims, each arm against its baseline, quality per arm (alignkit/study/comparisons.py)

PAPER_CLAIMS_NOTE = (
    "One row per claim of the paper (and the newsletter's win rate), decided by `alignkit.study.claims."
    "paper_verdicts`: reproduced when the 95% interval (seeds as the unit, probes or prompts resampled inside) lies "
    "on the predicted side; *partly* where the rule in the row's note says so; not reproduced otherwise, with the "
    "largest effect the interval allows."
)
COMPARISON_NOTE = (
    "Each arm against the arm it is compared with (a remedy, IPO or on-policy: the same SFT without it; Ah and B: "
    "A; B against Ah: extended SFT at equal y⁺ exposure). Squeezing columns are base − arm of the off-target fall "
    "(positive: the arm squeezes less), at DPO's end and at the level of held-out margin (or y⁻ fall) both reached "
    "in the same seed (alignkit/study/matched.py). *learned* is each arm's held-out margin at the end (arm / base). "
    "Quality columns are arm − base at the end over the held-out prompts, paired per (seed, prompt); *win* is the "
    "verifier's win rate of the arm against the base, ties half. *time* is the arm's preference-training time over "
    "the base's (probes and held-out answers excluded; on-policy includes its sampling). Seed-level 95% intervals."
)
QUALITY_NOTE = (
    "At each arm's last evaluation (epoch0 rows: the SFT model DPO started from, the same for every arm from that "
    "SFT), over the held-out prompts (never trained on), answers greedy and capped at the profile's token limit. "
    "*ended*: share of answers with EOS before the cap (the decoder's stop reason); *repeat*: repeated word 3-gram "
    "share; *echo*: share of 4-grams from the prompt; *copy*: share of 8-grams from the seed's training answers; "
    "*acc*: the verifier; *y⁺ Δ*: held-out y⁺ log-likelihood per token since DPO began; *ranked*: held-out pairs "
    "whose DPO implicit reward ranks y⁺ above the data's y⁻. Mean [seed-level 95% interval]."
)
QUALITY_COLUMNS = (
    ("terminated", "ended"), ("repetition", "repeat"), ("echo", "echo"), ("copying", "copy"), ("words", "words"),
    ("accuracy", "acc"), ("yplus_change", "y⁺ Δ"), ("ranking", "ranked"),
)  # fmt: skip


def paper_claims_section(summary: dict) -> list[str]:
    rows = [[c["id"], c["claim"], c["verdict"], c["evidence"], c.get("note") or ""]
            for c in summary.get("paper_claims", [])]  # fmt: skip
    if not rows:
        return []
    lines = ["## The paper's claims", "", PAPER_CLAIMS_NOTE, ""]
    return lines + table(["", "claim", "verdict", "evidence", "note"], rows)


def _matched_fall(comp: dict, measure: str) -> str:
    return fmt(comp.get("matched", {}).get(measure, {}).get("off_target_fall"))


def comparisons_section(summary: dict) -> list[str]:
    comps = summary.get("comparisons", {})
    if not comps:
        return []
    rows = []
    for name, c in comps.items():
        learned = c.get("learned", {})
        margin = [learned.get(who, {}).get("heldout_margin") for who in (c["arm"], c["base"])]
        learned_text = " / ".join(_num(m["mean"]) if m and finite_number(m.get("mean")) else "n/a" for m in margin)
        ratio = c.get("seconds", {}).get("ratio")
        rows.append([
            name, str(len(c["seeds"])), fmt(c["raw"].get("off_target_fall")), _matched_fall(c, "heldout_margin"),
            _matched_fall(c, "rejected_fall"), learned_text, fmt(c["quality"].get("terminated")),
            fmt(c["quality"].get("repetition")), fmt(c["quality"].get("ranking")),
            fmt((c.get("win_rate") or {}).get("ours")), fmt(ratio, 2),
        ])  # fmt: skip
    header = ["arm vs base", "seeds", "off-target fall, base − arm: end", "at matched margin", "at matched y⁻ fall",
              "learned (margin)", "ended Δ", "repeat Δ", "ranked Δ", "win", "time ×"]  # fmt: skip
    return ["## Each arm against its baseline", "", COMPARISON_NOTE, "", *table(header, rows),
            "", "![squeezing vs margin](fig_squeeze_vs_margin.png)"]  # fmt: skip


JUDGE_NOTE = (
    "An LLM judge's win rate of each arm against its base (`python -m alignkit.study.judge`, through the win-rate "
    "evaluator): the same held-out answers as the verifier's *win* column, judged in both orders; per prompt 1, ½ "
    "(tie or orders that disagree) or 0. *paper's protocol*: ties left out. Seed-level 95% intervals."
)


def judge_section(summary: dict) -> list[str]:
    judged = summary.get("judge_win_rates")
    if not judged:
        return []
    rows = []
    for name, c in judged.get("comparisons", {}).items():
        w = c.get("win_rate") or {}
        counts = f"{w.get('wins', 0)}/{w.get('ties', 0)}/{w.get('losses', 0)}" if w else "n/a"
        rows.append([name, str(len(c.get("seeds", []))), fmt(w.get("ours")), fmt(w.get("paper")), counts,
                     "yes" if c.get("complete") else "no: rerun the judge"])  # fmt: skip
    who = judged.get("judge", {})
    lines = ["## LLM judge", "", JUDGE_NOTE, "", f"Judge: `{who.get('model')}` at `{who.get('base_url')}`.", ""]
    return lines + table(["arm vs base", "seeds", "win", "paper's protocol", "W/T/L", "complete"], rows)


def arm_quality_section(summary: dict) -> list[str]:
    q = summary.get("arm_quality", {})
    if not q:
        return []
    seeds = summary.get("arm_seeds", {})
    rows, starts = [], {}
    for arm, cps in q.items():
        last = max(cps, key=lambda c: int(c[5:]))
        rows.append([arm, last, str(len(seeds.get(arm, [])))] + [fmt(cps[last].get(k)) for k, _ in QUALITY_COLUMNS])
        sft = (summary.get("settings", {}).get(arm) or {}).get("sft", {}).get("steps")
        starts.setdefault(arm.split("_")[0] + "_" + arm.split("_")[1], (arm, sft))
    for key, (arm, _) in starts.items():
        cps = q[arm]
        if "epoch0" in cps:
            rows.append([f"SFT model of {key}", "epoch0", str(len(seeds.get(arm, [])))]
                        + [fmt(cps["epoch0"].get(k)) for k, _ in QUALITY_COLUMNS])  # fmt: skip
    header = ["arm", "at", "seeds", *(label for _, label in QUALITY_COLUMNS)]
    return ["## Quality per arm", "", QUALITY_NOTE, "", *table(header, rows), "", "![quality](fig_quality_arms.png)"]


SFT_NOTE = (
    "The SFT model minus the base model on the held-out pairs (prompts no stage trained on), per token, paired per "
    "(seed, prompt): how SFT on the training pairs moved other prompts' responses."
)


def sft_section(summary: dict) -> list[str]:
    effect = summary.get("sft_effect", {})
    if not effect:
        return []
    seen, rows = set(), []
    for arm, e in effect.items():
        key = "_".join(arm.split("_")[:2])
        if key in seen:
            continue
        seen.add(key)
        rows.append([key, fmt(e.get("yplus_change")), fmt(e.get("yminus_change")), fmt(e.get("gap"))])
    return ["## The SFT stage", "", SFT_NOTE, "", *table(["SFT of", "held-out y⁺", "held-out y⁻", "y⁺ − y⁻"], rows)]
