"""Reading preference data from the built-in set, local files or the hub, and checking it against the tokenizer."""

from __future__ import annotations

import logging
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from datasets import Dataset, DatasetDict, load_dataset

from alignkit.config import DataConfig
from alignkit.data.builtin import load_builtin
from alignkit.data.formats import detect_format, normalize_row
from alignkit.errors import AlignkitError
from alignkit.jsonl import location, read_json_list, read_jsonl
from alignkit.sequences import render_prompt, response_text

logger = logging.getLogger(__name__)
LOCAL_SUFFIXES = (".jsonl", ".json", ".parquet")
# 1-based position of each pair in its source: the file's own line for JSON Lines and JSON, else the row. It survives
# the shuffled train/test split, so errors found later (a prompt too long) still point into the user's file.
SOURCE_ROW = "source_row"


def _where(source: str, position: int) -> str:
    """The location of row `position` of `source` as errors give it: `file:line`, or `source row N`."""
    return location(source, position) if _has_lines(source) else f"{source} row {position}"


def _has_lines(source: str) -> bool:
    return source.endswith((".jsonl", ".json"))  # a local file; a hub source reads "dataset 'x' split 'y'"


def _read_parquet(path: Path) -> list[tuple[int, dict]]:
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as err:  # a truncated or non-Parquet file: pyarrow's message says which
        raise AlignkitError(f"{path}: not a readable Parquet file ({err})") from None
    return list(enumerate(table.to_pylist(), start=1))


def read_rows(path: Path) -> list[tuple[int, dict]]:
    """The raw rows of a local file with their positions (the line for JSON Lines/JSON, the row for Parquet); errors
    name the file and the line."""
    if not path.exists():
        raise AlignkitError(f"data file {path} does not exist")
    if path.suffix == ".jsonl":
        return read_jsonl(path)
    if path.suffix == ".json":
        return read_json_list(path)
    if path.suffix == ".parquet":
        return _read_parquet(path)
    raise AlignkitError(f"data file {path}: unsupported type '{path.suffix}' (use {', '.join(LOCAL_SUFFIXES)})")


def normalize_rows(rows: list[tuple[int, dict]], fmt: str, source: str) -> Dataset:
    """Validate and normalise every (position, row) (see `formats.normalize_row`); errors name `source` and the
    position. The position is kept in the column `source_row`."""
    if not rows:
        raise AlignkitError(f"{source}: no rows")
    first_where = _where(source, rows[0][0])
    fmt = detect_format(list(rows[0][1].keys()), rows[0][1], first_where) if fmt == "auto" else fmt
    out = [normalize_row(raw, fmt, _where(source, n)) | {SOURCE_ROW: n} for n, raw in rows]
    conversational = isinstance(out[0]["prompt"], list)
    for row in out:
        if isinstance(row["prompt"], list) != conversational:
            kind = "a message list" if conversational else "plain text"
            raise AlignkitError(
                f"{_where(source, row[SOURCE_ROW])}: field 'prompt': the first row ({first_where}) is {kind} but "
                "this row is not; mix neither"
            )
    logger.info("%s: %d pairs in %s format", source, len(out), fmt)
    return Dataset.from_list(out)


def _hub_split(cfg: DataConfig, split: str) -> tuple[list[tuple[int, dict]], str]:
    source = f"dataset '{cfg.dataset_name}' split '{split}'"
    try:
        rows = load_dataset(cfg.dataset_name, cfg.dataset_config, split=split).to_list()
    except Exception as err:  # the hub client raises many types; the user needs the message, not the type
        raise AlignkitError(f"could not load {source}: {err}") from None
    return list(enumerate(rows, start=1)), source


def load_preference_data(cfg: DataConfig, seed: int = 42, notes: list[str] | None = None) -> DatasetDict:
    """`train` and (when there is one) `test` splits of normalised preference pairs (see `formats`).

    Whenever training uses fewer pairs than the source has (rows held out, `max_train_samples`), a sentence with both
    numbers is logged and appended to `notes` (the recipe's report shows them): a cut is never silent."""
    cut: list[str] = []
    if cfg.dataset_name == "builtin":
        data = load_builtin()
    elif Path(cfg.dataset_name).suffix in LOCAL_SUFFIXES or Path(cfg.dataset_name).exists():
        path = Path(cfg.dataset_name)
        train = normalize_rows(read_rows(path), cfg.dataset_format, str(path))
        splits = {"train": train}
        if cfg.test_file:
            splits["test"] = normalize_rows(read_rows(Path(cfg.test_file)), cfg.dataset_format, cfg.test_file)
        elif cfg.test_fraction > 0:
            if len(train) < 2:
                raise AlignkitError(f"{path}: need at least 2 rows to hold some out (or give test_file)")
            split = train.train_test_split(test_size=cfg.test_fraction, seed=seed)
            splits = {"train": split["train"], "test": split["test"]}
            cut.append(f"{len(split['test'])} of the {len(train)} pairs in {path} are held out for probes and "
                       f"evaluation (test_fraction={cfg.test_fraction}), {len(split['train'])} train")  # fmt: skip
        data = DatasetDict(splits)
    else:
        rows, source = _hub_split(cfg, cfg.train_split)
        splits = {"train": normalize_rows(rows, cfg.dataset_format, source)}
        if cfg.test_split:
            rows, source = _hub_split(cfg, cfg.test_split)
            splits["test"] = normalize_rows(rows, cfg.dataset_format, source)
        data = DatasetDict(splits)
    if cfg.max_train_samples is not None and cfg.max_train_samples < len(data["train"]):
        cut.append(f"training uses the first {cfg.max_train_samples} of {len(data['train'])} training pairs "
                   f"(max_train_samples={cfg.max_train_samples}; null trains on all)")  # fmt: skip
        data["train"] = data["train"].select(range(cfg.max_train_samples))
    for sentence in cut:
        logger.warning("data: %s", sentence)
    if notes is not None:
        notes.extend(f"Data: {sentence}." for sentence in cut)
    return data


def check_lengths(dataset: Dataset, tokenizer, max_length: int, source: str) -> int:
    """Raise if a prompt alone does not fit `max_length`; warn (and return how many) when responses get truncated.

    Rows are named by their `source_row` (the file's own line) when the dataset has that column, else by position."""
    positions = dataset[SOURCE_ROW] if SOURCE_ROW in dataset.column_names else list(range(1, len(dataset) + 1))
    unit = "line" if SOURCE_ROW in dataset.column_names and _has_lines(source) else "row"

    def listed(bad: list[int]) -> str:
        shown = sorted(positions[i] for i in bad)
        more = " ..." if len(shown) > 10 else ""
        return f"{unit}{'s' if len(shown) > 1 else ''} {', '.join(map(str, shown[:10]))}{more}"

    prompts = [render_prompt(tokenizer, p) for p in dataset["prompt"]]
    prompt_lens = [len(ids) for ids in tokenizer(prompts, add_special_tokens=False)["input_ids"]]
    too_long = [i for i, n in enumerate(prompt_lens) if n >= max_length]
    if too_long:
        raise AlignkitError(
            f"{source}: field 'prompt' does not fit max_length={max_length} tokens in {len(too_long)} row(s) "
            f"({listed(too_long)}; the longest is {max(prompt_lens)} tokens). Raise max_length or remove those rows."
        )
    truncated: set[int] = set()
    for field in ("chosen", "rejected"):
        texts = [response_text(r) for r in dataset[field]]
        lens = [len(ids) + 1 for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]  # +1: EOS
        truncated |= {i for i, (p, r) in enumerate(zip(prompt_lens, lens)) if p + r > max_length}
    if truncated:
        logger.warning(
            "%s: %d of %d pairs have a response truncated to fit max_length=%d (%s)",
            source, len(truncated), len(dataset), max_length, listed(sorted(truncated)),
        )  # fmt: skip
    return len(truncated)
