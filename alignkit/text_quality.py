"""Quality readings of one generated answer, as pure functions of its text: the outcomes squeezing can move.

The paper's squeezing moves probability onto the model's current argmax; in long decodes that shows as answers that
stop ending (the EOS loses mass), repeat themselves (the *repeater* phenomenon), echo the prompt, or copy a training
answer. Each reading here is one number per answer, so that a study can store it per (seed, prompt) and put a
seed-level interval on its mean (alignkit.stats):

    terminated(text, cap_hit)     1.0 when the answer ended on its own (EOS before the token cap), else 0.0;
                                  with cap_hit unknown (None), 1.0 when the text ends a sentence (. ! ? or a closing
                                  quote or bracket after one): the proxy for records written without the stop reason
    repeated_ngram_share(text, n) share of the answer's word n-grams that already occurred earlier in it, in [0, 1]
                                  (0 for an answer with fewer than n + 1 words): "the cat the cat the cat" with n = 2
                                  has n-grams (the cat)(cat the)(the cat)(cat the)(the cat): 3 of 5 repeat, 0.6
    echo_share(text, prompt, n)   share of the answer's word n-grams that occur in the prompt, in [0, 1]
    copy_share(text, index, n)    share of the answer's word n-grams that occur in any training answer
                                  (`ngram_index` of those answers), in [0, 1]
    word_count(text)              words (whitespace-separated tokens after normalisation)

Words are lower-cased runs of letters and digits (`words`), so punctuation and spacing do not make two n-grams differ.
An answer too short to have one n-gram reads NaN for the shares (`echo_share`, `copy_share`): it cannot echo or copy
at that n, which is not the same as echoing nothing. tests/test_text_quality.py checks each on hand-worked strings.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable

WORD = re.compile(r"[a-z0-9]+")
SENTENCE_END = re.compile(r"[.!?][\"')\]’”]*\s*$")


def words(text: str) -> list[str]:
    """Lower-cased runs of letters and digits: "Hello, World!" -> ["hello", "world"]."""
    return WORD.findall(text.lower())


def ngrams(tokens: list[str], n: int) -> list[tuple[str, ...]]:
    """The len(tokens) - n + 1 consecutive n-grams (none when there are fewer than n tokens)."""
    if n < 1:
        raise ValueError(f"n-gram length must be >= 1, got {n}")
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def word_count(text: str) -> int:
    return len(words(text))


def terminated(text: str, cap_hit: bool | None = None) -> float:
    """1.0 when the answer ended before the token cap. The decoder's stop reason (`cap_hit`) decides when known;
    without it, an answer counts as ended when its text ends a sentence."""
    if cap_hit is not None:
        return 0.0 if cap_hit else 1.0
    return 1.0 if SENTENCE_END.search(text) else 0.0


def repeated_ngram_share(text: str, n: int = 3) -> float:
    """Share of the answer's n-grams that repeat an earlier one of the same answer; 0.0 when it has < 2 n-grams."""
    grams = ngrams(words(text), n)
    if len(grams) < 2:
        return 0.0
    seen: set[tuple[str, ...]] = set()
    repeats = 0
    for g in grams:
        repeats += g in seen
        seen.add(g)
    return repeats / len(grams)


def _share_in(text: str, pool: set[tuple[str, ...]], n: int) -> float:
    grams = ngrams(words(text), n)
    if not grams:
        return math.nan
    return sum(g in pool for g in grams) / len(grams)


def echo_share(text: str, prompt: str, n: int = 4) -> float:
    """Share of the answer's n-grams that occur in its prompt; NaN when the answer has no n-gram."""
    return _share_in(text, set(ngrams(words(prompt), n)), n)


def ngram_index(texts: Iterable[str], n: int = 8) -> set[tuple[str, ...]]:
    """Every n-gram of `texts` (e.g. the training answers), for `copy_share`."""
    return {g for t in texts for g in ngrams(words(t), n)}


def copy_share(text: str, index: set[tuple[str, ...]], n: int = 8) -> float:
    """Share of the answer's n-grams found in `index` (built with the same n); NaN when the answer has no n-gram."""
    return _share_in(text, index, n)


def answer_quality(
    text: str, prompt: str, index: set[tuple[str, ...]], cap_hit: bool | None = None
) -> dict[str, float]:
    """Every reading of one answer, under the default n-gram lengths (3 for repetition, 4 for echo, 8 for copying)."""
    return {
        "terminated": terminated(text, cap_hit),
        "repetition": repeated_ngram_share(text),
        "echo": echo_share(text, prompt),
        "copying": copy_share(text, index),
        "words": float(word_count(text)),
    }
