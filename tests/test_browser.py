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
from concurrent.futures import ThreadPoolExecutor, wait
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
    live: int = 0  # live figures (viz.live_html) whose controls must redraw them

    def __str__(self) -> str:
        return self.path


# The lead adds chapter pages here as they land, e.g.
#   Page("book/spectrum.html", title="...", widget=True),
PAGES = [
    Page("book/intro.html", title="Convolutional Nearest Neighbors"),
    Page("book/knn_aggregation.html", title="k-NN aggregation from scratch"),
    Page("book/convolution_as_knn.html", title="Convolution is spatial k-NN"),
    Page("book/attention_as_knn.html", title="Attention is feature k-NN"),
    Page("book/spectrum.html", title="The spectrum between them", live=2),
    Page("book/training_loop.html", title="A training loop on the page"),
    Page("book/trained_convnn.html", title="What a trained ConvNN layer learns"),
    Page("book/vgg_cifar.html", title="ConvNN in VGG-11 on CIFAR"),
    Page("book/vit_cifar.html", title="ConvNN attention in ViT-Tiny on CIFAR"),
    Page("book/results.html", title="Results"),
    Page("book/results_tables.html", title="Appendix: the paper’s tables, one by one"),
    Page("book/performance.html", title="Performance"),
    Page("book/costs.html", title="Costs side by side", figure=False),
    Page("book/related_work.html", title="Related work", figure=False, math=True),
    Page("book/notation.html", title="Notation", figure=False),
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


def render(html_dir: Path, page: str, screenshot: Path,
           probe: str = "") -> tuple[str, list[tuple[str, int]]]:
    """(rendered DOM, request log) of ``page`` at full width, with :data:`LAYOUT_PROBE`'s
    report in the DOM (:func:`layout_report`) and that of ``probe``, a further script, when
    given; also writes a PNG screenshot (one Chromium run does all)."""
    html_dir = probed_copy(html_dir, page, screenshot.parent / f"site-{screenshot.stem}",
                           LAYOUT_PROBE + probe)
    with serve(html_dir) as (base, requests):
        dom = chromium(f"{base}/{page}", "--dump-dom", f"--screenshot={screenshot}")
        assert dom.returncode == 0, dom.stderr[-3000:]
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


@pytest.fixture(scope="module")
def browsed(built_book: BookBuild, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Every page of :data:`PAGES` rendered at full width (:func:`render`) and at 400 px
    (:func:`narrow_layout`), two Chromium runs at a time (a run waits on its server and
    scripts part of the time; 2 beat 1 by about a fifth on a 2-core machine, 3 or 5 gain
    nothing more). Each run is a separate process with its own server, profile and folder. Maps ``(kind, page)`` to a
    future; a test takes ``.result()``, which re-raises that render's failure in that test."""
    html = built_book.require_success()
    root = tmp_path_factory.mktemp("browser")
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {}
        for page in PAGES:
            stem = Path(page.path).stem
            futures[("wide", page.path)] = pool.submit(render, html, page.path,
                                                       root / f"{stem}.png",
                                                       LIVE_PROBE if page.live else "")
            futures[("narrow", page.path)] = pool.submit(narrow_layout, html, page.path,
                                                         root / f"narrow-{stem}", page.live)
        wait(futures.values())
    return futures


@pytest.mark.parametrize("page", PAGES, ids=str)
def test_page_renders_offline(page: Page, browsed: dict) -> None:
    dom, requests = browsed[("wide", page.path)].result()
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



# --------------------------------------------------------------------------- 400 px

NARROW = 400
# Measures the laid-out page once MathJax has typeset it and writes the result into the DOM
# (as <pre id="layout-report">), where --dump-dom picks it up.
LAYOUT_PROBE = """
<script>
window.addEventListener("load", () => {
  const ready = (window.MathJax && MathJax.startup && MathJax.startup.promise)
    || Promise.resolve();
  ready.then(() => setTimeout(() => {
    const box = (el) => el.getBoundingClientRect();
    const report = {
      clientWidth: document.documentElement.clientWidth,
      scrollWidth: document.documentElement.scrollWidth,
      equations: [], overlaps: [], figures: [],
    };
    document.querySelectorAll('mjx-container[display="true"]').forEach((eq) => {
      const math = eq.querySelector("mjx-math") || eq;
      const shown = eq.parentElement;  // the column the equation is laid out in
      const m = box(math), col = box(shown);
      if (m.left < col.left - 1 || m.right > col.right + 1 || m.right > report.clientWidth + 1) {
        report.equations.push({text: (eq.closest("div.math") || eq).id || eq.textContent.slice(0, 40),
                               left: m.left, right: m.right, column: [col.left, col.right]});
      }
      const label = (eq.closest("div.math") || eq.parentElement).querySelector(".eqno");
      if (label) {
        const l = box(label);
        if (l.width > 0 && l.left < m.right && m.left < l.right && l.top < m.bottom && m.top < l.bottom) {
          report.overlaps.push({label: label.textContent.trim(), math: [m.left, m.right],
                                eqno: [l.left, l.right]});
        }
      }
    });
    document.querySelectorAll("main img").forEach((img) => {
      const r = box(img), col = box(img.parentElement);
      const zoomable = img.closest("a") !== null;
      if (r.width > report.clientWidth + 1 && !zoomable) {
        report.figures.push({src: img.getAttribute("src"), width: r.width});
      }
      if (r.right > report.clientWidth + 1 && !zoomable) {
        report.figures.push({src: img.getAttribute("src"), right: r.right});
      }
    });
    // the innermost elements that reach past the window: what makes a page scroll sideways
    report.wide = [];
    document.querySelectorAll("body *").forEach((el) => {
      if (box(el).right <= report.clientWidth + 1) return;
      if ([...el.children].some((c) => box(c).right > report.clientWidth + 1)) return;
      for (let a = el.parentElement; a; a = a.parentElement) {  // clipped or scrolled inside
        if (["auto", "scroll", "hidden"].includes(getComputedStyle(a).overflowX)) return;
      }
      if (report.wide.length < 5) {
        report.wide.push({tag: el.tagName.toLowerCase(), cls: String(el.className).slice(0, 60),
                          right: Math.round(box(el).right),
                          text: (el.textContent || "").trim().slice(0, 60),
                          within: (() => { const up = []; let a = el.parentElement;
                            while (a && up.length < 8) { up.push(a.tagName.toLowerCase() + "." +
                              String(a.className).split(" ")[0] + ":" + Math.round(box(a).width));
                              a = a.parentElement; } return up.join(" < "); })()});
      }
    });
    // tables wider than the column they sit in (they would scroll sideways inside it)
    report.tables = [];
    document.querySelectorAll("main table").forEach((t) => {
      const wrap = t.parentElement, main = t.closest("main") || document.body;
      if (wrap.scrollWidth > wrap.clientWidth + 1 || box(t).right > box(main).right + 1) {
        report.tables.push({width: Math.round(t.scrollWidth), room: Math.round(wrap.clientWidth),
                            head: (t.querySelector("th, td") || t).textContent.trim().slice(0, 40)});
      }
    });
    const pre = document.createElement("pre");
    pre.id = "layout-report";
    pre.textContent = JSON.stringify(report);
    // the page runs in a NARROW-pixel iframe (a window cannot be that narrow): report upwards
    (window.parent === window ? document : window.parent.document).body.appendChild(pre);
  }, 1000));
});
</script>
"""


def probed_copy(html_dir: Path, page: str, dest: Path, probe: str = "") -> Path:
    """A folder that serves ``html_dir`` (through symbolic links) with ``page`` replaced by a
    copy that carries ``probe`` (default :data:`LAYOUT_PROBE`), and ``narrow-<page>`` beside
    it: the page in an iframe ``NARROW`` pixels wide (headless Chromium does not make windows
    below 500 px)."""
    probe = probe or LAYOUT_PROBE
    dest.mkdir(parents=True, exist_ok=True)
    parts = Path(page).parts
    src, out = html_dir, dest
    for depth, name in enumerate(parts):
        for entry in src.iterdir():
            if entry.name != name:
                (out / entry.name).symlink_to(entry)
        if depth == len(parts) - 1:
            text = (src / name).read_text(encoding="utf-8")
            assert "</body>" in text, f"{page}: no </body>"
            (out / name).write_text(text.replace("</body>", probe + "</body>"),
                                    encoding="utf-8")
            (out / f"narrow-{name}").write_text(
                '<!DOCTYPE html><html><head><meta charset="utf-8"></head>'
                '<body style="margin:0">'
                f'<iframe src="{name}" style="width:{NARROW}px;height:2400px;border:0">'
                "</iframe></body></html>", encoding="utf-8")
        else:
            src, out = src / name, out / name
            out.mkdir()
    return dest


def narrow_layout(html_dir: Path, page: str, tmp: Path, live: int = 0) -> dict:
    """The layout report of ``page`` rendered in a ``NARROW``-pixel wide window; with
    ``live``, the live-figure report (:data:`LIVE_PROBE`) under the key ``"live"``."""
    root = probed_copy(html_dir, page, tmp / "site",
                       LAYOUT_PROBE + (LIVE_PROBE if live else ""))
    with serve(root) as (base, _):
        narrow = str(Path(page).with_name(f"narrow-{Path(page).name}"))
        dom = chromium(f"{base}/{narrow}", "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-3000:]
    report = read_report(dom.stdout, "layout-report")
    if live:
        report["live"] = read_report(dom.stdout, "live-report")
    return report


def layout_report(dom: str) -> dict:
    """The report :data:`LAYOUT_PROBE` left in a dumped DOM."""
    return read_report(dom, "layout-report")


def read_report(dom: str, name: str):
    import html as html_lib
    import json

    found = re.search(f'<pre id="{name}"[^>]*>(.*?)</pre>', dom, re.DOTALL)
    assert found, f"the probe did not run (no #{name} in the DOM)"
    return json.loads(html_lib.unescape(found.group(1)))


@pytest.mark.parametrize("page", PAGES, ids=str)
def test_page_reads_at_400px(page: Page, browsed: dict) -> None:
    """At 400 px the page does not scroll sideways, no display equation is cut or covered by
    its label, and every figure fits the window or is a link to the full-size image."""
    report = browsed[("narrow", page.path)].result()
    assert report["clientWidth"] <= NARROW, report["clientWidth"]
    assert report["scrollWidth"] <= report["clientWidth"], (
        f"the page scrolls sideways: scrollWidth {report['scrollWidth']} > "
        f"clientWidth {report['clientWidth']}; widest: {report['wide']}")
    assert not report["equations"], f"display equations cut at {NARROW} px: {report['equations']}"
    assert not report["overlaps"], f"equation labels over their formula: {report['overlaps']}"
    assert not report["figures"], f"figures wider than the window: {report['figures']}"


# --------------------------------------------------------------------------- live figures
# Moves every control of every live figure (viz.live_html) in turn, as a reader would, and
# records whether the figure changed: its canvases' pixels and the state it names. Also
# measures the layout: the controls above or beside the figure, no label cut.
LIVE_PROBE = """
<script>
window.addEventListener("load", () => setTimeout(() => {
  const report = [];
  document.querySelectorAll(".convnn-live").forEach((root) => {
    const canvases = () => [...root.querySelectorAll("canvas")].map((c) => c.toDataURL()).join();
    const controls = root.querySelector(".convnn-live-controls");
    const panels = root.querySelector(".convnn-live-panels");
    const c = controls.getBoundingClientRect(), p = panels.getBoundingClientRect();
    const fig = {canvases: root.querySelectorAll("canvas").length, moves: [],
                 controlsAbove: c.bottom <= p.top + 1, controlsBeside: c.right <= p.left + 1,
                 width: Math.round(root.getBoundingClientRect().width),
                 cutLabels: [...controls.querySelectorAll("label")]
                   .filter((l) => l.scrollWidth > l.clientWidth + 1).map((l) => l.textContent)};
    controls.querySelectorAll("input, select").forEach((input) => {
      const before = [root.getAttribute("data-state"), canvases()];
      const last = input.tagName === "SELECT" ? input.options.length - 1 : +input.max;
      input.value = String(+input.value === last ? 0 : last);
      input.dispatchEvent(new Event("input"));
      const after = [root.getAttribute("data-state"), canvases()];
      fig.moves.push({control: input.name, to: input.value, state: after[0],
                      stateChanged: before[0] !== after[0], pixelsChanged: before[1] !== after[1]});
    });
    report.push(fig);
  });
  const pre = document.createElement("pre");
  pre.id = "live-report";
  pre.textContent = JSON.stringify(report);
  (window.parent === window ? document : window.parent.document).body.appendChild(pre);
}, 500));
</script>
"""


def check_live(report: list, expected: int, narrow: bool) -> None:
    assert len(report) == expected, f"{len(report)} live figures on the page, not {expected}"
    for fig in report:
        assert fig["canvases"] >= 1 and fig["moves"], fig
        for move in fig["moves"]:  # every control, moved in turn, redraws the figure
            assert move["stateChanged"] and move["pixelsChanged"], move
        assert not fig["cutLabels"], f"labels cut: {fig['cutLabels']}"
        if narrow:
            assert fig["controlsAbove"], f"at {NARROW} px the controls are not above: {fig}"
            assert fig["width"] <= NARROW, fig


@pytest.mark.parametrize("page", [p for p in PAGES if p.live], ids=str)
def test_live_figures_respond_to_their_controls(page: Page, browsed: dict) -> None:
    """On the static page, with no kernel, moving each control of each live figure changes
    the pixels drawn and the state shown, at full width and at 400 px (controls on top)."""
    dom, _ = browsed[("wide", page.path)].result()
    check_live(read_report(dom, "live-report"), page.live, narrow=False)
    check_live(browsed[("narrow", page.path)].result()["live"], page.live, narrow=True)


@pytest.mark.parametrize("page", PAGES, ids=str)
def test_tables_fit_at_1280px(page: Page, browsed: dict) -> None:
    """At full width (1,280 px) no table is wider than the column it sits in."""
    dom, _ = browsed[("wide", page.path)].result()
    report = layout_report(dom)
    assert not report["tables"], f"tables wider than their column at 1280 px: {report['tables']}"
