"""Write book/api.md, the API reference page: one section per public module, each with an
autosummary table of the module's ``__all__`` and an autodoc entry per name.

    python scripts/make_api_page.py

Run it when a module's ``__all__`` changes; tests/test_api_reference.py fails until then. A
name the package root re-exports is documented once, in the root section, under the module
that defines it (``convnn.layers.ConvNN2d``), the target that docstrings and chapters link to.
"""

from __future__ import annotations

import importlib
import inspect
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's package, not an installed one
import convnn

#: (module, section title): the public modules, in the order of the page.
SECTIONS = (
    ("convnn", "The package root: `convnn`"),
    ("convnn.layers", "Layers and their options: `convnn.layers`"),
    ("convnn.attention", "Token mixers: `convnn.attention`"),
    ("convnn.models", "Models: `convnn.models`"),
    ("convnn.experiments", "Presets: `convnn.experiments`"),
    ("convnn.train", "Training: `convnn.train`"),
    ("convnn.data", "Data: `convnn.data`"),
    ("convnn.bench", "Benchmarks: `convnn.bench`"),
    ("convnn.ops", "The operator's building blocks: `convnn.ops`"),
    ("convnn.viz", "The book's figures: `convnn.viz`"),
)
SKIP = {"__version__", "ops"}  # a string; the module has its own section


def public_names() -> dict[str, list[str]]:
    """module -> the names of its ``__all__`` that the page documents."""
    return {name: [n for n in importlib.import_module(name).__all__ if n not in SKIP]
            for name, _ in SECTIONS}


def target(module: str, name: str) -> str:
    """The documented (canonical) name of ``module.name``."""
    obj = getattr(importlib.import_module(module), name)
    if module != "convnn" and name in convnn.__all__ and getattr(convnn, name) is obj:
        module = "convnn"
    if module == "convnn":
        home = getattr(obj, "__module__", None) if (inspect.isclass(obj) or callable(obj)) \
            else None
        return f"{home or 'convnn.layers'}.{name}"
    return f"{module}.{name}"


def entry(qualified: str, obj) -> list[str]:
    module, name = qualified.rsplit(".", 1)
    head = [f".. currentmodule:: {module}", ""]
    if inspect.isclass(obj):
        return [*head, f".. autoclass:: {name}", ""]
    if callable(obj):
        return [*head, f".. autofunction:: {name}", ""]
    return [*head, f".. autodata:: {name}", "   :no-value:", ""]


def page() -> str:
    lines = [
        "# API reference", "",
        "Generated from the package's docstrings by Sphinx (autodoc and autosummary) each time",
        "the book is built. Each section lists one module's public names (its `__all__`); a name",
        "the package root re-exports is documented once, in the first section. The chapters link",
        "here from the first mention of a name.", "",
    ]
    names = public_names()
    done: set[str] = set()
    for module, title in SECTIONS:
        lines += [f"## {title}", "", "```{eval-rst}", f".. module:: {module}", "",
                  ".. autosummary::", ""]
        lines += [f"   ~{target(module, n).removeprefix(module + '.')}" for n in names[module]]
        lines.append("")
        for n in names[module]:
            qualified = target(module, n)
            if qualified not in done:
                done.add(qualified)
                lines += entry(qualified, getattr(importlib.import_module(module), n))
        lines += ["```", ""]
    text = "\n".join(lines)
    while "\n\n\n" in text:
        text = text.replace("\n\n\n", "\n\n")
    return text.rstrip() + "\n"


if __name__ == "__main__":
    (ROOT / "book" / "api.md").write_text(page(), encoding="utf-8")
    print("wrote book/api.md")
