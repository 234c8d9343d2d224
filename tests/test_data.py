"""Preference-data readers (TRL, Anthropic HH, UltraFeedback binarized), the built-in set, and bad-input errors."""

from __future__ import annotations

import json
import logging

import pytest

from alignkit.config import DataConfig
from alignkit.data import check_lengths, load_builtin, load_preference_data
from alignkit.data.builtin import builtin_rows
from alignkit.errors import AlignkitError


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


HH_ROWS = [  # exactly Anthropic/hh-rlhf's layout: full transcripts, the last Assistant turn differs
    {
        "chosen": "\n\nHuman: What is the capital of France?\n\nAssistant: Paris is the capital of France.",
        "rejected": "\n\nHuman: What is the capital of France?\n\nAssistant: I think it is Lyon.",
    },
    {
        "chosen": "\n\nHuman: Hi\n\nAssistant: Hello! How can I help?\n\nHuman: Tell me a fruit."
        "\n\nAssistant: An apple.",
        "rejected": "\n\nHuman: Hi\n\nAssistant: Hello! How can I help?\n\nHuman: Tell me a fruit.\n\nAssistant: No.",
    },
]

UF_ROWS = [  # HuggingFaceH4/ultrafeedback_binarized's layout
    {
        "prompt": "Name a primary colour.",
        "prompt_id": "abc",
        "chosen": [
            {"role": "user", "content": "Name a primary colour."},
            {"role": "assistant", "content": "Red is a primary colour."},
        ],
        "rejected": [
            {"role": "user", "content": "Name a primary colour."},
            {"role": "assistant", "content": "Green, obviously."},
        ],
        "messages": [
            {"role": "user", "content": "Name a primary colour."},
            {"role": "assistant", "content": "Red is a primary colour."},
        ],
        "score_chosen": 9.0,
        "score_rejected": 3.0,
    }
] * 3


def load_local(path, **kw):
    return load_preference_data(DataConfig(dataset_name=str(path), **kw))


def test_hh_transcripts_split_into_prompt_and_response(tmp_path):
    path = write_jsonl(tmp_path / "hh.jsonl", HH_ROWS)
    data = load_local(path, test_file=str(path))
    row = data["train"][1]
    assert row["prompt"] == [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": "Tell me a fruit."},
    ]
    assert row["chosen"] == [{"role": "assistant", "content": "An apple."}]
    assert row["rejected"] == [{"role": "assistant", "content": "No."}]


def test_hh_with_different_prompts_is_an_error(tmp_path):
    bad = dict(HH_ROWS[0], rejected="\n\nHuman: Something else?\n\nAssistant: Lyon.")
    path = write_jsonl(tmp_path / "hh.jsonl", [HH_ROWS[1], bad])
    with pytest.raises(AlignkitError, match=r"hh\.jsonl:2: .*different prompts"):
        load_local(path, test_file=str(path))


def test_ultrafeedback_binarized(tmp_path):
    path = write_jsonl(tmp_path / "uf.jsonl", UF_ROWS)
    data = load_local(path, test_file=str(path))
    row = data["train"][0]
    assert row["prompt"] == [{"role": "user", "content": "Name a primary colour."}]
    assert row["chosen"] == [{"role": "assistant", "content": "Red is a primary colour."}]
    assert row["rejected"] == [{"role": "assistant", "content": "Green, obviously."}]


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".parquet"])
def test_trl_plain_format_from_each_file_type(tmp_path, suffix):
    rows = [{"prompt": f"Q{i}?", "chosen": f"good {i}", "rejected": f"bad {i}"} for i in range(20)]
    path = tmp_path / f"data{suffix}"
    if suffix == ".jsonl":
        write_jsonl(path, rows)
    elif suffix == ".json":
        path.write_text(json.dumps(rows))
    else:
        from datasets import Dataset

        Dataset.from_list(rows).to_parquet(str(path))
    data = load_local(path, test_fraction=0.25)
    assert (len(data["train"]), len(data["test"])) == (15, 5)
    assert set(data["train"]["prompt"]).isdisjoint(data["test"]["prompt"])
    assert isinstance(data["train"][0]["chosen"], str)


def test_trl_conversational_format(tmp_path):
    rows = [
        {
            "prompt": [{"role": "user", "content": "Q?"}],
            "chosen": [{"role": "assistant", "content": "good"}],
            "rejected": [{"role": "assistant", "content": "bad"}],
        }
    ] * 4
    data = load_local(write_jsonl(tmp_path / "c.jsonl", rows), test_fraction=0.25)
    assert data["train"][0]["prompt"] == [{"role": "user", "content": "Q?"}]


@pytest.mark.parametrize(
    ("rows", "pattern"),
    [
        ([{"prompt": "q", "chosen": "a"}], r"d\.jsonl:1: missing column\(s\) rejected \(found: chosen, prompt\)"),
        ([{"prompt": "q", "chosen": "a", "rejected": "b"}, {"prompt": "q", "chosen": "  ", "rejected": "b"}],
         r"d\.jsonl:2: field 'chosen': empty"),
        ([{"prompt": "q", "chosen": "a", "rejected": 3}], r"d\.jsonl:1: field 'rejected': expected text, got int"),
        ([{"prompt": "q", "chosen": "a", "rejected": None}], r"d\.jsonl:1: field 'rejected': missing or null"),
        ([{"prompt": "q", "chosen": "same", "rejected": "same"}],
         r"d\.jsonl:1: 'chosen' and 'rejected' are identical"),
        ([{"prompt": "q", "chosen": "a", "rejected": "b"}, {"prompt": [{"role": "user", "content": "q"}],
          "chosen": "a", "rejected": "b"}], r"d\.jsonl:2: field 'chosen': expected a non-empty list of messages"),
        ([{"prompt": "q", "chosen": "a", "rejected": "b"}, {"prompt": [{"role": "user", "content": "q"}],
          "chosen": [{"role": "assistant", "content": "a"}], "rejected": [{"role": "assistant", "content": "b"}]}],
         r"d\.jsonl:2: field 'prompt': the first row \(.*d\.jsonl:1\) is plain text"),
    ],
)  # fmt: skip
def test_bad_rows_name_file_row_and_field(tmp_path, rows, pattern):
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    with pytest.raises(AlignkitError, match=pattern):
        load_local(path, test_file=str(path))


def test_invalid_json_line_and_missing_file(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"prompt": "q", "chosen": "a", "rejected": "b"}\n{"prompt": oops}\n')
    with pytest.raises(AlignkitError, match=r"d\.jsonl:2: invalid JSON"):
        load_local(path)
    with pytest.raises(AlignkitError, match=r"nope\.jsonl does not exist"):
        load_local(tmp_path / "nope.jsonl")


def test_prompt_too_long_is_an_error_and_truncation_is_counted(tmp_tokenizer_rows, tiny_tokenizer, caplog):
    data = tmp_tokenizer_rows
    pattern = r"src: field 'prompt' does not fit max_length=20 tokens in 1 row\(s\) \(row 3;"
    with pytest.raises(AlignkitError, match=pattern):
        check_lengths(data, tiny_tokenizer, 20, "src")
    short = data.select([0, 1])
    with caplog.at_level(logging.WARNING):
        assert check_lengths(short, tiny_tokenizer, 20, "src") == 1
    assert "1 of 2 pairs have a response truncated" in caplog.text
    assert check_lengths(short, tiny_tokenizer, 500, "src") == 0


@pytest.fixture()
def tmp_tokenizer_rows():
    from datasets import Dataset

    return Dataset.from_list(
        [
            {"prompt": "hi", "chosen": "ok", "rejected": "no"},
            {"prompt": "hi", "chosen": "a much longer answer " * 5, "rejected": "no"},
            {"prompt": "a very long prompt " * 10, "chosen": "ok", "rejected": "no"},
        ]
    )


def test_builtin_dataset():
    data = load_builtin()
    train, test = data["train"], data["test"]
    assert len(train) >= 300 and len(test) >= 50
    assert set(train["id"]).isdisjoint(test["id"])
    assert len(set(train["task"])) >= 8  # varied
    for row in builtin_rows():
        assert row["chosen"] != row["rejected"]
        assert row["chosen_rephrase"] != row["chosen"]
        assert row["chosen_reformat"] != row["chosen"]
        if row["task"] in ("arithmetic", "units", "letters", "compare", "capitals"):
            # the checkable tasks: the answer is in y+ and not in y-
            assert row["reference_answer"] in row["chosen"][0]["content"]
    assert builtin_rows() == builtin_rows()  # deterministic


@pytest.mark.parametrize("suffix", [".jsonl", ".json"])
def test_non_utf8_bytes_name_the_line(tmp_path, suffix):
    rows = [{"prompt": "q", "chosen": "a", "rejected": "b"}, {"prompt": "caf\u00e9", "chosen": "a", "rejected": "b"}]
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    if suffix == ".json":
        text = "[\n" + text.replace("}\n{", "},\n{") + "]\n"  # the second object starts on line 3
    path = tmp_path / f"d{suffix}"
    path.write_bytes(text.encode("latin-1"))
    line = 3 if suffix == ".json" else 2
    with pytest.raises(AlignkitError, match=rf"d{suffix}:{line}: not UTF-8 text \(byte 0xe9 at column \d+\)"):
        load_local(path)


def test_corrupt_parquet_is_an_error_not_a_traceback(tmp_path):
    from datasets import Dataset

    good = tmp_path / "good.parquet"
    Dataset.from_list([{"prompt": f"q{i}", "chosen": "a", "rejected": "b"} for i in range(4)]).to_parquet(str(good))
    for name, content in [("garbage.parquet", b"not parquet at all"), ("cut.parquet", good.read_bytes()[:-40])]:
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(AlignkitError, match=rf"{name}: not a readable Parquet file \("):
            load_local(path)


def test_parquet_rows_are_named_by_row(tmp_path):
    from datasets import Dataset

    path = tmp_path / "d.parquet"
    rows = [{"prompt": "q", "chosen": "a", "rejected": "b"}, {"prompt": "q", "chosen": " ", "rejected": "b"}]
    Dataset.from_list(rows).to_parquet(str(path))
    with pytest.raises(AlignkitError, match=r"d\.parquet row 2: field 'chosen': empty"):
        load_local(path, test_file=str(path))


def test_errors_name_the_files_own_line_past_blank_lines(tmp_path):
    path = tmp_path / "d.jsonl"
    good = json.dumps({"prompt": "q", "chosen": "a", "rejected": "b"})
    path.write_text(f"{good}\n\n\n{good}\n" + json.dumps({"prompt": "q", "chosen": "a", "rejected": 7}) + "\n")
    with pytest.raises(AlignkitError, match=r"d\.jsonl:5: field 'rejected': expected text, got int"):
        load_local(path)
    path = tmp_path / "d.json"
    path.write_text(f'[\n  {good},\n\n  {{"prompt": "q",\n   "chosen": "a"}}\n]')
    with pytest.raises(AlignkitError, match=r"d\.json:4: field 'rejected': missing or null"):
        load_local(path, dataset_format="preference")


def test_odd_first_row_does_not_crash_format_detection(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "q", "chosen": ["x", "y"], "rejected": ["z", "w"]}])
    with pytest.raises(AlignkitError, match=r"d\.jsonl:1: field 'chosen': expected text, got list"):
        load_local(path, test_file=str(path))


def test_prompt_too_long_names_the_files_own_line_after_the_shuffled_split(tmp_path, tiny_tokenizer):
    rows = [{"prompt": f"q{i}" + (" a very long prompt" * 10 if i % 7 == 3 else ""), "chosen": "ok", "rejected": "no"}
            for i in range(30)]  # fmt: skip
    path = tmp_path / "d.jsonl"
    path.write_text("\n" + "".join(json.dumps(r) + "\n" for r in rows))  # a blank first line: row i is on line i + 2
    data = load_local(path, test_fraction=0.2)
    long_in_train = sorted(int(p.split()[0][1:]) + 2 for p in data["train"]["prompt"] if len(p) > 10)
    positions = [i + 1 for i, p in enumerate(data["train"]["prompt"]) if len(p) > 10]
    assert long_in_train and long_in_train != sorted(positions)  # the split did move them: the test can tell
    lines = ", ".join(map(str, long_in_train))
    pattern = rf"{path.name}: field 'prompt' does not fit max_length=20 tokens in {len(long_in_train)} row\(s\) " + (
        rf"\(lines? {lines};"
    )
    with pytest.raises(AlignkitError, match=pattern):
        check_lengths(data["train"], tiny_tokenizer, 20, str(path))


def pairs(n: int) -> list[dict]:
    return [{"prompt": f"What is {i} + 1?", "chosen": f"{i + 1}.", "rejected": f"{i + 2}."} for i in range(n)]


def test_a_local_file_trains_on_every_pair_by_default(tmp_path, caplog):
    notes: list[str] = []
    with caplog.at_level(logging.WARNING, logger="alignkit.data.load"):
        path = write_jsonl(tmp_path / "p.jsonl", pairs(500))
        data = load_preference_data(DataConfig(dataset_name=str(path)), 0, notes)
    assert len(data["train"]) == 500 and "test" not in data
    assert notes == [] and not caplog.records  # nothing was cut, so nothing to say


@pytest.mark.parametrize(
    ("kw", "said"),
    [
        ({"max_train_samples": 32}, "training uses the first 32 of 500 training pairs (max_train_samples=32"),
        ({"test_fraction": 0.1}, "50 of the 500 pairs in"),
    ],
)
def test_every_cut_of_the_data_is_said_with_both_numbers(tmp_path, caplog, kw, said):
    notes: list[str] = []
    path = write_jsonl(tmp_path / "p.jsonl", pairs(500))
    with caplog.at_level(logging.WARNING, logger="alignkit.data.load"):
        data = load_preference_data(DataConfig(dataset_name=str(path), **kw), 0, notes)
    assert len(data["train"]) == (32 if "max_train_samples" in kw else 450)
    assert len(notes) == 1 and said in notes[0] and notes[0].startswith("Data: ")
    assert said in caplog.text
