"""FAR rejected answers: each pair's y⁻ replaced by the y⁻ of a pair from a different task.

The paper's squeezing is strongest when DPO pushes down a y⁻ that the model would never say. The built-in pairs are
near misses (an off-by-one sum, the wrong city), so to study (or calibrate a detector on) the off-policy case we need
y⁻ that are fluent but far from anything the model would answer to *this* prompt. Borrowing another task's rejected
answer gives exactly that, deterministically and without new text:

- fluent (it is a real answer, to another question);
- wrong for this prompt (another task's answer);
- never anyone's y⁺ (checked: no far y⁻ equals any chosen answer of the data);
- unique to its pair (a permutation: every rejected answer is used once).

Construction: rows are ordered by (task, id) so that each task is one contiguous block, and row k takes the rejected
answer of row (k + s) mod n, with s = the size of the largest task. Two rows s apart (either way round, since
n − s ≥ s is required) cannot be in the same block, so every row gets another task's answer.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from alignkit.errors import AlignkitError
from alignkit.sequences import response_text


def far_rejected(rows: Sequence[dict], group_key: str = "task") -> list[dict]:
    """Copies of `rows` whose `rejected` is another group's rejected answer (see the module docstring).

    Each returned row keeps every other column, in the input order, and gains `rejected_near` (its own rejected
    answer) and `rejected_source` (the id, or else the index, of the row whose rejected answer it now has).
    """
    if not rows:
        return []
    missing = [i for i, r in enumerate(rows) if group_key not in r]
    if missing:
        raise AlignkitError(
            f"far_rejected needs a '{group_key}' column to tell tasks apart; rows {missing[:5]} lack it"
        )
    n = len(rows)
    sizes = Counter(r[group_key] for r in rows)
    shift = max(sizes.values())
    if n - shift < shift:
        raise AlignkitError(
            f"far_rejected: the largest {group_key} has {shift} of {n} rows; a derangement across {group_key}s "
            "needs it to be at most half of the rows"
        )
    order = sorted(range(n), key=lambda i: (str(rows[i][group_key]), str(rows[i].get("id", "")), i))
    out: list[dict | None] = [None] * n
    for k, i in enumerate(order):
        j = order[(k + shift) % n]
        row = dict(rows[i])
        row["rejected_near"] = rows[i]["rejected"]
        row["rejected"] = rows[j]["rejected"]
        row["rejected_source"] = rows[j].get("id", j)
        out[i] = row
    chosen = {response_text(r["chosen"]) for r in rows}
    clash = [r["rejected_source"] for r in out if response_text(r["rejected"]) in chosen]
    if clash:
        raise AlignkitError(f"far_rejected: the rejected answers of rows {clash[:5]} are also chosen answers")
    return out
