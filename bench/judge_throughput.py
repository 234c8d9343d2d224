"""Judge throughput: judgments per second at concurrency 1 vs 16 against a local server with a fixed delay, and the
cost of a fully cached rerun.

    python bench/judge_throughput.py                  # 128 judgments, 50 ms per request
    python bench/judge_throughput.py --judgments 256 --delay-ms 100

Its figures go to bench/results/judge_throughput/result.json (bench/_results.py).

The server is the tests' stdlib fake judge (tests/fake_judge_server.py, run as a script) on 127.0.0.1, in its own
process as a real endpoint would be (in-process, its threads would fight the client for the GIL). The numbers
measure the evaluator's own overhead and concurrency, not a model. Targets: >= 10x at 16 vs 1; zero requests when
cached.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

from _results import write_result

from alignkit.judge import JudgeConfig, load_template
from alignkit.judge.cache import JudgmentCache
from alignkit.judge.client import Comparison, JudgeRunner
from alignkit.judge.local_server import free_port

# Run as a script in its own process (stdlib only): the bench needs no import path into tests/.
FAKE_JUDGE = Path(__file__).resolve().parents[1] / "tests" / "fake_judge_server.py"


class Server:
    def __init__(self, base_url: str):
        self.base_url = base_url

    @property
    def requests(self) -> int:
        with urllib.request.urlopen(self.base_url + "/stats", timeout=5) as r:
            return json.loads(r.read())["requests"]


@contextmanager
def fake_server(delay_s: float):
    port = free_port()
    command = [sys.executable, str(FAKE_JUDGE), "--port", str(port), "--delay-s", str(delay_s)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    server = Server(f"http://127.0.0.1:{port}/v1")
    try:
        for _ in range(200):
            try:
                if server.requests >= 0:  # answers once the server is up
                    break
            except OSError:
                time.sleep(0.05)
        yield server
    finally:
        process.terminate()
        process.wait()


def run(server: Server, comparisons: list[Comparison], concurrency: int, cache_path: Path) -> dict:
    config = JudgeConfig(base_url=server.base_url, model="fake-judge", concurrency=concurrency)
    before = server.requests
    with JudgmentCache(cache_path) as cache:
        runner = JudgeRunner(config, load_template(config.template), cache)
        start, cpu_start = time.perf_counter(), time.process_time()
        judgments = runner.run(comparisons, progress=False)
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    assert all(j.status == "ok" for j in judgments), "every judgment should succeed against a healthy server"
    return {
        "concurrency": concurrency,
        "seconds": seconds,
        "per_second": len(comparisons) / seconds,
        "client_cpu_ms": 1000 * cpu / len(comparisons),
        "requests": server.requests - before,
        "cache_hits": runner.stats.cache_hits,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--judgments", type=int, default=128)
    parser.add_argument("--delay-ms", type=float, default=50.0, help="Server latency per request.")
    parser.add_argument("--concurrency", type=int, default=16, help="Compared with concurrency 1.")
    args = parser.parse_args(argv)
    comparisons = [
        Comparison(f"Question {i}: what is {i} + {i}?", f"GOOD {2 * i}", f"{2 * i + 1}") for i in range(args.judgments)
    ]
    rows = []
    with fake_server(args.delay_ms / 1000) as server, tempfile.TemporaryDirectory() as tmp:
        rows.append(run(server, comparisons, 1, Path(tmp) / "c1.jsonl"))
        rows.append(run(server, comparisons, args.concurrency, Path(tmp) / "cN.jsonl"))
        cached = run(server, comparisons, args.concurrency, Path(tmp) / "cN.jsonl")  # same cache: a rerun
    load = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"{args.judgments} judgments, server delay {args.delay_ms:.0f} ms per request; {os.cpu_count()} CPUs, "
          f"load average {load} (1/5/15 min)")  # fmt: skip
    print("| run | concurrency | seconds | judgments/s | client CPU ms/judgment | requests | cache hits |")
    print("|---|---|---|---|---|---|---|")
    for name, r in (("cold", rows[0]), ("cold", rows[1]), ("cached rerun", cached)):
        print(
            f"| {name} | {r['concurrency']} | {r['seconds']:.3f} | {r['per_second']:.1f} | {r['client_cpu_ms']:.2f} | "
            f"{r['requests']} | {r['cache_hits']} |"
        )
    ratio = rows[1]["per_second"] / rows[0]["per_second"]
    ideal = min(args.concurrency, args.judgments)
    print(f"speed-up at concurrency {args.concurrency} vs 1: {ratio:.1f}x (ideal {ideal}x; target >= 10x: "
          f"{'met' if ratio >= 10 else 'NOT met'})")  # fmt: skip
    print(f"cached rerun: {cached['requests']} requests (target 0: {'met' if cached['requests'] == 0 else 'NOT met'})")
    figures = {
        "judgments": args.judgments,
        "server_delay_ms": args.delay_ms,
        "runs": [{"run": name, **r} for name, r in (("cold", rows[0]), ("cold", rows[1]), ("cached rerun", cached))],
        "speedup": ratio,
        "speedup_concurrency": args.concurrency,
        "speedup_target_met": ratio >= 10,
        "cached_rerun_requests": cached["requests"],
    }
    write_result("judge_throughput", argv, figures)
    return 0 if ratio >= 10 and cached["requests"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
