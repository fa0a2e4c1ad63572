"""Repository-level pytest setup: whether this run executes the book's notebooks.

``python -m pytest`` runs the unit tests and every notebook of ``book/`` through nbval.
``CONVNN_NOTEBOOKS=off`` leaves the notebooks out of the run (the header says so). CI sets it
for its tests stage because its wheel stage runs every notebook once more, against the
installed wheel with Colab's package versions, which is what notebook users run; running
them twice cost about 100 s of CI's 15 minutes.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

NOTEBOOKS_ENV = "CONVNN_NOTEBOOKS"
_ALLOWED = ("on", "off")


def notebooks_enabled() -> bool:
    value = os.environ.get(NOTEBOOKS_ENV, "on").strip().lower() or "on"
    if value not in _ALLOWED:
        raise pytest.UsageError(f"{NOTEBOOKS_ENV} must be one of {list(_ALLOWED)} "
                                f"(off: leave the book's notebooks out), got {value!r}")
    return value == "on"


def pytest_configure(config: pytest.Config) -> None:
    notebooks_enabled()  # a bad value stops the run before collection, in one line


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    if collection_path.suffix == ".ipynb" and not notebooks_enabled():
        return True
    return None


def pytest_report_header(config: pytest.Config) -> list[str]:
    if notebooks_enabled():
        return []
    return [f"convnn: {NOTEBOOKS_ENV}=off: the book's notebooks are not run here"]
