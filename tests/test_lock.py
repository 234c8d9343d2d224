"""The lock file pins every package of the virtualenv that the README's commands build, at the installed version."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[1]


def pins(lines: list[str]) -> dict[str, str]:
    """`name==version` lines as {normalised name: version without a local label}; comments and blanks aside."""
    found = {}
    for line in lines:
        line = line.split("#", 1)[0].strip()
        if not line or line.startswith("-e"):
            continue
        name, version = line.split("==")
        found[re.sub(r"[-_.]+", "-", name).lower()] = version.split("+")[0]  # 2.13.0+cpu is torch 2.13.0
    return found


def test_pins_parses_names_and_versions_as_pip_compares_them():
    assert pins(["# a comment", "Foo_Bar==1.0  # why", "torch==2.13.0+cpu", "-e /src/alignkit", ""]) == {
        "foo-bar": "1.0", "torch": "2.13.0",
    }  # fmt: skip


def test_every_installed_package_is_pinned_at_its_version():
    lock = pins((ROOT / "constraints.txt").read_text().splitlines())
    freeze = subprocess.run([sys.executable, "-m", "pip", "freeze", "--exclude-editable"], capture_output=True,
                            text=True, check=True).stdout.splitlines()  # fmt: skip
    installed = pins(freeze)
    missing = sorted(name for name in installed if name not in lock)
    assert not missing, f"installed but not pinned in constraints.txt (run bash .ci/lock): {missing}"
    differ = {name: (lock[name], version) for name, version in installed.items() if lock[name] != version}
    assert not differ, f"constraints.txt pin vs installed version: {differ}"


def test_every_install_command_uses_the_lock():
    readme = (ROOT / "README.md").read_text().split("```")[1]
    texts = {"README": readme, ".ci/run": (ROOT / ".ci" / "run").read_text(),
             "Dockerfile": (ROOT / "Dockerfile").read_text()}  # fmt: skip
    for where, text in texts.items():
        for step in re.findall(r"pip install ([^&\n\\]+)", text):
            assert "torch==" in step or "-c constraints.txt" in step, f"{where}: 'pip install {step}' is not locked"
