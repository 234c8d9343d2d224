"""The committed squeezing studies (results/squeezing_study/full and .../remedies) are what their raw files give, and
docs/study.md shows their reports' own tables: a changed analysis or a hand-edited number fails here."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from alignkit.jsonl import json_safe
from alignkit.study.analysis import summarize
from alignkit.study.claims import paper_verdicts
from alignkit.study.records import load_runs

ROOT = Path(__file__).resolve().parents[1]
FULL = ROOT / "results" / "squeezing_study" / "full"
REMEDIES = ROOT / "results" / "squeezing_study" / "remedies"
SECTIONS = {  # report section -> docs/study.md section holding the same table
    "## The paper's claims": "### The paper's claims",
    "## Each arm against its baseline": "### Each arm against its baseline (the remedy table)",
    "## Quality per arm": "### Quality per arm",
    "## The SFT stage": "### The SFT stage",
}


def first_table(text: str, heading: str) -> list[str]:
    lines = text.splitlines()
    start = lines.index(heading)
    table = []
    for line in lines[start + 1 :]:
        if line.startswith("|"):
            table.append(line)
        elif table or line.startswith("#"):
            break
    return table


@pytest.mark.parametrize("report_heading", sorted(SECTIONS))
def test_docs_show_the_reports_tables(report_heading):
    report = (FULL / "study.md").read_text()
    docs = (ROOT / "docs" / "study.md").read_text()
    table = first_table(report, report_heading)
    assert table, f"{report_heading} has no table in {FULL / 'study.md'}"
    assert first_table(docs, SECTIONS[report_heading]) == table


def test_docs_show_the_remedies_folders_table():
    table = first_table((REMEDIES / "study.md").read_text(), "## Each arm against its baseline")
    docs = (ROOT / "docs" / "study.md").read_text()
    assert table and first_table(docs, "### Two more remedies: the SFT mix and the negative floor (3 seeds)") == table


def means(tree, path=()):
    """Every estimate's mean in a summary subtree, by its path (intervals depend on the bootstrap's size)."""
    if isinstance(tree, dict):
        if "mean" in tree and "lo" in tree:
            yield path, tree["mean"]
            return
        for key, value in tree.items():
            yield from means(value, (*path, key))


@pytest.mark.parametrize("folder", [FULL, REMEDIES], ids=["full", "remedies"])
def test_the_committed_summary_is_what_the_raw_files_give(folder):
    committed = json.loads((folder / "summary.json").read_text())
    fresh = json_safe(summarize(load_runs(folder), n_boot=20))
    for part in ("comparisons", "arm_quality", "quality_change", "sft_effect", "outcomes"):
        want, got = dict(means(committed[part])), dict(means(fresh[part]))
        assert want, part
        assert want.keys() == got.keys(), part
        for key, value in want.items():
            same = value is None and got[key] is None or math.isclose(value, got[key], rel_tol=1e-9, abs_tol=1e-12)
            assert same, (part, key, value, got[key])
    # The verdicts read the intervals, so they are checked on the committed ones: the rule gives what is written.
    assert paper_verdicts(committed) == committed["paper_claims"]
