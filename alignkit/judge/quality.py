"""How good is a judge? Its verdicts on a labelled set of pairs where exactly one response is correct.

The set is built from the built-in data by `build_labelled_pairs` (deterministic; shipped as
`alignkit/judge/judge_quality_pairs.jsonl`, which a test keeps equal to the builder's output): for each checkable
prompt a correct answer and a near miss, with `alignkit.data.verifier.verify` confirming that the one scores 1 and the
other 0. Every pair is asked in both orders. The metrics are AlpacaEval's annotator-table columns, as pure functions:

* agreement: share of judgments naming the correct response (a tie counts half);
* P(first): share of judgments naming the response shown first (a tie counts half); 0.5 is unbiased;
* self-consistency: share of pairs whose two judgments name the same response (or both tie);
* P(longer): share of judgments naming the longer response, over pairs of unequal length (a tie counts half);
* ties: share of judgments that are ties;

plus the pair-level accuracy after combining both orders the way the win rate does (text: both orders must agree;
logprobs: mean log-odds against a margin), which is what a win rate computed with this judge inherits.
"""

from __future__ import annotations

import os
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from alignkit.data.builtin import builtin_rows
from alignkit.data.verifier import verify
from alignkit.errors import AlignkitError
from alignkit.jsonl import location, read_jsonl, write_jsonl_atomic
from alignkit.judge.client import Comparison, Judgment
from alignkit.judge.config import JudgeConfig
from alignkit.judge.evaluate import ask_judge
from alignkit.judge.metrics import combine_log_odds, combine_orders
from alignkit.judge.parse import load_template

SHIPPED_PAIRS = Path(__file__).parent / "judge_quality_pairs.jsonl"
N_PAIRS = 240
SEED = 20261130


def _text(messages: list[dict]) -> str:
    return messages[0]["content"]


def build_labelled_pairs(n_pairs: int = N_PAIRS, seed: int = SEED) -> list[dict]:
    """Deterministic labelled pairs: one correct and one wrong response per checkable built-in prompt, tasks taken in
    turn so that each is represented, the correct one placed first or second at random. A wrong response is the
    row's near miss (or its rephrase), so both responses have the same form and only correctness separates them."""
    rng = random.Random(seed)
    by_task: dict[str, list[dict]] = {}
    for row in builtin_rows():
        if row["reference_answer"]:
            by_task.setdefault(row["task"], []).append(row)
    queues = [rows[:] for _, rows in sorted(by_task.items())]
    for q in queues:
        rng.shuffle(q)
    pairs: list[dict] = []
    while len(pairs) < n_pairs and any(queues):
        for q in queues:
            if not q or len(pairs) == n_pairs:
                continue
            row = q.pop()
            correct = _text(row[rng.choice(["chosen", "chosen_rephrase"])])
            wrong = _text(row[rng.choice(["rejected", "rejected_rephrase"])])
            if verify(correct, row) != 1.0 or verify(wrong, row) != 0.0:
                continue  # the verifier must be certain: exactly one response correct
            label = rng.choice([1, 2])
            first, second = (correct, wrong) if label == 1 else (wrong, correct)
            pairs.append(
                {
                    "id": f"jq-{len(pairs):04d}",
                    "source_id": row["id"],
                    "task": row["task"],
                    "prompt": _text(row["prompt"]),
                    "reference_answer": row["reference_answer"],
                    "response_1": first,
                    "response_2": second,
                    "label": label,
                }
            )
    return pairs


def write_labelled_pairs(path: str | os.PathLike, pairs: Sequence[dict]) -> None:
    write_jsonl_atomic(path, pairs)


def read_labelled_pairs(path: str | os.PathLike = SHIPPED_PAIRS) -> list[dict]:
    """The pairs of a labelled file; a bad row raises naming file:line and the field."""
    pairs = []
    for line, row in read_jsonl(path):
        for name in ("prompt", "response_1", "response_2"):
            if not isinstance(row.get(name), str):
                raise AlignkitError(f"{location(path, line, name)} must be a string, got {row.get(name)!r}.")
        if row.get("label") not in (1, 2):
            raise AlignkitError(
                f"{location(path, line, 'label')} must be 1 or 2 (the correct response), got {row.get('label')!r}."
            )
        pairs.append(row)
    if not pairs:
        raise AlignkitError(f"{path}: no labelled pairs.")
    return pairs


# --- metrics: pure functions of (label, shown first, preferred) records


def preferred_response(verdict: str | None, shown_first: int) -> int | None:
    """1 or 2 for the response a verdict names (given which response was shown as A), 0 for a tie, None unparsed.

    >>> preferred_response("A", 2), preferred_response("B", 2), preferred_response("tie", 1)
    (2, 1, 0)
    """
    if verdict is None:
        return None
    if verdict == "tie":
        return 0
    other = 3 - shown_first
    return shown_first if verdict == "A" else other


def _credit(preferred: int, target: int) -> float:
    return 0.5 if preferred == 0 else float(preferred == target)


def _mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else float("nan")


def agreement(labels: Sequence[int], preferred: Sequence[int]) -> float:
    """Mean credit for naming the labelled response: 1 right, 0.5 tie, 0 wrong.

    >>> agreement([1, 1, 2, 2], [1, 0, 1, 2])
    0.625
    """
    return _mean([_credit(p, y) for y, p in zip(labels, preferred)])


def p_first(shown_first: Sequence[int], preferred: Sequence[int]) -> float:
    """Share of judgments naming the response shown first (ties half): a judge that always says A gets 1.0.

    >>> p_first([1, 2, 1, 2], [1, 2, 2, 0])
    0.625
    """
    return _mean([_credit(p, f) for f, p in zip(shown_first, preferred)])


def self_consistency(first_order: Sequence[int], second_order: Sequence[int]) -> float:
    """Share of pairs whose two judgments (one per order) name the same response, or both tie.

    >>> self_consistency([1, 2, 0, 1], [1, 1, 0, 0])
    0.5
    """
    return _mean([float(a == b) for a, b in zip(first_order, second_order)])


def p_longer(lengths: Sequence[tuple[int, int]], preferred: Sequence[int]) -> float:
    """Share of judgments naming the longer response (ties half), over pairs whose responses differ in length.

    >>> p_longer([(10, 20), (30, 5), (7, 7), (3, 9)], [2, 2, 1, 0])
    0.5
    """
    credits = [_credit(p, 1 if a > b else 2) for (a, b), p in zip(lengths, preferred) if a != b]
    return _mean(credits)


def tie_share(preferred: Sequence[int]) -> float:
    """Share of judgments that are ties.

    >>> tie_share([0, 1, 2, 0])
    0.5
    """
    return _mean([float(p == 0) for p in preferred])


@dataclass
class PairJudgments:
    label: int  # the correct response, 1 or 2
    lengths: tuple[int, int]
    first: Judgment  # response 1 shown as A
    second: Judgment  # response 2 shown as A


def quality_row(records: Sequence[PairJudgments], judge: JudgeConfig) -> dict:
    """The annotator-table row of one judge (and mode) from its judgments on the labelled pairs."""
    labels, shown, prefs, lengths = [], [], [], []
    order_1, order_2, pair_credit, pair_ties = [], [], [], []
    unparsed = 0
    for r in records:
        got = []
        for j, first in ((r.first, 1), (r.second, 2)):
            p = preferred_response(j.verdict, first) if j.status == "ok" else None
            got.append(p)
            if p is None:
                unparsed += 1
                continue
            labels.append(r.label)
            shown.append(first)
            prefs.append(p)
            lengths.append(r.lengths)
        if None in got:
            continue
        order_1.append(got[0])
        order_2.append(got[1])
        # The pair's outcome for response 1 as the win rate would compute it ("candidate" = response 1).
        if judge.mode == "logprobs":
            score, _ = combine_log_odds(r.first.logit_a, r.second.logit_a, judge.logprob_margin)
        else:
            score, _ = combine_orders(r.first.verdict, r.second.verdict)
        outcome = 0 if score == 0.5 else 1 if score == 1.0 else 2
        pair_credit.append(_credit(outcome, r.label))
        pair_ties.append(float(outcome == 0))
    return {
        "judge": judge.model,
        "mode": judge.mode,
        "pairs": len(records),
        "agreement": agreement(labels, prefs),
        "pair_accuracy": _mean(pair_credit),
        "p_first": p_first(shown, prefs),
        "self_consistency": self_consistency(order_1, order_2),
        "p_longer": p_longer(lengths, prefs),
        "ties": tie_share(prefs),
        "pair_ties": _mean(pair_ties),
        "unparsed": unparsed,
    }


def margin_sweep(records: Sequence[PairJudgments], margins: Sequence[float]) -> list[dict]:
    """Logprobs mode: pair accuracy (ties half), decided pairs and their accuracy at each abstention margin.

    >>> rows = margin_sweep([PairJudgments(1, (5, 5), Judgment("", "ok", "A", logit_a=2.1),
    ...                                    Judgment("", "ok", "A", logit_a=0.9))], [0.5, 1.0])
    >>> [(r["margin"], r["pair_accuracy"], r["decided"]) for r in rows]
    [(0.5, 1.0, 1), (1.0, 0.5, 0)]
    """
    usable = [r for r in records if r.first.logit_a is not None and r.second.logit_a is not None]
    out = []
    for margin in margins:
        credits, decided = [], []
        for r in usable:
            score, _ = combine_log_odds(r.first.logit_a, r.second.logit_a, margin)
            outcome = 0 if score == 0.5 else 1 if score == 1.0 else 2
            credits.append(_credit(outcome, r.label))
            if outcome:
                decided.append(float(outcome == r.label))
        out.append(
            {"margin": margin, "pair_accuracy": _mean(credits), "decided": len(decided),
             "decided_accuracy": _mean(decided), "pairs": len(usable)}
        )  # fmt: skip
    return out


def sweep_table(rows: Sequence[dict]) -> str:
    lines = [
        "| margin (nats) | pairs decided | accuracy of decided pairs | pair accuracy (ties half) |",
        "|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['margin']:g} | {r['decided']} of {r['pairs']} | {r['decided_accuracy']:.3f} | "
            f"{r['pair_accuracy']:.3f} |"
        )
    return "\n".join(lines)


COLUMNS = [
    ("judge", "judge"), ("mode", "mode"), ("pairs", "pairs"), ("agreement", "agreement with label"),
    ("pair_accuracy", "pair accuracy (both orders combined)"), ("p_first", "P(first)"),
    ("self_consistency", "self-consistency"), ("p_longer", "P(prefer longer)"), ("ties", "ties"),
    ("pair_ties", "pair ties"), ("unparsed", "unparsed judgments"),
]  # fmt: skip


def quality_table(rows: Sequence[dict]) -> str:
    """Markdown table, one row per judge and mode."""
    lines = ["| " + " | ".join(title for _, title in COLUMNS) + " |", "|---" * len(COLUMNS) + "|"]
    for row in rows:
        cells = [f"{row[k]:.3f}" if isinstance(row[k], float) else str(row[k]) for k, _ in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def measure_judge(
    judge: JudgeConfig, pairs: Sequence[dict], output_dir: str | os.PathLike, progress: bool = True
) -> tuple[dict, list[PairJudgments]]:
    """Ask `judge` every labelled pair in both orders (through its cache in output_dir); its table row and records."""
    if judge.is_verifier:
        raise AlignkitError("--judge verifier made the labels of the judge-quality set; measure an LLM judge instead.")
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    comparisons = []
    for p in pairs:
        comparisons.append(Comparison(p["prompt"], p["response_1"], p["response_2"]))
        comparisons.append(Comparison(p["prompt"], p["response_2"], p["response_1"]))
    judgments, stats = ask_judge(judge, load_template(judge.template), comparisons, out, progress)
    records = [
        PairJudgments(p["label"], (len(p["response_1"]), len(p["response_2"])), judgments[2 * i], judgments[2 * i + 1])
        for i, p in enumerate(pairs)
    ]
    return {**quality_row(records, judge), "requests": stats.requests, "seconds": round(stats.seconds, 1)}, records
