"""Turning the common preference-data layouts into one: `prompt`, `chosen`, `rejected`.

Conversational data stays conversational (`prompt` a list of messages, `chosen`/`rejected` a one-message list), plain
data stays plain strings; TRL's trainers accept both. Every row is checked, and a bad row raises an `AlignkitError`
naming the source, the row (1-based) and the field: nothing is dropped silently.
"""

from __future__ import annotations

import re

from alignkit.errors import AlignkitError

# Extra columns the probes know how to use; kept when present.
PROBE_COLUMNS = ("chosen_rephrase", "rejected_rephrase", "chosen_reformat", "rejected_reformat")
KEEP_COLUMNS = ("id", "task", "reference_answer", *PROBE_COLUMNS)
HH_TURN = re.compile(r"\n\n(Human|Assistant): ")


def detect_format(columns: list[str], first_row: dict, source: str) -> str:
    cols = set(columns)
    if {"prompt", "chosen", "rejected"} <= cols:
        chosen = first_row["chosen"]
        if isinstance(chosen, list) and len(chosen) > 1 and chosen[0].get("role") != "assistant":
            return "ultrafeedback"  # the conversation is repeated in chosen/rejected; `prompt` is its first turn
        return "preference"
    if {"chosen", "rejected"} <= cols:
        if isinstance(first_row["chosen"], str) and "Human:" in first_row["chosen"]:
            return "hh"
        return "ultrafeedback"  # implicit prompt: full conversations in chosen/rejected
    missing = sorted({"prompt", "chosen", "rejected"} - cols)
    raise AlignkitError(
        f"{source}: missing column(s) {', '.join(missing)} (found: {', '.join(sorted(cols)) or 'none'}). Expected "
        "prompt/chosen/rejected (TRL), chosen/rejected transcripts (Anthropic HH) or chosen/rejected message lists "
        "(UltraFeedback binarized)."
    )


def _where(source: str, row: int, field: str | None = None) -> str:
    return f"{source} row {row}" + (f" field '{field}'" if field else "")


def _check_text(value, source: str, row: int, field: str) -> None:
    if not isinstance(value, str):
        raise AlignkitError(f"{_where(source, row, field)}: expected text, got {type(value).__name__}")
    if not value.strip():
        raise AlignkitError(f"{_where(source, row, field)}: empty")


def _check_messages(value, source: str, row: int, field: str) -> None:
    if not isinstance(value, list) or not value:
        raise AlignkitError(f"{_where(source, row, field)}: expected a non-empty list of messages")
    for i, message in enumerate(value):
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise AlignkitError(f"{_where(source, row, field)}: message {i} needs 'role' and 'content'")
        _check_text(message["content"], source, row, f"{field}[{i}].content")


def split_hh(transcript: str, source: str, row: int, field: str) -> tuple[list[dict], list[dict]]:
    """An Anthropic-HH transcript ('\\n\\nHuman: …\\n\\nAssistant: …') as (prompt messages, final answer)."""
    _check_text(transcript, source, row, field)
    parts = HH_TURN.split(transcript)
    # parts = [text before the first turn, role, content, role, content, ...]
    if len(parts) < 5 or parts[-2] != "Assistant":
        raise AlignkitError(
            f"{_where(source, row, field)}: not an HH transcript ending in an '\\n\\nAssistant: ' turn"
        )
    messages = [
        {"role": "user" if role == "Human" else "assistant", "content": content.strip()}
        for role, content in zip(parts[1::2], parts[2::2])
    ]
    return messages[:-1], messages[-1:]


def normalize_row(raw: dict, fmt: str, source: str, row: int) -> dict:
    """One raw row in format `fmt` → {prompt, chosen, rejected, *kept columns}; raises on anything unusable."""
    for col in ("chosen", "rejected") + (("prompt",) if fmt == "preference" else ()):
        if raw.get(col) is None:
            raise AlignkitError(f"{_where(source, row, col)}: missing or null")
    if fmt == "hh":
        prompt, chosen = split_hh(raw["chosen"], source, row, "chosen")
        prompt_r, rejected = split_hh(raw["rejected"], source, row, "rejected")
        if prompt != prompt_r:
            raise AlignkitError(f"{_where(source, row)}: 'chosen' and 'rejected' transcripts have different prompts")
    elif fmt == "ultrafeedback":
        _check_messages(raw["chosen"], source, row, "chosen")
        _check_messages(raw["rejected"], source, row, "rejected")
        prompt, chosen, rejected = raw["chosen"][:-1], raw["chosen"][-1:], raw["rejected"][-1:]
        if raw["rejected"][:-1] != prompt:
            raise AlignkitError(f"{_where(source, row)}: 'chosen' and 'rejected' conversations have different prompts")
        if not prompt:
            raise AlignkitError(f"{_where(source, row, 'chosen')}: conversation has no prompt before the answer")
        for field, msgs in (("chosen", chosen), ("rejected", rejected)):
            if msgs[0]["role"] != "assistant":
                raise AlignkitError(f"{_where(source, row, field)}: last message is not from the assistant")
    else:
        prompt, chosen, rejected = raw["prompt"], raw["chosen"], raw["rejected"]
        conversational = isinstance(prompt, list)
        for field, value in (("prompt", prompt), ("chosen", chosen), ("rejected", rejected)):
            if conversational:
                _check_messages(value, source, row, field)
            else:
                _check_text(value, source, row, field)
    if _text(chosen) == _text(rejected):
        raise AlignkitError(f"{_where(source, row)}: 'chosen' and 'rejected' are identical")
    out = {"prompt": prompt, "chosen": chosen, "rejected": rejected}
    for col in KEEP_COLUMNS:
        if raw.get(col) is not None:
            out[col] = raw[col]
    return out


def _text(response) -> str:
    return response if isinstance(response, str) else "".join(m["content"] for m in response)
