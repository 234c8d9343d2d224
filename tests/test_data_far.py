"""FAR rejected answers: another task's y-, a permutation, never a y+."""

from __future__ import annotations

from collections import Counter

import pytest

from alignkit.data.builtin import builtin_rows
from alignkit.data.far import far_rejected
from alignkit.errors import AlignkitError
from alignkit.sequences import response_text


def test_far_rejected_on_the_builtin_data():
    rows = builtin_rows()
    far = far_rejected(rows)
    by_id = {r["id"]: r for r in rows}
    assert [r["id"] for r in far] == [r["id"] for r in rows]  # same rows, same order
    for row, new in zip(rows, far):
        source = by_id[new["rejected_source"]]
        assert source["task"] != row["task"]  # another task's answer
        assert new["rejected"] == source["rejected"] and new["rejected_near"] == row["rejected"]
        assert new["chosen"] == row["chosen"] and new["prompt"] == row["prompt"]
    # Every rejected answer is used exactly once.
    assert Counter(r["rejected_source"] for r in far) == Counter(r["id"] for r in rows)
    chosen = {response_text(r["chosen"]) for r in rows}
    assert not any(response_text(r["rejected"]) in chosen for r in far)
    assert far_rejected(rows) == far  # deterministic


def test_far_rejected_refuses_what_it_cannot_derange():
    rows = [{"task": "a", "id": str(i), "prompt": "p", "chosen": f"c{i}", "rejected": f"r{i}"} for i in range(3)]
    rows.append({"task": "b", "id": "3", "prompt": "p", "chosen": "c3", "rejected": "r3"})
    with pytest.raises(AlignkitError, match="at most half"):
        far_rejected(rows)
    with pytest.raises(AlignkitError, match="'task' column"):
        far_rejected([{"prompt": "p", "chosen": "c", "rejected": "r"}])
    clash = [{"task": "a", "id": "0", "prompt": "p", "chosen": "same", "rejected": "r0"},
             {"task": "b", "id": "1", "prompt": "p", "chosen": "c1", "rejected": "same"}]  # fmt: skip
    with pytest.raises(AlignkitError, match="also chosen"):
        far_rejected(clash)
