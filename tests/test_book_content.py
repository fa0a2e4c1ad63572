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
