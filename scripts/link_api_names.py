"""Link the first mention of each public name in a chapter to the API reference (book/api.md).

    python scripts/link_api_names.py [--check] [chapter ...]

A mention is a name in backticks in the text (not in code cells, code blocks or headings):
```ConvNN2d```, ```convnn.ConvNN2d```, ```ops.select_neighbours``` or
```convnn.ops.select_neighbours```. The first one in each chapter becomes
``{py:obj}`ConvNN2d <convnn.layers.ConvNN2d>``` (the same text, now a link); later ones stay
plain. ``--check`` changes nothing and exits 1 when a first mention is not linked.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import make_api_page  # beside this script (its folder is on sys.path when run)

ROOT = Path(__file__).resolve().parents[1]
#: The chapters whose first mentions are linked: every chapter of the book.
CHAPTERS = ("intro.md", "knn_aggregation.ipynb", "convolution_as_knn.ipynb",
            "attention_as_knn.ipynb", "spectrum.ipynb", "training_loop.ipynb",
            "trained_convnn.ipynb", "vgg_cifar.ipynb", "vit_cifar.ipynb", "results.ipynb",
            "results_tables.ipynb", "performance.ipynb", "costs.md", "related_work.ipynb",
            "using_the_package.md")


def spellings() -> dict[str, str]:
    """Every way the text writes a public name -> its documented target."""
    api = make_api_page
    found: dict[str, str] = {}
    bare: dict[str, set[str]] = {}
    for module, names in api.public_names().items():
        short = module.removeprefix("convnn.")
        for name in names:
            target = api.target(module, name)
            for form in [f"{module}.{name}"] + ([f"{short}.{name}"] if module != "convnn" else []):
                found.setdefault(form, target)
            bare.setdefault(name, set()).add(target)
    for name, targets in bare.items():  # a bare name: only when it names one thing
        if len(targets) == 1 and name not in AMBIGUOUS and (len(name) > 3 or name.isupper()):
            found.setdefault(name, targets.pop())
    return found


#: Bare words that name something else in the prose (the package, a preset's field...).
AMBIGUOUS = {"convnn", "run", "fit", "evaluate", "reduced", "environment"}


def _blocks(text: str):
    """(is_prose, chunk) pieces of a markdown text: fenced blocks and headings are not prose."""
    out, fence = [], None
    for line in text.splitlines(keepends=True):
        stripped = line.lstrip()
        if fence is None and stripped.startswith(("```", ":::")):
            fence = stripped[:3]
        elif fence is not None and stripped.startswith(fence):
            fence = None
            out.append((False, line))
            continue
        out.append((fence is None and not stripped.startswith("#"), line))
    return out


def link_text(text: str, seen: set[str], names: dict[str, str]) -> tuple[str, list[str]]:
    pattern = re.compile(r"(?<![`>{])`(" + "|".join(
        re.escape(n) for n in sorted(names, key=len, reverse=True)) + r")(\(\))?`(?!`)")
    unlinked: list[str] = []
    pieces = []
    for prose, line in _blocks(text):
        if prose:
            def repl(m: re.Match) -> str:
                target = names[m[1]]
                if target in seen:
                    return m[0]
                seen.add(target)
                unlinked.append(m[1])
                return f"{{py:obj}}`{m[1]}{m[2] or ''} <{target}>`"
            # names already linked count as seen
            for done in re.finditer(r"\{py:obj\}`[^`<]*<([^>]+)>`", line):
                seen.add(done[1])
            line = pattern.sub(repl, line)
        pieces.append(line)
    return "".join(pieces), unlinked


def process(path: Path, names: dict[str, str], write: bool) -> list[str]:
    seen: set[str] = set()
    if path.suffix == ".md":
        new, changed = link_text(path.read_text(encoding="utf-8"), seen, names)
        if write and changed:
            path.write_text(new, encoding="utf-8")
        return changed
    nb = json.loads(path.read_text(encoding="utf-8"))
    changed = []
    for cell in nb["cells"]:
        if cell["cell_type"] != "markdown":
            continue
        new, now = link_text("".join(cell["source"]), seen, names)
        if now:
            changed += now
            cell["source"] = new.splitlines(keepends=True)
    if write and changed:
        path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true")
    parser.add_argument("chapters", nargs="*", default=list(CHAPTERS))
    args = parser.parse_args(argv)
    names = spellings()
    missing = {}
    for chapter in args.chapters:
        changed = process(ROOT / "book" / chapter, names, write=not args.check)
        if changed:
            missing[chapter] = changed
    for chapter, changed in missing.items():
        print(f"{chapter}: {'not linked' if args.check else 'linked'}: {', '.join(changed)}")
    return 1 if args.check and missing else 0


if __name__ == "__main__":
    sys.exit(main())
