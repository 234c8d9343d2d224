"""Where the two sides' responses come from: an outputs JSONL, or a model that generates them on a prompt set.

Outputs JSONL: one object per line with `prompt` (a string or a list of chat messages; `instruction` is accepted as
an alias, as in AlpacaEval files) and `output` (a string or a list holding one assistant message; alias `response`),
optionally `id`. The files this module writes for generated responses have the same format, so a run's outputs can be
judged again later, or against another model, without regenerating.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from alignkit.errors import AlignkitError
from alignkit.jsonl import location, read_jsonl, write_jsonl_atomic

if TYPE_CHECKING:  # alignkit.sequences imports torch, which judging two JSONL files does not need
    from alignkit.sequences import Prompt

ModelSpec = str | os.PathLike | tuple  # path/hub id/adapter/.gguf, or an already loaded (model, tokenizer)


def prompt_key(prompt: Prompt) -> str:
    """The text that identifies a prompt: a lone user message counts as its plain content, so that a string prompt
    in one file matches the same question in chat form in another."""
    if isinstance(prompt, str):
        return prompt
    if len(prompt) == 1 and prompt[0].get("role") == "user":
        return prompt[0]["content"]
    return json.dumps(prompt, ensure_ascii=False, sort_keys=True)


def instruction_text(prompt: Prompt) -> str:
    """The prompt as the judge reads it; a multi-turn conversation is shown one `role: content` line per turn."""
    if isinstance(prompt, str):
        return prompt
    if len(prompt) == 1 and prompt[0].get("role") == "user":
        return prompt[0]["content"]
    return "\n".join(f"{m['role']}: {m['content']}" for m in prompt)


def _check_prompt(value, where: str) -> Prompt:
    if isinstance(value, str):
        return value
    if (
        isinstance(value, list)
        and value
        and all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in value
        )
    ):
        return value
    raise AlignkitError(
        f"{where}: field 'prompt' must be a string or a non-empty list of {{'role': ..., 'content': ...}} messages, "
        f"got {type(value).__name__}."
    )


def _check_output(value, where: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(m, dict) and isinstance(m.get("content"), str) for m in value):
        from alignkit.sequences import response_text  # sequences imports torch; a plain-text output needs none

        return response_text(value)
    raise AlignkitError(
        f"{where}: field 'output' must be a string or a list of assistant messages, got {type(value).__name__}."
    )


def _read_jsonl(path: Path) -> list[tuple[int, dict]]:
    rows = read_jsonl(path)
    if not rows:
        raise AlignkitError(f"{path}: the file has no rows.")
    return rows


def _field(row: dict, names: Sequence[str], where: str):
    for name in names:
        if name in row:
            return row[name]
    alias = f" (or {', '.join(repr(n) for n in names[1:])})" if len(names) > 1 else ""
    raise AlignkitError(f"{where}: missing field {names[0]!r}{alias}; fields present: {sorted(row)}.")


def read_outputs_jsonl(path: str | os.PathLike) -> list[dict]:
    """Rows {"prompt", "output", "id", "line"} of an outputs file; a bad row raises naming file:line and field."""
    path = Path(path)
    out, seen = [], {}
    for lineno, row in _read_jsonl(path):
        where = location(path, lineno)
        prompt = _check_prompt(_field(row, ("prompt", "instruction"), where), where)
        output = _check_output(_field(row, ("output", "response"), where), where)
        key = prompt_key(prompt)
        if key in seen:
            raise AlignkitError(
                f"{where}: field 'prompt' repeats the prompt of line {seen[key]}; keep one output each."
            )
        seen[key] = lineno
        out.append({"prompt": prompt, "output": output, "id": row.get("id"), "line": lineno})
    return out


def write_outputs_jsonl(path: str | os.PathLike, prompts: Sequence[Prompt], outputs: Sequence[str], name: str) -> None:
    rows = ({"id": i, "prompt": p, "output": o, "generator": name} for i, (p, o) in enumerate(zip(prompts, outputs)))
    write_jsonl_atomic(path, rows)


def is_outputs_file(spec) -> bool:
    return isinstance(spec, str | os.PathLike) and Path(spec).suffix in (".jsonl", ".json") and Path(spec).is_file()


def load_prompts(source, split: str = "test") -> list[Prompt]:
    """Prompts from a list, a datasets.Dataset, a JSONL (field `prompt`/`instruction`), a saved dataset folder or a
    hub dataset name. None means the built-in held-out split."""
    return [row["prompt"] for row in load_prompt_rows(source, split)]


def load_prompt_rows(source, split: str = "test") -> list[dict]:
    """The rows of a prompt set (same sources as `load_prompts`), each a dict whose `prompt` is checked; the other
    columns (e.g. `reference_answer`, `task`, which the verifier judge reads) are kept as they are."""
    if source is None:
        from alignkit.data.builtin import load_builtin  # imported late: it builds the dataset

        return [dict(row) for row in load_builtin()["test"]]
    if isinstance(source, list | tuple):
        return [
            {**p, "prompt": _check_prompt(p.get("prompt", p.get("instruction")), f"prompts[{i}]")}
            if isinstance(p, dict)
            else {"prompt": _check_prompt(p, f"prompts[{i}]")}
            for i, p in enumerate(source)
        ]
    if not isinstance(source, str | os.PathLike):  # a datasets.Dataset or anything with columns
        return _rows(source, "dataset")
    path = Path(source)
    if path.suffix in (".jsonl", ".json"):
        rows = []
        for n, row in _read_jsonl(path):
            where = location(path, n)
            rows.append({**row, "prompt": _check_prompt(_field(row, ("prompt", "instruction"), where), where)})
        return rows
    import datasets  # slow to import; only a saved or hub dataset needs it

    if path.is_dir():
        loaded = datasets.load_from_disk(str(path))
    else:
        try:
            loaded = datasets.load_dataset(str(source), split=split)
        except Exception as e:  # hub unreachable, no such dataset, ...: say which input was at fault
            raise AlignkitError(
                f"prompts={source!r}: could not load it as a dataset ({type(e).__name__}: {e})."
            ) from e
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise AlignkitError(f"prompts={source!r}: no split {split!r}; splits: {list(loaded)}.")
        loaded = loaded[split]
    return _rows(loaded, str(source))


def _rows(dataset, name: str) -> list[dict]:
    prompts = _column(dataset, name)
    columns = [c for c in (getattr(dataset, "column_names", None) or []) if c not in ("prompt", "instruction")]
    extra = {c: list(dataset[c]) for c in columns if c in ("reference_answer", "task", "id")}
    return [
        {**{c: values[i] for c, values in extra.items()}, "prompt": _check_prompt(p, f"{name} row {i}")}
        for i, p in enumerate(prompts)
    ]


def _column(dataset, name: str) -> list:
    columns = getattr(dataset, "column_names", None) or []
    for column in ("prompt", "instruction"):
        if column in columns:
            return list(dataset[column])
    raise AlignkitError(f"{name}: no 'prompt' (or 'instruction') column; columns: {columns}.")


def load_model(spec: str | os.PathLike):
    """(model, tokenizer) from a local HF folder, a hub id, a PEFT adapter folder or a .gguf file, on CPU or CUDA:
    the recipe's loader (`alignkit.models`: adapters merged, GGUF converted once and cached) with its defaults. A
    model that cannot be loaded raises an AlignkitError naming `spec`."""
    import torch  # imported here, as are the two below: judging two outputs files needs no torch or transformers

    from alignkit.config import ModelConfig  # (config imports TRL)
    from alignkit.models import load_model as load_causal_lm
    from alignkit.models import load_tokenizer

    cfg = ModelConfig(model_name_or_path=str(spec))
    tokenizer, model = load_tokenizer(cfg), load_causal_lm(cfg)
    return (model.to("cuda") if torch.cuda.is_available() else model), tokenizer


def side_name(spec: ModelSpec) -> str:
    if isinstance(spec, tuple):
        return getattr(spec[0], "name_or_path", None) or "model"
    path = Path(spec)
    if path.suffix in (".jsonl", ".json", ".gguf"):
        return path.stem
    return path.name or str(spec)
