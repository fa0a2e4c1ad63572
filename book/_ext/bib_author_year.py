"""Bibliography labels in the citations' author-year form ("Kang et al., 2025"), instead of
the alpha style's "[KF25]": the book cites author-year ({cite:p}), so the list reads the same.

Registered as the pybtex formatting style ``author_year_labels`` (``bibtex_default_style`` in
_config.yml): pybtex's ``unsrt`` formatting with author-year labels, sorted by label.
"""

from __future__ import annotations

import pybtex.plugin
from pybtex.style.formatting.unsrt import Style as UnsrtStyle
from pybtex.style.labels import BaseLabelStyle
from pybtex.style.sorting import BaseSortingStyle


def _label(entry) -> str:
    persons = entry.persons.get("author") or entry.persons.get("editor") or []
    last = [" ".join(p.last_names).replace("{", "").replace("}", "") for p in persons]
    year = entry.fields.get("year", "n.d.")
    if not last:
        who = entry.fields.get("title", entry.key).split(":")[0]
    elif len(last) == 1:
        who = last[0]
    elif len(last) == 2:
        who = f"{last[0]} and {last[1]}"
    else:
        who = f"{last[0]} et al."
    return f"{who}, {year}"


class AuthorYearLabels(BaseLabelStyle):
    def format_labels(self, sorted_entries):
        for entry in sorted_entries:
            yield _label(entry)


class ByLabel(BaseSortingStyle):
    def sorting_key(self, entry):
        return _label(entry)


class AuthorYearStyle(UnsrtStyle):
    default_label_style = AuthorYearLabels
    default_sorting_style = ByLabel


pybtex.plugin.register_plugin("pybtex.style.formatting", "author_year_labels", AuthorYearStyle)


def setup(app):
    return {"parallel_read_safe": True, "parallel_write_safe": True}
