"""A trainer's own dataset as probe rows (`prompt`, `chosen`, and `rejected` where the data has one), whatever TRL
format it is in, so that `SqueezingCallback()` can build its probe set from the data the trainer trains on.

| TRL format | columns | probe row |
|---|---|---|
| preference, explicit prompt | `prompt`, `chosen`, `rejected` (strings or messages) | as is |
| preference, implicit prompt | `chosen`, `rejected` (conversations, transcripts) | prompt = their common start |
| prompt-completion (SFT) | `prompt`, `completion` | `chosen` = the completion; no `rejected` |
| conversational (SFT) | `messages` ending in an assistant turn | `prompt` = the turns before it, `chosen` = it |
| language modeling (SFT) | `text` | `prompt` = the first half of the words, `chosen` = the rest |

TRL appends the EOS token to plain-text responses when it prepares a dataset; it is taken off here, since probe
scoring adds its own. (A prepared dataset always has `prompt`: TRL splits an implicit one off as here.) A row that
fits none of these raises an `AlignkitError` naming the row and the columns found. Unlike the recipe's data loader
(`alignkit.data.formats`), nothing else is checked: this is the trainer's data, which it has accepted already.
"""

from __future__ import annotations

from alignkit.errors import AlignkitError

KEPT_COLUMNS = ("id", "chosen_rephrase", "rejected_rephrase", "chosen_reformat", "rejected_reformat")


def probe_rows(dataset, eos_token: str | None = None, name: str = "training") -> list[dict]:
    """Every row of `dataset` (a `datasets.Dataset`, or any iterable of dicts) as a probe row; [] for None."""
    if dataset is None:
        return []
    rows = [dict(row) for row in dataset]
    return [_probe_row(row, eos_token, f"{name} dataset row {i}") for i, row in enumerate(rows)]


def data_format(row: dict) -> str:
    """Which of the module's formats a row is in: preference, prompt_completion, messages, text (or raises)."""
    if {"chosen", "rejected"} <= row.keys():
        return "preference"
    if {"prompt", "completion"} <= row.keys():
        return "prompt_completion"
    if "messages" in row:
        return "messages"
    if "text" in row:
        return "text"
    raise AlignkitError(
        f"the trainer's dataset has columns {sorted(row)}: the squeezing monitor needs TRL's preference "
        "(prompt/chosen/rejected), prompt-completion, messages or text columns (the raw text, not only token ids)"
    )


def _probe_row(row: dict, eos_token: str | None, where: str) -> dict:
    fmt = data_format(row)
    if fmt == "preference":
        chosen, rejected = _strip_eos(row["chosen"], eos_token), _strip_eos(row["rejected"], eos_token)
        if row.get("prompt") is None:
            cut = _common_start(chosen, rejected)
            if cut == 0:
                raise AlignkitError(f"{where}: no 'prompt', and 'chosen' and 'rejected' share no prompt to split off")
            row = {**row, "prompt": chosen[:cut]}
            chosen, rejected = chosen[cut:], rejected[cut:]
        out = {"prompt": row["prompt"], "chosen": chosen, "rejected": rejected}
    elif fmt == "prompt_completion":
        out = {"prompt": row["prompt"], "chosen": _strip_eos(row["completion"], eos_token)}
    elif fmt == "messages":
        messages = row["messages"]
        if not isinstance(messages, list) or len(messages) < 2 or messages[-1].get("role") != "assistant":
            raise AlignkitError(f"{where}: field 'messages' does not end in an assistant turn after a prompt")
        out = {"prompt": messages[:-1], "chosen": messages[-1:]}
    else:
        words = _strip_eos(row["text"], eos_token).split()
        if len(words) < 2:
            raise AlignkitError(f"{where}: field 'text' has fewer than 2 words to split into prompt and answer")
        half = len(words) // 2
        out = {"prompt": " ".join(words[:half]), "chosen": " " + " ".join(words[half:])}
    out.update({k: row[k] for k in KEPT_COLUMNS if row.get(k) is not None})
    return out


def _strip_eos(response, eos_token: str | None):
    if isinstance(response, str) and eos_token and response.endswith(eos_token):
        return response[: -len(eos_token)]
    return response


def _common_start(chosen, rejected) -> int:
    """Where a preference pair with an implicit prompt stops agreeing: whole messages, or characters (then backed
    off to the space before the answer), as TRL's `extract_prompt` splits it."""
    cut = 0
    while cut < min(len(chosen), len(rejected)) and chosen[cut] == rejected[cut]:
        cut += 1
    if isinstance(chosen, str) and cut > 0 and chosen[cut - 1] == " ":
        cut -= 1
    return cut
