"""Every bad input is refused through the recipe's one path: exit 2 and one `error:` line naming the file
(and, where a row is at fault, the file's own line and the field); saved state files (probe set) too. The rephrase
cache is tested with its client in test_rephrase.py.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from alignkit.errors import AlignkitError
from alignkit.monitors.config import MonitorConfig
from alignkit.monitors.probes import Probe, ProbeSet, build_probe_set

from .test_recipe import ENV, RECIPE, ROOT

GOOD = {"prompt": "What is 2 + 2?", "chosen": "It is 4.", "rejected": "It is 5."}


def run_recipe(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(RECIPE), *args], env=ENV, capture_output=True, text=True, timeout=300, cwd=ROOT
    )


def assert_one_error_line(proc: subprocess.CompletedProcess, pattern: str) -> None:
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and proc.stderr.rstrip().endswith(errors[0]), proc.stderr[-3000:]
    assert re.search(pattern, errors[0]), errors[0]


def saved_probe_set(tmp_path):
    probes = [Probe("train/a", "train", "Q?", {"chosen": "yes", "rejected": "no"})]
    return ProbeSet(probes, ["chosen", "rejected"]).save(tmp_path / "probe_set.jsonl")


def test_recipe_refuses_each_bad_input_with_one_line(tmp_path, tiny_model_dir):
    """A data file, a row found at fault after the shuffled split, a YAML value: each fails before a model is loaded.
    (Every other class raises the same AlignkitError, unit-tested below and in test_data/test_config/test_jsonl.)"""
    model = ["--model_name_or_path", str(tiny_model_dir), "--output_dir", str(tmp_path / "out"), "--use_cpu", "true"]
    latin1 = tmp_path / "latin1.jsonl"
    latin1.write_bytes((json.dumps(GOOD) + "\n" + json.dumps({**GOOD, "chosen": "caf\u00e9"}, ensure_ascii=False))
                       .encode("latin-1"))  # fmt: skip
    assert_one_error_line(
        run_recipe(*model, "--dataset_name", str(latin1)), r"latin1\.jsonl:2: not UTF-8 text \(byte 0xe9"
    )

    long_prompt = tmp_path / "long.jsonl"
    rows = [{**GOOD, "prompt": f"Q{i}" + (" very long" * 60 if i == 6 else "")} for i in range(10)]
    long_prompt.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert_one_error_line(
        run_recipe(
            *model, "--dataset_name", str(long_prompt), "--max_length", "64", "--test_fraction", "0.1", "--seed", "0"
        ),
        r"long\.jsonl: field 'prompt' does not fit max_length=64 tokens in 1 row\(s\) \(line 7;",
    )

    yaml_file = tmp_path / "bad.yaml"
    yaml_file.write_text("sft_learning_rate: 2e-4\nwarmup_ratio: 5\n")
    assert_one_error_line(
        run_recipe("--config", str(yaml_file), *model), r"config file .*bad\.yaml: config field 'warmup_ratio' is 5"
    )


@pytest.mark.parametrize(
    ("line", "pattern"),
    [
        ('{"probe_id": "train/b", "split": "train", "prompt": "Q?"', r":3: invalid JSON"),
        ('{"probe_id": "train/b", "split": "train", "prompt": "Q?"}', r":3: field 'responses': missing"),
        ('{"probe_id": "train/b", "split": "dev", "prompt": "Q?", "responses": {}}', r":3: field 'split': 'dev'"),
        ('{"probe_id": "train/a", "split": "train", "prompt": "Q?", "responses": {}}',
         r":3: field 'probe_id': 'train/a' repeats line 2"),
        ('{"probe_id": "train/b", "split": "train", "prompt": "Q?", "responses": {"vibes": "x"}}',
         r":3: field 'responses': 'vibes' is not a text of one of the header's families"),
        ('{"probe_id": 3, "split": "train", "prompt": "Q?", "responses": {}}',
         r":3: field 'probe_id': expected str, got int"),
    ],
)  # fmt: skip
def test_bad_line_in_a_saved_probe_set_names_line_and_field(tmp_path, line, pattern):
    path = saved_probe_set(tmp_path)
    with path.open("a") as f:
        f.write(line + "\n")
    with pytest.raises(AlignkitError, match=r"probe_set\.jsonl" + pattern):
        build_probe_set(None, None, MonitorConfig(probe_set_path=str(path)))


def test_saved_probe_set_round_trips_and_its_header_is_checked(tmp_path):
    path = saved_probe_set(tmp_path)
    loaded = ProbeSet.load(path)
    assert [p.responses for p in loaded.probes] == [{"chosen": "yes", "rejected": "no"}]
    path.write_text('{"families": ["chosen"]}\n')
    with pytest.raises(AlignkitError, match=r"probe_set\.jsonl:1: not an alignkit probe set"):
        ProbeSet.load(path)
    path.write_text('{"alignkit_probe_set": 1, "families": "chosen"}\n')
    with pytest.raises(AlignkitError, match=r"probe_set\.jsonl:1: field 'families': expected list, got str"):
        ProbeSet.load(path)
