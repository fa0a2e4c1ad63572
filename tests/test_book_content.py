"""What the book's pages say: citations resolve, source includes point at real code, and every
exercise comes with a hint and a solution.

Everything here reads the sources (fast); one test reads the strict build's log.
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest

pytest.register_assert_rewrite("conftest_book")  # before the import below
from conftest_book import ROOT, BookBuild, book_config, resolve_source, toc_files

pytest_plugins = ["conftest_book"]

CITE = re.compile(r"\{cite(?::[a-z]+)?\}`([^`]+)`")
BIB_KEY = re.compile(r"^@\w+\{\s*([^,\s]+)\s*,", re.MULTILINE)
INCLUDE = re.compile(r"```\{literalinclude\}\s+(\S+)\n((?::[\w-]+:.*\n)*)")
EXERCISE = re.compile(r"\*\*Exercise (\d+)\.\*\*")
DROPDOWN = re.compile(r":::\{admonition\} (Hint|Solution)\n:class: dropdown\n(.*?)\n:::", re.DOTALL)


def toc_sources() -> list[Path]:
    return [p for p in map(resolve_source, toc_files()) if p is not None]


def markdown_blocks(path: Path) -> list[str]:
    """The page's markdown: the whole file, or each markdown cell of a notebook."""
    if path.suffix != ".ipynb":
        return [path.read_text(encoding="utf-8")]
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    return ["".join(c["source"]) for c in cells if c["cell_type"] == "markdown"]


def bib_keys() -> set[str]:
    files = book_config()["bibtex_bibfiles"]
    return {key for f in files for key in BIB_KEY.findall((ROOT / f).read_text(encoding="utf-8"))}


def test_the_bibliography_is_configured_and_listed() -> None:
    assert book_config()["bibtex_bibfiles"], "no bibtex_bibfiles in _config.yml"
    pages = [p for p in toc_sources() if "```{bibliography}" in p.read_text(encoding="utf-8")]
    assert pages, "no page of the toc holds the {bibliography} directive"


def test_every_citation_key_is_in_the_bibliography() -> None:
    keys = bib_keys()
    cited: dict[str, set[str]] = {}
    for path in toc_sources():
        for block in markdown_blocks(path):
            for group in CITE.findall(block):
                for key in group.split(","):
                    cited.setdefault(key.strip(), set()).add(path.name)
    assert cited, "the book cites nothing"
    missing = {key: sorted(pages) for key, pages in cited.items() if key not in keys}
    assert not missing, f"cited but not in the .bib: {missing}"


def test_the_core_references_are_cited() -> None:
    cited = {key.strip() for path in toc_sources() for block in markdown_blocks(path)
             for group in CITE.findall(block) for key in group.split(",")}
    for key in ("kang2025convnn", "dosovitskiy2021vit", "simonyan2015vgg", "wang2022kvt",
                "child2019sparse", "parmar2018image", "hassani2023natten",
                "dao2022flashattention"):
        assert key in cited, f"{key} is in the bibliography but no chapter cites it"


def test_the_build_resolves_every_citation(built_book: BookBuild) -> None:
    built_book.require_success()
    log = built_book.log.lower()
    for symptom in ("could not find bibtex key", "citation not found", "bibtex"):
        lines = [line for line in log.splitlines() if symptom in line and "warning" in line]
        assert not lines, "\n".join(lines)
    # the bibliography's labels read like the author-year citations, not "[KF25]"
    page = (built_book.html / "book" / "references.html").read_text(encoding="utf-8")
    labels = re.findall(r'fn-bracket">\[</span>(.*?)<span class="fn-bracket">', page)
    assert labels and all(re.search(r", (\d{4}|n\.d\.)$", label) for label in labels), labels


def _python_object_exists(source: str, dotted: str) -> bool:
    body = ast.parse(source).body
    for part in dotted.split("."):
        found = [n for n in body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef,
                                                   ast.ClassDef)) and n.name == part]
        if not found:
            return False
        body = found[0].body
    return True


def test_every_literalinclude_points_at_real_code() -> None:
    seen = 0
    for path in toc_sources():
        for block in markdown_blocks(path):
            for target, options in INCLUDE.findall(block):
                seen += 1
                file = (path.parent / target).resolve()
                assert file.is_file(), f"{path.name}: {target} does not exist"
                text = file.read_text(encoding="utf-8")
                opts = dict(re.findall(r":([\w-]+):\s*(.*)", options))
                if "pyobject" in opts:
                    assert _python_object_exists(text, opts["pyobject"].strip()), \
                        f"{path.name}: no {opts['pyobject']} in {target}"
                for key in ("start-at", "start-after", "end-before", "end-at"):
                    if key in opts:
                        assert opts[key].strip() in text, \
                            f"{path.name}: {key} {opts[key]!r} not found in {target}"
    assert seen >= 3, "expected the chapters to include package source"


def exercises_of(path: Path) -> list[tuple[int, str, str]]:
    """(number, markdown of the exercise, code of the next cell) for each exercise of a page."""
    if path.suffix != ".ipynb":
        return []
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    found = []
    for i, cell in enumerate(cells):
        if cell["cell_type"] != "markdown":
            continue
        text = "".join(cell["source"])
        starts = [(m.start(), int(m.group(1))) for m in EXERCISE.finditer(text)]
        for n, (pos, number) in enumerate(starts):
            part = text[pos: starts[n + 1][0] if n + 1 < len(starts) else len(text)]
            after = cells[i + 1] if i + 1 < len(cells) and n + 1 == len(starts) else None
            code = "".join(after["source"]) if after and after["cell_type"] == "code" else ""
            found.append((number, part, code))
    return found


def test_every_chapter_with_exercises_numbers_them() -> None:
    for path in toc_sources():
        blocks = markdown_blocks(path)
        if not any("## Exercises" in b for b in blocks):
            continue
        numbers = [n for n, _, _ in exercises_of(path)]
        assert numbers, f"{path.name}: an Exercises section without **Exercise N.** items"
        assert numbers == list(range(1, len(numbers) + 1)), f"{path.name}: {numbers}"


def test_every_exercise_has_a_folded_hint_and_a_runnable_solution() -> None:
    problems = []
    for path in toc_sources():
        for number, text, code in exercises_of(path):
            kinds = [kind for kind, _ in DROPDOWN.findall(text)]
            where = f"{path.name} exercise {number}"
            if "Hint" not in kinds:
                problems.append(f"{where}: no folded Hint")
            if "Solution" not in kinds:
                problems.append(f"{where}: no folded Solution")
            solution = "\n".join(body for kind, body in DROPDOWN.findall(text) if kind == "Solution")
            runs_here = code.startswith(f"# Solution to exercise {number}")
            if not runs_here and "```python" not in solution:
                problems.append(f"{where}: the solution has no code (a following "
                                f"'# Solution to exercise {number}' cell or a python block)")
    assert not problems, "\n".join(problems)


def test_solution_cells_are_folded_and_assertion_cells_hidden() -> None:
    for path in toc_sources():
        if path.suffix != ".ipynb":
            continue
        for cell in json.loads(path.read_text(encoding="utf-8"))["cells"]:
            if cell["cell_type"] != "code":
                continue
            source = "".join(cell["source"])
            tags = cell.get("metadata", {}).get("tags", [])
            if source.startswith("# Solution to exercise"):
                assert "hide-cell" in tags, f"{path.name}: solution cell not folded"
            lines = [ln for ln in source.splitlines() if ln.strip() and not ln.startswith("#")]
            if lines and all(ln.startswith(("assert ", " ")) for ln in lines):
                assert "remove-cell" in tags, f"{path.name}: assertion cell shown: {source!r}"


def test_notebooks_that_show_markdown_render_it_as_myst() -> None:
    """A notebook that displays Markdown (tables) needs mystnb's markdown format metadata, or
    its tables reach the page as raw ``| ... |`` text."""
    for path in toc_sources():
        if path.suffix != ".ipynb":
            continue
        nb = json.loads(path.read_text(encoding="utf-8"))
        shows = any("Markdown(" in "".join(c["source"]) for c in nb["cells"]
                    if c["cell_type"] == "code")
        if shows:
            fmt = nb["metadata"].get("mystnb", {}).get("render_markdown_format")
            assert fmt == "myst", f"{path.name}: displays Markdown without mystnb metadata"


RAW_TABLE_ROW = re.compile(r"^\s*\|(?:\s*:?-{3,}:?\s*\|)+\s*$", re.MULTILINE)


@pytest.mark.parametrize("page", ["trained_convnn", "results", "performance"])
def test_built_tables_render(built_book: BookBuild, page: str) -> None:
    html = (built_book.require_success() / "book" / f"{page}.html").read_text(encoding="utf-8")
    text = re.sub(r"<[^>]+>", "\n", html)
    assert "<table" in html, f"{page}: no table element"
    assert not RAW_TABLE_ROW.search(text), f"{page}: a Markdown table reached the page as text"


def test_my_pages_state_their_claims_with_intervals() -> None:
    """The trained-model and results chapters compare with intervals, not a 2x-std screen,
    and the performance chapter concludes nothing from a single CPU timing."""
    def text(name: str) -> str:
        return "\n".join("".join(c["source"]) for c in json.loads(
            (ROOT / "book" / name).read_text(encoding="utf-8"))["cells"])

    trained = text("trained_convnn.ipynb")
    assert "twice the larger" not in trained and "stats.welch" in trained
    assert "read_interventions" in trained and "rank_update_norms" in trained
    assert "kang2025convnn" in trained  # the "interpolating regularises" reading is cited
    results_page = text("results.ipynb")
    assert "pooled_headline_rows" in results_page and "costs a few points" not in results_page
    perf = text("performance.ipynb")
    assert "time.perf_counter" not in perf.split("## Exercises")[0]
    assert "CONVNN_KERNEL" not in perf
    for name in ("vgg_cifar.ipynb", "vit_cifar.ipynb", "results.ipynb"):
        assert "--suite-seconds" not in text(name).split("## Exercises")[0]


# Chapters whose exercises mix derivations and implementation tasks (issue: light exercises).
CHAPTERS_WITH_EXERCISES = ("knn_aggregation", "convolution_as_knn", "attention_as_knn",
                           "spectrum", "training_loop", "vgg_cifar", "vit_cifar")


def _notebook(name: str) -> list[dict]:
    return json.loads((ROOT / "book" / f"{name}.ipynb").read_text(encoding="utf-8"))["cells"]


@pytest.mark.parametrize("name", CHAPTERS_WITH_EXERCISES)
def test_chapter_has_a_derivation_and_an_implementation_exercise(name: str) -> None:
    path = ROOT / "book" / f"{name}.ipynb"
    assert any("## Exercises" in b for b in markdown_blocks(path)), f"{name}: no Exercises"
    found = exercises_of(path)
    assert len(found) >= 2, f"{name}: {len(found)} exercises"
    # an implementation task: the exercise asks for code and its solution cell defines some
    implementations = [n for n, text, code in found
                       if re.search(r"\b(Write|Implement|Give)\b", text) and
                       re.search(r"^(def|class) ", code, re.MULTILINE)]
    # a derivation: the exercise asks to derive, prove or count, with a formula in the solution
    derivations = [n for n, text, _ in found
                   if re.search(r"\b(Derive|Prove|Count)\b", text) and "$" in text]
    assert implementations, f"{name}: no implementation exercise with a solution that defines code"
    assert derivations, f"{name}: no derivation exercise"


def test_the_gradient_section_is_checked_in_hidden_cells() -> None:
    cells = _notebook("knn_aggregation")
    start = next(i for i, c in enumerate(cells) if c["cell_type"] == "markdown"
                 and "".join(c["source"]).startswith("## How selection learns"))
    end = next(i for i, c in enumerate(cells) if i > start and c["cell_type"] == "markdown"
               and "".join(c["source"]).startswith("## Summary"))
    hidden = [c for c in cells[start:end] if c["cell_type"] == "code"
              and "remove-cell" in c.get("metadata", {}).get("tags", [])
              and "assert " in "".join(c["source"])]
    assert len(hidden) >= 4, "the gradient claims must be asserted in hidden cells"
    text = "".join("".join(c["source"]) for c in cells[start:end])
    for weighting in ("ones", "softmax", "similarity"):
        assert f'"{weighting}"' in text
    for selection in ("coords", "features", "mixed"):
        assert f'"{selection}"' in text


def test_the_training_loop_is_on_the_page_and_beats_chance() -> None:
    cells = _notebook("training_loop")
    loop = [c for c in cells if c["cell_type"] == "code" and "def train_loop" in "".join(c["source"])]
    assert len(loop) == 1
    assert not set(loop[0].get("metadata", {}).get("tags", [])) & {"hide-input", "hide-cell",
                                                                   "remove-cell", "remove-input"}
    lines = [ln for ln in "".join(loop[0]["source"]).splitlines() if ln.strip()]
    assert 20 <= len(lines) <= 45, len(lines)
    asserts = "".join("".join(c["source"]) for c in cells if "remove-cell" in
                      c.get("metadata", {}).get("tags", []))
    assert "0.1 + 5 * sd_chance" in asserts, "the page must assert a visible distance from chance"
    assert "torch.optim" in "".join(loop[0]["source"]) and ".backward()" in "".join(loop[0]["source"])


def test_the_related_work_cites_each_work_from_the_bibliography() -> None:
    text = "".join(markdown_blocks(ROOT / "book" / "related_work.ipynb"))
    cited = {key.strip() for group in CITE.findall(text) for key in group.split(",")}
    for key in ("wang2019dgcnn", "dai2017deformable", "wang2018nonlocal", "hassani2023natten",
                "roy2021routing", "kitaev2020reformer", "wang2022kvt"):
        assert key in cited, f"related_work does not cite {key}"
    assert cited <= bib_keys()
    assert "book/related_work" in toc_files()


def test_using_the_package_documents_backend_not_path() -> None:
    text = (ROOT / "book" / "using_the_package.md").read_text(encoding="utf-8")
    assert "| `backend` |" in text
    assert "| `path` |" not in text and "CONVNN_KERNEL" not in text


@pytest.mark.parametrize("name", ["trained_convnn", "results", "performance", "related_work"])
def test_my_chapters_have_a_derivation_and_an_implementation_exercise(name: str) -> None:
    test_chapter_has_a_derivation_and_an_implementation_exercise(name)


# ---------------------------------------------------------------- what a careful reader checks

HEADER = re.compile(
    r"\A```\{admonition\} In this chapter\n:class: chapter-header\n"
    r"- \*\*You will\*\* [^\n]+\.\n- \*\*You need\*\* [^\n]+\.\n"
    r"- \*\*Notation:\*\* \{doc\}`notation` [^\n]+\n```\Z")
NO_HEADER = {"book/intro", "book/notation", "book/references", "book/api"}


def _outputs_text(cell: dict) -> str:
    parts = []
    for out in cell.get("outputs", []):
        parts.append("".join(out.get("text", "")))
        for kind in ("text/plain", "text/markdown", "text/html"):
            parts.append("".join(out.get("data", {}).get(kind, "")))
    return "\n".join(parts)


def _tags(cell: dict) -> set[str]:
    return set(cell.get("metadata", {}).get("tags", []))


def test_every_chapter_opens_with_objectives_prerequisites_and_notation() -> None:
    """The same header on every chapter: right after the title cell of a notebook (or the
    first paragraph of a Markdown page), two to four lines in one form, linking the notation."""
    assert "book/notation" in toc_files()
    for name in toc_files():
        if name in NO_HEADER:
            continue
        path = resolve_source(name)
        if path.suffix == ".ipynb":
            cells = _notebook(path.stem)
            assert "".join(cells[0]["source"]).startswith("# "), name
            header = "".join(cells[1]["source"]) if cells[1]["cell_type"] == "markdown" else ""
        else:
            blocks = re.findall(r"```\{admonition\} In this chapter\n.*?\n```",
                                path.read_text(encoding="utf-8"), re.DOTALL)
            header = blocks[0] if blocks else ""
        assert HEADER.match(header.strip()), f"{name}: no chapter header of the common form"


MATH = re.compile(r"\$\$(.+?)\$\$|\$([^$\n]+?)\$", re.DOTALL)
BARE_R = re.compile(r"(?<![\\\w{])r(?![\w}])")


def test_r_is_not_a_symbol_anywhere() -> None:
    """One notation (book/notation.md): m counts candidates, s is a grid side; r survives only
    inside preset names and package identifiers, never in the text's math or in a preset
    description."""
    from convnn.experiments import PRESETS

    for name in toc_files():
        path = resolve_source(name)
        for block in markdown_blocks(path):
            for display, inline in MATH.findall(block):
                formula = display or inline
                assert not BARE_R.search(formula), f"{name}: r as a symbol in ${formula}$"
    for preset in PRESETS.values():
        assert not re.search(r"\br = \d|\(r x r\)", preset.description), preset.name


TRAINING_LOG = re.compile(r"epoch \d+/\d+ +train loss")


FINAL_EPOCH = re.compile(r"epoch (\d+)/(\d+) +train loss .*? test loss [\d.]+ top1 ([\d.]+)%")


@pytest.mark.parametrize("name", ["vgg_cifar", "vit_cifar"])
def test_a_smoke_run_is_folded_learns_and_says_what_it_shows(name: str) -> None:
    """A training chapter never shows its smoke run as a result: every stored training log of
    the page is folded (or in a folded exercise solution); the page's own smoke run learns
    (its last epoch well above chance, 10 %), and the page says what it shows and what not."""
    cells = _notebook(name)
    logs = [c for c in cells if c["cell_type"] == "code" and TRAINING_LOG.search(_outputs_text(c))]
    assert logs, f"{name}: no stored training log (was the notebook executed?)"
    for cell in logs:
        assert _tags(cell) & {"hide-output", "hide-cell", "remove-output", "remove-cell"}, (
            f"{name}: a training log is visible: {''.join(cell['source'])[:80]!r}")
    (page_run,) = [c for c in logs if "SMOKE_TRAINING" in "".join(c["source"])]
    epochs = FINAL_EPOCH.findall(_outputs_text(page_run))
    done, planned, top1 = epochs[-1]
    assert done == planned and float(top1) >= 20, f"{name}: the smoke run ends at {top1} %"
    text = "\n".join(markdown_blocks(ROOT / "book" / f"{name}.ipynb"))
    assert "smoke run" in text and "It does not show the paper's accuracy" in text


PLACEHOLDERS = re.compile(r"<CONVNN_DATA_DIR>|<output folder>|\bOUT_DIR\b|; then python|"
                          r"provenance: folder / file|`\s*;\s*date:")


def test_stored_outputs_carry_no_placeholders_or_split_commands() -> None:
    """Provenance reads as provenance: whole cells of the README's table, no placeholder."""
    for path in sorted((ROOT / "book").glob("*.ipynb")):
        for cell in json.loads(path.read_text(encoding="utf-8"))["cells"]:
            found = PLACEHOLDERS.search(_outputs_text(cell))
            assert not found, f"{path.name}: {found.group(0)!r} in a stored output"


def test_reruns_are_named_with_both_accuracies() -> None:
    cells = _notebook("trained_convnn")
    text = "\n".join(_outputs_text(c) for c in cells)
    assert "study run: final top-1 (%)" in text and "rerun: final top-1 (%)" in text
    prose = "\n".join(markdown_blocks(ROOT / "book" / "trained_convnn.ipynb"))
    assert "are reruns" in prose and "trained again with the same\npresets and seeds, and" \
        not in prose


def test_statistics_say_only_what_they_can() -> None:
    """Overlap is inconclusive; the paired test is named with why it cannot be computed; the
    pooled numbers are quoted; distinct runs are defined; a short run's mean is labelled."""
    pages = {n: "\n".join(markdown_blocks(ROOT / "book" / f"{n}.ipynb"))
             for n in ("results", "results_tables", "trained_convnn", "vit_cifar")}
    for name, text in pages.items():
        for phrase in ("cannot be told apart", "cannot tell apart", "most robust finding",
                       "two to\n  four times"):
            assert phrase not in text, f"{name}: {phrase!r}"
    results_text = pages["results"]
    assert "McNemar" in results_text and "cannot be\ncomputed from what was logged" in results_text
    assert "**Which test each comparison rests on.**" in results_text  # one row per comparison
    assert "test_predictions.npz" in results_text  # where the next runs' predictions come from
    assert "2.18" in results_text and "4.56" in results_text
    assert "same best and the same last-5 mean" in results_text
    ours = next(line for c in _notebook("results") for line in _outputs_text(c).splitlines()
                if line.startswith("| session folder | preset |"))  # every run of ours
    assert "mean of the last min(5, E)" in ours and "last-5 mean" not in ours
    trained = "\n".join(_outputs_text(c) for c in _notebook("trained_convnn"))
    assert "inconclusive (includes 0)" in trained and "cannot tell apart" not in trained


def test_map_sizes_in_the_text_match_the_figure() -> None:
    """trained_convnn: the layers and map sizes the text names are those the panels show."""
    from convnn.experiments import get_preset
    from convnn.models import build_model

    cells = _notebook("trained_convnn")
    code = next("".join(c["source"]) for c in cells if "def draw_selection" in "".join(c["source"]))
    shown = ast.literal_eval(re.search(r"^shown = (\(.*?\))", code, re.MULTILINE).group(1))
    text = next(b for b in markdown_blocks(ROOT / "book" / "trained_convnn.ipynb")
                if "the panels show layers" in b)
    named = re.search(r"the panels show layers ([\d, and]+), on\s+(.*?)\s+maps", text, re.DOTALL)
    assert [int(x) for x in re.findall(r"\d+", named.group(1))] == list(shown)
    sizes = [tuple(map(int, m)) for m in re.findall(r"\$(\d+) \\times (\d+)\$", named.group(2))]
    model = build_model(get_preset("laptop-vgg-c10-convnn").model_config(), device="meta")
    assert sizes == [tuple(model.layer_plan[j]["map_size"]) for j in shown]


def test_results_tell_a_story_with_an_appendix() -> None:
    """results is the short narrative; the per-table sections are an appendix page."""
    files = toc_files()
    assert files.index("book/results_tables") == files.index("book/results") + 1
    story = "\n".join(markdown_blocks(ROOT / "book" / "results.ipynb"))
    assert "### Table 6." not in story and "{doc}`results_tables`" in story
    appendix = "\n".join(markdown_blocks(ROOT / "book" / "results_tables.ipynb"))
    assert len(re.findall(r"^### Table ", appendix, re.MULTILINE)) == 11


def test_how_selection_learns_does_not_contradict_its_tables() -> None:
    """With rho = 1 the scores get no gradient (the first table), so no layer learns to select;
    dL/dW_j is an outer product; one head cannot subtract, output projection or not."""
    text = "\n".join(markdown_blocks(ROOT / "book" / "knn_aggregation.ipynb"))
    assert "`ConvNN2d`: only the layers below it" not in text
    assert "**no layer learns to select**" in text and "outer products" in text
    assert "one head without an output\nprojection" not in text


def test_the_intro_figure_reads_at_400px() -> None:
    """Fig. 1 is drawn about 800 px wide (shown at half size or more on a phone), without a
    formula strip; its formula is in the caption, where it reflows."""
    import struct

    png = (ROOT / "book" / "figures" / "select_then_aggregate.png").read_bytes()
    width = struct.unpack(">I", png[16:20])[0]
    assert width <= 800, width
    script = (ROOT / "scripts" / "make_intro_figure.py").read_text(encoding="utf-8")
    assert "fig.text(" not in script and "\\rho(s_{ij})" not in script
