"""Loader for the alignkit_tiny_qa lm-eval task: the JSONL next to this file, whatever the working directory."""

from pathlib import Path

import datasets

DATA = Path(__file__).with_name("alignkit_tiny_qa.jsonl")


def load(**kwargs) -> datasets.DatasetDict:
    # lm-eval passes the task's metadata and dataset_kwargs here; none of them change what is loaded.
    return datasets.DatasetDict({"test": datasets.load_dataset("json", data_files=str(DATA), split="train")})
