"""Probability judging: the verdict token's log-odds, both orders combined in log-odds (hand-computed numbers), and
a position-biased judge whose constant preference for A cancels in logprobs mode but not in text mode."""

from __future__ import annotations

import math

import pytest

from alignkit.judge import JudgeConfig, WinRateConfig, evaluate_win_rate
from alignkit.judge.metrics import combine_log_odds
from alignkit.judge.parse import verdict_log_odds
from tests.fake_judge_server import FakeJudgeServer, position_biased_logprobs

from .test_judge_faults import EXPECTED, FAST, N, make_outputs

QUIET = WinRateConfig(bootstrap_samples=200)


def test_log_odds_sums_the_label_tokens_and_bounds_a_missing_one():
    # ' A' and 'A' are both the label A: log(e^-1 + e^-2) - (-1.5) = -1 + log(1 + e^-1) + 1.5 = 0.813262
    tokens = [("A", {"A": -1.0, " A": -2.0, "B": -1.5, "The": -2.5})]
    assert verdict_log_odds(tokens) == pytest.approx(0.5 + math.log(1 + math.exp(-1)))
    assert verdict_log_odds(tokens) == pytest.approx(0.813262, abs=1e-6)
    # B not among the alternatives: it is at most the smallest listed log-prob, -3.0, so the log-odds is -0.1 + 3.0
    assert verdict_log_odds([("A", {"A": -0.1, "The": -3.0})]) == pytest.approx(2.9)


def test_the_label_after_brackets_is_the_verdict_not_a_letter_in_the_reasoning():
    tokens = [
        ("A", {"A": -0.5, "B": -1.0}),  # "A is short, but..." (a bare label that opens the answer)
        (" is short. Verdict: [[", {" is short. Verdict: [[": 0.0}),
        ("B", {"B": -0.2, "A": -2.2}),
        ("]]", {"]]": 0.0}),
    ]
    assert verdict_log_odds(tokens) == pytest.approx(-2.0)


def test_first_token_alternatives_when_the_judge_starts_with_another_word():
    assert verdict_log_odds([("The", {"The": -0.1, "B": -2.0, "A": -3.0}), (" answer", {})]) == pytest.approx(-1.0)
    assert verdict_log_odds([("The", {"The": -0.1, "It": -2.0})]) is None
    assert verdict_log_odds([]) is None


@pytest.mark.parametrize(
    ("first", "second", "margin", "expected"),
    [
        (2.3, 0.7, 0.5, (1.0, False)),  # A both times; the candidate's log-odds (2.3 - 0.7) / 2 = 0.8 >= 0.5: win
        (1.0, 0.8, 0.5, (0.5, False)),  # position preference only: (1.0 - 0.8) / 2 = 0.1: tie
        (0.5, 2.5, 0.5, (0.0, False)),  # (0.5 - 2.5) / 2 = -1.0: loss
        (-1.0, 1.0, 0.5, (0.0, True)),  # baseline preferred in both orders
        (1.0, 0.0, 0.5, (1.0, False)),  # exactly the margin: (1.0 - 0.0) / 2 = 0.5 counts
        (0.9, 0.0, 0.5, (0.5, False)),  # 0.45 < 0.5: abstain
        (0.3, 0.3, 0.0, (0.5, False)),  # no margin, but log-odds exactly 0: a tie
        (0.2, -0.1, 0.0, (1.0, True)),  # no margin: any lean decides; 0.15
    ],
)
def test_combine_log_odds_hand_computed(first, second, margin, expected):
    assert combine_log_odds(first, second, margin) == expected


def always_a(messages):
    return "[[A]]"


def test_a_constant_position_preference_cancels_in_logprobs_mode_but_not_in_text_mode(tmp_path):
    cand, base = make_outputs(tmp_path)
    # The judge's log-odds of A: +1 for the response with the marker, plus 1.5 for position A. Its greedy text is
    # therefore always A, and text mode can only call every pair a tie.
    with FakeJudgeServer(always_a, logprob_policy=position_biased_logprobs(bias=1.5)) as server:
        text = JudgeConfig(base_url=server.base_url, model="fake", mode="text", **FAST)
        by_text = evaluate_win_rate(cand, base, judge=text, output_dir=tmp_path / "text", config=QUIET,
                                    progress=False)  # fmt: skip
        assert (by_text.wins, by_text.losses, by_text.ties) == (0, 0, N)

        judge = JudgeConfig(base_url=server.base_url, model="fake", mode="logprobs", **FAST)
        assert judge.template == "pairwise_logprobs" and judge.max_tokens == 1
        result = evaluate_win_rate(cand, base, judge=judge, output_dir=tmp_path / "lp", config=QUIET, progress=False)
        requests = server.requests
    # candidate better: log-odds 2.5 first, 0.5 second -> (2.5 - 0.5) / 2 = 1.0 >= 0.5, a win; equal: 1.5 and 1.5 ->
    # 0, a tie; baseline better: 0.5 and 2.5 -> -1.0, a loss
    assert {k: getattr(result, k) for k in EXPECTED} == EXPECTED
    assert result.verdict_shares["A"] == 1.0  # every single verdict still names A
    assert requests == 4 * N  # the text-mode cache does not answer logprobs questions
    win = next(p for p in result.pairs if p.score == 1.0)
    assert win.candidate_first["logit_a"] == pytest.approx(2.5) and win.candidate_second["logit_a"] == pytest.approx(
        0.5
    )
    report = (tmp_path / "lp" / "report.md").read_text()
    assert "log P(A) - log P(B) = +2.50" in report and "token log-probabilities" in report

    with FakeJudgeServer(always_a) as server:  # a rerun is served from the cache, log-odds included
        judge = JudgeConfig(base_url=server.base_url, model="fake", mode="logprobs", **FAST)
        again = evaluate_win_rate(cand, base, judge=judge, output_dir=tmp_path / "lp", config=QUIET, progress=False)
        assert server.requests == 0
    assert again.wins == result.wins and again.losses == result.losses


def test_an_endpoint_without_logprobs_gives_unparseable_not_guessed_verdicts(tmp_path):
    cand, base = make_outputs(tmp_path, n=3)
    with FakeJudgeServer(always_a) as server:  # ignores the logprobs request, like some servers do
        judge = JudgeConfig(base_url=server.base_url, model="fake", mode="logprobs", parse_retries=0, **FAST)
        result = evaluate_win_rate(cand, base, judge=judge, output_dir=tmp_path / "o", config=QUIET, progress=False)
    assert result.n_pairs == 0 and result.unjudged == {"unparseable": 3}
