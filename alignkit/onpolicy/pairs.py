"""From ranked samples to preference pairs, and the round files that make a crashed run resumable.

A round folder holds `samples.jsonl` (the prompts and their k sampled responses; written once generation is done) and
`pairs.jsonl` (the same lines plus the ranker's scores and which responses became chosen and rejected; written once
ranking is done). Both are written with `alignkit.jsonl.write_jsonl_atomic` (a temporary name, then a rename), so a
file that exists is complete.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from alignkit.sequences import Prompt

PAIR, TIE, UNSCORED = "pair", "tie", "unscored"


def as_response(prompt: Prompt, text: str):
    """A response in the prompt's format: a chat message list for a conversational prompt, else plain text."""
    return [{"role": "assistant", "content": text}] if isinstance(prompt, list) else text


def choose_pair(candidates: Sequence[str], scores: Sequence[float | None]) -> tuple[str, int | None, int | None]:
    """(status, chosen index, rejected index): the best and the worst scored response.

    'tie' when every scored response has the same score, or the best and worst are the same text (a pair of
    identical responses teaches nothing); 'unscored' when fewer than two responses have a score. Among equal best
    (or worst) scores the earliest sample is taken: the samples are in random order, and preferring e.g. the shortest
    would teach a length preference the ranker never expressed.

    >>> choose_pair(["a", "bb", "c"], [0.5, 1.0, 0.0])
    ('pair', 1, 2)
    >>> choose_pair(["a", "b"], [1.0, 1.0])
    ('tie', None, None)
    >>> choose_pair(["a", "b", "c"], [None, 1.0, None])
    ('unscored', None, None)
    """
    scored = [(s, i) for i, s in enumerate(scores) if s is not None]
    if len(scored) < 2:
        return UNSCORED, None, None
    best = max(scored, key=lambda si: (si[0], -si[1]))[1]
    worst = min(scored, key=lambda si: (si[0], si[1]))[1]
    if scores[best] == scores[worst] or candidates[best] == candidates[worst]:
        return TIE, None, None
    return PAIR, best, worst


def build_pairs(
    rows: Sequence[dict], candidates: Sequence[Sequence[str]], scores: Sequence[Sequence[float | None]]
) -> tuple[list[dict], Counter]:
    """One record per prompt (prompt, candidates, scores, status, chosen/rejected index) and the counts of each
    status. Records with status 'pair' become training pairs through `training_pairs`."""
    records, counts = [], Counter()
    for row, cands, row_scores in zip(rows, candidates, scores):
        status, chosen, rejected = choose_pair(cands, row_scores)
        counts[status] += 1
        records.append(
            {
                "id": row.get("id"),
                "task": row.get("task"),
                "prompt": row["prompt"],
                "candidates": list(cands),
                "scores": list(row_scores),
                "status": status,
                "chosen_index": chosen,
                "rejected_index": rejected,
            }
        )
    return records, counts


def training_pairs(records: Sequence[dict]) -> list[dict]:
    """TRL preference rows (prompt, chosen, rejected) from the records that formed a pair."""
    return [
        {
            "prompt": r["prompt"],
            "chosen": as_response(r["prompt"], r["candidates"][r["chosen_index"]]),
            "rejected": as_response(r["prompt"], r["candidates"][r["rejected_index"]]),
        }
        for r in records
        if r["status"] == PAIR
    ]
