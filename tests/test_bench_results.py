"""Every bench writes the figures it prints to bench/results/<bench>/result.json (bench/_results.py), so that a
document can quote a committed file. Benches with a fast path run here (a tiny model, a fake judge); the others are
checked to call the helper under their own name. Tests write to a temporary BENCH_RESULTS_DIR (tests/conftest.py)."""

from __future__ import annotations

import inspect
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from .test_bench_paths import BENCH, bench

# Benches that write their committed file themselves: fresh_ci.py keeps a log, one line per run of the README's test
# command; remedies.py writes the helper's record format with its own code; detector_freeze.py writes the frozen
# detector beside the calibration's files.
OWN_WRITERS = {"fresh_ci": "bench/results/fresh_ci/runs.jsonl", "remedies": "bench/results/remedies/result.json",
               "detector_freeze": "bench/results/detector_calibration/frozen.json"}  # fmt: skip
PY_BENCHES = sorted(p.stem for p in BENCH.glob("*.py") if not p.name.startswith("_") and p.stem not in OWN_WRITERS)
SH_BENCHES = sorted(p.stem for p in BENCH.glob("*.sh"))


def written(name: str) -> dict:
    return json.loads((bench("_results").results_dir(name) / "result.json").read_text())


def test_tests_never_write_into_the_committed_folder(bench_results_dir):
    results = bench("_results")
    assert results.results_dir("x") == bench_results_dir / "x" and results.RESULTS == BENCH / "results"


def test_every_bench_writes_its_figures_under_its_own_name():
    assert len(PY_BENCHES) >= 13 and SH_BENCHES == ["docker_smoke"]
    for name in PY_BENCHES:
        source = (BENCH / f"{name}.py").read_text()
        assert re.search(rf'write_result\(\s*"{name}",', source), f"bench/{name}.py does not call write_result"
        main = bench(name).main
        assert "argv" in inspect.signature(main).parameters, f"bench/{name}.py: main(argv) lets a test run it"
    for name in SH_BENCHES:
        assert f'bench/_results.py" {name} ' in (BENCH / f"{name}.sh").read_text()
    for name, path in OWN_WRITERS.items():
        assert path in (BENCH / f"{name}.py").read_text(), f"bench/{name}.py does not name {path}"


def test_write_result_records_command_date_machine_and_figures():
    results = bench("_results")
    path = results.write_result("some_bench", ["--steps", 3], {"ratio": 1.5, "undefined": math.nan, "rows": [(1, 2)]})
    record = json.loads(path.read_text())
    assert path == results.results_dir("some_bench") / "result.json"
    assert record["command"] == "python bench/some_bench.py --steps 3" and record["bench"] == "some_bench"
    assert record["date"].endswith("+00:00") and record["machine"]["cpu_count"] == os.cpu_count()
    assert record["figures"] == {"ratio": 1.5, "undefined": None, "rows": [[1, 2]]}  # strict JSON: NaN -> null


def test_a_shell_bench_writes_through_the_same_helper(tmp_path):
    env = {**os.environ, "BENCH_RESULTS_DIR": str(tmp_path), "PYTHONPATH": str(BENCH.parent)}
    figures = json.dumps({"build_seconds": 412, "passed": True})
    command = [sys.executable, str(BENCH / "_results.py"), "docker_smoke", figures, "--flag"]
    subprocess.run(command, env=env, check=True, capture_output=True)
    record = json.loads((tmp_path / "docker_smoke" / "result.json").read_text())
    assert record["command"] == "bash bench/docker_smoke.sh --flag"
    assert record["figures"] == {"build_seconds": 412, "passed": True}


def test_judge_throughput_writes_its_figures():
    argv = ["--judgments", "8", "--delay-ms", "1", "--concurrency", "4"]
    assert bench("judge_throughput").main(argv) in (0, 1)  # 1: the speed-up target is not met at 8 judgments
    record = written("judge_throughput")
    figures = record["figures"]
    assert record["command"] == "python bench/judge_throughput.py " + " ".join(argv)
    assert [r["concurrency"] for r in figures["runs"]] == [1, 4, 4] and figures["cached_rerun_requests"] == 0
    assert [r["requests"] for r in figures["runs"]] == [8, 8, 0] and figures["judgments"] == 8
    assert figures["speedup"] == pytest.approx(figures["runs"][1]["per_second"] / figures["runs"][0]["per_second"])


def test_generation_throughput_writes_its_figures(tiny_model_dir):
    argv = ["--model", str(tiny_model_dir), "--prompts", "2", "--batch_size", "2", "--max_new_tokens", "3", "--k", "2",
            "--repeats", "1", "--threads", "1"]  # fmt: skip
    bench("generation_throughput").main(argv)
    figures = written("generation_throughput")["figures"]
    assert [r["mode"].split(",")[0] for r in figures["rows"]] == ["one prompt at a time", "batched", "batched"]
    assert all(0 < r["tokens"] <= 2 * 2 * 3 and r["seconds"] > 0 for r in figures["rows"])
    speeds = [r["tokens_per_second"] for r in figures["rows"]]
    assert figures["batched_vs_one_greedy"] == pytest.approx(speeds[1] / speeds[0])
    assert figures["batched_vs_one_sampling"] == pytest.approx(speeds[2] / speeds[0])
    assert figures["prompts"] == 2 and Path(figures["model"]) == Path(tiny_model_dir)
