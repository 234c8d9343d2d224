"""Compare two runs of the default recipe table by table (the stage-engine redesign's before/after check).

    python bench/results/redesign_check/compare.py RUN_BEFORE RUN_AFTER > bench/results/redesign_check/comparison.md

Reads each run's report.md (its tables, row by row), metrics.json (every logged training value of every stage) and
<stage>/probes.jsonl (one line per monitor evaluation: the family means). Wall-clock values (time, runtime,
samples/steps per second) are left out: they measure the machine, not the result. Prints a markdown summary: for each
table, identical or the rows that differ.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

TIMING = re.compile(r"(runtime|per_second|seconds|time|flos)", re.IGNORECASE)


def tables(report: str) -> dict[str, list[str]]:
    """Each markdown table's rows under the heading (or the first line of the paragraph) just above it."""
    out: dict[str, list[str]] = {}
    title, rows = "", []
    for line in report.splitlines() + [""]:
        if line.startswith("|"):
            rows.append(line)
            continue
        if rows:
            name = title
            while name in out:
                name += "'"
            out[name] = rows
            rows = []
        if line.startswith("#"):
            title = line.lstrip("# ").strip()
    return out


def stage_rows(rows: list[str]) -> list[str]:
    """The stage table without its `time (s)` column."""
    header = [c.strip() for c in rows[0].strip("|").split("|")]
    keep = [i for i, c in enumerate(header) if c != "time (s)"]
    return ["|".join(c for i, c in enumerate(r.strip("|").split("|")) if i in keep) for r in rows]


def log_values(metrics: dict) -> dict[tuple, float]:
    """(stage, entry index, key) -> value for every logged training value that is not wall-clock time."""
    out = {}
    for stage, entry in metrics.items():
        for i, logged in enumerate(entry.get("log_history", [])):
            for key, value in logged.items():
                if not TIMING.search(key) and not key.startswith("probe/"):
                    out[(stage, i, key)] = value
    return out


def same(x, y) -> bool:
    """Equal, counting NaN (written as NaN before a8f684d) and null (after it) as the same missing value."""
    missing = (x is None or x != x, y is None or y != y)
    return all(missing) or x == y


def evaluations(run: Path) -> dict[str, list[dict]]:
    return {
        stage.name: [json.loads(line) for line in (stage / "probes.jsonl").read_text().splitlines() if line.strip()]
        for stage in sorted(run.iterdir())
        if (stage / "probes.jsonl").is_file()
    }


def main(before: Path, after: Path) -> None:
    print(f"# Before/after: `{before}` vs `{after}`\n")
    tb, ta = tables((before / "report.md").read_text()), tables((after / "report.md").read_text())
    print("## report.md tables\n")
    print("| table | rows before | rows after | identical rows | rows only before | rows only after |")
    print("|---|---:|---:|---:|---:|---:|")
    diffs = []
    for name in sorted(set(tb) | set(ta), key=lambda n: (n not in tb, list(tb).index(n) if n in tb else 0)):
        rb, ra = tb.get(name, []), ta.get(name, [])
        if name == "Stages":
            rb, ra = stage_rows(rb), stage_rows(ra)
        only_b = [r for r in rb if r not in ra]
        only_a = [r for r in ra if r not in rb]
        counts = [len(rb), len(ra), len(rb) - len(only_b), len(only_b), len(only_a)]
        print(f"| {name or '(untitled)'} | " + " | ".join(map(str, counts)) + " |")
        if only_b or only_a:
            diffs.append((name, only_b, only_a))
    for name, only_b, only_a in diffs:
        print(f"\n### {name}: rows that differ\n")
        print("before:\n```\n" + "\n".join(only_b) + "\n```\nafter:\n```\n" + "\n".join(only_a) + "\n```")

    lb = log_values(json.loads((before / "metrics.json").read_text()))
    la = log_values(json.loads((after / "metrics.json").read_text()))
    for title, monitor in (("Training metrics", False), ("Monitor metrics logged to the trainer (mech/*)", True)):
        keys = [k for k in lb if k[2].startswith("mech/") == monitor]
        extra = [k for k in la if k not in lb and k[2].startswith("mech/") == monitor]
        differ = [k for k in keys if k in la and not same(lb[k], la[k])]
        print(f"\n## {title} (metrics.json log_history, wall-clock keys left out)\n")
        print(
            f"- values compared: {len(keys)}; equal to the last digit: {len(keys) - len(differ)}; different: "
            f"{len(differ)}; only after: {len(extra)} {sorted({k[2] for k in extra})}"
        )
        for k in differ[:20]:
            print(f"  - {k}: {lb[k]} vs {la[k]}")

    print("\n## Monitor evaluations (<stage>/probes.jsonl)\n")
    eb, ea = evaluations(before), evaluations(after)
    for stage in sorted(set(eb) | set(ea)):
        b, a = eb.get(stage, []), ea.get(stage, [])
        print(
            f"- {stage}: {len(b)} evaluations before, {len(a)} after; steps {[e['step'] for e in b]} vs "
            f"{[e['step'] for e in a]}"
        )
        for i, (x, y) in enumerate(zip(b, a)):
            keys = sorted(k for k in set(x) & set(y) if k.startswith(("probe/", "mech/")) and k in x)
            unequal = [k for k in keys if not same(x[k], y[k])]
            largest = max((abs(x[k] - y[k]) for k in unequal), default=0.0)
            print(
                f"  - evaluation {i} ({x.get('event')}): {len(keys)} family values in both, {len(unequal)} differ "
                f"(largest difference {largest:.3g}); keys only before {len(set(x) - set(y))}, only after "
                f"{len(set(y) - set(x))}"
            )


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
