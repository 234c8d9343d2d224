"""The `verifier` judge: a pair is decided by checking both responses against the prompt's reference answer.

No model is asked. Each response gets the verifier's score (1 correct, 0 wrong, in between where the verifier grades,
None when it cannot check), and the better score wins; equal scores tie. The verifier is
`alignkit.data.verifier.verify` (the built-in data's, also the on-policy ranker's) or the user's `module:function`.
Reference answers come from the prompt set's `reference_answer` column; prompts of the built-in data that arrive
without one (e.g. from an outputs JSONL) get theirs from the built-in data.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from alignkit.data.builtin import builtin_rows
from alignkit.data.verifier import Verifier, load_verifier
from alignkit.errors import AlignkitError
from alignkit.judge.client import Comparison, Judgment
from alignkit.judge.inputs import prompt_key
from alignkit.judge.parse import Verdict


def verifier_verdict(score_a: float | None, score_b: float | None) -> Verdict | None:
    """'A' or 'B' for the better-scoring response, 'tie' for equal scores, None when either cannot be checked.

    >>> verifier_verdict(1.0, 0.0), verifier_verdict(0.0, 0.5), verifier_verdict(1.0, 1.0), verifier_verdict(None, 1.0)
    ('A', 'B', 'tie', None)
    """
    if score_a is None or score_b is None:
        return None
    return "A" if score_a > score_b else "B" if score_b > score_a else "tie"


def with_references(rows: Sequence[dict]) -> list[dict]:
    """The rows, each with a `reference_answer` when one is known: its own, else the built-in data's for the same
    prompt. Rows that have neither keep none (the verifier then cannot check them)."""
    known: dict[str, dict] | None = None
    out = []
    for row in rows:
        if (row.get("reference_answer") or "").strip():
            out.append(row)
            continue
        if known is None:  # built only when needed: most prompt sets carry their own answers
            known = {prompt_key(r["prompt"]): r for r in builtin_rows() if r["reference_answer"]}
        match = known.get(prompt_key(row["prompt"]))
        out.append({**row, "reference_answer": match["reference_answer"], "task": match["task"]} if match else row)
    return out


class VerifierJudge:
    """Judges comparisons by the verifier's scores; `judge(comparisons, rows)` mirrors `JudgeRunner.run`."""

    def __init__(self, spec: str = "builtin"):
        self.spec = spec
        self.verify: Verifier = load_verifier(spec, "judge.verifier")

    def score(self, response: str, row: dict) -> float | None:
        value = self.verify(response, row)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
            raise AlignkitError(
                f"judge.verifier {self.spec!r} returned {value!r} for prompt {str(row.get('prompt'))[:60]!r}: "
                "it must return a number (higher is better) or None."
            )
        return float(value)

    def judge(self, comparisons: Sequence[Comparison], rows: Sequence[dict]) -> list[Judgment]:
        """One Judgment per comparison (`rows[i]` is the dataset row of comparison i); 'unverifiable' where the row
        has no reference answer or the verifier returned None."""
        out = []
        for c, row in zip(comparisons, rows):
            a, b = self.score(c.output_a, row), self.score(c.output_b, row)
            verdict = verifier_verdict(a, b)
            reference = (row.get("reference_answer") or "").strip()
            if verdict is None:
                why = "no reference answer" if not reference else "the verifier could not check a response"
                out.append(Judgment(key="", status="unverifiable", error=why))
                continue
            reason = f"A scores {a:g}, B scores {b:g} against the reference answer {reference!r}"
            out.append(Judgment(key="", status="ok", verdict=verdict, raw=f"[[{verdict}]]", reason=reason))
        return out
