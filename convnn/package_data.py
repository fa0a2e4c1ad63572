"""Files that ship inside the package: the paper's numbers and the committed run logs.

They live in the repository's ``data/`` folder, which ``pyproject.toml`` installs as the
sub-package ``convnn._data`` (in a wheel and in an editable install alike), and are read
through :mod:`importlib.resources`, so an installed ``convnn`` finds them wherever it is.

Example:
    >>> from convnn import package_data
    >>> package_data.data_file("paper_results.json").name
    'paper_results.json'
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path

__all__ = ["PackageDataError", "data_file", "data_root", "results_root"]


class PackageDataError(FileNotFoundError):
    """A file that should ship with the package is missing (a broken install)."""


def data_root() -> Path:
    """The folder of the shipped data files (``convnn/_data`` of the installed package)."""
    try:
        root = importlib.resources.files("convnn._data")
    except ModuleNotFoundError as err:
        # A checkout on sys.path without an install (PYTHONPATH=., a notebook's sys.path):
        # the files are the checkout's data/ folder beside the package.
        checkout_data = Path(__file__).resolve().parent.parent / "data"
        if (checkout_data / "paper_results.json").is_file():
            return checkout_data
        raise PackageDataError(
            "convnn's data files (convnn._data) are not installed; install the package with "
            "`pip install .` or `pip install -e .` from a checkout, or from its wheel") from err
    path = Path(str(root))
    if not path.is_dir():  # a zip import: the files cannot be read as plain paths
        raise PackageDataError(f"convnn's data files are not a folder on disk ({root}); "
                               "install convnn into a normal site-packages folder")
    return path


def data_file(*parts: str) -> Path:
    """A file shipped with the package, e.g. ``data_file("paper_results.json")``.

    Raises:
        PackageDataError: the file is not in the installed package.
    """
    path = data_root().joinpath(*parts)
    if not path.is_file():
        raise PackageDataError(
            f"{'/'.join(parts)} is missing from convnn's data files ({data_root()}); "
            "reinstall convnn (the file ships in its wheel)")
    return path


def results_root() -> Path:
    """The committed run logs (``data/results/`` of the repository). It may be empty in a
    stripped-down install; readers treat a missing folder as "no runs"."""
    return data_root() / "results"
