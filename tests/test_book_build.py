"""The book builds strictly, offline, with launch buttons and install cells that agree.

The build runs with execution off (about 3 s), so these tests are part of the default suite.
Fixtures (``built_book``, ``probe_book``) and helpers live in tests/conftest_book.py.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

pytest.register_assert_rewrite("conftest_book")  # before the import below
from conftest_book import (
    PROBE_NOTEBOOK,
    ROOT,
    BookBuild,
    book_config,
    install_cell_source,
    install_urls,
    resolve_source,
    toc_files,
)

pytest_plugins = ["conftest_book"]

# What the vendored JavaScript replaces: none of these may appear in a built page.
CDN_HOSTS = ("cdn.jsdelivr.net/npm/mathjax", "cdnjs.cloudflare.com", "/html-manager@")


def toc_notebooks() -> list[Path]:
    return [p for p in map(resolve_source, toc_files()) if p is not None and p.suffix == ".ipynb"]


def colab_link(cfg: dict, notebook: str) -> str:
    """The launch link sphinx-book-theme must render for ``notebook`` (path from the repo root)."""
    repo = cfg["repository"]
    org_repo = repo["url"].removeprefix("https://github.com/").strip("/")
    colab = cfg["launch_buttons"]["colab_url"].rstrip("/")
    return f"{colab}/github/{org_repo}/blob/{repo['branch']}/{notebook}"


def test_config_names_repository_once() -> None:
    cfg = book_config()
    assert cfg["repository"]["url"] == "https://github.com/convnn/convnn"
    assert cfg["repository"]["branch"] == "main"  # JB1's default 'master' breaks Colab links
    assert cfg["repository"].get("path_to_book", "") == ""
    assert cfg["execute"]["execute_notebooks"] == "off"  # the build never trains or executes
    text = (ROOT / "_config.yml").read_text(encoding="utf-8")
    assert text.count(cfg["repository"]["url"]) == 1


def test_toc_lists_only_existing_files() -> None:
    missing = [name for name in toc_files() if resolve_source(name) is None]
    assert not missing, f"_toc.yml names files that do not exist: {missing}"


def test_no_root_static_folder() -> None:
    # JB1 injects every .js/.css under a root _static/ into every page (toolchain.md §7).
    assert not (ROOT / "_static").exists(), "vendored JS belongs in book/_vendor, not _static/"


def test_book_builds_strictly(built_book: BookBuild) -> None:
    html = built_book.require_success()
    assert "build succeeded" in built_book.log
    assert "WARNING" not in built_book.log
    assert (html / "index.html").is_file()
    intro = html / "book" / "intro.html"
    assert intro.is_file()
    # index.html redirects to the root page.
    assert "book/intro.html" in (html / "index.html").read_text(encoding="utf-8")
    print(f"book build: {built_book.seconds:.1f} s")


def test_every_toc_page_is_built(built_book: BookBuild) -> None:
    html = built_book.require_success()
    for name in toc_files():
        page = html / Path(name).with_suffix(".html")
        assert page.is_file(), f"{name} in _toc.yml was not built ({page})"


def test_math_and_widgets_use_vendored_js(built_book: BookBuild) -> None:
    html = built_book.require_success()
    for rel in (
        "mathjax/tex-chtml.js",
        "mathjax/output/chtml/fonts/woff-v2/MathJax_Main-Regular.woff",
        "requirejs/require.js",
        "html-manager/embed-amd.js",
    ):
        assert (html / "_static" / rel).is_file(), f"_static/{rel} missing from the build"
    intro = (html / "book" / "intro.html").read_text(encoding="utf-8")
    assert re.search(r'<script[^>]+src="\.\./_static/mathjax/tex-chtml\.js', intro)
    assert intro.count("mathjax/tex-chtml.js") == 1
    for host in CDN_HOSTS:
        assert host not in intro


def test_intro_figure_is_in_the_page(built_book: BookBuild) -> None:
    html = built_book.require_success()
    intro = (html / "book" / "intro.html").read_text(encoding="utf-8")
    assert re.search(r'<img[^>]+src="\.\./_images/select_then_aggregate\.png"', intro)
    assert (html / "_images" / "select_then_aggregate.png").is_file()


def test_repository_button_points_at_repository(built_book: BookBuild) -> None:
    html = built_book.require_success()
    intro = (html / "book" / "intro.html").read_text(encoding="utf-8")
    assert f'href="{book_config()["repository"]["url"]}"' in intro


def test_colab_links_of_toc_notebooks(built_book: BookBuild) -> None:
    notebooks = toc_notebooks()
    if not notebooks:
        pytest.skip("no notebook chapter in _toc.yml yet (test_probe_colab_link covers the setup)")
    html = built_book.require_success()
    cfg = book_config()
    for nb in notebooks:
        rel = nb.relative_to(ROOT).as_posix()
        page = (html / Path(rel).with_suffix(".html")).read_text(encoding="utf-8")
        assert colab_link(cfg, rel) in page, f"{rel}: no Colab link to {colab_link(cfg, rel)}"


def test_probe_colab_link(probe_book: BookBuild) -> None:
    """A notebook page gets a Colab launch button for the configured repository and branch."""
    html = probe_book.require_success()
    page = (html / Path(PROBE_NOTEBOOK).with_suffix(".html")).read_text(encoding="utf-8")
    expected = colab_link(book_config(), PROBE_NOTEBOOK)
    assert expected.startswith(
        "https://colab.research.google.com/github/convnn/convnn/blob/main/book/"
    )
    assert f'href="{expected}"' in page
    assert "/blob/master/" not in page
    # A page with a widget loads the vendored require.js and html-manager, not the CDN ones.
    assert re.search(r'<script[^>]+src="\.\./_static/requirejs/require\.js', page)
    assert re.search(r'<script[^>]+src="\.\./_static/html-manager/embed-amd\.js', page)
    assert "application/vnd.jupyter.widget-state+json" in page
    for host in CDN_HOSTS:
        assert host not in page


def test_install_cell_template_parses() -> None:
    cfg = book_config()["repository"]
    source = install_cell_source(cfg["url"], cfg["branch"])
    assert install_urls(source) == [(cfg["url"], cfg["branch"])]
    pip_lines = [line for line in source.splitlines() if '"pip", "install"' in line]
    assert len(pip_lines) == 1 and "torch" not in pip_lines[0]


def test_install_cells_use_configured_repository() -> None:
    """Every notebook chapter opens with an install cell for ``_config.yml``'s repository."""
    notebooks = toc_notebooks()
    if not notebooks:
        pytest.skip("no notebook chapter in _toc.yml yet")
    cfg = book_config()["repository"]
    problems = []
    for nb_path in notebooks:
        nb = json.loads(nb_path.read_text(encoding="utf-8"))
        code = ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]
        name = nb_path.relative_to(ROOT).as_posix()
        if not code or code[0].rstrip() != install_cell_source(cfg["url"],
                                                                 cfg["branch"]).rstrip():
            problems.append(f"{name}: the first code cell is not the install cell")
            continue
        for url, ref in install_urls(code[0]):
            if url != cfg["url"] or ref not in (None, cfg["branch"]):
                problems.append(f"{name}: installs {url}@{ref}, _config.yml has {cfg['url']}")
        pip_lines = [line for line in code[0].splitlines() if "pip" in line and "install" in line]
        if any("torch" in line for line in pip_lines):
            problems.append(f"{name}: the install cell must not install torch (Colab has it)")
        # Any other git+ URL in the notebook must name the same repository.
        for cell in code[1:]:
            for url, _ in install_urls(cell):
                if url != cfg["url"]:
                    problems.append(f"{name}: another cell installs from {url}")
    assert not problems, "\n".join(problems)


def _run_install_cell(monkeypatch, returncode: int = 0, output: str = "") -> list:
    """Execute the install cell (through IPython's transformer, as a kernel does) without
    convnn importable and with pip faked; returns the commands it ran."""
    import importlib.util
    import subprocess

    from IPython.core.inputtransformer2 import TransformerManager

    cfg = book_config()["repository"]
    code = TransformerManager().transform_cell(install_cell_source(cfg["url"], cfg["branch"]))
    calls = []

    def fake_run(command, **kwargs):
        calls.append(command)
        return subprocess.CompletedProcess(command, returncode, stdout="", stderr=output)

    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    monkeypatch.setattr(subprocess, "run", fake_run)
    exec(compile(code, "install-cell", "exec"), {})  # noqa: S102 (the cell itself)
    return calls


@pytest.mark.parametrize("inside_clone", [True, False])
def test_install_cell_installs_the_clone_it_sits_in(tmp_path, monkeypatch, inside_clone) -> None:
    """Without convnn importable, the cell pip-installs the enclosing clone (a local checkout)
    or, elsewhere (Colab), the configured repository, into the kernel's interpreter; never
    torch."""
    cfg = book_config()["repository"]
    monkeypatch.chdir(ROOT / "book" if inside_clone else tmp_path)
    calls = _run_install_cell(monkeypatch)
    expected = str(ROOT) if inside_clone else f"convnn @ git+{cfg['url']}@{cfg['branch']}"
    assert calls == [[sys.executable, "-m", "pip", "install", "-q", "--no-color", expected]]


def test_a_failed_install_fails_the_install_cell(tmp_path, monkeypatch) -> None:
    """pip's exit code is not ignored (as %pip ignores it): the cell raises with pip's last
    lines and the command to retry, instead of a ModuleNotFoundError one cell later."""
    monkeypatch.chdir(tmp_path)
    noise = "\n".join(f"line {i}" for i in range(40))
    block = "error: subprocess-exited-with-error\n  git clone did not run successfully"
    output = f"{noise}\n{block}\nnote: the first copy\n{block}"  # pip prints its block twice
    with pytest.raises(RuntimeError) as info:
        _run_install_cell(monkeypatch, returncode=1, output=output)
    message = str(info.value)
    assert "installing convnn failed (pip exit code 1)" in message
    assert message.count("git clone did not run successfully") == 1  # one block, the last
    assert "line 39" not in message and "note: the first copy" not in message
    with pytest.raises(RuntimeError) as info:  # no error block: pip's last lines
        _run_install_cell(monkeypatch, returncode=1, output=noise)
    assert "line 39" in str(info.value) and "line 0\n" not in str(info.value)
    cfg = book_config()["repository"]
    assert f'%pip install "convnn @ git+{cfg["url"]}@{cfg["branch"]}"' in message


def test_a_fork_sets_its_repository_in_one_command(tmp_path) -> None:
    """scripts/set_repository.py rewrites _config.yml and every install line together."""
    import shutil
    import subprocess
    import sys

    for name in ("_config.yml", "book/vgg_cifar.ipynb", "book/using_the_package.md"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, tmp_path / name)
    script = (ROOT / "scripts" / "set_repository.py").read_text()
    (tmp_path / "scripts").mkdir()
    (tmp_path / "scripts" / "set_repository.py").write_text(script)
    url = "https://github.com/someone/convnn-fork"
    done = subprocess.run([sys.executable, "scripts/set_repository.py", url, "--branch", "dev"],
                          cwd=tmp_path, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert f"url: {url}\n" in (tmp_path / "_config.yml").read_text()
    notebook = (tmp_path / "book" / "vgg_cifar.ipynb").read_text()
    assert f"git+{url}@dev" in notebook and "github.com/convnn/convnn" not in notebook
    assert f"git+{url}@dev" in (tmp_path / "book" / "using_the_package.md").read_text()
    bad = subprocess.run([sys.executable, "scripts/set_repository.py", "not a url"],
                         cwd=tmp_path, capture_output=True, text=True, check=False)
    assert bad.returncode == 2 and bad.stderr.startswith("error: url must look like")


# What readers must never see: details of the machines the book is built and measured on.
BUILD_MACHINE_DETAILS = {
    "a lent GPU": re.compile(r"\blent\b", re.IGNORECASE),
    "the GPU runs' data folder": re.compile(r"CONVNN_DATA_DIR=\.device|\.device/"),
    "the GPU runs' output variable": re.compile(r"\$OUT\b"),
    "an absolute path of a build machine": re.compile(
        r"(?<![\w.])/(?:work|root|home|tmp|opt|mnt)/[\w.-]+"),
    "the offline dataset copy's folder": re.compile(r"shared/datasets"),
}


def _machine_details(text: str) -> list[str]:
    found = []
    for what, pattern in BUILD_MACHINE_DETAILS.items():
        for m in pattern.finditer(text):
            found.append(f"{what}: ...{text[max(0, m.start() - 40):m.end() + 40]!r}...")
    return found


def test_reader_facing_sources_name_no_build_machine() -> None:
    sources = [ROOT / "README.md", *sorted((ROOT / "book").glob("*.md")),
               *sorted((ROOT / "book").glob("*.ipynb")), ROOT / "data" / "results" / "README.md"]
    problems = [f"{p.relative_to(ROOT)}: {d}" for p in sources
                for d in _machine_details(p.read_text(encoding="utf-8"))]
    assert not problems, "\n".join(problems)


def test_built_pages_name_no_build_machine(built_book: BookBuild) -> None:
    html = built_book.require_success()
    problems = []
    for page in sorted(html.rglob("*.html")):
        text = re.sub(r"<[^>]+>", " ", page.read_text(encoding="utf-8"))  # the visible text
        problems += [f"{page.relative_to(html)}: {d}" for d in _machine_details(text)]
    assert not problems, "\n".join(problems[:20])


def test_the_machine_detail_patterns_catch_what_they_should() -> None:
    assert _machine_details("data: cifar10 (JPEG copy at /work/shared/datasets/x.tar.gz)")
    assert _machine_details("NVIDIA H200 (lent GPU machine)")
    assert _machine_details("CONVNN_DATA_DIR=.device python3 run.py $OUT")
    assert not _machine_details("cifar10 (JPEG copy at …/cifar10-jpeg.tar.gz); runs/vgg11")
