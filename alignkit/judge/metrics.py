"""Win-rate metrics as pure functions of per-pair verdicts: no model, no judge, no files.

Vocabulary: every pair (prompt, candidate output, baseline output) is judged twice, once with the candidate shown
first (position A) and once with it shown second (position B). Each verdict becomes a candidate score, 1 (win),
0.5 (tie) or 0 (loss), and the pair's outcome follows MT-Bench's conservative rule: a win or a loss only when both
orders agree, otherwise a tie. A judge whose verdict flips with the order is not expressing a preference.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from alignkit.judge.parse import Verdict

WIN, TIE, LOSS = 1.0, 0.5, 0.0


def candidate_score(verdict: Verdict, candidate_position: str) -> float:
    """1, 0.5 or 0 for the candidate, given the judge's verdict and where the candidate was shown ("A" or "B").

    >>> candidate_score("A", "A"), candidate_score("A", "B"), candidate_score("tie", "B")
    (1.0, 0.0, 0.5)
    """
    if verdict == "tie":
        return TIE
    if verdict not in ("A", "B") or candidate_position not in ("A", "B"):
        raise ValueError(f"verdict {verdict!r} / position {candidate_position!r}")
    return WIN if verdict == candidate_position else LOSS


def combine_orders(candidate_first: Verdict, candidate_second: Verdict) -> tuple[float, bool]:
    """(pair score, consistent) from the verdict with the candidate as A and the verdict with it as B.

    >>> combine_orders("A", "B")  # preferred in both orders
    (1.0, True)
    >>> combine_orders("A", "A")  # the judge always prefers position A: a flip, hence a tie
    (0.5, False)
    >>> combine_orders("A", "tie")  # preferred once, tied once: not agreed on, so a tie
    (0.5, False)
    """
    first = candidate_score(candidate_first, "A")
    second = candidate_score(candidate_second, "B")
    consistent = first == second
    return (first if consistent else TIE), consistent


def combine_log_odds(candidate_first: float, candidate_second: float, margin: float) -> tuple[float, bool]:
    """(pair score, consistent) from the judge's log-odds of position A, log P(A) - log P(B), in both orders.

    The candidate's log-odds is the mean of `candidate_first` (candidate shown as A) and `-candidate_second` (shown as
    B). A judge that adds a constant c to position A's log-odds in every question adds +c and -c, which cancel. The
    pair is a win above `margin`, a loss below `-margin`, and a tie in between (the judge abstains). `consistent`:
    both orders lean the same way once mapped back to the models.

    >>> combine_log_odds(2.3, 0.7, 0.5)  # A preferred in both orders, but by 2.3 with the candidate there: (2.3-0.7)/2
    (1.0, False)
    >>> combine_log_odds(1.0, 0.8, 0.5)  # a position preference, nothing more: (1.0-0.8)/2 = 0.1 is a tie
    (0.5, False)
    >>> combine_log_odds(-1.0, 1.0, 0.5)
    (0.0, True)
    """
    log_odds = (candidate_first - candidate_second) / 2
    consistent = (candidate_first > 0 and candidate_second < 0) or (candidate_first < 0 and candidate_second > 0)
    consistent = consistent or candidate_first == candidate_second == 0
    if log_odds > 0 and log_odds >= margin:
        return WIN, consistent
    if log_odds < 0 and log_odds <= -margin:
        return LOSS, consistent
    return TIE, consistent


def outcome_counts(scores: Sequence[float]) -> dict[str, int]:
    """Number of wins, ties and losses of the candidate."""
    s = np.asarray(scores, dtype=float)
    return {"wins": int((s == WIN).sum()), "ties": int((s == TIE).sum()), "losses": int((s == LOSS).sum())}


def win_rate(scores: Sequence[float]) -> float:
    """Mean candidate score, i.e. (wins + ties / 2) / pairs; NaN with no pairs."""
    return float(np.mean(scores)) if len(scores) else float("nan")


def standard_error(scores: Sequence[float]) -> float:
    """Standard error of the mean score (sample standard deviation / sqrt(n))."""
    n = len(scores)
    return float(np.std(scores, ddof=1) / np.sqrt(n)) if n > 1 else float("nan")


def position_consistency(consistent: Sequence[bool]) -> float:
    """Share of pairs whose two verdicts agree once mapped back to the models (1.0 = order never mattered)."""
    return float(np.mean(consistent)) if len(consistent) else float("nan")


def verdict_shares(verdicts: Sequence[Verdict]) -> dict[str, float]:
    """Share of raw verdicts naming position A, position B, or a tie. With both orders asked equally often, an
    unbiased judge names A and B about equally; a judge that names A in 90% is reading the order, not the answers.

    >>> verdict_shares(["A", "A", "B", "tie"])
    {'A': 0.5, 'B': 0.25, 'tie': 0.25}
    """
    n = len(verdicts)
    return {k: (sum(v == k for v in verdicts) / n if n else float("nan")) for k in ("A", "B", "tie")}


def bootstrap_ci(
    scores: Sequence[float], n_resamples: int = 2000, seed: int = 0, confidence: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap interval of the win rate, resampling pairs with replacement."""
    s = np.asarray(scores, dtype=float)
    if len(s) == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = s[rng.integers(0, len(s), size=(n_resamples, len(s)))].mean(axis=1)
    tail = (1 - confidence) / 2
    return float(np.quantile(means, tail)), float(np.quantile(means, 1 - tail))


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def fit_length_model(
    scores: Sequence[float], length_diff: Sequence[float], l2: float = 1.0, scale: float | None = None
) -> tuple[float, float]:
    """(intercept, slope) of P(candidate wins) = sigmoid(intercept + slope * tanh(length_diff / scale)).

    Fitted by Newton's method on the binomial log-likelihood (ties enter as y = 0.5), with an L2 penalty `l2` on the
    slope only: it keeps the fit finite when outcomes are perfectly separated by length, and leaves the intercept,
    which is what the length-controlled win rate reads, unpenalised. `scale` defaults to the standard deviation of
    the differences, so the feature is unit-free; tanh bounds the pull of a few very long outputs.
    """
    y = np.asarray(scores, dtype=float)
    X = np.stack([np.ones(len(y)), length_feature(length_diff, scale)], axis=1)
    intercept, slope = fit_logistic(y, X, np.array([0.0, l2]))
    return float(intercept), float(slope)


def length_feature(length_diff: Sequence[float], scale: float | None = None) -> np.ndarray:
    """tanh(d / scale), scale = the standard deviation of d by default (0 everywhere when d does not vary)."""
    d = np.asarray(length_diff, dtype=float)
    if scale is None:
        scale = float(np.std(d))
    return np.tanh(d / scale) if scale > 0 else np.zeros_like(d)


def fit_logistic(y: np.ndarray, X: np.ndarray, l2: np.ndarray) -> np.ndarray:
    """Coefficients of P(y = 1) = sigmoid(X @ theta) for soft labels y in [0, 1], by damped Newton's method on the
    binomial log-likelihood minus 0.5 * sum(l2 * theta**2) (l2 = 0 leaves a coefficient unpenalised)."""
    penalty = np.diag(np.asarray(l2, dtype=float))
    theta = np.zeros(X.shape[1])

    def objective(t: np.ndarray) -> float:
        p = np.clip(_sigmoid(X @ t), 1e-12, 1 - 1e-12)
        return float(np.sum(y * np.log(p) + (1 - y) * np.log(1 - p)) - 0.5 * t @ penalty @ t)

    for _ in range(100):
        p = _sigmoid(X @ theta)
        grad = X.T @ (y - p) - penalty @ theta
        hess = X.T @ (X * (p * (1 - p))[:, None]) + penalty + 1e-9 * np.eye(len(theta))
        step = np.linalg.solve(hess, grad)
        current, size = objective(theta), 1.0
        while objective(theta + size * step) < current - 1e-12 and size > 1e-6:
            size /= 2  # damped Newton: never accept a step that lowers the likelihood
        theta = theta + size * step
        if np.max(np.abs(size * step)) < 1e-10:
            break
    return theta


def length_controlled_win_rate(scores: Sequence[float], length_diff: Sequence[float], l2: float = 1.0) -> float:
    """The win rate the length model predicts for a pair whose outputs have equal length: sigmoid(intercept).

    In the spirit of AlpacaEval 2's length-controlled win rate (a GLM with a tanh-scaled length term, read off at zero
    length difference), without its per-instruction difficulty term, which needs many models per instruction. When
    every score is the same the answer is that score (the logistic intercept would run off to infinity). With no length
    difference at all it equals the plain win rate exactly.
    """
    y = np.asarray(scores, dtype=float)
    if len(y) == 0:
        return float("nan")
    if np.all(y == y[0]):
        return float(y[0])
    intercept, _ = fit_length_model(y, length_diff, l2=l2)
    return float(_sigmoid(np.array(intercept)))


def instruction_difficulty(other_scores: np.ndarray) -> np.ndarray:
    """Per instruction, how hard the baseline is to beat there, from other models' scores on it (rows = models):
    -logit of their smoothed mean score (add one half-win and one half-loss), centred to mean 0. Higher = harder.

    >>> [round(float(v), 4) for v in instruction_difficulty(np.array([[1.0, 0.0, 0.5]]))]
    [-1.0986, 1.0986, 0.0]
    """
    scores = np.atleast_2d(np.asarray(other_scores, dtype=float))
    share = (scores.sum(axis=0) + 0.5) / (scores.shape[0] + 1)
    difficulty = -np.log(share / (1 - share))
    return difficulty - difficulty.mean() + 0.0  # + 0.0 turns a -0.0 into 0.0


def length_controlled_with_difficulty(
    scores_by_model: dict[str, Sequence[float]], length_diff_by_model: dict[str, Sequence[float]], l2: float = 1.0
) -> dict[str, float]:
    """AlpacaEval 2's length-controlled win rate with its instruction-difficulty term, for several models judged
    against the same baseline on the same instructions (score lists aligned by instruction).

    Per model m: P(m wins on instruction i) = sigmoid(a_m + b_m * tanh(d_mi / sd) + g_m * difficulty_i), fitted with
    an L2 penalty `l2` on b and g; the LC win rate is the mean over instructions of sigmoid(a_m + g_m * difficulty_i),
    i.e. the prediction at zero length difference. AlpacaEval estimates the difficulties once from many leaderboard
    models; here difficulty_i comes from the other models' scores on instruction i (leave-one-out, so a model's own
    outcomes never explain themselves), hence at least two models are needed.
    """
    if len(scores_by_model) < 2:
        raise ValueError("the instruction-difficulty term needs at least two models judged on the same instructions")
    names = list(scores_by_model)
    matrix = np.array([np.asarray(scores_by_model[n], dtype=float) for n in names])
    out = {}
    for k, name in enumerate(names):
        y = matrix[k]
        difficulty = instruction_difficulty(np.delete(matrix, k, axis=0))
        if np.all(y == y[0]):
            out[name] = float(y[0])  # as in the simplified fit: the logistic intercept would run off to infinity
            continue
        X = np.stack([np.ones(len(y)), length_feature(length_diff_by_model[name]), difficulty], axis=1)
        a, _, g = fit_logistic(y, X, np.array([0.0, l2, l2]))
        out[name] = float(np.mean(_sigmoid(a + g * difficulty)))
    return out


def length_controlled_ci(
    scores: Sequence[float],
    length_diff: Sequence[float],
    n_resamples: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
    l2: float = 1.0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of the length-controlled win rate (the model is refitted on each resample)."""
    y = np.asarray(scores, dtype=float)
    d = np.asarray(length_diff, dtype=float)
    if len(y) == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n_resamples):
        idx = rng.integers(0, len(y), size=len(y))
        values.append(length_controlled_win_rate(y[idx], d[idx], l2=l2))
    tail = (1 - confidence) / 2
    return float(np.quantile(values, tail)), float(np.quantile(values, 1 - tail))


def summarize(
    scores: Sequence[float],
    consistent: Sequence[bool],
    candidate_lengths: Sequence[int],
    baseline_lengths: Sequence[int],
    n_resamples: int = 2000,
    seed: int = 0,
) -> dict:
    """All headline numbers for fully judged pairs (both orders with a verdict)."""
    diff = np.asarray(candidate_lengths, dtype=float) - np.asarray(baseline_lengths, dtype=float)
    low, high = bootstrap_ci(scores, n_resamples, seed)
    lc_low, lc_high = length_controlled_ci(scores, diff, max(200, n_resamples // 4), seed)
    return {
        "n_pairs": len(scores),
        **outcome_counts(scores),
        "win_rate": win_rate(scores),
        "win_rate_ci": [low, high],
        "standard_error": standard_error(scores),
        "position_consistency": position_consistency(consistent),
        "length_controlled_win_rate": length_controlled_win_rate(scores, diff),
        "length_controlled_ci": [lc_low, lc_high],
        "candidate_longer_share": float(np.mean(diff > 0)) if len(diff) else float("nan"),
        "mean_length_candidate": float(np.mean(candidate_lengths)) if len(candidate_lengths) else float("nan"),
        "mean_length_baseline": float(np.mean(baseline_lengths)) if len(baseline_lengths) else float("nan"),
    }
