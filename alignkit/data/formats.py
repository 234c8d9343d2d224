"""Turning the common preference-data layouts into one: `prompt`, `chosen`, `rejected`.

Conversational data stays conversational (`prompt` a list of messages, `chosen`/`rejected` a one-message list), plain
data stays plain strings; TRL's trainers accept both. Every row is checked, and a bad row raises an `AlignkitError`
that starts with the row's location (`file.jsonl:LINE`, the file's own line; `source row N` where there are no lines)
and names the field: nothing is dropped silently.
"""

from __future__ import annotations

import re

from alignkit.errors import AlignkitError

# Extra columns the probes know how to use; kept when present.
PROBE_COLUMNS = ("chosen_rephrase", "rejected_rephrase", "chosen_reformat", "rejected_reformat")
KEEP_COLUMNS = ("id", "task", "reference_answer", *PROBE_COLUMNS)
HH_TURN = re.compile(r"\n\n(Human|Assistant): ")


def detect_format(columns: list[str], first_row: dict, where: str) -> str:
    """The format of data whose first row (at `where`) has `columns`."""
    cols = set(columns)
    if {"prompt", "chosen", "rejected"} <= cols:
        chosen = first_row["chosen"]
        first = chosen[0] if isinstance(chosen, list) and len(chosen) > 1 else None
        if isinstance(first, dict) and first.get("role") != "assistant":
            return "ultrafeedback"  # the conversation is repeated in chosen/rejected; `prompt` is its first turn
        return "preference"
    if {"chosen", "rejected"} <= cols:
        if isinstance(first_row["chosen"], str) and "Human:" in first_row["chosen"]:
            return "hh"
        return "ultrafeedback"  # implicit prompt: full conversations in chosen/rejected
    missing = sorted({"prompt", "chosen", "rejected"} - cols)
    raise AlignkitError(
        f"{where}: missing column(s) {', '.join(missing)} (found: {', '.join(sorted(cols)) or 'none'}). Expected "
        "prompt/chosen/rejected (TRL), chosen/rejected transcripts (Anthropic HH) or chosen/rejected message lists "
        "(UltraFeedback binarized)."
    )


def _where(where: str, field: str | None = None) -> str:
    return where + (f": field '{field}'" if field else "")


def _check_text(value, where: str, field: str) -> None:
    if not isinstance(value, str):
        raise AlignkitError(f"{_where(where, field)}: expected text, got {type(value).__name__}")
    if not value.strip():
        raise AlignkitError(f"{_where(where, field)}: empty")


def _check_messages(value, where: str, field: str) -> None:
    if not isinstance(value, list) or not value:
        raise AlignkitError(f"{_where(where, field)}: expected a non-empty list of messages")
    for i, message in enumerate(value):
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise AlignkitError(f"{_where(where, field)}: message {i} needs 'role' and 'content'")
        _check_text(message["content"], where, f"{field}[{i}].content")


def split_hh(transcript: str, where: str, field: str) -> tuple[list[dict], list[dict]]:
    """An Anthropic-HH transcript ('\\n\\nHuman: …\\n\\nAssistant: …') as (prompt messages, final answer)."""
    _check_text(transcript, where, field)
    parts = HH_TURN.split(transcript)
    # parts = [text before the first turn, role, content, role, content, ...]
    if len(parts) < 5 or parts[-2] != "Assistant":
        raise AlignkitError(f"{_where(where, field)}: not an HH transcript ending in an '\\n\\nAssistant: ' turn")
    messages = [
        {"role": "user" if role == "Human" else "assistant", "content": content.strip()}
        for role, content in zip(parts[1::2], parts[2::2])
    ]
    return messages[:-1], messages[-1:]


def normalize_row(raw: dict, fmt: str, where: str) -> dict:
    """One raw row (at location `where`) in format `fmt` → {prompt, chosen, rejected, *kept columns}; raises on
    anything unusable."""
    for col in ("chosen", "rejected") + (("prompt",) if fmt == "preference" else ()):
        if raw.get(col) is None:
            raise AlignkitError(f"{_where(where, col)}: missing or null")
    if fmt == "hh":
        prompt, chosen = split_hh(raw["chosen"], where, "chosen")
        prompt_r, rejected = split_hh(raw["rejected"], where, "rejected")
        if prompt != prompt_r:
            raise AlignkitError(f"{_where(where)}: 'chosen' and 'rejected' transcripts have different prompts")
    elif fmt == "ultrafeedback":
        _check_messages(raw["chosen"], where, "chosen")
        _check_messages(raw["rejected"], where, "rejected")
        prompt, chosen, rejected = raw["chosen"][:-1], raw["chosen"][-1:], raw["rejected"][-1:]
        if raw["rejected"][:-1] != prompt:
            raise AlignkitError(f"{_where(where)}: 'chosen' and 'rejected' conversations have different prompts")
        if not prompt:
            raise AlignkitError(f"{_where(where, 'chosen')}: conversation has no prompt before the answer")
        for field, msgs in (("chosen", chosen), ("rejected", rejected)):
            if msgs[0]["role"] != "assistant":
                raise AlignkitError(f"{_where(where, field)}: last message is not from the assistant")
    else:
        prompt, chosen, rejected = raw["prompt"], raw["chosen"], raw["rejected"]
        conversational = isinstance(prompt, list)
        for field, value in (("prompt", prompt), ("chosen", chosen), ("rejected", rejected)):
            if conversational:
                _check_messages(value, where, field)
            else:
                _check_text(value, where, field)
    if _text(chosen) == _text(rejected):
        raise AlignkitError(f"{_where(where)}: 'chosen' and 'rejected' are identical")
    out = {"prompt": prompt, "chosen": chosen, "rejected": rejected}
    for col in KEEP_COLUMNS:
        if raw.get(col) is not None:
            out[col] = raw[col]
    return out


def _text(response) -> str:
    return response if isinstance(response, str) else "".join(m["content"] for m in response)
