"""The runtime requirements keep Colab's preinstalled stack: lower bounds only, none above
what Colab ships (``tests/colab_preinstalled.txt``), so ``pip install convnn`` upgrades
nothing there."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import tomllib
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]


def _colab() -> dict[str, Version]:
    pins = {}
    for line in (ROOT / "tests" / "colab_preinstalled.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, version = line.split("==")
            pins[name.lower()] = Version(version)
    return pins


def _requirements() -> dict[str, list[Requirement]]:
    lines = [line.split("#", 1)[0].strip()
             for line in (ROOT / "requirements.txt").read_text().splitlines()]
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return {"requirements.txt": [Requirement(x) for x in lines if x],
            "pyproject.toml": [Requirement(x) for x in project["dependencies"]]}


def test_the_colab_file_is_dated_and_complete() -> None:
    text = (ROOT / "tests" / "colab_preinstalled.txt").read_text()
    assert re.search(r"dated \d{4}-\d{2}-\d{2}", text)
    named = {r.name.lower() for reqs in _requirements().values() for r in reqs}
    assert named <= set(_colab()), f"add Colab's version of {named - set(_colab())}"


@pytest.mark.parametrize("source", ["requirements.txt", "pyproject.toml"])
def test_lower_bounds_are_at_or_below_colabs_versions(source) -> None:
    colab = _colab()
    problems = []
    for req in _requirements()[source]:
        installed = colab[req.name.lower()]
        for spec in req.specifier:
            if spec.operator in ("==", "===", "~=", "<", "<="):
                problems.append(f"{req}: only lower bounds (>=) are allowed")
            elif not spec.contains(installed, prereleases=True):
                problems.append(f"{req} excludes Colab's {req.name} {installed}")
    assert not problems, "\n".join(problems)


def test_both_files_ask_for_the_same_packages() -> None:
    reqs = _requirements()
    assert {str(r) for r in reqs["requirements.txt"]} == {str(r) for r in reqs["pyproject.toml"]}
