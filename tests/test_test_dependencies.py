"""The suite's guard for optional test dependencies: a skip on a developer's machine, a failure under CI=true."""

from __future__ import annotations

import sys

import pytest

from .conftest import in_ci, require_or_skip, skip_or_fail

MISSING = "alignkit_no_such_module_or_program"


@pytest.mark.parametrize("value", ["true", "True"])
def test_missing_dependency_fails_under_ci(monkeypatch, value):
    monkeypatch.setenv("CI", value)
    assert in_ci()
    with pytest.raises(pytest.fail.Exception, match="needs the thing.*CI=true"):
        require_or_skip(MISSING, "needs the thing")
    with pytest.raises(pytest.fail.Exception, match="no model file"):
        skip_or_fail("no model file")


@pytest.mark.parametrize("value", [None, "", "false", "1"])
def test_missing_dependency_skips_elsewhere(monkeypatch, value):
    if value is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", value)
    assert not in_ci()
    with pytest.raises(pytest.skip.Exception, match="needs the thing"):
        require_or_skip(MISSING, "needs the thing")
    with pytest.raises(pytest.skip.Exception, match="^no such parent$"):
        require_or_skip(f"{MISSING}.child", "no such parent")  # a dotted name whose parent is missing


def test_present_modules_and_programs_pass_under_ci(monkeypatch):
    monkeypatch.setenv("CI", "true")
    require_or_skip("json", "a standard module")  # importable
    require_or_skip("tests.conftest", "this suite's own module")  # dotted and importable
    require_or_skip(sys.executable, "the interpreter")  # a program (a path works as for shutil.which)
