"""The built pages render in headless Chromium with no network: math, figures and widgets.

The built HTML is served on 127.0.0.1 and Chromium resolves every other host name to nothing
(``--host-resolver-rules``), so anything that still came from a CDN would fail to load. MathJax
only produces ``<mjx-container>`` elements after it has run, and the widget renderer only
produces ``widget-slider`` elements after require.js and the html-manager have loaded: both
prove that the vendored JavaScript in book/_vendor works.

Needs Debian's ``chromium`` (``apt-get install -y chromium``; scripts/ci_book.sh installs it);
skipped with a clear reason where it is missing. Set ``CONVNN_SCREENSHOT_DIR`` to keep the
screenshots for a human look.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

pytest.register_assert_rewrite("conftest_book")  # before the import below
from conftest_book import PROBE_NOTEBOOK, BookBuild, serve

pytest_plugins = ["conftest_book"]

CHROMIUM = next(
    (
        p
        for p in (shutil.which("chromium"), "/usr/bin/chromium", shutil.which("chromium-browser"))
        if p and Path(p).is_file()
    ),
    None,
)
pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="headless Chromium not installed (apt-get install -y chromium; see scripts/ci_book.sh)",
)

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--disable-background-networking",
    "--no-first-run",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    # No network but loopback: any CDN reference left in a page fails to load.
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
    "--window-size=1280,2400",
    "--virtual-time-budget=15000",
]


@dataclass(frozen=True)
class Page:
    """A built page and what must be visible on it once its scripts have run."""

    path: str  # relative to _build/html
    title: str  # the page's <h1>, which starts the <title>
    figure: bool = True  # an <img> from _images/
    math: bool = True  # MathJax output
    widget: bool = False  # a rendered ipywidget

    def __str__(self) -> str:
        return self.path


# The lead adds chapter pages here as they land, e.g.
#   Page("book/spectrum.html", title="...", widget=True),
PAGES = [
    Page("book/intro.html", title="Convolutional Nearest Neighbors"),
    Page("book/knn_aggregation.html", title="k-NN aggregation from scratch"),
    Page("book/convolution_as_knn.html", title="Convolution is spatial k-NN"),
    Page("book/attention_as_knn.html", title="Attention is feature k-NN"),
    Page("book/spectrum.html", title="The spectrum between them", widget=True),
    Page("book/vgg_cifar.html", title="ConvNN in VGG-11 on CIFAR"),
    Page("book/vit_cifar.html", title="ConvNN attention in ViT-Tiny on CIFAR"),
    Page("book/results.html", title="Results"),
    Page("book/performance.html", title="Performance"),
    Page("book/using_the_package.html", title="Using the package", figure=False),
]


def chromium(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    with tempfile.TemporaryDirectory() as profile:
        return subprocess.run(
            [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args, url],
            capture_output=True,
            text=True,
            timeout=3600,  # hang guard only
            check=False,
        )


def render(html_dir: Path, page: str, screenshot: Path) -> tuple[str, list[tuple[str, int]]]:
    """(rendered DOM, request log) of ``page``; also writes a PNG screenshot."""
    with serve(html_dir) as (base, requests):
        url = f"{base}/{page}"
        dom = chromium(url, "--dump-dom")
        assert dom.returncode == 0, dom.stderr[-3000:]
        shot = chromium(url, f"--screenshot={screenshot}")
        assert shot.returncode == 0, shot.stderr[-3000:]
    assert screenshot.is_file() and screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert screenshot.stat().st_size > 20_000, "the screenshot looks blank"
    keep = os.environ.get("CONVNN_SCREENSHOT_DIR")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy2(screenshot, Path(keep) / screenshot.name)
    return dom.stdout, requests


def check_common(dom: str, requests: list[tuple[str, int]]) -> None:
    broken = [(path, code) for path, code in requests if code >= 400 and path != "/favicon.ico"]
    assert not broken, f"requests that failed: {broken}"
    # The vendored MathJax was really fetched from our server.
    assert any(p.startswith("/_static/mathjax/tex-chtml.js") for p, _ in requests)


def check_math(dom: str) -> None:
    assert "<mjx-container" in dom, "MathJax did not run: no <mjx-container> in the DOM"
    # No math left unprocessed: the delimiters are gone from every math span.
    raw = re.findall(r'<span class="math notranslate nohighlight">\s*\\\(', dom)
    assert not raw, f"{len(raw)} inline formulas were not typeset"


def check_widget(dom: str) -> None:
    assert "widget-slider" in dom, "the ipywidget was not rendered (require.js/html-manager)"


@pytest.mark.parametrize("page", PAGES, ids=str)
def test_page_renders_offline(page: Page, built_book: BookBuild, tmp_path: Path) -> None:
    html = built_book.require_success()
    shot = tmp_path / (Path(page.path).stem + ".png")
    dom, requests = render(html, page.path, shot)
    title = re.search(r"<title>(.*?)</title>", dom, re.DOTALL)
    assert title and title.group(1).strip().startswith(page.title), title
    check_common(dom, requests)
    if page.figure:
        assert re.search(r'<img[^>]+src="[^"]*_images/[^"]+"', dom), "no figure on the page"
        assert any(p.startswith("/_images/") and c == 200 for p, c in requests)
    if page.math:
        check_math(dom)
    if page.widget:
        check_widget(dom)


def test_widget_renders_offline(probe_book: BookBuild, tmp_path: Path) -> None:
    """The vendored require.js + html-manager draw a real ipywidgets 8 slider, with no network."""
    html = probe_book.require_success()
    page = str(Path(PROBE_NOTEBOOK).with_suffix(".html"))
    dom, requests = render(html, page, tmp_path / "probe.png")
    check_common(dom, requests)
    check_math(dom)
    check_widget(dom)
    assert any(p.startswith("/_static/html-manager/embed-amd.js") for p, _ in requests)
