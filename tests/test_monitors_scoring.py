"""Probe scoring on hand-built tensors: every expected value below is worked out by hand in the comments."""

from __future__ import annotations

import math

import pytest
import torch

from alignkit.monitors.scoring import (
    auto_probe_due,
    family_metrics,
    merge_shards,
    response_token_stats,
    shard,
    squeezing_score,
)

LN2, LN3 = math.log(2), math.log(3)
H_34 = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))  # entropy of (3/4, 1/4) = 0.5623 nats


def test_response_token_stats_by_hand():
    # Vocabulary of 2. Logits [0, 0] give p = (1/2, 1/2); logits [ln 3, 0] give p = (3/4, 1/4); [0, -inf] gives (1, 0).
    garbage = [50.0, -50.0]  # at prompt/padding positions: must not leak into any statistic
    logits = torch.tensor(
        [
            # row 0: tokens [0, 0, 1]; only the last token (label of position 1) is response
            [garbage, [LN3, 0.0], garbage],
            # row 1: tokens [1, 0, 0]; both labels are response
            [[0.0, 0.0], [LN3, 0.0], garbage],
            # row 2: tokens [1, 0, pad]; one response label, predicted with certainty (entropy exactly 0)
            [garbage, [0.0, -math.inf], garbage],
        ]
    )
    input_ids = torch.tensor([[0, 0, 1], [1, 0, 0], [1, 0, 0]])
    response_mask = torch.tensor([[False, True], [True, True], [False, True]])
    stats = response_token_stats(logits, input_ids, response_mask)

    # row 0: label 1 under (3/4, 1/4): log 1/4; argmax prob 3/4; entropy H(3/4, 1/4)
    # row 1: label 0 under (1/2, 1/2) then label 0 under (3/4, 1/4)
    # row 2: label 0 under (1, 0): log 1 = 0, argmax prob 1, entropy 0
    expected = {
        "logp": [math.log(0.25), -LN2 + math.log(0.75), 0.0],
        "n_tokens": [1, 2, 1],
        "argmax_logp": [math.log(0.75), -LN2 + math.log(0.75), 0.0],
        "argmax_prob": [0.75, 0.5 + 0.75, 1.0],
        "entropy": [H_34, LN2 + H_34, 0.0],
    }
    for name, values in expected.items():
        assert stats[name].tolist() == pytest.approx(values, abs=1e-6), name


def test_family_metrics_by_hand():
    scored = [
        ("train", "chosen", {"logp": -4.0, "n_tokens": 2, "argmax_logp": -1.0, "argmax_prob": 1.6, "entropy": 1.0}),
        ("train", "chosen", {"logp": -9.0, "n_tokens": 3, "argmax_logp": -0.6, "argmax_prob": 2.1, "entropy": 2.4}),
        ("test", "shuffled", {"logp": -12.0, "n_tokens": 4, "argmax_logp": -2.0, "argmax_prob": 2.0, "entropy": 8.0}),
    ]
    m = family_metrics(scored)
    assert m["probe/train/chosen/logp"] == pytest.approx(-6.5)  # (-4 - 9) / 2
    assert m["probe/train/chosen/logp_per_token"] == pytest.approx(-2.5)  # mean(-4/2, -9/3)
    assert m["probe/train/chosen/argmax_prob"] == pytest.approx(0.75)  # mean(1.6/2, 2.1/3)
    assert m["probe/train/chosen/entropy"] == pytest.approx(0.65)  # mean(1.0/2, 2.4/3)
    assert m["probe/train/argmax/logp"] == pytest.approx(-0.8)  # mean(-1, -0.6)
    assert m["probe/train/argmax/logp_per_token"] == pytest.approx(-0.35)  # mean(-1/2, -0.6/3)
    assert m["probe/test/shuffled/logp_per_token"] == pytest.approx(-3.0)
    assert "probe/test/shuffled/argmax_prob" not in m  # concentration only along y+ and y-
    assert "probe/test/argmax/logp" not in m  # no chosen pairs in that split
    assert "probe/train/argmax/logp" not in family_metrics(scored, argmax=False)


def _per_token(values: dict[str, float]) -> dict[str, float]:
    return {f"probe/{k}/logp_per_token": v for k, v in values.items()}


def test_squeezing_score_dpo_signature():
    start = _per_token({"train/chosen": -1.0, "train/rejected": -2.0, "train/greedy": -0.5, "train/argmax": -0.4})
    now = _per_token({"train/chosen": -1.3, "train/rejected": -2.5, "train/greedy": -0.3, "train/argmax": -0.2})
    s = squeezing_score(start, now)
    assert s.rise == pytest.approx(0.2)  # mean(+0.2, +0.2)
    assert s.fall == pytest.approx(0.4)  # -mean(-0.3, -0.5)
    assert s.score == pytest.approx(0.2)  # min(rise, fall)
    assert [k for k, _ in s.fell()] == ["train/rejected", "train/chosen"]  # most fallen first


def test_squeezing_score_sft_is_not_squeezing():
    # SFT on y+: argmax and chosen both rise; the rest barely moves. Mass is not leaving everything else.
    start = _per_token({"test/chosen": -1.0, "test/rejected": -2.0, "test/greedy": -0.5})
    now = _per_token({"test/chosen": -0.5, "test/rejected": -2.1, "test/greedy": -0.3})
    s = squeezing_score(start, now)
    assert s.fall == pytest.approx(-0.2)  # -mean(+0.5, -0.1)
    assert s.score == pytest.approx(-0.2)
    assert squeezing_score(start, start).score == 0.0
    only_down = {k: v for k, v in start.items() if "greedy" not in k}
    assert squeezing_score(only_down, only_down) is None  # nothing on the argmax side to measure


def test_shard_and_merge_in_a_fake_world_of_two():
    items = [f"probe{i}" for i in range(7)]
    shards = [shard(items, rank, 2) for rank in range(2)]
    assert [i for i, _ in shards[0]] == [0, 2, 4, 6]
    assert [i for i, _ in shards[1]] == [1, 3, 5]
    scored = [[(i, item.upper()) for i, item in part] for part in shards]  # each rank scores only its own share
    assert merge_shards(scored, len(items)) == [item.upper() for item in items]
    with pytest.raises(RuntimeError, match="duplicated"):
        merge_shards([scored[0], scored[1], scored[1][:1]], len(items))
    with pytest.raises(RuntimeError, match="lost"):
        merge_shards([scored[0]], len(items))
    assert shard(items[:1], 1, 2) == []  # more ranks than probes: a rank may have none


def test_auto_schedule_budget():
    # Probed 2 s so far; the next evaluation and the stage's last one cost 1.5 s each: 5 s must fit in 5% of training.
    assert auto_probe_due(0.05, train_seconds=100.0, probe_seconds=2.0, last_probe_seconds=1.5)
    assert not auto_probe_due(0.05, train_seconds=99.0, probe_seconds=2.0, last_probe_seconds=1.5)
