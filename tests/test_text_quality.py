import math

import pytest

from alignkit.text_quality import (
    answer_quality,
    copy_share,
    echo_share,
    ngram_index,
    ngrams,
    repeated_ngram_share,
    terminated,
    word_count,
    words,
)


def test_words_normalise_case_and_punctuation():
    assert words("Hello, World! 42-times") == ["hello", "world", "42", "times"]
    assert word_count("  ") == 0


def test_ngrams_count_and_bad_length():
    assert ngrams(["a", "b", "c"], 2) == [("a", "b"), ("b", "c")]
    assert ngrams(["a"], 2) == []
    with pytest.raises(ValueError, match="n-gram length"):
        ngrams(["a"], 0)


def test_terminated_prefers_the_stop_reason_over_the_text():
    assert terminated("no full stop", cap_hit=False) == 1.0
    assert terminated("Ends well.", cap_hit=True) == 0.0
    assert terminated("Ends well.") == 1.0
    assert terminated('He said "stop."  ') == 1.0
    assert terminated("Is it (really?)") == 1.0
    assert terminated("and then the") == 0.0


def test_repetition_by_hand():
    # (the cat)(cat the)(the cat)(cat the)(the cat): the 3rd, 4th and 5th repeat an earlier one
    assert repeated_ngram_share("the cat the cat the cat", n=2) == pytest.approx(3 / 5)
    assert repeated_ngram_share("one two three four", n=2) == 0.0
    assert repeated_ngram_share("one two", n=2) == 0.0  # a single n-gram cannot repeat


def test_echo_and_copy_by_hand():
    prompt = "What is the capital of France?"
    # answer 4-grams: (the capital of france)(capital of france is)(of france is paris): 1 of 3 in the prompt
    assert echo_share("The capital of France is Paris.", prompt) == pytest.approx(1 / 3)
    assert math.isnan(echo_share("Paris.", prompt))  # too short to have a 4-gram
    index = ngram_index(["a b c d", "x y z"], n=3)
    assert copy_share("a b c q", index, n=3) == pytest.approx(1 / 2)  # (a b c) copied, (b c q) not


def test_answer_quality_has_every_reading():
    q = answer_quality("Paris is the capital.", "Capital of France?", ngram_index([], 8), cap_hit=False)
    assert q["terminated"] == 1.0 and q["repetition"] == 0.0 and q["words"] == 4.0
    assert math.isnan(q["copying"])  # 4 words: no 8-gram
