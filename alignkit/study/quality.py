"""Held-out quality: verifier accuracy per arm and checkpoint, paired win rates under two protocols, and the text
readings squeezing can move (alignkit.text_quality: termination, repetition, prompt echo, length).

Units are (seed, prompt); every interval has seeds as the unit, prompts resampled inside (`alignkit.stats.estimate`).
A win rate is reported as *ours* (ties count half: mean outcome) and as the paper's protocol
(ties dropped: wins / decisive pairs). With a verifier both presentation orders give the same verdict.
"""

from __future__ import annotations

import math
from collections import defaultdict

from alignkit.stats import Key, estimate, merge, ratio_of_means
from alignkit.study.records import Run
from alignkit.text_quality import copy_share, echo_share, ngram_index, repeated_ngram_share, terminated, word_count

PAPER_WIN_RATES = {"epoch2": 0.6518, "epoch4": 0.6928}  # extended-SFT DPO vs plain DPO, ChatGPT judge (paper)


def score_units(run: Run) -> dict[str, dict[Key, float]]:
    """{checkpoint: {(seed, prompt): verifier score}}; null scores (uncheckable) become NaN, i.e. missing."""
    out: dict[str, dict[Key, float]] = defaultdict(dict)
    for g in run.generations:
        out[g["checkpoint"]][(run.seed, g["prompt_id"])] = math.nan if g.get("score") is None else float(g["score"])
    return dict(out)


def text_units(run: Run, index: set[tuple[str, ...]] | None = None) -> dict[str, dict[str, dict[Key, float]]]:
    """{checkpoint: {reading: {(seed, prompt): value}}} from the answers alone. `terminated` uses the decoder's stop
    reason when the record has it (`cap_hit`), else whether the text ends a sentence; `echo` needs the record's
    prompt text (records written before it was stored have none: the reading is left out); `copying` needs `index`,
    the n-grams of the seed's training answers (`training_index`)."""
    out: dict[str, dict[str, dict[Key, float]]] = defaultdict(lambda: defaultdict(dict))
    for g in run.generations:
        key, text = (run.seed, g["prompt_id"]), g["response"]
        readings = out[g["checkpoint"]]
        readings["terminated"][key] = terminated(text, g.get("cap_hit"))
        readings["repetition"][key] = repeated_ngram_share(text)
        readings["words"][key] = float(word_count(text))
        if "prompt_text" in g:
            readings["echo"][key] = echo_share(text, g["prompt_text"])
        if index is not None:
            readings["copying"][key] = copy_share(text, index)
    return {cp: dict(r) for cp, r in out.items()}


def training_index(run: Run, answers: dict[str, str]) -> set[tuple[str, ...]] | None:
    """The n-grams of the y⁺ this run trained on (its training probes' ids looked up in `answers`, id -> y⁺ text);
    None when the run has no training probe ids there."""
    ids = {r["probe"].partition("/")[2] for r in run.probes if r.get("split") == "train"}
    texts = [answers[i] for i in sorted(ids) if i in answers]
    return ngram_index(texts) if texts else None


def pair_units(run: Run) -> dict[str, dict[str, dict[Key, float]]]:
    """{checkpoint: {reading: {(seed, prompt): value}}} from the held-out pairs scored at DPO's begin and end:

    yplus_logp      log π(y⁺|x) per token;
    yplus_change    its change since DPO's begin (epoch0), at the end only;
    ranking         1.0 when DPO's implicit reward ranks the pair right, (log π − log π_begin)(y⁺) >
                    (log π − log π_begin)(y⁻) summed over tokens, else 0.0 (½ on a tie); at the end only.
    """
    by_cp: dict[str, dict[str, dict]] = defaultdict(dict)
    for r in run.heldout_pairs:
        by_cp[r["checkpoint"]][r["id"]] = r
    out: dict[str, dict[str, dict[Key, float]]] = defaultdict(lambda: defaultdict(dict))
    begin = by_cp.get("epoch0", {})
    for cp, rows in by_cp.items():
        for pid, r in rows.items():
            key = (run.seed, pid)
            out[cp]["yplus_logp"][key] = float(r["chosen_logp_per_token"])
            if cp != "epoch0" and pid in begin:
                b = begin[pid]
                out[cp]["yplus_change"][key] = float(r["chosen_logp_per_token"] - b["chosen_logp_per_token"])
                reward = (r["chosen_logp"] - b["chosen_logp"]) - (r["rejected_logp"] - b["rejected_logp"])
                out[cp]["ranking"][key] = 1.0 if reward > 0 else 0.5 if reward == 0 else 0.0
    return {cp: dict(r) for cp, r in out.items()}


def text_readings(runs: dict[tuple[int, str], Run], n_boot: int) -> dict[str, dict[str, dict[str, dict]]]:
    """{arm: {checkpoint: {reading: estimate}}}: each reading's mean over (seed, prompt) with a seed-level interval."""
    parts: dict[str, dict[str, dict[str, list]]] = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for run in runs.values():
        for cp, readings in text_units(run).items():
            for name, units in readings.items():
                parts[run.arm][cp][name].append(units)
    return {
        arm: {
            cp: {name: estimate(merge(u), n_boot=n_boot) for name, u in sorted(r.items())}
            for cp, r in sorted(cps.items())
        }
        for arm, cps in sorted(parts.items())
    }


def win_units(x: dict[Key, float], base: dict[Key, float]) -> dict[Key, tuple[float, float, float]]:
    """Per (seed, prompt) both scored: (outcome, win, decisive) with outcome 1 win / ½ tie / 0 loss, so that
    ours = mean(outcome) and the paper's = Σ win / Σ decisive (ties dropped)."""
    out = {}
    for k in x.keys() & base.keys():
        a, b = x[k], base[k]
        if math.isfinite(a) and math.isfinite(b):
            out[k] = (1.0 if a > b else 0.5 if a == b else 0.0, float(a > b), float(a != b))
    return out


def win_rate(units: dict[Key, tuple[float, float, float]], n_boot: int) -> dict:
    """Both protocols with intervals over (seed, prompt), and the counts behind them."""
    outcome = {k: v[0] for k, v in units.items()}
    decisive = {k: (v[1], v[2]) for k, v in units.items()}
    wins = sum(v[1] for v in units.values())
    losses = sum(v[2] for v in units.values()) - wins
    return {
        "ours": estimate(outcome, n_boot=n_boot),
        "paper": estimate(decisive, ratio_of_means, n_boot),
        "wins": int(wins),
        "ties": len(units) - int(wins + losses),
        "losses": int(losses),
    }


def comparisons(grid: dict, loss: str) -> list[tuple[str, str]]:
    """(arm, base) pairs: every arm against plain DPO (A_near), and B against A for each (y⁻ kind, loss)."""
    baseline = grid.get(("chosen", "near", loss))
    pairs = [(arm, baseline) for arm in sorted(grid.values()) if baseline and arm != baseline]
    for (sft, rejected, arm_loss), arm in sorted(grid.items()):
        base = grid.get(("chosen", rejected, arm_loss))
        if sft == "extended" and base and (arm, base) not in pairs:
            pairs.append((arm, base))
    return pairs


def quality(runs: dict[tuple[int, str], Run], grid: dict, loss: str, n_boot: int) -> dict:
    scores: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for run in runs.values():
        for cp, units in score_units(run).items():
            scores[run.arm][cp].append(units)
    pooled = {arm: {cp: merge(parts) for cp, parts in cps.items()} for arm, cps in scores.items()}
    accuracy = {arm: {cp: estimate(u, n_boot=n_boot) for cp, u in sorted(cps.items())} for arm, cps in pooled.items()}
    wins = {}
    for arm, base in comparisons(grid, loss):
        common = sorted(pooled.get(arm, {}).keys() & pooled.get(base, {}).keys())
        rates = {cp: win_rate(win_units(pooled[arm][cp], pooled[base][cp]), n_boot) for cp in common}
        if rates:
            wins[f"{arm}_vs_{base}"] = rates
    return {
        "accuracy": accuracy,
        "win_rates": wins,
        "text": text_readings(runs, n_boot),
        "paper_reference": PAPER_WIN_RATES,
    }
