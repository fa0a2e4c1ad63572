"""CONVNN_NOTEBOOKS (the repository's conftest.py): CI's tests stage leaves the notebooks to its
wheel stage; a bad value is one clear line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def collect(value: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "CONVNN_NOTEBOOKS"}
    if value is not None:
        env["CONVNN_NOTEBOOKS"] = value
    return subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "book"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=3600,
                          check=False)


def test_notebooks_are_collected_unless_switched_off() -> None:
    notebooks = sorted(p.name for p in (ROOT / "book").glob("*.ipynb"))
    on = collect(None)
    assert on.returncode == 0, on.stdout[-2000:]
    assert {line.split("::")[0].removeprefix("book/") for line in on.stdout.splitlines()
            if "::" in line} == set(notebooks)
    off = collect("off")
    assert off.returncode == 5, off.stdout[-2000:]  # pytest: no tests collected
    assert ".ipynb::" not in off.stdout


def test_a_bad_value_is_one_line_naming_the_variable() -> None:
    bad = collect("maybe")
    assert bad.returncode != 0
    lines = [line for line in (bad.stdout + bad.stderr).splitlines() if line.strip()]
    expected = ("ERROR: CONVNN_NOTEBOOKS must be one of ['on', 'off'] (off: leave the "
                "book's notebooks out), got 'maybe'")
    assert lines == [expected], lines
