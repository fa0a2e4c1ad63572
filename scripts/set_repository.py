"""Point the book at another repository (a fork): ``python scripts/set_repository.py URL``.

The repository's address lives in ``_config.yml`` (``repository.url`` and ``branch``): the
launch and repository buttons read it there. Each notebook's install cell must repeat it
literally (a Colab runtime has nothing else to read), and so does the install line of
``book/using_the_package.md``. This script rewrites all of them from the new address, so that
``_config.yml`` stays the one place to decide it; ``tests/test_book_build.py`` checks that
they agree.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
URL = re.compile(r"^https://[\w.-]+/[\w.-]+/[\w.-]+$")


def _set_config(text: str, url: str, branch: str) -> tuple[str, str, str]:
    old_url = re.search(r"^  url: (\S+)$", text, re.MULTILINE)
    old_branch = re.search(r"^  branch: (\S+)$", text, re.MULTILINE)
    if not old_url or not old_branch:
        raise SystemExit("error: _config.yml has no repository.url / repository.branch lines")
    text = text.replace(old_url.group(0), f"  url: {url}")
    text = text.replace(old_branch.group(0), f"  branch: {branch}")
    return text, old_url.group(1), old_branch.group(1)


def main(argv: list[str] | None = None, root: Path = ROOT) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("url", help="e.g. https://github.com/you/convnn")
    parser.add_argument("--branch", default="main", help="the branch Colab installs from")
    args = parser.parse_args(argv)
    url = args.url.rstrip("/").removesuffix(".git")
    if not URL.match(url):
        print(f"error: url must look like https://github.com/OWNER/REPO, got {args.url!r}",
              file=sys.stderr)
        return 2
    config = root / "_config.yml"
    text, old_url, old_branch = _set_config(config.read_text(encoding="utf-8"), url, args.branch)
    config.write_text(text, encoding="utf-8")
    old, new = f"git+{old_url}@{old_branch}", f"git+{url}@{args.branch}"
    changed = [config]
    for path in [*sorted((root / "book").glob("*.ipynb")), root / "book" / "using_the_package.md"]:
        if not path.is_file():
            continue
        if path.suffix == ".ipynb":
            nb = json.loads(path.read_text(encoding="utf-8"))
            hit = False
            for cell in nb["cells"]:
                source = "".join(cell["source"])
                if old in source:
                    hit = True
                    lines = source.replace(old, new).split("\n")
                    cell["source"] = [line + "\n" for line in lines[:-1]] + (
                        [lines[-1]] if lines[-1] else [])
            if hit:
                path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n",
                                encoding="utf-8")
                changed.append(path)
        elif old in (text := path.read_text(encoding="utf-8")):
            path.write_text(text.replace(old, new), encoding="utf-8")
            changed.append(path)
    for path in changed:
        print(f"updated {path.relative_to(root)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
