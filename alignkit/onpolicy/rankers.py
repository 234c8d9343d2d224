"""Rankers: score k sampled responses per prompt so the best and the worst can form an on-policy pair.

Every ranker is a callable `ranker(prompts, candidates, rows) -> scores`:

* `prompts[i]`: the prompt (a string or a list of chat messages), `candidates[i]`: its k sampled responses,
  `rows[i]`: the whole dataset row it came from (so a ranker can read `reference_answer`, `task`, ...);
* `scores[i][j]`: a float (higher is better) or None when the ranker cannot score that response.

Four kinds ship: `builtin_verifier` (code that checks the built-in data's `reference_answer`), `JudgeRanker` (an LLM
judge on alignkit.judge's client and cache), `RewardModelRanker` (a sequence-classification model) and any function
named as `module:function` (`load_callable`). `ranker_from_config` picks one from the recipe config.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import inspect
import math
import os
import re
import sys
import unicodedata
from collections.abc import Callable, Sequence
from itertools import combinations
from pathlib import Path

import torch

from alignkit.data.builtin import ANTONYMS, CAPITALS, UNITS
from alignkit.errors import AlignkitError
from alignkit.sequences import Prompt

Scores = list[list[float | None]]
Ranker = Callable[[Sequence[Prompt], Sequence[Sequence[str]], Sequence[dict]], Scores]

# --- the verifier for the built-in data


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


def builtin_verifier(prompts: Sequence[Prompt], candidates: Sequence[Sequence[str]], rows: Sequence[dict]) -> Scores:
    """The ranker for the built-in data: `verify` on every candidate (None for rows without a reference answer)."""
    return [[verify(c, row) for c in cands] for cands, row in zip(candidates, rows)]


# --- any function


def load_callable(spec: str) -> Ranker:
    """`module:function` (an importable module, or a module in the current directory) or `path/to/file.py:function`,
    as a ranker.

    A function with two parameters is called as f(prompts, candidates); one that takes three also gets the rows.
    """
    module_name, _, attr = spec.rpartition(":")
    if not module_name or not attr:
        raise AlignkitError(f"ranker_path {spec!r}: expected 'module:function' or 'path/to/file.py:function'")
    try:
        if module_name.endswith(".py"):
            path = Path(module_name)
            if not path.is_file():
                raise AlignkitError(f"ranker_path {spec!r}: file {path} does not exist")
            module_spec = importlib.util.spec_from_file_location(path.stem, path)
            module = importlib.util.module_from_spec(module_spec)
            module_spec.loader.exec_module(module)
        else:
            # A script's folder is on sys.path, the current directory is not (unlike `python -m`): add it, so that
            # `my_rankers:score` finds my_rankers.py where the user launched the recipe.
            if os.getcwd() not in sys.path and "" not in sys.path:
                sys.path.append(os.getcwd())
            module = importlib.import_module(module_name)
    except ImportError as err:
        raise AlignkitError(f"ranker_path {spec!r}: cannot import {module_name!r}: {err}") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise AlignkitError(f"ranker_path {spec!r}: {module_name!r} has no function {attr!r}")
    try:
        inspect.signature(fn).bind(None, None, None)
    except TypeError:
        return lambda prompts, candidates, rows: fn(prompts, candidates)
    except ValueError:  # builtins without a signature: assume the documented three-argument form
        pass
    return fn


# --- a reward model


class RewardModelRanker:
    """Scores (prompt, response) with a transformers sequence-classification model: its single logit, or for a
    classifier with several labels the probability of the last one (by convention the positive label)."""

    def __init__(self, path: str, batch_size: int = 16, max_length: int = 1024, device: str | None = None):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path)
            self.model = AutoModelForSequenceClassification.from_pretrained(path)
        except OSError as err:
            raise AlignkitError(f"ranker_path {path!r}: cannot load a reward model: {err}") from None
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        if self.model.config.pad_token_id is None:  # needed to find each row's last token
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.tokenizer.padding_side = "right"
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model.to(self.device).eval()
        self.batch_size = batch_size
        self.max_length = max_length

    def text(self, prompt: Prompt, response: str) -> str:
        if isinstance(prompt, str):
            return f"{prompt}\n{response}"
        if self.tokenizer.chat_template:
            return self.tokenizer.apply_chat_template(
                [*prompt, {"role": "assistant", "content": response}], tokenize=False
            )
        return "\n".join(f"{m['role']}: {m['content']}" for m in [*prompt, {"role": "assistant", "content": response}])

    @torch.inference_mode()
    def __call__(self, prompts, candidates, rows=None) -> Scores:
        texts = [self.text(p, c) for p, cands in zip(prompts, candidates) for c in cands]
        flat: list[float] = []
        for start in range(0, len(texts), self.batch_size):
            batch = self.tokenizer(
                texts[start : start + self.batch_size],
                return_tensors="pt",
                padding=True,
                truncation=True,
                max_length=self.max_length,
                add_special_tokens=False,
            ).to(self.device)
            logits = self.model(**batch).logits.float()
            values = logits[:, 0] if logits.shape[-1] == 1 else logits.softmax(-1)[:, -1]
            flat.extend(values.tolist())
        out, i = [], 0
        for cands in candidates:
            out.append(flat[i : i + len(cands)])
            i += len(cands)
        return out


# --- an LLM judge


POINTWISE_TEMPLATE = Path(__file__).parent / "templates" / "pointwise.txt"
POINTWISE_SCORES = {"A": 1.0, "tie": 0.5, "B": 0.0}  # the pointwise template's labels: good / partly / bad


class JudgeRanker:
    """Ranks with an LLM judge through alignkit.judge's client: its retries, request budget and crash-safe cache.

    'pairwise' plays a round-robin tournament: every pair of distinct responses in both orders, each pair scored with
    the judge's order-debiasing (`combine_orders`: a verdict that flips with the order is a tie); a response's score
    is its mean over its games. 'pointwise' grades each response alone, against the row's `reference_answer` when
    there is one, with the shipped `pointwise.txt` template ([[A]] good = 1, [[C]] partly = 0.5, [[B]] bad = 0).
    Identical responses are judged once. A judgment that failed (error, unparseable, budget spent) scores None.
    """

    def __init__(self, judge, mode: str, cache_path: str | Path, log_dir: str | Path | None = None):
        from alignkit.judge.cache import JudgmentCache
        from alignkit.judge.client import JudgeRunner
        from alignkit.judge.parse import load_template

        self.judge = judge
        self.mode = mode
        template = load_template(str(POINTWISE_TEMPLATE) if mode == "pointwise" else judge.template)
        self.cache = JudgmentCache(cache_path)
        self.runner = JudgeRunner(judge, template, self.cache)
        self.log_dir = Path(log_dir) if log_dir is not None else Path(cache_path).parent

    def _run(self, comparisons: list) -> list:
        with contextlib.ExitStack() as stack:
            base_url = None
            if self.judge.is_local and self.runner.uncached(comparisons):  # a fully cached rerun needs no server
                from alignkit.judge.local_server import LocalJudgeServer

                server = stack.enter_context(
                    LocalJudgeServer(
                        self.judge.local_gguf,
                        n_ctx=self.judge.local_n_ctx,
                        n_threads=self.judge.local_n_threads,
                        model_alias=self.judge.model,
                        startup_timeout_s=self.judge.local_startup_timeout_s,
                        log_path=self.log_dir / "judge_server.log",
                    )
                )
                base_url = server.base_url
            return self.runner.run(comparisons, base_url, progress=False)

    def __call__(self, prompts, candidates, rows=None) -> Scores:
        from alignkit.judge.client import Comparison
        from alignkit.judge.inputs import instruction_text
        from alignkit.judge.metrics import combine_orders

        rows = rows if rows is not None else [{} for _ in prompts]
        questions: list[tuple[int, tuple, Comparison]] = []  # (prompt index, what it decides, the comparison)
        unique = [list(dict.fromkeys(c)) for c in candidates]
        for i, (prompt, texts, row) in enumerate(zip(prompts, unique, rows)):
            instruction = instruction_text(prompt)
            if self.mode == "pointwise":
                reference = (row.get("reference_answer") or "").strip() or "(no reference answer)"
                questions += [(i, (t,), Comparison(instruction, t, reference)) for t in texts]
            else:
                for a, b in combinations(texts, 2):
                    questions.append((i, (a, b), Comparison(instruction, a, b)))
                    questions.append((i, (b, a), Comparison(instruction, b, a)))
        judgments = self._run([q[2] for q in questions]) if questions else []
        verdicts = {(i, key): j.verdict if j.status == "ok" else None for (i, key, _), j in zip(questions, judgments)}
        scores: Scores = []
        for i, (cands, texts) in enumerate(zip(candidates, unique)):
            by_text: dict[str, float | None] = {}
            for t in texts:
                if self.mode == "pointwise":
                    verdict = verdicts.get((i, (t,)))
                    by_text[t] = POINTWISE_SCORES.get(verdict) if verdict else None
                    continue
                games = []
                for other in texts:
                    first, second = verdicts.get((i, (t, other))), verdicts.get((i, (other, t)))
                    if other != t and first and second:
                        games.append(combine_orders(first, second)[0])
                by_text[t] = sum(games) / len(games) if games else (0.5 if len(texts) == 1 else None)
            scores.append([by_text[c] for c in cands])
        return scores

    def close(self) -> None:
        self.cache.close()


# --- choosing one from the config


def ranker_from_config(p, stage_dir: Path, device: str | None = None) -> Ranker:
    """The ranker the preference config names (`ranker`, `ranker_path`, `ranker_judge_*`)."""
    if p.ranker == "builtin_verifier":
        return builtin_verifier
    if p.ranker == "callable":
        return load_callable(p.ranker_path)
    if p.ranker == "reward_model":
        return RewardModelRanker(p.ranker_path, batch_size=p.onpolicy_batch_size, device=device)
    from alignkit.judge.config import JudgeConfig

    judge = JudgeConfig(base_url=p.ranker_path, model=p.ranker_judge_model, api_key_env=p.ranker_judge_api_key_env)
    return JudgeRanker(judge, p.ranker_judge_mode, stage_dir / "judge_cache.jsonl", stage_dir)


def check_scores(scores, candidates: Sequence[Sequence[str]], where: str) -> Scores:
    """The ranker's output, checked: one list per prompt, one number (or None) per candidate; NaN becomes None."""
    if not isinstance(scores, list | tuple) or len(scores) != len(candidates):
        got = len(scores) if isinstance(scores, list | tuple) else type(scores).__name__
        raise AlignkitError(f"{where}: the ranker returned {got} score lists for {len(candidates)} prompts")
    out: Scores = []
    for i, (row, cands) in enumerate(zip(scores, candidates)):
        row = row.tolist() if hasattr(row, "tolist") else list(row) if isinstance(row, tuple) else row
        if not isinstance(row, list) or len(row) != len(cands):
            raise AlignkitError(f"{where}: prompt {i}: the ranker returned {row!r} for {len(cands)} candidates")
        checked = []
        for value in row:
            if value is None:
                checked.append(None)
                continue
            try:
                value = float(value)
            except (TypeError, ValueError):
                raise AlignkitError(f"{where}: prompt {i}: score {value!r} is not a number") from None
            checked.append(value if math.isfinite(value) else None)
        out.append(checked)
    return out
