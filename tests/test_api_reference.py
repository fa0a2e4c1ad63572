"""The API reference (book/api.md, built by Sphinx autodoc): every public name of the
package's public modules has a docstring and an entry, and the built page holds each entry."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys

import pytest

pytest.register_assert_rewrite("conftest_book")  # before the import below
from conftest_book import ROOT, BookBuild

sys.path.insert(0, str(ROOT / "scripts"))  # the generator and the linker are scripts

pytest_plugins = ["conftest_book"]


def _generator():
    import make_api_page

    return make_api_page


def test_every_public_function_and_class_has_a_docstring() -> None:
    api = _generator()
    missing = []
    for module, names in api.public_names().items():
        for name in names:
            obj = getattr(importlib.import_module(module), name)
            if (inspect.isclass(obj) or callable(obj)) and not (obj.__doc__ or "").strip():
                missing.append(f"{module}.{name}")
    assert not missing, f"public names without a docstring: {missing}"


def test_the_reference_page_lists_every_public_name() -> None:
    """book/api.md is what scripts/make_api_page.py writes for today's ``__all__`` lists."""
    page = (ROOT / "book" / "api.md").read_text(encoding="utf-8")
    assert page == _generator().page(), (
        "book/api.md is out of date: run python scripts/make_api_page.py")


def test_the_built_reference_documents_every_public_name(built_book: BookBuild) -> None:
    api = _generator()
    built = (built_book.require_success() / "book" / "api.html").read_text(encoding="utf-8")
    absent = sorted({api.target(module, name) for module, names in api.public_names().items()
                     for name in names} - set(re_ids(built)))
    assert not absent, f"no entry on the built API page for: {absent}"


def re_ids(html: str) -> list[str]:
    import re

    return re.findall(r'<dt class="sig sig-object py" id="([^"]+)"', html)


def test_chapters_link_the_first_mention_of_each_name() -> None:
    """scripts/link_api_names.py --check: in each linked chapter the first mention of every
    public name is a link to its entry (later mentions stay plain)."""
    import link_api_names as module

    assert module.main(["--check"]) == 0, "run python scripts/link_api_names.py"
    text, linked = module.link_text("See `ConvNN2d` and `ConvNN2d`.\n", set(),
                                    module.spellings())
    assert text == "See {py:obj}`ConvNN2d <convnn.layers.ConvNN2d>` and `ConvNN2d`.\n"
    assert linked == ["ConvNN2d"]
