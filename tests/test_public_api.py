"""What `import alignkit` offers: the exported names, each importable alone, each with its use in its docstring, the
package import itself cheap; and the commands pyproject installs."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

import alignkit

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "transformers", "trl", "peft", "datasets", "accelerate")


def _run(code: str) -> str:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()


def test_import_alignkit_loads_nothing_heavy():
    code = (
        "import sys, alignkit; "
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r} or m.startswith('alignkit.')))"
    )
    assert _run(code) == "[]"


@pytest.mark.parametrize("name", sorted(alignkit.EXPORTS))
def test_each_export_imports_first_in_a_fresh_interpreter(name):
    # Imported first, each name's module loads its own layers without a cycle, and is the object named.
    module = alignkit.EXPORTS[name]
    assert _run(f"from alignkit import {name}; print({name}.__module__.startswith({module!r}))") == "True"


@pytest.mark.parametrize("name", sorted(alignkit.EXPORTS))
def test_each_export_shows_its_use(name):
    doc = getattr(alignkit, name).__doc__ or ""
    example = [line for line in doc.splitlines() if line.startswith("        ") and "from alignkit import" in line]
    assert example and any(name in line for line in example), doc
    assert name in dir(alignkit) and name in alignkit.__all__


def test_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'SqueezingMonitor'"):
        alignkit.SqueezingMonitor  # noqa: B018 (the access is the test)


def test_installed_commands_resolve_to_main_functions():
    section = (ROOT / "pyproject.toml").read_text().split("[project.scripts]\n", 1)[1].split("\n[", 1)[0]
    scripts = dict(line.replace('"', "").split(" = ") for line in section.strip().splitlines())
    assert {"alignkit-recipe", "alignkit-preflight", "alignkit-win-rate", "alignkit-dynamics"} <= scripts.keys()
    for target in scripts.values():
        module, function = target.split(":")
        assert callable(getattr(importlib.import_module(module), function)), target
