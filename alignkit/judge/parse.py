"""Judge prompt templates (files with ChatML-style sections) and the verdict parser.

Templates follow alpaca_eval's convention: the file is the whole conversation, split into messages at
`<|im_start|>role` ... `<|im_end|>` markers, with `{instruction}`, `{output_a}` and `{output_b}` placeholders. The
template's SHA-256 is part of every cache key, so editing a template never serves verdicts made with the old text.
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

from alignkit.errors import AlignkitError

Verdict = str  # "A", "B", "tie"

_SECTION = re.compile(r"<\|im_start\|>(system|user|assistant)\n(.*?)<\|im_end\|>", re.DOTALL)
_PLACEHOLDER = re.compile(r"\{(instruction|output_a|output_b)\}")
# Tags the template uses to fence the responses. A response that contains them could close its own fence and
# pose as instructions or as the other response, so they are defused before rendering.
_FENCE_TAG = re.compile(r"<\s*(/?)\s*(instruction|response_a|response_b)\s*>", re.IGNORECASE)


@dataclass(frozen=True)
class Template:
    name: str
    text: str

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()

    def render(self, instruction: str, output_a: str, output_b: str) -> list[dict[str, str]]:
        """Chat messages for one comparison; responses are substituted in a single pass and defused."""
        values = {
            "instruction": defuse(instruction),
            "output_a": defuse(output_a),
            "output_b": defuse(output_b),
        }
        messages = []
        for role, body in _SECTION.findall(self.text):
            # One regex pass: a response that itself contains "{output_b}" is inserted verbatim, never re-expanded.
            content = _PLACEHOLDER.sub(lambda m: values[m.group(1)], body.strip("\n"))
            messages.append({"role": role, "content": content})
        return messages


def defuse(text: str) -> str:
    """Rewrite fence tags inside untrusted text so that only the template's own tags delimit responses."""
    return _FENCE_TAG.sub(lambda m: f"[{m.group(1)}{m.group(2)}]", text)


def load_template(name_or_path: str) -> Template:
    """A template shipped with alignkit (by name, e.g. 'pairwise') or a file path."""
    path = Path(name_or_path)
    if path.suffix == ".txt" or path.exists():
        if not path.is_file():
            raise AlignkitError(f"judge.template: file {path} does not exist.")
        text = path.read_text(encoding="utf-8")
        name = str(path)
    else:
        resource = files("alignkit.judge") / "templates" / f"{name_or_path}.txt"
        if not resource.is_file():
            shipped = sorted(p.name.removesuffix(".txt") for p in (files("alignkit.judge") / "templates").iterdir())
            raise AlignkitError(f"judge.template={name_or_path!r}: no such template; shipped ones: {shipped}.")
        text = resource.read_text(encoding="utf-8")
        name = name_or_path
    sections = _SECTION.findall(text)
    if not sections:
        raise AlignkitError(f"judge.template {name}: no <|im_start|>role ... <|im_end|> sections found.")
    found = set(_PLACEHOLDER.findall(text))
    missing = {"instruction", "output_a", "output_b"} - found
    if missing:
        raise AlignkitError(
            f"judge.template {name}: placeholders {sorted('{' + m + '}' for m in missing)} are missing."
        )
    return Template(name=name, text=text)


_BRACKETED = re.compile(r"\[\[\s*(A|B|C|tie)\s*\]\]", re.IGNORECASE)
_VERDICT_WORD = re.compile(
    r"(?:final\s+)?verdict\s*(?:is)?\s*[:\-=]?\s*[*\"'`(\[]*\s*(?:response|assistant|output)?\s*((?-i:[ABC])|tie)\b",
    re.IGNORECASE,
)
_SINGLE = re.compile(r"(?<!\[)\[\s*((?-i:[ABC])|tie)\s*\](?!\])", re.IGNORECASE)
_LEADING = re.compile(
    r"^[\W_]*(?:response|answer|assistant|output)?\s*((?-i:[AB]))\s+is\s+(?:indeed\s+|clearly\s+)?(?:the\s+)?"
    r"(?:better|best|correct|more\s+(?:accurate|helpful|correct))\b",
    re.IGNORECASE,
)
_BARE = re.compile(r"^[\s*\"'`(\[]*(?:response|assistant|output)?\s*([AB]|C|tie)[\s*\"'`)\].]*$", re.IGNORECASE)


def _normalise(label: str) -> Verdict:
    label = label.upper()
    return "tie" if label in ("C", "TIE") else label


def parse_verdict(text: str | None) -> Verdict | None:
    """'A', 'B' or 'tie' from a judge's answer, or None when the answer does not state one unambiguously.

    Accepted, in order of trust: `[[A]]`/`[[B]]`/`[[C]]` markers (if they disagree, the last one after the word
    "verdict" decides, else the answer is ambiguous); "Verdict: A"; single-bracket `[A]` markers that agree (small
    models drop a bracket); an answer that opens with "A is better/correct"; an answer that is only a label. Anything
    else is None: a guess would bias the win rate in whatever direction the guess leans.

    >>> parse_verdict("B is more accurate.\\n[[B]]")
    'B'
    >>> parse_verdict("Both are fine. [[C]]")
    'tie'
    >>> parse_verdict("I like A better than B") is None
    True
    """
    if not text:
        return None
    markers = [_normalise(m) for m in _BRACKETED.findall(text)]
    if markers:
        if len(set(markers)) == 1:
            return markers[0]
        # Mixed markers ("not [[A]] but [[B]]"): only an explicit final verdict resolves them.
        tail = text[text.lower().rfind("verdict") :] if "verdict" in text.lower() else ""
        tail_markers = {_normalise(m) for m in _BRACKETED.findall(tail)}
        return tail_markers.pop() if len(tail_markers) == 1 else None
    words = {_normalise(m) for m in _VERDICT_WORD.findall(text)}
    if len(words) == 1:
        return words.pop()
    if len(words) > 1:
        return None
    single = {_normalise(m) for m in _SINGLE.findall(text)}
    if len(single) == 1:
        return single.pop()
    if len(single) > 1:
        return None
    leading = _LEADING.match(text.strip())
    if leading:
        return leading.group(1)
    bare = _BARE.match(text.strip())
    return _normalise(bare.group(1)) if bare else None


def reason_of(text: str | None) -> str:
    """The judge's explanation: its answer without the verdict markers."""
    if not text:
        return ""
    return _SINGLE.sub("", _BRACKETED.sub("", text)).strip()


_LABEL_AFTER_BRACKETS = re.compile(r"\[\[\s*([ABC])\s*$")
_BEFORE_BARE_LABEL = re.compile(r"(?:^|:|verdict(?:\s+is)?)\s*[\"'`*(\[]*$", re.IGNORECASE)


def _label(token: str) -> str | None:
    """'A', 'B' or 'C' for a token that is only a verdict label (spaces, brackets and quotes aside), else None."""
    core = token.strip().strip("[]*\"'`().")
    return core if core in ("A", "B", "C") else None


def verdict_log_odds(tokens: list[tuple[str, dict[str, float]]] | None) -> float | None:
    """log P(A) - log P(B) at the token where the judge writes its verdict label, or None when it writes none.

    `tokens` are the generated tokens, each with the log-probs of its top alternatives (the token itself included).
    The verdict token is the label that completes the first `[[`, else a label that opens the answer or follows
    "Verdict:", else the first token when A or B is among its alternatives (a judge asked to reply with one letter
    that starts otherwise still ranks the letters there). P(A) and P(B) are summed over the alternatives that are
    that label (' A' and 'A' are different tokens). A label missing from the alternatives is given the smallest
    log-prob listed, an upper bound of its own, so that the log-odds is never more extreme than the evidence.

    >>> round(verdict_log_odds([("Verdict", {"Verdict": 0.0}), (": [[", {": [[": 0.0}),
    ...                         ("A", {"A": -0.2, "B": -1.8, "C": -4.0}), ("]]", {"]]": 0.0})]), 6)
    1.6
    """
    if not tokens:
        return None
    text = ""
    fallback = None
    for token, alternatives in tokens:
        label = _label(token)
        if label is not None:
            if _LABEL_AFTER_BRACKETS.search(text + token.strip().rstrip("]")):
                return _log_odds(alternatives)
            if fallback is None and _BEFORE_BARE_LABEL.search(text):
                fallback = alternatives
        text += token
    if fallback is None and any(_label(t) in ("A", "B") for t in tokens[0][1]):
        fallback = tokens[0][1]
    return None if fallback is None else _log_odds(fallback)


def _log_odds(alternatives: dict[str, float]) -> float:
    floor = min(alternatives.values())
    mass = {"A": [], "B": []}
    for token, logprob in alternatives.items():
        label = _label(token)
        if label in mass:
            mass[label].append(logprob)
    a, b = (_logsumexp(mass[k]) if mass[k] else floor for k in ("A", "B"))
    return a - b


def _logsumexp(values: list[float]) -> float:
    top = max(values)
    return top + math.log(sum(math.exp(v - top) for v in values))
