"""Reading preference data from the built-in set, local files or the hub, and checking it against the tokenizer."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from datasets import Dataset, DatasetDict

from alignkit.config import DataConfig
from alignkit.data.builtin import load_builtin
from alignkit.data.formats import detect_format, normalize_row
from alignkit.errors import AlignkitError
from alignkit.sequences import render_prompt, response_text

logger = logging.getLogger(__name__)
LOCAL_SUFFIXES = (".jsonl", ".json", ".parquet")


def read_rows(path: Path) -> list[dict]:
    """The raw rows of a local file, with errors that name the file and line."""
    if not path.exists():
        raise AlignkitError(f"data file {path} does not exist")
    if path.suffix == ".jsonl":
        rows = []
        for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise AlignkitError(f"{path} line {lineno}: invalid JSON ({err.msg})") from None
            if not isinstance(row, dict):
                raise AlignkitError(f"{path} line {lineno}: expected a JSON object, got {type(row).__name__}")
            rows.append(row)
        return rows
    if path.suffix == ".json":
        try:
            rows = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise AlignkitError(f"{path}: invalid JSON at line {err.lineno} ({err.msg})") from None
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            raise AlignkitError(f"{path}: expected a JSON list of objects")
        return rows
    if path.suffix == ".parquet":
        return Dataset.from_parquet(str(path)).to_list()
    raise AlignkitError(f"data file {path}: unsupported type '{path.suffix}' (use {', '.join(LOCAL_SUFFIXES)})")


def normalize_rows(rows: list[dict], fmt: str, source: str) -> Dataset:
    """Validate and normalise every row (see `formats.normalize_row`); row numbers in errors are 1-based."""
    if not rows:
        raise AlignkitError(f"{source}: no rows")
    fmt = detect_format(list(rows[0].keys()), rows[0], source) if fmt == "auto" else fmt
    out = [normalize_row(raw, fmt, source, i) for i, raw in enumerate(rows, start=1)]
    conversational = isinstance(out[0]["prompt"], list)
    for i, row in enumerate(out, start=1):
        if isinstance(row["prompt"], list) != conversational:
            kind = "a message list" if conversational else "plain text"
            raise AlignkitError(f"{source} row {i} field 'prompt': row 1 is {kind} but this row is not; mix neither")
    logger.info("%s: %d pairs in %s format", source, len(out), fmt)
    return Dataset.from_list(out)


def _hub_split(cfg: DataConfig, split: str) -> tuple[list[dict], str]:
    from datasets import load_dataset

    source = f"dataset '{cfg.dataset_name}' split '{split}'"
    try:
        return load_dataset(cfg.dataset_name, cfg.dataset_config, split=split).to_list(), source
    except Exception as err:  # the hub client raises many types; the user needs the message, not the type
        raise AlignkitError(f"could not load {source}: {err}") from None


def load_preference_data(cfg: DataConfig, seed: int = 42) -> DatasetDict:
    """`train` and `test` splits of normalised preference pairs (see `formats`)."""
    if cfg.dataset_name == "builtin":
        data = load_builtin()
    elif Path(cfg.dataset_name).suffix in LOCAL_SUFFIXES or Path(cfg.dataset_name).exists():
        path = Path(cfg.dataset_name)
        train = normalize_rows(read_rows(path), cfg.dataset_format, str(path))
        if cfg.test_file:
            test = normalize_rows(read_rows(Path(cfg.test_file)), cfg.dataset_format, cfg.test_file)
        else:
            if len(train) < 2:
                raise AlignkitError(f"{path}: need at least 2 rows to hold some out (or give test_file)")
            split = train.train_test_split(test_size=cfg.test_fraction, seed=seed)
            train, test = split["train"], split["test"]
        data = DatasetDict({"train": train, "test": test})
    else:
        rows, source = _hub_split(cfg, cfg.train_split)
        splits = {"train": normalize_rows(rows, cfg.dataset_format, source)}
        if cfg.test_split:
            rows, source = _hub_split(cfg, cfg.test_split)
            splits["test"] = normalize_rows(rows, cfg.dataset_format, source)
        data = DatasetDict(splits)
    if cfg.max_train_samples is not None and cfg.max_train_samples < len(data["train"]):
        data["train"] = data["train"].select(range(cfg.max_train_samples))
    return data


def check_lengths(dataset: Dataset, tokenizer, max_length: int, source: str) -> int:
    """Raise if a prompt alone does not fit `max_length`; warn (and return how many) when responses get truncated."""
    prompts = [render_prompt(tokenizer, p) for p in dataset["prompt"]]
    prompt_lens = [len(ids) for ids in tokenizer(prompts, add_special_tokens=False)["input_ids"]]
    too_long = [i for i, n in enumerate(prompt_lens, start=1) if n >= max_length]
    if too_long:
        rows = ", ".join(map(str, too_long[:10])) + (" ..." if len(too_long) > 10 else "")
        raise AlignkitError(
            f"{source}: {len(too_long)} prompt(s) do not fit max_length={max_length} tokens (rows {rows}; the longest "
            f"is {max(prompt_lens)} tokens). Raise max_length or remove those rows."
        )
    truncated = set()
    for field in ("chosen", "rejected"):
        texts = [response_text(r) for r in dataset[field]]
        lens = [len(ids) + 1 for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]  # +1: EOS
        truncated |= {i for i, (p, r) in enumerate(zip(prompt_lens, lens), start=1) if p + r > max_length}
    if truncated:
        rows = ", ".join(map(str, sorted(truncated)[:10])) + (" ..." if len(truncated) > 10 else "")
        logger.warning(
            "%s: %d of %d pairs have a response truncated to fit max_length=%d (rows %s)",
            source, len(truncated), len(dataset), max_length, rows,
        )  # fmt: skip
    return len(truncated)
