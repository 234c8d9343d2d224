"""The verifier of the built-in data: does a response give the row's `reference_answer`, and nothing conflicting?

`verify(response, row) -> score | None` is the one implementation the on-policy ranker (`builtin_verifier`), the
`verifier` judge of the win-rate evaluator and the judge-quality set all use. It knows the built-in tasks (arithmetic,
units, letters, compare, sorting, reverse, capitals, antonyms) and checks rows of any other task that carry a reference
answer as a number when the answer is one, else as a phrase that must appear.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
import sys
import unicodedata
from collections.abc import Callable
from pathlib import Path

from alignkit.data.builtin import ANTONYMS, CAPITALS, UNITS
from alignkit.errors import AlignkitError

Verifier = Callable[[str, dict], float | None]  # (response, row) -> score in [0, 1] (higher is better) or None
BUILTIN = "builtin"


def _plain(text: str) -> str:
    """Lower case, accents and punctuation removed, single spaces: 'Brasília!' -> 'brasilia'."""
    text = unicodedata.normalize("NFKD", text)
    text = "".join(c for c in text if not unicodedata.combining(c))
    return " ".join(re.sub(r"[^a-z0-9]+", " ", text.lower()).split())


def _has_phrase(text: str, phrase: str) -> bool:
    """Whole-word match on `_plain` text: 'Rome' is in 'It is Rome.' but not in 'Romeo'."""
    return bool(phrase) and f" {phrase} " in f" {text} "


_UNITS_WORDS = {
    "zero": 0, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8, "nine": 9, "ten": 10,
    "eleven": 11, "twelve": 12, "thirteen": 13, "fourteen": 14, "fifteen": 15, "sixteen": 16, "seventeen": 17,
    "eighteen": 18, "nineteen": 19,
}  # fmt: skip
# "one" is left out on purpose: as a pronoun ("the larger one") it would count as a conflicting answer far more often
# than a model writes the number 1 as a word.
_TENS_WORDS = {"twenty": 20, "thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70, "eighty": 80,
               "ninety": 90}  # fmt: skip
_DIGITS = {"one": 1, **{k: v for k, v in _UNITS_WORDS.items() if v < 10}}
_WORD_NUMBER = re.compile(
    rf"\b({'|'.join(_TENS_WORDS)})(?:[- ]({'|'.join(_DIGITS)}))?\b|\b({'|'.join(_UNITS_WORDS)})\b", re.IGNORECASE
)
_DIGIT_NUMBER = re.compile(r"\d+(?:\.\d+)?")
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")  # "1,000" -> "1000"; "3,7,9" and "3, 7, 9" are left alone


def _canonical(number: float) -> str:
    return str(int(number)) if float(number).is_integer() else repr(float(number))


def numbers_in(text: str) -> list[str]:
    """Every number a text states, in order, as canonical strings: digits ('1,000', '60.0') and number words.

    >>> numbers_in("12 + 30 = 42.0, or forty-two; 1,000 and three")
    ['12', '30', '42', '42', '1000', '3']
    """
    text = _THOUSANDS.sub("", text)
    found: list[tuple[int, str]] = [(m.start(), _canonical(float(m.group()))) for m in _DIGIT_NUMBER.finditer(text)]
    for m in _WORD_NUMBER.finditer(text):
        if m.group(3):
            value = _UNITS_WORDS[m.group(3).lower()]
        else:
            value = _TENS_WORDS[m.group(1).lower()] + (_DIGITS[m.group(2).lower()] if m.group(2) else 0)
        found.append((m.start(), str(value)))
    return [value for _, value in sorted(found)]


def _graded(correct: bool, conflicts: int) -> float:
    """1 for the right answer alone; 1/(1+n) for the right answer next to n other answers (a hedge, or a list of
    guesses, is worth what picking one of its answers at random is worth); 0 without the right answer."""
    return 1.0 / (1 + conflicts) if correct else 0.0


def _score_numeric(candidate: str, prompt: str, answer: str, allowed: set[str] = frozenset()) -> float:
    """The answer is stated, and no number other than the answer and the prompt's own (e.g. the operands) is."""
    stated = set(numbers_in(candidate))
    target = _canonical(float(answer))
    others = stated - {target} - set(numbers_in(prompt)) - allowed
    return _graded(target in stated, len(others))


_LARGER = re.compile(r"(\d+)\s+is\s+(?:the\s+)?(?:larger|bigger|greater|higher)")
_LARGER_IS = re.compile(r"(?:larger|bigger|greater|higher)(?:\s+(?:number|one|value))?\s+is\s+(\d+)")
_SMALLER = re.compile(r"(\d+)\s+is\s+(?:the\s+)?(?:smaller|less|lower)")


def _score_compare(candidate: str, prompt: str, answer: str) -> float:
    """Both numbers come from the prompt, so what counts is which one the response calls the larger."""
    given = numbers_in(prompt)
    stated = numbers_in(candidate)
    named = [n for n in stated if n in given]
    if not named:
        return 0.0
    if len(set(named)) == 1:
        claimed = named[0]
    elif m := _LARGER.search(candidate) or _LARGER_IS.search(candidate):
        claimed = m.group(1)
    elif m := _SMALLER.search(candidate):
        claimed = next((n for n in given if n != m.group(1)), m.group(1))
    else:
        claimed = named[0]  # "585 or 31? 585." - the first number named is the answer
    others = set(stated) - set(given)
    return _graded(claimed == _canonical(float(answer)), len(others))


_LIST_SEPARATOR = re.compile(r"\s*(?:,|;|<|->|and|, and)?\s*")


def _number_lists(text: str) -> list[list[str]]:
    """The lists of numbers a text writes: numbers joined only by commas, '<', 'and' or spaces form one list."""
    text = _THOUSANDS.sub("", text)
    lists: list[list[str]] = []
    end = 0
    for m in _DIGIT_NUMBER.finditer(text):
        value = _canonical(float(m.group()))
        if lists and _LIST_SEPARATOR.fullmatch(text[end : m.start()]):
            lists[-1].append(value)
        else:
            lists.append([value])
        end = m.end()
    return lists


def _score_sorting(candidate: str, prompt: str, answer: str) -> float:
    """The sorted list is written; other orderings of the same numbers (besides the prompt's) and invented numbers
    count as conflicting answers. A list as long as several answers ("9, 3, 7, 3, 7, 9") is read in answer-sized
    chunks, so that two lists written together do not form spurious orderings across their border."""
    target, given = tuple(numbers_in(answer)), tuple(numbers_in(prompt))
    n = len(target)
    orderings = set()
    for numbers in _number_lists(candidate):
        starts = range(0, len(numbers), n) if len(numbers) % n == 0 else range(len(numbers) - n + 1)
        orderings |= {tuple(numbers[i : i + n]) for i in starts}
    other_orders = {o for o in orderings if sorted(o) == sorted(target)} - {target, given}
    invented = set(numbers_in(candidate)) - set(target)
    return _graded(target in orderings, len(other_orders) + len(invented))


_SPELLED = re.compile(r"\b(?:[a-z][\s\-,.]{1,2}){2,}[a-z]\b", re.IGNORECASE)


def _score_reverse(candidate: str, prompt: str, answer: str) -> float:
    """The reversed word appears as a word (also spelled out as 'o-n-a-i-p'); other anagrams of it conflict."""
    joined = _SPELLED.sub(lambda m: re.sub(r"[^a-zA-Z]", "", m.group()), candidate)
    words = set(_plain(joined).split())
    target = _plain(answer)
    original = target[::-1]
    others = {w for w in words if sorted(w) == sorted(target)} - {target, original}
    return _graded(target in words, len(others))


def _score_vocabulary(candidate: str, prompt: str, answer: str, vocabulary: set[str]) -> float:
    """The answer is named; other known answers of the task (cities, antonyms) not in the prompt conflict."""
    text, asked, target = _plain(candidate), _plain(prompt), _plain(answer)
    aliases = {target}
    if "," in answer:  # "Washington, D.C." may be written "Washington"
        aliases.add(_plain(answer.split(",")[0]))
    correct = any(_has_phrase(text, a) for a in aliases)
    others = {
        v for v in vocabulary
        if _has_phrase(text, v) and not _has_phrase(asked, v) and not any(_has_phrase(a, v) for a in aliases)
    }  # fmt: skip
    return _graded(correct, len(others))


_CITIES = {_plain(name) for _, capital, city in CAPITALS for name in (capital, city)}
_ANTONYM_WORDS = {_plain(w) for triple in ANTONYMS for w in triple}


def verify(candidate: str, row: dict) -> float | None:
    """Score one response to a built-in row by checking it against the row's `reference_answer`.

    Returns 1.0 when the response gives the reference answer and no conflicting one, 1/(1+n) when it gives it next to
    n conflicting answers, 0.0 when it does not give it, and None when the row has no reference answer (e.g. the
    `advice` task) so the response cannot be checked. Rows of other tasks with a reference answer (user data) are
    checked as a number when the answer is one, else as a phrase that must appear.

    >>> row = {"task": "arithmetic", "prompt": "What is 12 plus 30?", "reference_answer": "42"}
    >>> verify("12 + 30 = 42. The answer is 42.", row), verify("It is 42, or maybe 43.", row), verify("43", row)
    (1.0, 0.5, 0.0)
    """
    answer = (row.get("reference_answer") or "").strip()
    if not answer:
        return None
    prompt = row["prompt"] if isinstance(row["prompt"], str) else " ".join(m["content"] for m in row["prompt"])
    task = row.get("task")
    if task in ("arithmetic", "letters"):
        return _score_numeric(candidate, prompt, answer)
    if task == "units":
        factors = {str(f) for big, small, f in UNITS if big in prompt and small in prompt}
        return _score_numeric(candidate, prompt, answer, factors)
    if task == "compare":
        return _score_compare(candidate, prompt, answer)
    if task == "sorting":
        return _score_sorting(candidate, prompt, answer)
    if task == "reverse":
        return _score_reverse(candidate, prompt, answer)
    if task == "capitals":
        return _score_vocabulary(candidate, prompt, answer, _CITIES)
    if task == "antonyms":
        return _score_vocabulary(candidate, prompt, answer, _ANTONYM_WORDS)
    if _DIGIT_NUMBER.fullmatch(answer.replace(",", "")):
        return _score_numeric(candidate, prompt, answer.replace(",", ""))
    return _graded(_has_phrase(_plain(candidate), _plain(answer)), 0)


def import_function(spec: str, field: str) -> Callable:
    """The function named by `module:function` (an importable module, or a module in the current directory) or
    `path/to/file.py:function`; `field` names the setting in error messages."""
    module_name, _, attr = spec.rpartition(":")
    if not module_name or not attr:
        raise AlignkitError(f"{field} {spec!r}: expected 'module:function' or 'path/to/file.py:function'")
    try:
        if module_name.endswith(".py"):
            path = Path(module_name)
            if not path.is_file():
                raise AlignkitError(f"{field} {spec!r}: file {path} does not exist")
            module_spec = importlib.util.spec_from_file_location(path.stem, path)
            module = importlib.util.module_from_spec(module_spec)
            module_spec.loader.exec_module(module)
        else:
            # A script's folder is on sys.path, the current directory is not (unlike `python -m`): add it, so that
            # `my_checks:score` finds my_checks.py where the user launched the command.
            if os.getcwd() not in sys.path and "" not in sys.path:
                sys.path.append(os.getcwd())
            module = importlib.import_module(module_name)
    except ImportError as err:
        raise AlignkitError(f"{field} {spec!r}: cannot import {module_name!r}: {err}") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise AlignkitError(f"{field} {spec!r}: {module_name!r} has no function {attr!r}")
    return fn


def load_verifier(spec: str = BUILTIN, field: str = "verifier") -> Verifier:
    """`verify` for 'builtin', else the user's `module:function` called as f(response, row) -> score or None."""
    return verify if spec == BUILTIN else import_function(spec, field)
