"""A Sphinx extension for the API reference (book/api.md): docstrings read as the package
writes them.

- A constant without a ``#:`` comment would show its type's docstring (``dict``'s, or the
  options class's, whose attributes would then be described twice): it shows its type instead.
- ``*args``/``**kwargs`` in an "Args:" list are not emphasis.
- ``convnn.X``, a name the package root re-exports, links to where ``X`` is documented.
- autodoc imports the ``convnn`` of this checkout.
"""

from __future__ import annotations

import inspect
import re
import sys
from pathlib import Path

# Document the package of the checkout being built, whatever else is installed.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

STARS = re.compile(r"(?<![`\\\w*])(\*\*?)(\w+)\b(?![^`]*\*\*)")


def _process(app, what, name, obj, options, lines) -> None:
    if what in ("data", "attribute") and lines:
        own = inspect.cleandoc(type(obj).__doc__ or "")
        if own and "\n".join(lines).strip() == own.strip():
            kind = type(obj)
            size = f" of {len(obj)} entries" if hasattr(obj, "__len__") else ""
            lines[:] = [f"A ``{kind.__module__}.{kind.__qualname__}``{size}.".replace(
                "builtins.", ""), ""]
    for i, line in enumerate(lines):
        lines[i] = STARS.sub(lambda m: m.group(1).replace("*", "\\*") + m.group(2), line)


def _root_alias(app, env, node, contnode):
    """``convnn.ConvNN2d`` (a root re-export) resolves to where it is documented,
    ``convnn.layers.ConvNN2d``."""
    target = node.get("reftarget", "")
    name = target.removeprefix("convnn.")
    if node.get("refdomain") != "py" or name == target or "." in name:
        return None
    import convnn

    if name not in convnn.__all__:
        return None
    obj = getattr(convnn, name)
    home = obj.__module__ if inspect.isclass(obj) or inspect.isfunction(obj) else "convnn.layers"
    return env.get_domain("py").resolve_xref(env, node["refdoc"], app.builder, node["reftype"],
                                             f"{home}.{name}", node, contnode)


def setup(app):
    app.connect("autodoc-process-docstring", _process)
    app.connect("missing-reference", _root_alias)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
