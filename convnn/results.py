"""Our run logs and the paper's numbers, side by side: loading, tables and plots for the book.

Two sources, never mixed up:

* **ours**: run folders written by :func:`convnn.train.fit` (``config.json`` and
  ``metrics.jsonl``, usually also ``summary.json``) and committed under ``data/results/``.
  :func:`find_runs` collects them, :func:`load_run` reads one (an unfinished run, or a
  ``metrics.jsonl`` whose last line was cut off, is read as far as it goes). Every number is
  recomputed from the per-epoch records, so it is exactly what the log says.
* **the paper's**: ``data/paper_results.json``, the authors' logs (tables 6.1-6.10).
  :func:`paper_table` returns its rows with every number under a ``paper_`` key and a
  ``source`` of :data:`PAPER_LABEL`.

:func:`comparison_rows` puts them next to each other, one row per paper row, with "no run
yet" where no committed run matches the row's preset. :func:`markdown_table` formats rows
for a page; :func:`plot_curves`, :func:`plot_paper_sweep` and :func:`plot_paper_bars` draw
them. Figures are :class:`ResultsFigure` objects: plain matplotlib figures (no pyplot) that
Jupyter shows once, as a PNG, when a cell returns one.

Example:
    >>> from convnn import results
    >>> rows = results.comparison_rows("6.2", runs=[])
    >>> rows[0]["paper_best"], rows[0]["ours"]
    (80.97, 'no run yet')
"""

from __future__ import annotations

import gzip
import json
import math
import os
import re
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from . import paper_vocabulary as paper
from .data import DATASETS
from .experiments import get_preset, paper_key, paper_records, preset_for_record
from .models import upgrade_model_dict
from .package_data import PackageDataError, data_file, results_root
from .run_folder import RunFolder, RunRecord, find_run_folders, is_run_folder
from .viz import BookFigure

__all__ = [
    "COLAB_GPUS",
    "GPU_SPECS",
    "HEADLINE_CLAIMS",
    "IMAGENET_TABLE",
    "NO_RUN",
    "PAPER_CURVE_LABEL",
    "PAPER_LABEL",
    "PROVENANCE_COLUMNS",
    "RESULTS_ROOT",
    "SHORT_RUN",
    "SWEEPS",
    "TABLES",
    "PaperCurve",
    "ResultsFigure",
    "Run",
    "comparable_choice",
    "comparable_count",
    "comparable_markdown",
    "comparable_metric",
    "comparable_reason",
    "comparable_rows",
    "comparable_runs",
    "comparable_summary",
    "comparison_markdown",
    "comparison_rows",
    "dataset_label",
    "evaluation_label",
    "find_record",
    "find_runs",
    "full_length",
    "headline_rows",
    "latest_runs",
    "load_bench",
    "load_bench_suites",
    "load_run",
    "markdown_table",
    "model_differences",
    "paper_curve",
    "paper_curves",
    "paper_repeats",
    "paper_table",
    "plot_curves",
    "plot_gap",
    "plot_paper_bars",
    "plot_paper_overlay",
    "plot_paper_sweep",
    "pooled_headline_rows",
    "protocol_differences",
    "provenance_rows",
    "row_label",
    "run_precision",
    "run_time_estimates",
    "run_time_table",
    "sampling_error_bars",
    "steady_epoch_seconds",
]

#: Where committed run logs live: ``data/results/`` of the repository, shipped in the package
#: (see :func:`convnn.package_data.results_root`).
RESULTS_ROOT = results_root()
#: How every number from ``paper_results.json`` is labelled.
PAPER_LABEL = "paper (authors' logs)"
#: What a comparison says where no committed run matches a paper row.
NO_RUN = "no run yet"
#: The paper's CIFAR tables.
TABLES = ("6.1", "6.2", "6.3", "6.4", "6.5", "6.6", "6.7", "6.8", "6.9", "6.10")
#: The ImageNet-1K table (ResNet-50 and ViT-Base, v3 of the paper): top-1 and test loss only.
IMAGENET_TABLE = "10"

#: Settings of a paper row (everything else in a record is a number the paper reports).
SETTING_KEYS = paper.ROW_SETTING_KEYS

#: Default axes of :func:`plot_paper_sweep`: table -> (x key, grouping keys, x label, log x).
SWEEPS: dict[str, tuple[str, tuple[str, ...], str, bool]] = {
    "6.1": ("branch_ratio", ("similarity", "aggregation"),
            "branching ratio λ (0 = Conv2d, 1 = ConvNN)", False),
    "6.3": ("candidates", ("layer", "sampling"), "grid side s (s × s candidates)", False),
    "6.4": ("k", ("kernel_size",), "k (neighbours of the ConvNN branch)", False),
    "6.5": ("lr", ("layer",), "learning rate (AdamW)", True),
    "6.7": ("k", ("layer", "sampling"), "k (neighbours)", True),
    "6.8": ("candidates", ("sampling",), "candidates m (tokens searched per query)", False),
}

#: The headline comparisons of method.md §5, as (claim, table, ConvNN row, baseline row).
HEADLINE_CLAIMS: tuple[tuple[str, str, dict, dict], ...] = (
    ("VGG-11: branching λ=0.5 vs Conv2d", "6.1",
     {"dataset": "cifar10", "layer": "branching", "branch_ratio": 0.5, "similarity": paper.PLAIN,
      "aggregation": paper.PLAIN},
     {"dataset": "cifar10", "layer": "conv2d", "similarity": paper.PLAIN,
      "aggregation": paper.PLAIN}),
    ("VGG-11: branching λ=0.625 vs Conv2d", "6.1",
     {"dataset": "cifar100", "layer": "branching", "branch_ratio": 0.625, "similarity": paper.PLAIN,
      "aggregation": paper.PLAIN},
     {"dataset": "cifar100", "layer": "conv2d", "similarity": paper.PLAIN,
      "aggregation": paper.PLAIN}),
    ("ViT-Tiny: ConvNN-Attn random m=32 vs attention", "6.6",
     {"dataset": "cifar10", "layer": "convnn_attention", "sampling": "random"},
     {"dataset": "cifar10", "layer": "attention"}),
    ("ViT-Tiny: ConvNN-Attn random m=32 vs attention", "6.6",
     {"dataset": "cifar100", "layer": "convnn_attention", "sampling": "random"},
     {"dataset": "cifar100", "layer": "attention"}),
    ("ViT-Tiny: ConvNN-Attn all (dense) vs attention", "6.6",
     {"dataset": "cifar10", "layer": "convnn_attention", "sampling": "all"},
     {"dataset": "cifar10", "layer": "attention"}),
    ("ViT-Tiny: ConvNN-Attn all (dense) vs attention", "6.6",
     {"dataset": "cifar100", "layer": "convnn_attention", "sampling": "all"},
     {"dataset": "cifar100", "layer": "attention"}),
    ("VGG-11: pure ConvNN vs Conv2d", "6.1",
     {"dataset": "cifar10", "layer": "convnn", "similarity": paper.PLAIN,
      "aggregation": paper.PLAIN},
     {"dataset": "cifar10", "layer": "conv2d", "similarity": paper.PLAIN,
      "aggregation": paper.PLAIN}),
    ("VGG-11: pure ConvNN vs Conv2d", "6.1",
     {"dataset": "cifar100", "layer": "convnn", "similarity": paper.PLAIN,
      "aggregation": paper.PLAIN},
     {"dataset": "cifar100", "layer": "conv2d", "similarity": paper.PLAIN,
      "aggregation": paper.PLAIN}),
)

_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2",
           "#17becf", "#7f7f7f", "#bcbd22")
_DPI = 80


# --------------------------------------------------------------------------- runs
def dataset_title(name: str) -> str:
    """The title of a dataset of :data:`convnn.data.DATASETS` (``name`` itself if unknown)."""
    return DATASETS[name].title if name in DATASETS else name


def dataset_label(source: str | None) -> str:
    """A short, honest name for a run's data from its ``source`` string.

    ``"cifar10 (JPEG copy at /x/cifar10-jpeg.tar.gz)"`` -> ``"CIFAR-10 (JPEG copy)"``;
    ``"cifar10 (torchvision files at ...)"`` -> ``"CIFAR-10"``; a subset adds its size
    (``"CIFAR-10 (JPEG copy), 50/20 train/test images per class"``); synthetic data says so.
    """
    if not source:
        return "unknown data"
    if source.startswith("synthetic"):
        return "synthetic data (not CIFAR)"
    name = source.split(" ", 1)[0]
    label = dataset_title(name)
    if "JPEG copy" in source:
        label += " (JPEG copy)"
    subset = re.search(r"first (\d+) train and first (\d+) test images per class", source)
    if subset:
        label += f", {subset[1]}/{subset[2]} train/test images per class"
    return label


def _device_label(device: str) -> str:
    return "CPU" if device == "cpu" else device


@dataclass
class Run:
    """One run folder, as the book shows it: a view over its :class:`RunRecord` (what
    :meth:`convnn.run_folder.RunFolder.read` found) with its provenance.

    Attributes:
        record: the folder's record (config, metrics, summary).
        provenance: the provenance line of the nearest ``README.md`` (the run folder or a
            folder above it, up to the search root), or ``None``.
        provenance_fields: that line's cells by column (``"device"``, ``"commit"``, ...)
            when it is a row of a Markdown table, else ``None``.
    """

    record: RunRecord
    provenance: str | None = None
    provenance_fields: dict[str, str] | None = None

    @property
    def path(self) -> Path:
        return self.record.path

    @property
    def config(self) -> dict:
        """The run's ``config.json``."""
        return self.record.config

    @property
    def records(self) -> list[dict]:
        """One dict per finished epoch (lines cut off by a crash are skipped)."""
        return self.record.records

    @property
    def summary(self) -> dict | None:
        """The run's summary as written, or ``None`` (a run that never finished an epoch)."""
        return self.record.summary

    @summary.setter
    def summary(self, value: dict | None) -> None:
        self.record.summary = value

    @property
    def skipped_lines(self) -> int:
        """Lines of the metrics log that were not valid records (a cut-off line)."""
        return self.record.skipped_lines

    @property
    def extra(self) -> dict:
        return self.record.extra

    @property
    def preset(self) -> str | None:
        """The preset name (``config["extra"]["preset"]``), or ``None`` if not a preset run."""
        return self.extra.get("preset")

    @property
    def smoke(self) -> bool:
        """A short CPU smoke run (reduced model, few images), not an experiment."""
        return bool(self.extra.get("smoke", False))

    @property
    def dataset_source(self) -> str:
        """Where the images came from, e.g. ``"cifar10 (JPEG copy at ...)"``."""
        return self.record.dataset.get("source") or "unknown"

    @property
    def dataset(self) -> str:
        """:func:`dataset_label` of :attr:`dataset_source`."""
        return dataset_label(self.dataset_source)

    @property
    def device(self) -> str:
        """The device(s) the epochs ran on, from the records (``"CPU"``, a GPU's name...)."""
        names = list(dict.fromkeys(r["device"] for r in self.records if r.get("device")))
        if not names:
            names = [(self.config.get("run") or {}).get("device") or "unknown"]
        return " + ".join(_device_label(n) for n in names)

    @property
    def epochs_done(self) -> int:
        return int(self.records[-1]["epoch"]) if self.records else 0

    @property
    def epochs_planned(self) -> int | None:
        """The epochs this run was asked for (``config["train"]["epochs"]``)."""
        epochs = (self.config.get("train") or {}).get("epochs")
        return int(epochs) if epochs is not None else None

    @property
    def protocol_epochs(self) -> int | None:
        """The epochs of the protocol of this run's preset: the paper's (e.g. 150), or for a
        preset with a protocol of its own (the laptop study's) that protocol's."""
        try:
            preset = get_preset(self.preset) if self.preset else None
        except ValueError:
            return None
        if preset is None:
            return None
        if preset.settings.get("protocol") is not None:
            return int(preset.train.epochs)
        return int(preset.settings["epochs"])

    @property
    def finished(self) -> bool:
        return self.epochs_planned is not None and self.epochs_done >= self.epochs_planned

    @property
    def best_test_top1(self) -> float | None:
        """Best test top-1 over the epochs (the paper's metric), in percent."""
        return max((r["test_top1"] for r in self.records), default=None)

    @property
    def best_epoch(self) -> int | None:
        if not self.records:
            return None
        return max(self.records, key=lambda r: r["test_top1"])["epoch"]

    @property
    def last5_mean_test_top1(self) -> float | None:
        """Mean test top-1 of the last ``min(5, epochs)`` epochs (the honest metric)."""
        last = self.records[-5:]
        return sum(r["test_top1"] for r in last) / len(last) if last else None

    @property
    def epochs_text(self) -> str:
        """``"30/150 epochs"`` (done / the paper's protocol), noting a run that stopped."""
        total = (self.protocol_epochs if not self.smoke and self.protocol_epochs
                 else self.epochs_planned)
        text = f"{self.epochs_done}/{total if total is not None else '?'} epochs"
        if self.epochs_planned is not None and self.epochs_done < self.epochs_planned:
            text += f" (unfinished: {self.epochs_planned} planned)"
        return text

    @property
    def label(self) -> str:
        """``"<preset>: <device>, 30/150 epochs, CIFAR-10 (JPEG copy)"`` (+ ``", smoke run"``)."""
        text = (f"{self.preset or self.path.name}: {self.device}, {self.epochs_text}, "
                f"{self.dataset}")
        return text + (", smoke run" if self.smoke else "")

    def series(self, key: str) -> list:
        """One metric over the epochs, e.g. ``run.series("test_top1")``."""
        return [r.get(key) for r in self.records]

    def __repr__(self) -> str:
        return f"Run({self.label!r}, path={str(self.path)!r})"


def _table_cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def _provenance_row(lines: list[str], index: int) -> dict[str, str] | None:
    """Line ``index`` of a README as ``{header: cell}`` when it is a row of a Markdown table
    with a header, else ``None``. Cells are split on the table's ``|``, never on their text."""
    line = lines[index].strip()
    if not line.startswith("|"):
        return None
    start = index
    while start > 0 and lines[start - 1].strip().startswith("|"):
        start -= 1
    header = _table_cells(lines[start])
    separator = (start + 1 < len(lines) and set(lines[start + 1].replace("|", "").strip())
                 <= set("-: "))
    cells = _table_cells(line)
    if index <= start + 1 or not separator or len(header) != len(cells):
        return None
    return {h: c for h, c in zip(header, cells) if c}


def _provenance_line(lines: list[str], index: int) -> str:
    """Line ``index`` of a README; a Markdown table row becomes ``"header: cell; ..."``."""
    row = _provenance_row(lines, index)
    if row is not None:
        return "; ".join(f"{h}: {c}" for h, c in row.items())
    line = lines[index].strip()
    if line.startswith("|"):
        return " ".join(_table_cells(line))
    return line.lstrip("-* ").strip()


def _provenance_readme(folder: Path, stop: Path | None) -> tuple[list[str], int] | None:
    """Where a run came from, from the nearest ``README.md`` at or above ``folder`` (up to
    ``stop``): that README's lines and the index of the first line that names one of the
    folders between it and the run; in the run folder's own README, a line mentioning
    "provenance", else its first line of text. ``None`` when no README names the run."""
    folder = folder.resolve()
    stop = stop.resolve() if stop is not None else None
    for current in (folder, *folder.parents):
        readme = current / "README.md"
        if readme.is_file():
            lines = readme.read_text(encoding="utf-8").splitlines()
            below = folder.relative_to(current).parts
            for part in below:
                name = re.compile(rf"(?<![\w.-]){re.escape(part)}(?![\w.-])")
                for i, line in enumerate(lines):
                    if name.search(line):
                        return lines, i
            if not below:
                text = [i for i, ln in enumerate(lines) if ln.strip()
                        and not ln.lstrip().startswith("#")]
                tagged = [i for i in text if "provenance" in lines[i].lower()]
                if tagged or text:
                    return lines, (tagged or text)[0]
        if stop is None or current == stop or current == current.parent:
            break
    return None


def load_run(run_dir: str | os.PathLike, *, root: str | os.PathLike | None = None) -> Run:
    """Read a run folder's logs through :meth:`convnn.run_folder.RunFolder.read` (never its
    checkpoint: committed logs have none).

    Unfinished runs are fine: a missing metrics log or summary gives no records or no
    summary, and lines of the log that are not valid records (a line cut off by a crash) are
    skipped and counted in :attr:`Run.skipped_lines`.

    Args:
        run_dir: the folder.
        root: where the search for a provenance ``README.md`` stops (default: the folder
            itself).

    Raises:
        FileNotFoundError: ``run_dir`` is not a run folder.
    """
    path = Path(run_dir)
    record = RunFolder.read(path, checkpoint="none")
    found = _provenance_readme(path, Path(root) if root is not None else path)
    if found is None:
        return Run(record)
    return Run(record, _provenance_line(*found), _provenance_row(*found))


PROVENANCE_COLUMNS = ("device", "commit", "date")


def provenance_rows(runs: Iterable[Run]) -> list[dict]:
    """One row per session folder of ``runs``: the folder, and the device, commit and date
    its README row records (cells as written there, never split on their text). The
    command of each session stays in the README: it names machine-specific folders."""
    rows: dict[str, dict] = {}
    for run in runs:
        fields = run.provenance_fields or {}
        named = fields.get("folder / file") or fields.get("folder") or run.provenance or ""
        folder = re.match(r"\s*`([^`]+)`", named)
        key = folder.group(1) if folder else run.path.parent.name + "/"
        rows.setdefault(key, {"session folder": f"`{key}`",
                              **{c: fields.get(c, "") for c in PROVENANCE_COLUMNS}})
    return list(rows.values())


def find_runs(root: str | os.PathLike | None = None) -> list[Run]:
    """Every run folder under ``root`` (any depth; see :func:`convnn.run_folder.is_run_folder`).
    ``root`` defaults to the committed logs (:data:`RESULTS_ROOT`). Returns ``[]`` when
    ``root`` does not exist; folders that cannot be read are skipped with a warning. Sorted
    by path."""
    root = Path(root) if root is not None else RESULTS_ROOT
    if not root.is_dir():
        return []
    runs = []
    for folder in find_run_folders(root):
        if not is_run_folder(folder):
            continue
        try:
            runs.append(load_run(folder, root=root))
        except (OSError, ValueError) as err:
            warnings.warn(f"skipping unreadable run folder {folder}: {err}", stacklevel=2)
    return runs


def load_bench(root: str | os.PathLike | None = None) -> list[tuple[Path, dict]]:
    """The benchmark reports (``python -m convnn bench --json FILE``) under ``root`` (default:
    the committed ``bench/`` logs), as ``(path, report)`` pairs sorted by path; ``[]`` when
    there are none."""
    root = Path(root) if root is not None else RESULTS_ROOT / "bench"
    if not root.is_dir():
        return []
    out = []
    for path in sorted(root.rglob("*.json")):
        try:
            report = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as err:
            warnings.warn(f"skipping unreadable benchmark file {path}: {err}", stacklevel=2)
            continue
        if isinstance(report, dict) and ("layers" in report or "training" in report):
            out.append((path, report))
    return out


def load_bench_suites(root: str | os.PathLike | None = None) -> list[tuple[Path, dict]]:
    """The benchmark suites (``python -m convnn bench --suite DIR``) under ``root`` (default:
    the committed ``bench/`` logs): ``(folder, report)`` pairs sorted by folder, where
    ``report`` holds ``suite.json``'s contents plus each stage's rows that were written
    (``loop``, ``training``, ``layers``, ``proxy``); ``[]`` when there are none."""
    root = Path(root) if root is not None else RESULTS_ROOT / "bench"
    if not root.is_dir():
        return []
    out = []
    for suite in sorted(root.rglob("suite.json")):
        try:
            report = json.loads(suite.read_text(encoding="utf-8"))
            for stage in ("loop", "training", "layers", "proxy"):
                path = suite.parent / f"{stage}.json"
                if path.is_file():
                    report[stage] = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as err:
            warnings.warn(f"skipping unreadable benchmark suite {suite.parent}: {err}",
                          stacklevel=2)
            continue
        out.append((suite.parent, report))
    return out


# --------------------------------------------------------------------------- run times
#: Published peak figures of GPUs, used only to *estimate* how long a measured run would take
#: elsewhere: (dense tensor-core TFLOPS in bf16, or fp16 on the T4, which has no bf16;
#: memory bandwidth in GB/s), from the vendors' data sheets.
GPU_SPECS: dict[str, tuple[float, float]] = {
    "NVIDIA H200": (989.0, 4800.0),
    "NVIDIA H100 80GB HBM3": (989.0, 3350.0),
    "NVIDIA A100-SXM4-40GB": (312.0, 1555.0),
    "NVIDIA L4": (121.0, 300.0),
    "Tesla T4": (65.0, 320.0),
}
#: The GPUs a Colab notebook can get, by the names ``torch.cuda.get_device_name`` gives.
COLAB_GPUS = ("Tesla T4", "NVIDIA L4", "NVIDIA A100-SXM4-40GB")
GPU_LABELS = {"Tesla T4": "T4", "NVIDIA L4": "L4", "NVIDIA A100-SXM4-40GB": "A100 40 GB",
              "NVIDIA H100 80GB HBM3": "H100", "NVIDIA H200": "H200"}


def latest_runs(runs: Iterable[Run]) -> list[Run]:
    """The newest run of each preset (by the time of its last epoch, then its folder), in
    preset order: the trainer gets faster, so older runs' times describe older code."""
    newest: dict[str, Run] = {}
    for run in runs:
        if not run.records:
            continue
        key = (run.records[-1].get("time") or "", str(run.path))
        best = newest.get(run.preset)
        if best is None or key > (best.records[-1].get("time") or "", str(best.path)):
            newest[run.preset] = run
    return [newest[p] for p in sorted(newest, key=str)]


def steady_epoch_seconds(run: Run) -> float:
    """The median epoch time of a run after its first epoch (which includes warm-up)."""
    times = sorted(r["epoch_seconds"] for r in run.records[1:] or run.records)
    if not times:
        raise ValueError(f"{run.path} has no finished epoch")
    mid = len(times) // 2
    return times[mid] if len(times) % 2 else 0.5 * (times[mid - 1] + times[mid])


def run_time_estimates(runs: Iterable[Run], gpus: Sequence[str] = COLAB_GPUS,
                       epochs: int | None = None) -> list[dict]:
    """How long a full run of each measured run's preset takes: measured on its GPU
    (epoch time × epochs), and *estimated* on ``gpus``.

    An estimate scales the measured epoch time by the ratio of the two GPUs' peak compute and
    of their memory bandwidth, and reports both ends, ``low``-``high`` (a step bound by
    arithmetic moves with the first, one bound by memory traffic with the second). It ignores
    everything else (the data pipeline, kernel launch overheads, the smaller GPUs' memory),
    so read it as an order of magnitude.

    Returns:
        One dict per run: ``preset``, ``measured_on``, ``epoch_seconds`` (measured: the
        median after the first epoch), ``epochs_measured`` (the run's epochs), ``epochs``, ``measured_minutes`` (the measured pace × ``epochs``) and, per GPU,
        ``(low, high)`` estimated minutes under the GPU's name.
    """
    rows = []
    for run in runs:
        device = run.records[0].get("device") if run.records else None
        if device not in GPU_SPECS:
            raise ValueError(f"{run.path} ran on {device!r}; estimates need one of "
                             f"{sorted(GPU_SPECS)}")
        n = epochs or run.protocol_epochs or run.epochs_planned
        seconds = steady_epoch_seconds(run)
        flops, bandwidth = GPU_SPECS[device]
        row = {"preset": run.preset, "measured_on": device, "epoch_seconds": seconds,
               "epochs_measured": len(run.records), "epochs": n,
               "measured_minutes": seconds * n / 60}
        for gpu in gpus:
            ratios = (flops / GPU_SPECS[gpu][0], bandwidth / GPU_SPECS[gpu][1])
            row[gpu] = (seconds * n * min(ratios) / 60, seconds * n * max(ratios) / 60)
        rows.append(row)
    return rows


def _hours(minutes: float) -> str:
    return f"{minutes:.0f} min" if minutes < 90 else f"{minutes / 60:.1f} h"


def run_time_table(runs: Iterable[Run], gpus: Sequence[str] = COLAB_GPUS) -> str:
    """:func:`run_time_estimates` of the newest run of each preset (:func:`latest_runs`) as
    a Markdown table that marks measured and estimated columns."""
    rows = []
    for r in run_time_estimates(latest_runs(runs), gpus):
        device = GPU_LABELS.get(r["measured_on"], r["measured_on"])
        row = {"preset": f"`{r['preset']}`",
               "measured": f"{r['epoch_seconds']:.1f} s/epoch on {device}"
                           + (" (its only epoch, warm-up included: an upper bound)"
                              if r["epochs_measured"] < 2 else ""),
               "full": f"{_hours(r['measured_minutes'])} ({r['epochs']} epochs at that pace)"}
        for gpu in gpus:
            low, high = r[gpu]
            row[gpu] = (_hours(low) if _hours(low) == _hours(high)
                        else f"{_hours(low)} to {_hours(high)}")
        rows.append(row)
    headers = {"measured": "measured epoch", "full": "full run, measured pace",
               **{gpu: f"estimated on {GPU_LABELS.get(gpu, gpu)}" for gpu in gpus}}
    return markdown_table(rows, headers=headers)


# --------------------------------------------------------------------------- paper rows
def _check_table(table: str) -> str:
    known = sorted({r["table"] for r in paper_records()}, key=lambda t: [int(p) for p in
                                                                           t.split(".")])
    if not isinstance(table, str) or table not in known:
        raise ValueError(f"table must be one of {known}, got {table!r}")
    return table


def _fmt_number(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def row_label(record: dict) -> str:
    """A short description of a paper row's setting, e.g. ``"Branching λ=0.5, random s=8"``
    (an 8 × 8 grid of candidates) or ``"ConvNN-Attn random m=32, k=9"`` (32 candidate tokens);
    the dataset is not part of it. Notation: book/notation.md."""
    table, layer = record["table"], record["layer"]
    extras = []
    if record["model"] in ("vgg11", "resnet50"):
        base = {"conv2d": "Conv2d", "convnn": "ConvNN", "branching": "Branching"}[layer]
        if layer == "branching" and record.get("branch_ratio") is not None:
            base += f" λ={_fmt_number(record['branch_ratio'])}"
        extras.extend(paper.vgg_row_words(record))
        if record.get("sampling") in ("random", "spatial"):
            # VGG-11 counts a side s (s × s candidates), ResNet-50 m candidates (a count)
            symbol = "m" if record["model"] == "resnet50" else "s"
            extras.append(f"{record['sampling']} {symbol}={record['candidates']}")
        if layer != "conv2d" and (table == "6.4" or record.get("k", 9) != 9):
            extras.append(f"k={record['k']}")
        if record.get("kernel_size") is not None and (table == "6.4"
                                                      or record["kernel_size"] != 3):
            extras.append(f"KS={record['kernel_size']}")
    else:
        names = {"attention": "Attention", "local_attention": "Local attention",
                 "sparse_local": "Sparse attention (local)",
                 "sparse_strided": "Sparse attention (strided)", "kvt": "KVT",
                 "convnn_attention": "ConvNN-Attn"}
        base = names.get(layer, layer)
        if layer == "convnn_attention":
            sampling = record.get("sampling") or "all"
            base += f" {sampling}"
            if sampling != "all" and record.get("candidates") is not None:
                base += f" m={record['candidates']}"
        if record.get("k") is not None:
            extras.append(f"k={record['k']}")
        extras.extend(paper.vit_row_words(record))
        if record.get("heads") is not None and (table == "6.10" or record["heads"] != 1):
            extras.append(f"{record['heads']} head{'s' if record['heads'] != 1 else ''}")
    if table == "6.5" and record.get("lr") is not None:
        extras.append(f"lr={_fmt_number(record['lr'])}")
    return ", ".join([base, *extras])


def paper_table(table: str) -> list[dict]:
    """The rows of one of the paper's tables, from ``data/paper_results.json``.

    Each row has the setting (``dataset``, ``layer``, ``k``...), a readable ``setting``
    (:func:`row_label`), ``source`` = :data:`PAPER_LABEL`, and every number the paper reports
    under a ``paper_`` key: ``paper_best`` (max test top-1 over epochs), ``paper_avg5``
    (mean of the last 5 epochs), ``paper_train_avg5``, ``paper_params``, ``paper_gflops``...

    Raises:
        ValueError: an unknown table (e.g. ``"6.11"``).
    """
    _check_table(table)
    rows = []
    for record in paper_records():
        if record["table"] != table:
            continue
        row = {key: record[key] for key in SETTING_KEYS if key in record}
        row["dataset_name"] = dataset_title(record["dataset"])
        row["setting"] = row_label(record)
        row["source"] = PAPER_LABEL
        row.update({f"paper_{key}": value for key, value in record.items()
                    if key not in SETTING_KEYS})
        rows.append(row)
    return rows


def find_record(table: str, **fields) -> dict:
    """The one record of ``table`` whose fields equal ``fields``; ``ValueError`` unless
    exactly one matches."""
    _check_table(table)
    found = [r for r in paper_records() if r["table"] == table
             and all(r.get(k) == v for k, v in fields.items())]
    if len(found) != 1:
        raise ValueError(f"{len(found)} records of table {table} match {fields}; need exactly "
                         "one")
    return found[0]


def headline_rows() -> list[dict]:
    """The headline claims of the paper (method.md §5), from its own numbers: for each, the
    ConvNN model and its baseline with best and last-5 mean, and the two differences."""
    rows = []
    for claim, table, ours, base in HEADLINE_CLAIMS:
        a, b = find_record(table, **ours), find_record(table, **base)
        rows.append({
            "claim": claim, "table": table,
            "dataset": dataset_title(a["dataset"]),
            "convnn": row_label(a), "baseline": row_label(b),
            "paper_best": a["best"], "paper_baseline_best": b["best"],
            "paper_best_gain": round(a["best"] - b["best"], 2),
            "paper_avg5": a["avg5"], "paper_baseline_avg5": b["avg5"],
            "paper_avg5_gain": round(a["avg5"] - b["avg5"], 2),
            "source": PAPER_LABEL,
        })
    return rows


def _distinct_runs_of(record: dict) -> list[dict]:
    """The distinct runs (by best and last-5 mean) the paper's logs hold of ``record``'s
    preset: the record itself where it has no preset or no repeat."""
    preset = preset_for_record(record)
    if preset is None:
        return [record]
    same = [r for r in paper_records() if "best" in r and (p := preset_for_record(r)) is not None
            and p.name == preset.name]
    return list({(r["best"], r["avg5"]): r for r in same}.values()) or [record]


def pooled_headline_rows() -> list[dict]:
    """The headline claims against **pooled** runs: where the authors' logs hold a
    configuration more than once (e.g. four Conv2d VGG-11 CIFAR-10 runs), both sides are the
    mean over their distinct runs instead of the one run the paper's table picked, and the
    gain comes with Welch's 95 % interval where both sides have two runs or more."""
    from .stats import mean_interval, welch

    rows = []
    for claim, table, ours, base in HEADLINE_CLAIMS:
        a, b = (_distinct_runs_of(find_record(table, **ours)),
                _distinct_runs_of(find_record(table, **base)))
        row = {"claim": claim, "dataset": dataset_title(a[0]["dataset"]),
               "runs": f"{len(a)} vs {len(b)}", "source": PAPER_LABEL}
        for metric, name in (("best", "best"), ("avg5", "avg5")):
            ma = mean_interval([r[metric] for r in a])
            mb = mean_interval([r[metric] for r in b])
            d = welch([r[metric] for r in a], [r[metric] for r in b])
            row[f"pooled_{name}"] = round(ma.mean, 2)
            row[f"pooled_baseline_{name}"] = round(mb.mean, 2)
            row[f"pooled_{name}_gain"] = round(d.diff, 2)
            row[f"pooled_{name}_interval"] = (
                f"[{d.low:+.2f}, {d.high:+.2f}] (df {d.df:.1f})" if not math.isnan(d.low)
                else "one run on a side: no interval")
        rows.append(row)
    return rows


def paper_repeats() -> list[dict]:
    """Configurations the paper's logs contain as *different* runs (same preset, different
    numbers, e.g. Conv2d in tables 6.1 and 6.2): the spread of their best and last-5 mean is
    the run-to-run noise the paper's comparisons live with."""
    groups: dict[str, list[dict]] = {}
    for record in paper_records():
        preset = preset_for_record(record)
        if preset is not None and "best" in record:  # CIFAR rows (ImageNet's have top1)
            groups.setdefault(preset.name, []).append(record)
    rows = []
    for name, records in groups.items():
        distinct = {(r["best"], r["avg5"]): r for r in records}
        if len(distinct) < 2:
            continue
        bests = [b for b, _ in distinct]
        avgs = [a for _, a in distinct]
        rows.append({
            "preset": name, "dataset": dataset_title(records[0]["dataset"]),
            "runs": len(distinct),
            "tables": ", ".join(sorted({r["table"] for r in records})),
            "paper_best_min": min(bests), "paper_best_max": max(bests),
            "paper_best_spread": round(max(bests) - min(bests), 2),
            "paper_avg5_spread": round(max(avgs) - min(avgs), 2),
            "source": PAPER_LABEL,
        })
    return rows


# --------------------------------------------------------------------------- comparisons
def _runs_by_preset(runs: Iterable[Run], include_smoke: bool) -> dict[str, list[Run]]:
    out: dict[str, list[Run]] = {}
    for run in runs:
        if run.preset and run.records and (include_smoke or not run.smoke):
            out.setdefault(run.preset, []).append(run)
    for matches in out.values():  # the most epochs first, then the latest folder
        matches.sort(key=lambda r: (r.epochs_done, str(r.path)), reverse=True)
    return out


def comparison_rows(table: str, runs: Sequence[Run] | None = None, *,
                    include_smoke: bool = False) -> list[dict]:
    """Each row of a paper table next to our committed run of the same preset.

    Args:
        table: ``"6.1"`` ... ``"6.10"``.
        runs: our runs (default: :func:`find_runs` of ``data/results/``).
        include_smoke: also match smoke runs (off: a smoke run is not an experiment).

    Returns:
        One dict per paper row: the :func:`paper_table` fields, ``preset`` (its name, or
        ``None`` for rows without a preset), and ours: ``ours_best`` (best test top-1),
        ``ours_last5`` (mean of the last ``min(5, epochs)`` epochs), ``ours_epochs`` (done),
        ``ours_protocol_epochs`` (the paper's), ``ours_device``, ``ours_dataset``,
        ``ours_path`` and ``ours`` (a one-line description, or :data:`NO_RUN`). Where
        several runs match, the one with the most epochs is used (``ours_runs`` counts them).
    """
    by_preset = _runs_by_preset(find_runs() if runs is None else runs, include_smoke)
    rows = []
    for row, record in zip(paper_table(table),
                           [r for r in paper_records() if r["table"] == table]):
        preset = preset_for_record(record)
        matches = by_preset.get(preset.name, []) if preset is not None else []
        row["preset"] = preset.name if preset is not None else None
        row.update(ours_best=None, ours_last5=None, ours_epochs=None,
                   ours_protocol_epochs=None, ours_device=None, ours_dataset=None,
                   ours_path=None, ours_runs=len(matches), ours=NO_RUN)
        if matches:
            run = matches[0]
            row.update(ours_epochs=run.epochs_done, ours_protocol_epochs=run.protocol_epochs,
                       ours_device=run.device, ours_dataset=run.dataset,
                       ours_path=str(run.path),
                       ours=f"{run.device}, {run.epochs_text}, {run.dataset}, "
                            f"{run_precision(run)}" + (", smoke run" if run.smoke else ""))
            if full_length(run):
                key = comparable_metric(run)
                values = run.series(key)
                row.update(ours_best=max(values),
                           ours_last5=sum(values[-5:]) / len(values[-5:]))
                if run.preset and "random" in run.preset:
                    row["ours"] += ", " + evaluation_label(key)
            else:
                row["ours"] += f" ({SHORT_RUN})"
        rows.append(row)
    return rows


#: What a per-table row says instead of numbers when our run stopped before the paper's
#: protocol ended (its numbers would sit next to the paper's finals of a longer run).
SHORT_RUN = "short run: compared epoch by epoch at the top of the page"


def full_length(run: Run) -> bool:
    """Whether ``run`` trained all the epochs of its paper protocol (only then do its
    numbers stand next to the paper's final ones)."""
    return bool(run.protocol_epochs) and run.epochs_done >= run.protocol_epochs


def run_precision(run: Run) -> str:
    """The run's arithmetic precision, for labels: ``precision`` where the run recorded it,
    else from its ``amp`` setting and device (``"auto"`` is bf16 autocast on a GPU)."""
    for where in (run.summary or {}, run.config.get("train") or {}, run.extra):
        if isinstance(where, dict) and where.get("precision"):
            return str(where["precision"])
    amp = (run.config.get("train") or {}).get("amp")
    on_gpu = "cpu" not in run.device.lower()
    if amp in ("bf16", "fp16") and on_gpu:
        return f"{amp} autocast"
    if amp == "auto" and on_gpu:
        return "bf16 autocast"
    return "float32"


def evaluation_label(key: str) -> str:
    """How a random-candidate run was evaluated: ``"redrawn candidates"`` (the paper's way)
    for :data:`RESAMPLED_KEY`, ``"fixed draw"`` for ``test_top1``."""
    return "redrawn candidates" if key == RESAMPLED_KEY else "fixed draw"


# --------------------------------------------------------------------------- tables
def _cell(value, floatfmt: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return format(value, floatfmt)
    if isinstance(value, int):
        return f"{value:,}" if abs(value) >= 10_000 else str(value)
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(rows: Sequence[dict], columns: Sequence[str] | None = None,
                   headers: Sequence[str] | dict | None = None, floatfmt: str = ".2f") -> str:
    """Rows as a Markdown (GFM) table.

    Args:
        rows: dicts; a missing key or ``None`` shows as "–".
        columns: the keys to show, in order (default: the first row's keys with plain values).
        headers: column titles, as a list parallel to ``columns`` or a dict
            ``{key: title}`` (default: the keys).
        floatfmt: format of floats (accuracies: ``".2f"``).

    Returns:
        The table as a string (``"(no rows)"`` for no rows).
    """
    if not rows:
        return "(no rows)"
    if columns is None:
        columns = [k for k, v in rows[0].items() if not isinstance(v, (dict, list, tuple))]
    if headers is None:
        titles = list(columns)
    elif isinstance(headers, dict):
        titles = [headers.get(c, c) for c in columns]
    else:
        titles = list(headers)
        if len(titles) != len(columns):
            raise ValueError(f"headers has {len(titles)} titles but there are {len(columns)} "
                             "columns")
    lines = ["| " + " | ".join(_cell(t, floatfmt) for t in titles) + " |",
             "|" + "|".join("---" for _ in titles) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row.get(c), floatfmt) for c in columns) + " |")
    return "\n".join(lines)


#: Column titles of :func:`comparison_markdown`.
COMPARISON_COLUMNS = {"dataset_name": "data", "setting": "setting (paper row)",
                      "paper_best": "paper best", "paper_avg5": "paper last-5 mean",
                      "ours_best": "ours best", "ours_last5": "ours last-5 mean",
                      "ours": "our run (device, epochs, data)"}
#: Column titles of :func:`comparison_markdown` for the ImageNet table, which prints one
#: top-1 per row (best or final epoch: not stated) and the parameter count.
IMAGENET_COLUMNS = {"model": "model", "setting": "setting (paper row)",
                    "paper_top1": "paper top-1", "paper_params_m": "paper params (M)",
                    "ours_best": "ours best", "ours_last5": "ours last-5 mean",
                    "ours": "our run (device, epochs, data)"}


def comparison_markdown(table: str, runs: Sequence[Run] | None = None, *,
                        collapse_over: int = 8) -> str:
    """:func:`comparison_rows` of ``table`` as Markdown for a book page.

    A table of at most ``collapse_over`` rows is shown whole. A longer one shows the rows
    that have a committed run of ours (or says there are none) and puts all rows in a
    collapsed ``<details>`` block. Accuracies are test top-1 in percent.
    """
    rows = comparison_rows(table, runs)
    columns = IMAGENET_COLUMNS if table == IMAGENET_TABLE else COMPARISON_COLUMNS
    legend = (f"*paper* = {PAPER_LABEL}, `data/paper_results.json`; *ours* = committed logs "
              "in `data/results/`; best = best epoch, last-5 mean = mean of the last 5 epochs.")
    if table == IMAGENET_TABLE:
        legend += (" The paper's ImageNet top-1 may be a best or a final epoch (not stated), "
                   "and our ImageNet presets use our own training protocol.")
        names = {"resnet50": "ResNet-50", "vit_base": "ViT-Base"}
        rows = [dict(r, model=names.get(r["model"], r["model"]),
                     paper_params_m=f"{r['paper_params_m']:.3f}") for r in rows]
    short = sorted({f"{r['ours_epochs']}/{r['ours_protocol_epochs']}" for r in rows
                    if r["ours_runs"] and r["ours_protocol_epochs"]
                    and r["ours_epochs"] < r["ours_protocol_epochs"]})
    if short:
        legend += (f" Our runs of {', '.join(short)} epochs stopped before the paper's "
                   "protocol ended, so this table shows no number of theirs: set against the "
                   "paper's final numbers they would compare different epochs. They are "
                   "compared with the authors' run at the same epoch at the top of the page.")
    few = sorted({r["ours_epochs"] for r in rows if r["ours_runs"] and r["ours_epochs"]
                  and r["ours_epochs"] <= 5})
    if few:
        legend += (f" A run of {' or '.join(map(str, few))} epochs has no more than 5 epochs: its "
                   "*ours last-5 mean* is the mean over all the epochs it ran.")
    full = markdown_table(rows, list(columns), columns)
    if len(rows) <= collapse_over:
        return f"{full}\n\n{legend}"
    with_runs = [r for r in rows if r["ours_runs"]]
    if with_runs:
        head = (f"Rows of table {table} with a committed run of ours ({len(with_runs)} of "
                f"{len(rows)}):\n\n"
                + markdown_table(with_runs, list(columns), columns))
    else:
        head = f"No committed run of ours for any of the {len(rows)} rows of table {table} yet."
    return (f"{head}\n\n<details><summary>All {len(rows)} rows of table {table}</summary>"
            f"\n\n{full}\n\n</details>\n\n{legend}")


# --------------------------------------------------------------------------- figures
#: The figures of this module: :class:`convnn.viz.BookFigure` (shown as a PNG by Jupyter).
ResultsFigure = BookFigure


def _as_runs(runs) -> list[Run]:
    if isinstance(runs, Run):
        return [runs]
    return list(runs)


def plot_curves(runs: Run | Sequence[Run], *, title: str | None = None) -> ResultsFigure:
    """Test and train top-1 (left) and loss (right) against the epoch, one colour per run.

    Test curves are solid, train curves dashed; the legend names each run with its device,
    epochs and data (:attr:`Run.label`).

    Raises:
        ValueError: no run, or a run with no finished epoch.
    """
    runs = _as_runs(runs)
    if not runs:
        raise ValueError("runs is empty: nothing to plot")
    empty = [str(r.path) for r in runs if not r.records]
    if empty:
        raise ValueError(f"these runs have no finished epoch to plot: {empty}")
    fig = ResultsFigure(figsize=(9.0, 3.4 + 0.25 * len(runs)), dpi=_DPI, layout="constrained")
    ax_acc, ax_loss = fig.subplots(1, 2)
    for i, run in enumerate(runs):
        color = _COLORS[i % len(_COLORS)]
        epochs = run.series("epoch")
        ax_acc.plot(epochs, run.series("test_top1"), "-o", color=color, ms=3, label=run.label)
        ax_acc.plot(epochs, run.series("train_top1"), "--", color=color, alpha=0.7)
        ax_loss.plot(epochs, run.series("test_loss"), "-o", color=color, ms=3)
        ax_loss.plot(epochs, run.series("train_loss"), "--", color=color, alpha=0.7)
    ax_acc.set(xlabel="epoch", ylabel="top-1 accuracy (%)", title="top-1: test —, train --")
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", title="loss: test —, train --")
    for ax in (ax_acc, ax_loss):
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    fig.legend(*ax_acc.get_legend_handles_labels(), loc="outside lower center", fontsize=8,
               frameon=False)
    if title:
        fig.suptitle(title)
    return fig


def _ours_final(run: Run) -> tuple[float, float]:
    """Best and last-5 mean of the metric compared with the paper (:func:`comparable_metric`)."""
    values = run.series(comparable_metric(run))
    return max(values), sum(values[-5:]) / len(values[-5:])


#: How the sampling-error bars of :func:`sampling_error_bars` are drawn.
_BARS = {"capsize": 2, "elinewidth": 0.8}


def sampling_error_bars(values: Sequence[float], dataset: str) -> list[list[float]]:
    """Error bars ``[below, above]`` (for ``yerr=``/``xerr=``) of single-run accuracies on
    ``dataset``'s full test split: the 95 % Wilson interval of
    :func:`convnn.stats.sampling_interval`. It is the least uncertainty of one run; the seed
    spread comes on top and needs repeated runs. ``nan`` values get no bar."""
    from .stats import sampling_interval

    images = DATASETS[dataset].test_images if dataset in DATASETS else None
    if images is None:
        raise ValueError(f"dataset {dataset!r} has no test_images in convnn.data.DATASETS, "
                         "so its sampling error is unknown")
    below, above = [], []
    for v in values:
        if v is None or math.isnan(v):
            below.append(0.0)
            above.append(0.0)
            continue
        i = sampling_interval(float(v), images)
        below.append(v - i.low)
        above.append(i.high - v)
    return [below, above]


def _title(table: str, shown: Sequence[Run]) -> str:
    """``"Table 6.1, paper (authors' logs)"``, plus what the black markers are, if any."""
    title = f"Table {table}, {PAPER_LABEL}"
    if shown:
        what = ", ".join(dict.fromkeys(f"{r.device}, {r.epochs_text}, {r.dataset}, "
                                       f"{run_precision(r)}" for r in shown))
        title += f"\nblack ★/×: ours ({what})"
    return title


def _x_value(record: dict, x: str):
    if x == "branch_ratio":
        return {"conv2d": 0.0, "convnn": 1.0}.get(record["layer"], record.get("branch_ratio"))
    return record.get(x)


def _our_points(table: str, dataset: str, runs: Sequence[Run], x: str | None):
    """(x, best, last5, run) of our runs that reproduce a row of ``table`` on ``dataset``."""
    by_preset = _runs_by_preset(runs, include_smoke=False)
    points = []
    for record in paper_records():
        if record["table"] != table or record["dataset"] != dataset:
            continue
        preset = preset_for_record(record)
        for run in [r for r in by_preset.get(preset.name if preset else "", [])
                    if full_length(r)][:1]:
            points.append((record if x is None else _x_value(record, x), run))
    return points


def plot_paper_sweep(table: str, x: str | None = None, group: Sequence[str] | None = None, *,
                     runs: Sequence[Run] = (), datasets: Sequence[str] | None = None,
                     show_avg5: bool = True, xlabel: str | None = None,
                     logx: bool | None = None) -> ResultsFigure:
    """A sweep of one of the paper's tables: best test top-1 against a setting.

    One panel per dataset and one line per group of rows (e.g. per similarity/aggregation for
    table 6.1); the dashed line of the same colour is the mean of the last 5 epochs. Rows
    without a value of ``x`` (e.g. the attention baseline of table 6.7) are drawn as
    horizontal dotted lines. Everything is the paper's number, labelled
    :data:`PAPER_LABEL`; committed runs of ours that reproduce a row are added as black
    stars (best) and crosses (last-5 mean). The bars on the best points are the 95 % sampling
    interval of one run's accuracy on the dataset's test images
    (:func:`sampling_error_bars`); the paper ran each row once, so no seed spread is known.

    Args:
        table: a key of :data:`SWEEPS` unless ``x`` is given.
        x: the setting on the x axis (``"branch_ratio"``, ``"k"``, ``"candidates"``, ``"lr"``);
            for ``"branch_ratio"``, Conv2d is 0 and pure ConvNN is 1.
        group: the settings that make one line.
        runs: our runs to overlay (smoke runs are ignored).
        datasets: the panels (default: every dataset of the table).
        show_avg5: draw the last-5 mean as dashed lines.
        xlabel, logx: axis label and log scale (default: from :data:`SWEEPS`).

    Raises:
        ValueError: an unknown table, or a table without a default sweep and no ``x``.
    """
    _check_table(table)
    default = SWEEPS.get(table)
    if x is None and default is None:
        raise ValueError(f"table {table} has no default sweep (tables with one: "
                         f"{sorted(SWEEPS)}); pass x=..., or use plot_paper_bars")
    x = x or default[0]
    group = tuple(group) if group is not None else (default[1] if default and
                                                    x == default[0] else ())
    xlabel = xlabel or (default[2] if default and x == default[0] else x)
    logx = logx if logx is not None else bool(default and x == default[0] and default[3])
    records = [r for r in paper_records() if r["table"] == table and "best" in r]
    datasets = (list(datasets) if datasets is not None else
                list(dict.fromkeys(r["dataset"] for r in records)))
    fig = ResultsFigure(figsize=(4.6 * len(datasets), 3.9), dpi=_DPI, layout="constrained")
    axes = fig.subplots(1, len(datasets), squeeze=False)[0]
    handles: dict[str, object] = {}
    shown: list[Run] = []
    for ax, dataset in zip(axes, datasets):
        rows = [r for r in records if r["dataset"] == dataset]
        lines: dict[tuple, list[dict]] = {}
        baselines: list[dict] = []
        for r in rows:
            (baselines if _x_value(r, x) is None else
             lines.setdefault(tuple(_group_value(r, g) for g in group), [])).append(r)
        colors = {key: _COLORS[i % len(_COLORS)] for i, key in enumerate(lines)}
        for key, members in lines.items():
            color = colors[key]
            members.sort(key=lambda r: _x_value(r, x))
            xs = [_x_value(r, x) for r in members]
            name = _group_name(group, key, members[0])
            best = [r["best"] for r in members]
            h = ax.errorbar(xs, best, yerr=sampling_error_bars(best, dataset), fmt="-o",
                            ms=3.5, color=color, **_BARS,
                            label=f"{name}: best")
            handles.setdefault(h.get_label(), h)
            if show_avg5:
                (h,) = ax.plot(xs, [r["avg5"] for r in members], "--", lw=1, color=color,
                               alpha=0.8, label=f"{name}: last-5 mean")
                handles.setdefault(h.get_label(), h)
        for j, r in enumerate(baselines):  # same colour as its group's line, if it has one
            color = colors.get(tuple(_group_value(r, g) for g in group),
                               _COLORS[(len(lines) + j) % len(_COLORS)])
            h = ax.axhline(r["best"], ls=":", lw=1.5, color=color,
                           label=f"{row_label(r)}: best")
            handles.setdefault(h.get_label(), h)
        for xv, run in _our_points(table, dataset, runs, x):
            if xv is None:
                continue
            shown.append(run)
            mine = _ours_final(run)[0]
            h = ax.errorbar([xv], [mine], yerr=sampling_error_bars([mine], dataset), fmt="*",
                            ms=12, color="black", **_BARS,
                            label="ours: best")
            handles.setdefault("ours: best", h)
            h = ax.plot([xv], [_ours_final(run)[1]], "x", ms=8, color="black",
                        label="ours: last-5 mean")[0]
            handles.setdefault("ours: last-5 mean", h)
        if logx:
            ax.set_xscale("log")
        ax.set(xlabel=xlabel, ylabel="test top-1 (%)",
               title=f"{dataset_title(dataset)}")
        ax.grid(alpha=0.3)
    fig.suptitle(_title(table, shown), fontsize=11)
    fig.legend(list(handles.values()), list(handles.keys()), loc="outside lower center",
               ncols=min(3, max(1, len(handles))), fontsize=8, frameon=False)
    return fig


def _group_value(record: dict, key: str):
    if key == "sampling" and record["layer"] in ("convnn_attention", "branching", "convnn"):
        return record.get("sampling") or "all"  # rows that do not say it use all candidates
    return record.get(key)


def _group_name(group: Sequence[str], key: tuple, example: dict) -> str:
    if not group:
        return "paper"
    if group == ("layer", "sampling") or group == ("layer",) or "layer" in group:
        parts = []
        layer = example["layer"]
        names = {"conv2d": "Conv2d", "branching": "Branching", "convnn": "ConvNN",
                 "kvt": "KVT", "convnn_attention": "ConvNN-Attn", "attention": "Attention"}
        parts.append(names.get(layer, layer))
        if layer == "branching" and example.get("branch_ratio") is not None:
            parts[-1] += f" λ={_fmt_number(example['branch_ratio'])}"
        for g, v in zip(group, key):
            if g != "layer" and v is not None:
                parts.append(f"{v}" if g == "sampling" else f"{g} {v}")
        if (layer == "convnn_attention" and example.get("sampling") == "random"
                and "candidates" not in group and example.get("candidates")):
            parts[-1] += f" m={example['candidates']}"
        return " ".join(parts)
    short = {"similarity": "sim", "aggregation": "agg", "kernel_size": "KS",
             "sampling": "", "heads": "heads"}
    return ", ".join(f"{short.get(g, g)} {v}".strip() for g, v in zip(group, key))


def plot_paper_bars(table: str, *, runs: Sequence[Run] = ()) -> ResultsFigure:
    """A table without a sweep (6.2, 6.6, 6.9, 6.10) as a dot plot, one panel per dataset and
    one line per row: the dot is the paper's best test top-1, the tick the paper's last-5 mean;
    our committed runs of the same presets are black stars (best) and crosses (last-5 mean).
    The bars are the 95 % sampling interval of one run's best on the test images
    (:func:`sampling_error_bars`).
    """
    _check_table(table)
    records = [r for r in paper_records() if r["table"] == table and "best" in r]
    datasets = list(dict.fromkeys(r["dataset"] for r in records))
    labels = list(dict.fromkeys(row_label(r) for r in records))
    # Title, axis label and legend take about 1.9 in whatever the row count; a table of 2 or 3
    # rows still gets a readable plot area (at least 3.4 in tall), and the dots a larger scale.
    height = max(3.4, 1.9 + 0.45 * len(labels))
    fig = ResultsFigure(figsize=(4.6 * len(datasets) + 1.6, height), dpi=_DPI,
                        layout="constrained")
    axes = fig.subplots(1, len(datasets), squeeze=False, sharey=True)[0]
    shown: list[Run] = []
    for ax, dataset in zip(axes, datasets):
        rows = {row_label(r): r for r in records if r["dataset"] == dataset}
        ys = range(len(labels))
        best = [rows[lb]["best"] if lb in rows else 0.0 for lb in labels]
        for y in ys:
            ax.axhline(y, color="#dddddd", lw=0.8, zorder=0)
        shown_best = [b if b > 0 else math.nan for b in best]
        ax.errorbar(shown_best, list(ys), xerr=sampling_error_bars(shown_best, dataset),
                    fmt="o", ms=7, color="#3182bd", **_BARS,
                    label="paper: best")
        ax.plot([rows[lb]["avg5"] if lb in rows else math.nan for lb in labels], list(ys),
                "|", ms=14, mew=2, color="#08519c", label="paper: last-5 mean")
        for value, y in zip(best, ys):
            if value > 0:
                ax.text(value + 1.6, y, f"{value:.2f}", va="center", fontsize=8)
        for record, run in _our_points(table, dataset, runs, None):
            shown.append(run)
            y = labels.index(row_label(record))
            mine = _ours_final(run)[0]
            ax.errorbar([mine], [y], xerr=sampling_error_bars([mine], dataset), fmt="*", ms=12,
                        color="black", **_BARS, label="ours: best")
            ax.plot([_ours_final(run)[1]], [y], "x", ms=8, color="black",
                    label="ours: last-5 mean")
        low = min(b for b in best if b > 0)
        ax.set_xlim(max(0.0, math.floor(low / 5) * 5 - 5), min(100.0, max(best) + 6))
        ax.set(xlabel="test top-1 (%)", title=dataset_title(dataset))
        ax.set_yticks(list(ys), labels, fontsize=9)
        ax.grid(axis="x", alpha=0.3)
    # the table's first row on top, half a row of margin (the axes share y: set it once)
    axes[0].set_ylim(len(labels) - 0.5, -0.5)
    handles, names = axes[0].get_legend_handles_labels()
    unique = dict(zip(names, handles))
    fig.suptitle(_title(table, shown), fontsize=11)
    fig.legend(list(unique.values()), list(unique.keys()), loc="outside lower center",
               ncols=4, fontsize=8, frameon=False)
    return fig


# --------------------------------------------------------------------------- paper curves
#: The authors' per-epoch logs behind ``paper_results.json``, abridged and gzipped
#: (``scripts/make_paper_curves.py`` writes it).
PAPER_CURVES_FILE = "paper_curves.json.gz"
#: How every per-epoch number from the authors' logs is labelled.
PAPER_CURVE_LABEL = "paper (authors' per-epoch logs)"
#: The data the authors trained on (their logs say so): the original CIFAR binaries.
PAPER_DATA = "original CIFAR binaries"


@dataclass(frozen=True)
class PaperCurve:
    """One of the authors' training runs, epoch by epoch (from their own logs).

    Attributes:
        path: the log's path in the authors' repository (``repo``: ``"cnn"`` for VGG-11,
            ``"vit"`` for ViT-Tiny).
        records: indices of the ``paper_results.json`` records (table rows) this run backs.
        best, avg5: the run's best and last-5 mean test top-1 over all its epochs, as in
            ``paper_results.json``.
        epoch, seconds, train_loss, train_top1, test_loss, test_top1: per epoch (top-1 in %,
            losses as mean cross-entropy, seconds of wall clock).
    """

    path: str
    repo: str
    records: tuple[int, ...]
    best: float
    avg5: float
    epoch: tuple[int, ...]
    seconds: tuple[float, ...]
    train_loss: tuple[float, ...]
    train_top1: tuple[float, ...]
    test_loss: tuple[float, ...]
    test_top1: tuple[float, ...]

    @property
    def epochs(self) -> int:
        return len(self.epoch)

    @property
    def tables(self) -> tuple[str, ...]:
        """The tables of the rows this run backs, e.g. ``("6.6", "6.8")``."""
        records = paper_records()
        return tuple(dict.fromkeys(records[i]["table"] for i in self.records))

    @property
    def label(self) -> str:
        """``"paper (authors' per-epoch logs), table 6.1, 150 epochs"``."""
        return f"{PAPER_CURVE_LABEL}, table {'/'.join(self.tables)}, {self.epochs} epochs"

    def _check_epoch(self, epoch: int) -> int:
        if (isinstance(epoch, bool) or not isinstance(epoch, int) or not
                1 <= epoch <= self.epochs):
            raise ValueError(f"epoch must be an integer in 1..{self.epochs} (this run's "
                             f"epochs), got {epoch!r}")
        return epoch

    def best_at(self, epoch: int) -> float:
        """The best test top-1 of epochs ``1..epoch`` (the paper's metric, cut at ``epoch``)."""
        return max(self.test_top1[:self._check_epoch(epoch)])

    def last5_at(self, epoch: int) -> float:
        """The mean test top-1 of the last ``min(5, epoch)`` epochs up to ``epoch``."""
        last = self.test_top1[max(0, self._check_epoch(epoch) - 5):epoch]
        return sum(last) / len(last)


@lru_cache(maxsize=1)
def _paper_curves() -> tuple[PaperCurve, ...]:
    try:
        path = data_file(PAPER_CURVES_FILE)
    except PackageDataError as err:
        raise PackageDataError(
            f"the paper's per-epoch curves are not installed: {err}. From a checkout, "
            "`python scripts/make_paper_curves.py PATH/paper_curves.json` writes "
            f"data/{PAPER_CURVES_FILE} from the full extraction of the authors' logs") from None
    with gzip.open(path, "rt", encoding="utf-8") as f:
        data = json.load(f)
    return tuple(PaperCurve(
        path=run["path"], repo=run["repo"], records=tuple(run["records"]), best=run["best"],
        avg5=run["avg5"], epoch=tuple(range(1, run["epochs"] + 1)),
        **{c: tuple(run[c]) for c in ("seconds", "train_loss", "train_top1", "test_loss",
                                      "test_top1")}) for run in data["runs"])


@lru_cache(maxsize=1)
def _curve_by_record() -> dict[int, PaperCurve]:
    return {i: curve for curve in _paper_curves() for i in curve.records}


def _record_indices(preset_or_row) -> list[int]:
    """The ``paper_results.json`` record indices of a preset (its name or object), a record
    index, a record, or a row of :func:`paper_table` / :func:`comparison_rows`."""
    from .experiments import Preset

    records = paper_records()
    if isinstance(preset_or_row, str):
        preset_or_row = get_preset(preset_or_row)
    if isinstance(preset_or_row, Preset):
        return [i for i, r in enumerate(records) if paper_key(r) == preset_or_row.spec]
    if isinstance(preset_or_row, int) and not isinstance(preset_or_row, bool):
        if not 0 <= preset_or_row < len(records):
            raise ValueError(f"preset_or_row: record index {preset_or_row} is not in "
                             f"0..{len(records) - 1}")
        return [preset_or_row]
    if isinstance(preset_or_row, dict):
        same = [i for i, r in enumerate(records) if r == preset_or_row]
        if not same and "table" in preset_or_row:  # a row of paper_table / comparison_rows
            row = preset_or_row
            same = [i for i, r in enumerate(records) if r["table"] == row["table"]
                    and all(r.get(k) == row[k] for k in SETTING_KEYS if k in row)
                    and all(r.get(k[6:]) == v for k, v in row.items()
                            if k.startswith("paper_") and k[6:] in r)]
        if len(same) == 1 or (same and all(records[i] == records[same[0]] for i in same)):
            return same[:1]
        raise ValueError(f"preset_or_row matches {len(same)} records of paper_results.json; "
                         "pass a record, a row of paper_table(), a preset or its name")
    raise ValueError("preset_or_row must be a preset name, a Preset, a record index, or a "
                     f"paper row (dict), got {type(preset_or_row).__name__}")


def paper_curves(preset_or_row) -> list[PaperCurve]:
    """Every run of the authors behind a preset or a paper row, in table order (a preset in
    several tables can have several distinct runs, e.g. the VGG-11 Conv2d baseline).

    Args:
        preset_or_row: a preset name, a :class:`~convnn.experiments.Preset`, an index into
            ``paper_results.json``'s records, a record, or a row of :func:`paper_table`.

    Returns:
        ``[]`` when the authors' logs have no run for it (the ImageNet rows, presets that
        reproduce no row).

    Raises:
        ValueError: an unknown preset, or a row that matches no record.
        PackageDataError: ``paper_curves.json.gz`` is not installed.
    """
    by_record = _curve_by_record()
    curves = [by_record[i] for i in _record_indices(preset_or_row) if i in by_record]
    return list(dict.fromkeys(curves))


def paper_curve(preset_or_row) -> PaperCurve:
    """The authors' run behind a paper row, or behind a preset's first row (see
    :func:`paper_curves` for every run of a preset).

    Example:
        >>> curve = paper_curve("vgg11-c10-conv2d")
        >>> curve.epochs, curve.test_top1[0], curve.best == max(curve.test_top1)
        (150, 51.0938, True)

    Raises:
        ValueError: no run of the authors backs it (with the reason).
    """
    curves = paper_curves(preset_or_row)
    if not curves:
        raise ValueError(f"the authors' logs have no per-epoch curve for {preset_or_row!r} "
                         "(ImageNet rows and presets that reproduce no paper row have none)")
    return curves[0]


# --------------------------------------------------------------------------- comparable runs
#: Training settings that make two runs the same protocol (``epochs`` may differ: runs are
#: compared at the same epoch; precision, compilation and evaluation batching are not part
#: of the protocol and are stated in the run's label instead).
PROTOCOL_KEYS = ("optimizer", "lr", "weight_decay", "betas", "momentum", "schedule",
                 "warmup_epochs", "step_size", "gamma", "batch_size", "grad_clip",
                 "label_smoothing", "seed", "augment", "resize")
#: The metric key of the paper's way of evaluating random candidates (redrawn at every
#: evaluation, method.md §6.6), logged beside the fixed-draw ``test_top1``.
RESAMPLED_KEY = "test_top1_resampled"


def protocol_differences(run: Run) -> dict:
    """``{key: (ours, preset's)}`` for the :data:`PROTOCOL_KEYS` where the run's training
    config differs from its preset's protocol (``{}``: same protocol)."""
    if not run.preset:
        raise ValueError(f"{run.path} is not a preset run: it has no protocol to compare")
    want = get_preset(run.preset).train_config().to_dict()
    have = run.config.get("train") or {}
    return {k: (have.get(k), want[k]) for k in PROTOCOL_KEYS if have.get(k) != want[k]}


def model_differences(run: Run) -> list[str]:
    """Model settings of the run that differ from today's preset (e.g. layer options the
    preset gained later), as ``"name: ours -> preset's"`` strings; ``[]`` if none."""
    want = get_preset(run.preset).model_config().to_dict()
    have = upgrade_model_dict(run.record.model_config or {})
    out = []
    for key, value in want.items():
        if key == "layer_options":
            old = have.get(key) or {}
            out += [f"{k}: {old.get(k)!r} -> {value.get(k)!r}" for k in
                    sorted(set(old) | set(value)) if old.get(k) != value.get(k)]
        elif have.get(key) != value:
            out.append(f"{key}: {have.get(key)!r} -> {value!r}")
    return out


def comparable_metric(run: Run) -> str:
    """The test top-1 key to compare with the paper: :data:`RESAMPLED_KEY` when the run
    logged it (random candidates, redrawn as the paper evaluated), else ``"test_top1"``."""
    if run.records and all(RESAMPLED_KEY in r for r in run.records):
        return RESAMPLED_KEY
    return "test_top1"


def comparable_reason(run: Run) -> str | None:
    """Why a run cannot be compared with the paper's curve, or ``None`` if it can: a smoke run,
    no preset, a preset without a paper curve, a subset, synthetic data, or another
    protocol."""
    if not run.preset:
        return "not a preset run"
    if run.smoke:
        return "a smoke run"
    if not run.records:
        return "no finished epoch"
    dataset = run.record.dataset
    if dataset.get("synthetic") or run.dataset_source.startswith("synthetic"):
        return "synthetic data"
    if dataset.get("train_per_class") or dataset.get("test_per_class"):
        return "a subset of the dataset"
    try:
        curves = paper_curves(run.preset)
    except ValueError:
        return f"unknown preset {run.preset}"
    if not curves:
        return "the authors' logs have no run of this preset"
    diff = protocol_differences(run)
    if diff:
        return "another protocol (" + ", ".join(f"{k}: {a!r} vs {b!r}"
                                                for k, (a, b) in diff.items()) + ")"
    return None


def comparable_runs(runs: Sequence[Run] | None = None) -> list[Run]:
    """The runs that can be compared with the paper epoch by epoch (see
    :func:`comparable_reason`), the most epochs first per preset."""
    runs = find_runs() if runs is None else list(runs)
    return sorted((r for r in runs if comparable_reason(r) is None),
                  key=lambda r: (r.preset, -r.epochs_done, str(r.path)))


def _our_at(run: Run, key: str, epoch: int) -> tuple[float, float]:
    values = [r[key] for r in run.records if r["epoch"] <= epoch]
    last = values[-5:]
    return max(values), sum(last) / len(last)


def comparable_rows(runs: Sequence[Run] | None = None) -> list[dict]:
    """Every paper row (CIFAR tables) that has a comparable run of ours, compared at the same
    epoch E: the epochs our run finished, capped at the paper's run length.

    Returns:
        One dict per row: ``table``, ``setting``, ``dataset_name``, ``preset``, ``epoch``
        (E), ``paper_best_at``, ``paper_last5_at`` (of the authors' run behind the row, over
        its epochs 1..E), ``paper_best``/``paper_avg5`` (its full length), ``paper_epochs``,
        ``ours_best_at``, ``ours_last5_at`` (same window, of ``ours_metric``),
        ``ours_metric`` (``"test_top1"`` or :data:`RESAMPLED_KEY`), ``gap_best``,
        ``gap_last5`` (ours minus paper), ``ours`` (device, epochs, data), ``ours_dataset``,
        ``ours_path``, ``model_notes`` (differences from today's preset) and ``source``.
    """
    by_preset: dict[str, Run] = {}
    for run in comparable_runs(runs):
        by_preset.setdefault(run.preset, run)
    by_record = _curve_by_record()
    rows = []
    for index, record in enumerate(paper_records()):
        preset = preset_for_record(record)
        run = by_preset.get(preset.name) if preset is not None else None
        if run is None or index not in by_record:
            continue
        curve = by_record[index]
        epoch = min(run.epochs_done, curve.epochs)
        key = comparable_metric(run)
        ours_best, ours_last5 = _our_at(run, key, epoch)
        rows.append({
            "table": record["table"], "setting": row_label(record),
            "dataset_name": dataset_title(record["dataset"]),
            "preset": preset.name, "epoch": epoch,
            "paper_best_at": curve.best_at(epoch), "paper_last5_at": curve.last5_at(epoch),
            "paper_best": record["best"], "paper_avg5": record["avg5"],
            "paper_epochs": curve.epochs,
            "ours_best_at": ours_best, "ours_last5_at": ours_last5, "ours_metric": key,
            "gap_best": ours_best - curve.best_at(epoch),
            "gap_last5": ours_last5 - curve.last5_at(epoch),
            "ours": f"{run.device}, {run.epochs_text}, {run.dataset}",
            "ours_dataset": run.dataset, "ours_path": str(run.path),
            "model_notes": "; ".join(model_differences(run)) or None,
            "source": f"{PAPER_CURVE_LABEL} vs ours",
        })
    return rows


def comparable_choice(runs: Sequence[Run] | None = None) -> list[Run]:
    """The one run per preset that the comparison uses (the most epochs, then the latest
    folder): the runs that :func:`comparable_rows`, :func:`plot_paper_overlay` and
    :func:`plot_gap` show."""
    chosen: dict[str, Run] = {}
    for run in comparable_runs(runs):
        chosen.setdefault(run.preset, run)
    return list(chosen.values())


def comparable_count(runs: Sequence[Run] | None = None) -> dict:
    """What the epoch-by-epoch comparison compares, counted as distinct runs:
    ``runs`` (ours, one per preset), ``presets``, ``author_runs`` (the distinct runs in the
    authors' per-epoch logs of those presets), ``rows`` (the paper's table rows they fill:
    the paper lists some runs in several tables), ``total`` (CIFAR rows with an authors'
    curve), ``shorter`` (our other comparable runs of the same presets, with fewer epochs,
    not shown) and ``epochs`` (the comparison epochs, sorted)."""
    runs = find_runs() if runs is None else list(runs)
    rows = comparable_rows(runs)
    chosen = comparable_choice(runs)
    total = sum(1 for i in range(len(paper_records())) if i in _curve_by_record())
    return {"runs": len(chosen), "presets": len({r.preset for r in chosen}),
            "author_runs": sum(len(paper_curves(r.preset)) for r in chosen),
            "rows": len(rows), "total": total,
            "shorter": len(comparable_runs(runs)) - len(chosen),
            "epochs": sorted({r["epoch"] for r in rows})}


def comparable_summary(runs: Sequence[Run] | None = None) -> list[dict]:
    """One row per comparable run of ours (:func:`comparable_choice`): the comparison epoch E,
    our last-5 mean at E (the metric in ``evaluation``), the authors' runs of the preset at E
    (their mean and, where they ran it more than once, the 95 % interval over their runs),
    and the gap."""
    from .stats import mean_interval

    out = []
    for run in comparable_choice(runs):
        curves = paper_curves(run.preset)
        key = comparable_metric(run)
        epoch = min(run.epochs_done, min(c.epochs for c in curves))
        _, ours = _our_at(run, key, epoch)
        authors = mean_interval([c.last5_at(epoch) for c in curves])
        out.append({
            "preset": run.preset, "epoch": epoch, "ours_last5_at": ours,
            "authors_last5_at": authors.mean, "authors_runs": authors.n,
            "authors_interval": (f"[{authors.low:.1f}, {authors.high:.1f}]"
                                 if authors.n > 1 else "one run"),
            "gap_last5": ours - authors.mean,
            "evaluation": (evaluation_label(key) if "random" in run.preset else "–"),
            "ours": f"{run.device}, {run.epochs_text}, {run.dataset}, {run_precision(run)}",
        })
    return out


def comparable_markdown(runs: Sequence[Run] | None = None) -> str:
    """The count (distinct runs) and one row per comparable run of ours, for a book page."""
    runs = find_runs() if runs is None else list(runs)
    count = comparable_count(runs)
    head = (f"**{count['runs']} run(s) of ours** ({count['presets']} preset(s)) are "
            f"comparable with **{count['author_runs']} distinct runs of the authors** of the "
            "same presets (same preset and protocol, compared at the same epoch). The paper "
            f"lists those runs in {count['rows']} of its {count['total']} CIFAR table rows, "
            "some of them in several tables.")
    if count["shorter"]:
        head += (f" {count['shorter']} shorter run(s) of ours of the same presets are listed "
                 "under *Our runs* and not compared.")
    rows = comparable_summary(runs)
    if not rows:
        return head
    columns = {"preset": "preset", "epoch": "E", "gap_last5": "gap",
               "ours_last5_at": "ours", "authors_last5_at": "authors (mean)",
               "authors_interval": "authors' 95 % interval", "evaluation": "evaluation"}
    legend = (f"Last-5 mean test top-1 at epoch E (the mean of epochs E−4 … E). *authors* = "
              f"{PAPER_CURVE_LABEL} ({PAPER_DATA}): the mean over their runs of the preset "
              "and its t interval where they ran it more than once; *ours* = committed logs "
              "in `data/results/`: " + "; ".join(f"`{r['preset']}`: {r['ours']}" for r in rows)
              + ". gap = ours minus the authors' mean. *evaluation*: how a run with random "
              "candidates was tested (redrawn candidates is the paper's way).")
    notes = {r.preset: "; ".join(model_differences(r)) for r in comparable_choice(runs)
             if model_differences(r)}
    if notes:
        legend += " Built before today's preset options: " + "; ".join(
            f"`{p}` ({n})" for p, n in notes.items()) + "."
    return f"{head}\n\n{markdown_table(rows, list(columns), columns)}\n\n{legend}"


def plot_paper_overlay(runs: Run | Sequence[Run] | None = None, *,
                       ncols: int = 1) -> ResultsFigure:
    """Our test top-1 over the authors' curve, one panel per comparable run
    (:func:`comparable_choice`: one per preset), in one column by default (it stays
    readable on a phone).

    Each panel: our test top-1 (solid; for a run that logged the redrawn evaluation, solid is
    the redrawn one and dotted the fixed draw), our train top-1 (dashed), every authors' run
    of the preset (thin, full length) and a vertical line at the comparison epoch E. The
    text box gives best ≤E and last-5 mean at E of both; the authors' side is the mean over
    their runs of the preset, as in :func:`comparable_summary`.

    Raises:
        ValueError: no comparable run (with the reason for each run given).
    """
    runs = find_runs() if runs is None else _as_runs(runs)
    chosen = comparable_choice(runs)
    if not chosen:
        reasons = "; ".join(f"{r.path.name}: {comparable_reason(r)}" for r in runs)
        raise ValueError(f"no run is comparable with the paper's curves ({reasons or 'none given'})")
    ncols = max(1, min(ncols, len(chosen)))
    nrows = math.ceil(len(chosen) / ncols)
    fig = ResultsFigure(figsize=(4.6 * ncols, 3.3 * nrows + 0.6), dpi=_DPI,
                        layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, run in zip(axes, chosen):
        curves = paper_curves(run.preset)
        key = comparable_metric(run)
        epoch = min(run.epochs_done, curves[0].epochs)
        for j, curve in enumerate(curves):
            ax.plot(curve.epoch, curve.test_top1, "-", lw=1, color="#7f7f7f",
                    alpha=0.9 if j == 0 else 0.45,
                    label=f"paper test ({len(curves)} runs)" if j == 0 and len(curves) > 1
                    else "paper test" if j == 0 else None)
        ax.plot(curves[0].epoch, curves[0].train_top1, "--", lw=0.8, color="#7f7f7f",
                alpha=0.6, label="paper train")
        epochs = run.series("epoch")
        ax.plot(epochs, run.series(key), "-o", ms=3, color="#d62728",
                label="ours test" + (" (redrawn candidates)" if key == RESAMPLED_KEY else ""))
        if key == RESAMPLED_KEY:
            ax.plot(epochs, run.series("test_top1"), ":", color="#d62728",
                    label="ours test (fixed draw)")
        ax.plot(epochs, run.series("train_top1"), "--", color="#d62728", alpha=0.7,
                label="ours train")
        ax.axvline(epoch, color="black", lw=0.8, ls=":")
        ours_best, ours_last5 = _our_at(run, key, epoch)
        # the authors' side as the comparison table gives it: the mean over their runs
        paper_best = sum(c.best_at(epoch) for c in curves) / len(curves)
        paper_last5 = sum(c.last5_at(epoch) for c in curves) / len(curves)
        paper_side = "paper" if len(curves) == 1 else f"paper, mean of {len(curves)} runs"
        ax.text(0.98, 0.04, f"at epoch {epoch}: best / last-5 mean\n"
                f"{paper_side}: {paper_best:.2f} / {paper_last5:.2f}\n"
                f"ours: {ours_best:.2f} / {ours_last5:.2f}",
                transform=ax.transAxes, ha="right", va="bottom", fontsize=8,
                family="monospace", bbox={"facecolor": "white", "alpha": 0.85, "lw": 0})
        shown = max(epoch * 4, 10)
        ax.set_xlim(0.5, min(curves[0].epochs, shown) + 0.5)
        ax.set(xlabel="epoch", ylabel="top-1 (%)",
               title=f"{run.preset}\nours: {run.device}, {run.epochs_text}, "
                     f"{run_precision(run)}")
        ax.title.set_fontsize(8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper left", frameon=False)
    for ax in axes[len(chosen):]:
        ax.set_visible(False)
    fig.suptitle(f"Ours over {PAPER_CURVE_LABEL} ({PAPER_DATA}); x axis cut at 4× our epochs",
                 fontsize=10)
    return fig


def plot_gap(runs: Run | Sequence[Run] | None = None) -> ResultsFigure:
    """Ours minus the authors' test top-1 against the epoch, one line per comparable run
    (against the authors' run of its preset's first row; random-candidate runs on their
    redrawn evaluation where logged). A grey band shows the spread between the authors' own
    runs of the same preset, where they ran it more than once.

    Raises:
        ValueError: no comparable run.
    """
    runs = find_runs() if runs is None else _as_runs(runs)
    chosen = comparable_choice(runs)
    if not chosen:
        raise ValueError("no run is comparable with the paper's curves")
    fig = ResultsFigure(figsize=(5.6, 3.6 + 0.22 * len(chosen)), dpi=_DPI,
                        layout="constrained")
    ax = fig.subplots()
    for i, run in enumerate(chosen):
        curves = paper_curves(run.preset)
        key = comparable_metric(run)
        points = [(r["epoch"], r[key] - curves[0].test_top1[r["epoch"] - 1])
                  for r in run.records if r["epoch"] <= curves[0].epochs]
        color = _COLORS[i % len(_COLORS)]
        ax.plot([e for e, _ in points], [g for _, g in points], "-o", ms=3, color=color,
                label=f"{run.preset} ({run_precision(run)}"
                      + (", redrawn candidates" if key == RESAMPLED_KEY else "") + ")")
        if len(curves) > 1:
            n = min(c.epochs for c in curves)
            n = min(n, max(e for e, _ in points))
            spread = [(min(c.test_top1[e] for c in curves) - curves[0].test_top1[e],
                       max(c.test_top1[e] for c in curves) - curves[0].test_top1[e])
                      for e in range(n)]
            ax.fill_between(range(1, n + 1), [a for a, _ in spread], [b for _, b in spread],
                            color=color, alpha=0.12, lw=0)
    ax.axhline(0, color="black", lw=0.8)
    ax.set(xlabel="epoch", ylabel="ours − paper, test top-1 (points)",
           title=f"Gap to {PAPER_CURVE_LABEL} ({PAPER_DATA}), epoch by epoch\n"
                 "shaded: spread of the authors' own runs of the same preset")
    ax.title.set_fontsize(9)
    ax.grid(alpha=0.3)
    ax.xaxis.get_major_locator().set_params(integer=True)
    fig.legend(*ax.get_legend_handles_labels(), loc="outside lower center", fontsize=7,
               frameon=False)
    return fig
