"""Shared fixtures and helpers for the book tests (test_book_build.py, test_browser.py).

Loaded with ``pytest_plugins = ["conftest_book"]`` in those test modules, so the session-scoped
builds below run once per pytest session, whichever of the two files asks first.

* ``built_book``: the real book, built strictly (``-W -n --keep-going``) into a temporary
  ``--path-output``, so the tests never touch the repository's own ``_build/``.
* ``probe_book``: a throwaway copy of the book (same ``_config.yml``, same ``book/`` files) with
  one extra notebook, executed here with nbclient: it has the canonical install cell, math and an
  ``ipywidgets.IntSlider``. It exercises the parts no committed chapter may cover yet: launch
  buttons, the install cell, and widget rendering with the vendored JavaScript.
"""

from __future__ import annotations

import functools
import http.server
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
BUILD_FLAGS = ["-W", "-n", "--keep-going"]
PROBE_NOTEBOOK = "book/probe.ipynb"


def book_config() -> dict:
    """The parsed root ``_config.yml``."""
    return yaml.safe_load((ROOT / "_config.yml").read_text(encoding="utf-8"))


def toc_files(toc: dict | None = None) -> list[str]:
    """Every file named in ``_toc.yml`` (root first), as written there (suffix optional)."""
    toc = toc if toc is not None else yaml.safe_load((ROOT / "_toc.yml").read_text("utf-8"))
    files = [toc["root"]]

    def walk(entries: list[dict]) -> None:
        for entry in entries or []:
            if "file" in entry:
                files.append(entry["file"])
            walk(entry.get("sections", []))
            walk(entry.get("chapters", []))

    walk(toc.get("chapters", []))
    for part in toc.get("parts", []):
        walk(part.get("chapters", []))
    return files


def resolve_source(name: str, root: Path = ROOT) -> Path | None:
    """The source file of a toc entry (``book/intro`` -> ``book/intro.md``), or None."""
    path = root / name
    if path.suffix in {".md", ".ipynb"}:
        return path if path.is_file() else None
    for suffix in (".md", ".ipynb"):
        if path.with_suffix(suffix).is_file():
            return path.with_suffix(suffix)
    return None


def install_cell_source(repo_url: str, branch: str) -> str:
    """The canonical first code cell of every notebook chapter.

    Where convnn is importable it does nothing. Otherwise it installs it (not editable, so the
    running kernel can import it at once): from the clone the notebook sits in when there is
    one, else from the repository (on Google Colab, say), without touching the preinstalled
    torch (the package asks only for ``torch>=2.4``). pip runs as a subprocess of the
    kernel's interpreter (what ``%pip`` does), so that a failed install fails the cell: it
    raises with pip's final error block (once, without colour codes: ``--no-color``; pip
    prints the block twice) and the command to retry (``%pip`` ignores pip's exit code).
    The URL is written literally; test_book_build.py checks that it equals ``_config.yml``'s
    ``repository.url`` and ``repository.branch``.
    """
    return (
        "# Install convnn only when it is missing: from the clone this notebook sits in, else\n"
        "# (e.g. on Google Colab) from its repository. The preinstalled torch is kept. A failed\n"
        "# install stops here, with pip's last lines and the command to retry.\n"
        "import importlib\n"
        "import importlib.util\n"
        "import subprocess\n"
        "import sys\n"
        "from pathlib import Path\n"
        "\n"
        'if importlib.util.find_spec("convnn") is None:\n'
        "    clone = next((p for p in (Path.cwd(), *Path.cwd().parents)\n"
        '                  if (p / "pyproject.toml").is_file() and (p / "convnn").is_dir()), None)\n'
        f'    source = str(clone) if clone else "convnn @ git+{repo_url}@{branch}"\n'
        '    pip = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-color",\n'
        "                          source], capture_output=True, text=True)\n"
        "    if pip.returncode != 0:  # pip repeats its error block at the end: show that one\n"
        "        lines = (pip.stdout + pip.stderr).strip().splitlines()\n"
        '        errors = [i for i, line in enumerate(lines) if line.lower().startswith("error:")]\n'
        '        last = "\\n".join(lines[errors[-1] if errors else -15:][:15])\n'
        '        raise RuntimeError(f"installing convnn failed (pip exit code {pip.returncode}):"\n'
        '                           f"\\n{last}\\nRetry in a cell: %pip install \\"{source}\\"")\n'
        "    importlib.invalidate_caches()\n"
    )


INSTALL_URL = re.compile(
    r"git\+(?P<url>https?://[^\s\"'@]+?)(?:\.git)?(?:@(?P<ref>[^\s\"'#]+))?[\"'\s]"
)


def install_urls(source: str) -> list[tuple[str, str | None]]:
    """(url, ref) of every ``git+https://...`` requirement in a cell's source."""
    return [(m["url"], m["ref"]) for m in INSTALL_URL.finditer(source + "\n")]


def jupyter_book_command() -> list[str]:
    """Run Jupyter Book with the interpreter running pytest, whatever is on PATH."""
    return [
        sys.executable,
        "-c",
        "import sys; from jupyter_book.cli.main import main; sys.exit(main())",
    ]


@dataclass
class BookBuild:
    """Outcome of one ``jupyter-book build``."""

    source: Path
    out: Path
    returncode: int
    log: str
    seconds: float

    @property
    def html(self) -> Path:
        return self.out / "_build" / "html"

    def require_success(self) -> Path:
        """The HTML folder; fails the calling test with the build log if the build failed."""
        if self.returncode != 0:
            pytest.fail(f"jupyter-book build failed (rc {self.returncode}):\n{self.log[-6000:]}")
        return self.html


def build_book(source: Path, out: Path) -> BookBuild:
    """``jupyter-book build <source> -W -n --keep-going --path-output <out>``."""
    cmd = [*jupyter_book_command(), "build", str(source), *BUILD_FLAGS, "--path-output", str(out)]
    start = time.perf_counter()
    proc = subprocess.run(cmd, check=False, cwd=source, capture_output=True, text=True,
                          timeout=3600)  # an hour: a hang guard only, never reached when slow
    seconds = time.perf_counter() - start
    return BookBuild(source, out, proc.returncode, proc.stdout + proc.stderr, seconds)


@pytest.fixture(scope="session")
def built_book(tmp_path_factory: pytest.TempPathFactory) -> BookBuild:
    """The repository's book, built strictly into a temporary folder (execution is off)."""
    return build_book(ROOT, tmp_path_factory.mktemp("book_build"))


def _write_probe_notebook(path: Path, repo_url: str, branch: str) -> None:
    """Write and execute (nbclient, this interpreter's kernel) the probe notebook."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    nb.cells = [
        nbformat.v4.new_markdown_cell("# Probe\n\nInline math $e^{i\\pi} + 1 = 0$ and a widget."),
        nbformat.v4.new_code_cell(install_cell_source(repo_url, branch)),
        nbformat.v4.new_code_cell(
            "import ipywidgets as widgets\n"
            "widgets.IntSlider(value=3, min=1, max=9, description='k')"
        ),
    ]
    NotebookClient(
        nb, timeout=3600, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}
    ).execute()
    nbformat.write(nb, path)


@pytest.fixture(scope="session")
def probe_book(tmp_path_factory: pytest.TempPathFactory) -> BookBuild:
    """A copy of the book plus an executed probe notebook with a widget, built strictly."""
    cfg = book_config()
    src = tmp_path_factory.mktemp("probe_src")
    shutil.copy2(ROOT / "_config.yml", src / "_config.yml")
    shutil.copytree(
        ROOT / "book", src / "book", ignore=shutil.ignore_patterns(".ipynb_checkpoints")
    )
    shutil.copytree(ROOT / "convnn", src / "convnn",  # chapters include its source
                    ignore=shutil.ignore_patterns("__pycache__"))
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text(encoding="utf-8"))  # the real chapters
    toc["chapters"] = [*toc.get("chapters", []), {"file": PROBE_NOTEBOOK}]
    (src / "_toc.yml").write_text(yaml.safe_dump(toc, sort_keys=False), encoding="utf-8")
    # The API reference (autodoc imports torch and the package: the build's slowest part) is
    # checked in the real build; here a stub page, and the chapters' links to it go unchecked.
    (src / "book" / "api.md").write_text("# API reference\n", encoding="utf-8")
    cfg["sphinx"]["config"]["nitpick_ignore_regex"].append(["py:.*", "convnn[.].*"])
    (src / "_config.yml").write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
    _write_probe_notebook(
        src / PROBE_NOTEBOOK, cfg["repository"]["url"], cfg["repository"]["branch"]
    )
    return build_book(src, tmp_path_factory.mktemp("probe_build"))


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    """Static file handler that records (path, status) instead of logging to stderr."""

    requests: list[tuple[str, int]]

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        self.requests.append((self.path, int(code) if str(code).isdigit() else 0))

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextmanager
def serve(directory: Path) -> Iterator[tuple[str, list[tuple[str, int]]]]:
    """Serve ``directory`` on 127.0.0.1 (a free port); yields (base URL, request log)."""
    requests: list[tuple[str, int]] = []
    handler = type("Handler", (_QuietHandler,), {"requests": requests})
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(handler, directory=str(directory))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", requests
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
