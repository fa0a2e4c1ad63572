"""The project's data files, shipped inside the package as ``convnn._data``.

``pyproject.toml`` maps this folder to ``convnn._data`` so that ``pip install convnn`` (and
the wheel) carries the paper's numbers (``paper_results.json``) and the committed run logs
(``results/``) that the book plots. Code reads them with :mod:`convnn.package_data`, never
through a path into the source tree. Datasets and caches (``cache/``) are not shipped.
"""
