"""convnn.results: run logs and the paper's numbers. Every run folder here is a fake written
into tmp_path (plus one real, tiny run of convnn.train.fit), so the tests never depend on
runs committed under data/results/."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
from torch import nn

from convnn import results as R
from convnn import stats
from convnn.data import synthetic_dataset
from convnn.experiments import get_preset
from convnn.train import TrainConfig, fit, summarize

JPEG_SOURCE = "cifar10 (JPEG copy at /data/cifar10-jpeg.tar.gz)"


def write_run(folder: Path, preset: str = "vgg11-c10-branching-r0.5", *, epochs: int = 3,
              planned: int | None = None, smoke: bool = False, device: str = "NVIDIA H100",
              source: str = JPEG_SOURCE, summary: bool = True, top1=None) -> Path:
    """A run folder in the format convnn.train.fit writes (config, metrics, summary)."""
    folder.mkdir(parents=True, exist_ok=True)
    planned = epochs if planned is None else planned
    config = {"train": {"epochs": planned, "lr": 1e-4},
              "extra": {"preset": preset, "smoke": smoke,
                        "dataset": {"name": "cifar10", "source": source}},
              "dataset": {"name": "cifar10", "source": source},
              "run": {"device": device}}
    (folder / "config.json").write_text(json.dumps(config))
    top1 = top1 or [10.0 * (e + 1) for e in range(epochs)]
    records = [{"epoch": e + 1, "train_loss": 2.0 / (e + 1), "train_top1": top1[e] + 5,
                "train_top5": 90.0, "test_loss": 2.1 / (e + 1), "test_top1": top1[e],
                "test_top5": 80.0, "lr": 1e-4, "epoch_seconds": 1.5,
                "images_per_second": 100.0, "peak_memory_bytes": 1, "device": device,
                "git_commit": "abc1234"} for e in range(epochs)]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    if summary and records:
        (folder / "summary.json").write_text(json.dumps(summarize(records, 10, planned)))
    return folder


# --------------------------------------------------------------------------- runs
def test_load_run_reads_everything(tmp_path):
    run = R.load_run(write_run(tmp_path / "r", epochs=7, planned=7,
                               top1=[10, 30, 20, 50, 40, 45, 44]))
    assert run.preset == "vgg11-c10-branching-r0.5"
    assert not run.smoke
    assert run.device == "NVIDIA H100"
    assert run.epochs_done == 7 and run.epochs_planned == 7 and run.finished
    assert run.protocol_epochs == 150  # the paper's protocol for this preset
    assert run.dataset_source == JPEG_SOURCE
    assert run.dataset == "CIFAR-10 (JPEG copy)"
    summary = summarize(run.records, 10, 7)
    assert run.best_test_top1 == summary["best_test_top1"] == 50
    assert run.best_epoch == summary["best_epoch"] == 4
    assert run.last5_mean_test_top1 == pytest.approx(summary["last5_mean_test_top1"])
    assert run.last5_mean_test_top1 == pytest.approx((20 + 50 + 40 + 45 + 44) / 5)
    assert run.summary["best_test_top1"] == 50
    assert run.series("epoch") == list(range(1, 8))
    assert run.epochs_text == "7/150 epochs"
    assert run.label == ("vgg11-c10-branching-r0.5: NVIDIA H100, 7/150 epochs, "
                         "CIFAR-10 (JPEG copy)")
    assert run.provenance is None and run.skipped_lines == 0


def test_unfinished_run_with_cut_off_line_and_no_summary(tmp_path):
    folder = write_run(tmp_path / "r", epochs=2, planned=150, summary=False)
    with open(folder / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 3, "test_to')  # the crash happened mid-line
    run = R.load_run(folder)
    assert run.epochs_done == 2 and run.skipped_lines == 1
    assert run.summary is None and not run.finished
    assert run.epochs_text == "2/150 epochs (unfinished: 150 planned)"
    assert run.best_test_top1 == 20.0


def test_run_without_any_epoch(tmp_path):
    folder = write_run(tmp_path / "r", epochs=0, planned=5, summary=False)
    run = R.load_run(folder)
    assert run.records == [] and run.epochs_done == 0
    assert run.best_test_top1 is None and run.last5_mean_test_top1 is None
    assert run.device == "NVIDIA H100"  # from config.json when no record says it
    with pytest.raises(ValueError, match="no finished epoch"):
        R.plot_curves(run)


def test_load_run_needs_config(tmp_path):
    (tmp_path / "metrics.jsonl").write_text("")
    with pytest.raises(FileNotFoundError, match="config.json"):
        R.load_run(tmp_path)


def test_smoke_run_label(tmp_path):
    source = JPEG_SOURCE + "; first 50 train and first 20 test images per class"
    run = R.load_run(write_run(tmp_path / "s", epochs=2, smoke=True, device="cpu",
                               source=source))
    assert run.smoke and run.device == "CPU"
    assert run.epochs_text == "2/2 epochs"  # a smoke run is measured against its own plan
    assert run.label.endswith("CIFAR-10 (JPEG copy), 50/20 train/test images per class, "
                              "smoke run")


def test_find_runs_recursive_with_provenance(tmp_path):
    root = tmp_path / "results"
    write_run(root / "session1" / "runs" / "a", "vgg11-c10-conv2d")
    write_run(root / "session1" / "runs" / "b")
    write_run(root / "other" / "c", "vit-tiny-c10-attention")
    write_run(root / "own" / "d")
    (root / "README.md").write_text(
        "# Committed run logs\n\nEvery number comes from a folder here.\n\n"
        "| folder | device | commit |\n|---|---|---|\n"
        "| `session1/` (a, b) | NVIDIA H100 | `abc1234` |\n\nNotes on `session1/`: short.\n")
    (root / "own" / "d" / "README.md").write_text(
        "# d\n\nA note.\n\n- Provenance: CPU laptop, 2026-11-26\n")
    runs = R.find_runs(root)
    assert [r.path.name for r in runs] == ["c", "d", "a", "b"]  # sorted by path
    assert runs[2].provenance == "folder: `session1/` (a, b); device: NVIDIA H100; " \
                                 "commit: `abc1234`"
    assert runs[3].provenance == runs[2].provenance
    assert runs[1].provenance == "Provenance: CPU laptop, 2026-11-26"
    assert runs[0].provenance is None  # the README names no folder of this run
    assert R.load_run(root / "session1" / "runs" / "a").provenance is None  # root: the folder
    assert R.find_runs(tmp_path / "missing") == []


def test_provenance_rows_keep_each_cell_whole(tmp_path):
    """A command holding "; " is not split into fragments, and the command (with its
    machine-specific placeholders) stays in the README, out of the book's provenance."""
    root = tmp_path / "results"
    write_run(root / "s1" / "a")
    write_run(root / "s1" / "b")
    (root / "README.md").write_text(
        "| folder / file | device | commit | command | date |\n|---|---|---|---|---|\n"
        "| `s1/` (a, b) | NVIDIA H200 (torch 2.11) | `abe79e6` | `x.py OUT_DIR --a ; then "
        "x.py <output folder> --b` | 2026-11-28 |\n")
    rows = R.provenance_rows(R.find_runs(root))
    assert rows == [{"session folder": "`s1/`", "device": "NVIDIA H200 (torch 2.11)",
                     "commit": "`abe79e6`", "date": "2026-11-28"}]
    for row in R.provenance_rows(R.find_runs()):  # the committed logs
        text = " ".join(row.values())
        assert row["commit"] and row["device"] and not re.search(r"<[^>]*>|OUT_DIR", text), row


def test_find_runs_skips_broken_config(tmp_path):
    write_run(tmp_path / "good")
    bad = write_run(tmp_path / "bad")
    (bad / "config.json").write_text("{not json")
    with pytest.warns(UserWarning, match="unreadable run folder"):
        runs = R.find_runs(tmp_path)
    assert [r.path.name for r in runs] == ["good"]


def test_real_train_output_is_readable(tmp_path):
    """The format is the trainer's: a real (tiny) run folder loads with the same numbers."""
    ds = synthetic_dataset(n_train=64, n_test=32, num_classes=4, image_size=8)

    def factory():
        return nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 4))

    extra = {"preset": "vgg11-c10-conv2d", "smoke": True,
             "dataset": {"name": ds.name, "source": ds.source}}
    summary = fit(factory, ds, TrainConfig(epochs=2, batch_size=32, lr=1e-2),
                  tmp_path / "run", progress=False, extra=extra, log=None)
    run = R.load_run(tmp_path / "run")
    assert run.epochs_done == 2 and run.finished and run.smoke
    assert run.device == "CPU"
    assert run.dataset == "synthetic data (not CIFAR)"
    assert run.best_test_top1 == summary["best_test_top1"]
    assert run.last5_mean_test_top1 == pytest.approx(summary["last5_mean_test_top1"])


@pytest.mark.parametrize(("source", "label"), [
    (JPEG_SOURCE, "CIFAR-10 (JPEG copy)"),
    ("cifar100 (torchvision files at /x/cifar-100-python)", "CIFAR-100"),
    ("synthetic (seed=0, 10 classes, 32x32)", "synthetic data (not CIFAR)"),
    (None, "unknown data"),
])
def test_dataset_label(source, label):
    assert R.dataset_label(source) == label


def test_load_bench(tmp_path):
    assert R.load_bench(tmp_path / "none") == []
    (tmp_path / "h100.json").write_text(json.dumps({"environment": {"device_name": "H100"},
                                                    "layers": [{"case": "x"}]}))
    (tmp_path / "notes.json").write_text(json.dumps({"something": "else"}))
    found = R.load_bench(tmp_path)
    assert [p.name for p, _ in found] == ["h100.json"]


# --------------------------------------------------------------------------- paper rows
def test_paper_table_labels_every_number_as_the_papers():
    rows = R.paper_table("6.6")
    assert len(rows) == 14
    for row in rows:
        assert row["source"] == R.PAPER_LABEL
        assert "best" not in row and "avg5" not in row
        numbers = {k for k, v in row.items() if isinstance(v, float) and k not in ("lr",)
                   and k not in R.SETTING_KEYS}
        assert all(k.startswith("paper_") for k in numbers), numbers
    attention = next(r for r in rows if r["dataset"] == "cifar10" and r["layer"] == "attention")
    assert (attention["paper_best"], attention["paper_avg5"]) == (77.64, 77.12)
    assert attention["setting"] == "Attention"


def test_paper_table_rejects_unknown_table():
    with pytest.raises(ValueError, match="table must be one of"):
        R.paper_table("6.11")


def test_every_cifar_table_has_rows_and_labels():
    for table in R.TABLES:
        rows = R.paper_table(table)
        assert rows, table
        labels = [(r["dataset"], r["setting"]) for r in rows]
        if table != "6.1":  # 6.1 lists Conv2d once per similarity/aggregation group
            assert len(set(labels)) == len(labels), table


def test_headline_claims_are_method_md_numbers():
    rows = {(r["claim"], r["dataset"]): r for r in R.headline_rows()}
    expect = {
        ("VGG-11: branching λ=0.5 vs Conv2d", "CIFAR-10"): (82.79, 80.80),
        ("VGG-11: branching λ=0.625 vs Conv2d", "CIFAR-100"): (50.21, 45.71),
        ("ViT-Tiny: ConvNN-Attn random m=32 vs attention", "CIFAR-10"):
            (80.27, 77.64),
        ("ViT-Tiny: ConvNN-Attn random m=32 vs attention", "CIFAR-100"):
            (54.05, 50.19),
        ("ViT-Tiny: ConvNN-Attn all (dense) vs attention", "CIFAR-10"):
            (74.39, 77.64),
        ("ViT-Tiny: ConvNN-Attn all (dense) vs attention", "CIFAR-100"):
            (49.17, 50.19),
        ("VGG-11: pure ConvNN vs Conv2d", "CIFAR-10"): (55.31, 80.80),
        ("VGG-11: pure ConvNN vs Conv2d", "CIFAR-100"): (31.14, 45.71),
    }
    assert set(rows) == set(expect)
    for key, (ours, base) in expect.items():
        row = rows[key]
        assert (row["paper_best"], row["paper_baseline_best"]) == (ours, base)
        assert row["paper_best_gain"] == pytest.approx(ours - base, abs=0.005)
        assert row["source"] == R.PAPER_LABEL


def test_find_record_needs_exactly_one():
    assert R.find_record("6.2", dataset="cifar10", layer="conv2d")["best"] == 80.97
    with pytest.raises(ValueError, match="3 records"):
        R.find_record("6.1", dataset="cifar10", layer="conv2d")


def test_paper_repeats_show_run_to_run_spread():
    rows = {r["preset"]: r for r in R.paper_repeats()}
    conv = rows["vgg11-c10-conv2d"]
    assert (conv["paper_best_min"], conv["paper_best_max"]) == (80.8, 81.45)
    assert conv["paper_best_spread"] == pytest.approx(0.65)
    assert rows["vgg11-c10-branching-r0.5"]["paper_best_spread"] == pytest.approx(1.09)
    assert "vit-tiny-c10-attention" not in rows  # one run, repeated in several tables


# --------------------------------------------------------------------------- comparisons
def test_comparison_without_runs_says_no_run_yet():
    rows = R.comparison_rows("6.2", runs=[])
    assert len(rows) == 6
    for row in rows:
        assert row["ours"] == R.NO_RUN and row["ours_best"] is None and row["ours_runs"] == 0
        assert row["preset"] == get_preset(row["preset"]).name
        assert row["source"] == R.PAPER_LABEL


def test_comparison_uses_matching_run_and_ignores_smoke(tmp_path):
    gpu = R.load_run(write_run(tmp_path / "gpu", epochs=30, planned=30,
                               top1=[50.0 + e for e in range(30)]))
    short = R.load_run(write_run(tmp_path / "short", epochs=5, planned=30))
    smoke = R.load_run(write_run(tmp_path / "smoke", "vgg11-c10-conv2d", epochs=2,
                                 smoke=True, device="cpu"))
    rows = R.comparison_rows("6.2", runs=[short, gpu, smoke])
    by_preset = {r["preset"]: r for r in rows}
    ours = by_preset["vgg11-c10-branching-r0.5"]
    assert ours["ours_runs"] == 2 and ours["ours_path"] == str(gpu.path)  # most epochs
    # 30 of 150 epochs: no number of ours beside the paper's 150-epoch finals
    assert ours["ours_best"] is None and ours["ours_last5"] is None
    assert (ours["ours_epochs"], ours["ours_protocol_epochs"]) == (30, 150)
    assert ours["ours"] == (f"NVIDIA H100, 30/150 epochs, CIFAR-10 (JPEG copy), float32 "
                            f"({R.SHORT_RUN})")
    assert ours["paper_best"] == 81.7  # the paper's number is untouched
    assert by_preset["vgg11-c10-conv2d"]["ours"] == R.NO_RUN  # smoke runs do not count
    with_smoke = {r["preset"]: r for r in R.comparison_rows("6.2", runs=[smoke],
                                                            include_smoke=True)}
    assert "smoke run" in with_smoke["vgg11-c10-conv2d"]["ours"]


def test_a_full_length_run_stands_beside_the_paper_with_its_evaluation(tmp_path):
    top1 = [40.0 + 0.2 * e for e in range(150)]
    run = R.load_run(write_run(tmp_path / "full", "vit-tiny-c10-convnn-random-r32-k9",
                               epochs=150, top1=top1))
    assert R.full_length(run)
    ours = {r["preset"]: r for r in R.comparison_rows("6.6", runs=[run])}[
        "vit-tiny-c10-convnn-random-r32-k9"]
    assert ours["ours_best"] == pytest.approx(top1[-1])
    assert ours["ours_last5"] == pytest.approx(sum(top1[-5:]) / 5)
    assert ours["ours"].endswith("float32, fixed draw")  # no redrawn evaluation logged


def test_run_precision_reads_amp_and_device(tmp_path):
    run = R.load_run(write_run(tmp_path / "a"))
    assert R.run_precision(run) == "float32"
    for amp, device, want in (("auto", "NVIDIA H200", "bf16 autocast"),
                              ("bf16", "NVIDIA H200", "bf16 autocast"),
                              ("auto", "cpu", "float32"), ("off", "NVIDIA H200", "float32")):
        run.config["train"]["amp"] = amp
        run.config["run"]["device"] = device
        for r in run.records:
            r["device"] = device
        assert R.run_precision(run) == want, (amp, device)
    run.summary = {"precision": "fp32"}
    assert R.run_precision(run) == "fp32"


def test_comparable_count_counts_distinct_runs(tmp_path):
    runs = []
    for name, epochs in (("a", 7), ("b", 5)):
        folder = write_run(tmp_path / name / "vgg11-c10-conv2d", "vgg11-c10-conv2d",
                           epochs=epochs, top1=[50.0 + e for e in range(epochs)])
        config = json.loads((folder / "config.json").read_text())
        config["train"] = get_preset("vgg11-c10-conv2d").train_config(epochs=epochs).to_dict()
        (folder / "config.json").write_text(json.dumps(config))
        runs.append(R.load_run(folder))
    a, b = runs
    assert R.comparable_reason(a) is None
    count = R.comparable_count([a, b])
    assert count["runs"] == 1 and count["shorter"] == 1
    # the authors ran Conv2d VGG-11 CIFAR-10 four times (tables 6.1, 6.2, 6.5)
    assert count["author_runs"] == len(R.paper_curves("vgg11-c10-conv2d")) == 4
    assert count["rows"] > count["author_runs"]  # the paper lists some runs in several rows
    text = R.comparable_markdown([a, b])
    assert "**1 run(s) of ours**" in text and "**4 distinct runs of the authors**" in text
    summary = R.comparable_summary([a, b])
    assert len(summary) == 1 and summary[0]["authors_runs"] == 4
    assert summary[0]["gap_last5"] == pytest.approx(
        summary[0]["ours_last5_at"] - summary[0]["authors_last5_at"])
    fig = R.plot_paper_overlay([a, b])
    assert len([ax for ax in fig.axes if ax.get_visible()]) == 1
    labels = [t.get_text() for ax in fig.axes for t in ax.get_legend().texts]
    assert len(labels) == len(set(labels))  # no repeated legend entry
    gap = R.plot_gap([a, b])
    assert len(gap.legends[0].texts) == 1


def test_pooled_headline_pools_the_authors_repeats():
    rows = {(r["claim"], r["dataset"]): r for r in R.pooled_headline_rows()}
    vgg = rows[("VGG-11: branching λ=0.5 vs Conv2d", "CIFAR-10")]
    assert vgg["runs"] == "2 vs 4"
    assert vgg["pooled_baseline_best"] == pytest.approx((80.80 + 80.93 + 80.97 + 81.45) / 4,
                                                        abs=0.01)
    assert vgg["pooled_best_gain"] == pytest.approx(1.21, abs=0.01)  # not the table's 1.99
    assert "df" in vgg["pooled_best_interval"]
    vit = rows[("ViT-Tiny: ConvNN-Attn random m=32 vs attention", "CIFAR-10")]
    assert "no interval" in vit["pooled_best_interval"]  # attention ran once


def test_comparison_of_every_table_runs():
    for table in (*R.TABLES, R.IMAGENET_TABLE):
        rows = R.comparison_rows(table, runs=[])
        assert len(rows) == len(R.paper_table(table))
        assert all(r["preset"] for r in rows)


def test_imagenet_comparison_shows_top1_and_exact_parameter_counts():
    text = R.comparison_markdown(R.IMAGENET_TABLE, [])
    assert "| ResNet-50 | Branching, random m=32 | 78.98 | 26.474 |" in text
    assert "| ViT-Base | Attention | 80.94 | 86.379 |" in text
    assert "our own training protocol" in text
    assert all(r["source"] == R.PAPER_LABEL for r in R.paper_table("10"))
    assert all("best" not in r for r in R.paper_repeats() if "10" in r["tables"])


# --------------------------------------------------------------------------- tables
def test_markdown_table():
    rows = [{"a": 1.23456, "b": None, "c": "x|y", "d": 130015690},
            {"a": math.nan, "b": True, "c": "z", "d": 5}]
    text = R.markdown_table(rows, ["a", "b", "c", "d"], {"a": "A (%)"})
    assert text.splitlines() == [
        "| A (%) | b | c | d |",
        "|---|---|---|---|",
        "| 1.23 | – | x\\|y | 130,015,690 |",
        "| – | yes | z | 5 |",
    ]
    assert R.markdown_table([]) == "(no rows)"
    assert R.markdown_table([{"x": 1, "nested": {"y": 2}}]).splitlines()[0] == "| x |"
    with pytest.raises(ValueError, match="headers has 1 titles"):
        R.markdown_table(rows, ["a", "b"], ["only one"])


# --------------------------------------------------------------------------- figures
def test_plot_curves(tmp_path):
    a = R.load_run(write_run(tmp_path / "a", epochs=4))
    b = R.load_run(write_run(tmp_path / "b", "vgg11-c10-conv2d", epochs=3))
    fig = R.plot_curves([a, b], title="two runs")
    acc, loss = fig.axes
    assert len(acc.lines) == 4 and len(loss.lines) == 4  # test + train per run
    assert list(acc.lines[0].get_ydata()) == a.series("test_top1")
    assert fig.legends and a.label in [t.get_text() for t in fig.legends[0].texts]
    assert fig._repr_png_()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(R.plot_curves(a).axes) == 2  # a single run is fine
    with pytest.raises(ValueError, match="empty"):
        R.plot_curves([])


@pytest.mark.parametrize("table", sorted(R.SWEEPS))
def test_plot_paper_sweep(table):
    fig = R.plot_paper_sweep(table)
    datasets = {r["dataset"] for r in R.paper_table(table)}
    assert len(fig.axes) == len(datasets)
    assert R.PAPER_LABEL in fig.get_suptitle()
    assert all(ax.lines for ax in fig.axes)


def test_plot_paper_sweep_values_and_overlay(tmp_path):
    short = R.load_run(write_run(tmp_path / "short", epochs=6, top1=[60, 70, 75, 74, 76, 73]))
    assert not [ln for ln in R.plot_paper_sweep("6.1", runs=[short]).axes[0].lines
                if ln.get_marker() == "*"]  # a 6-epoch run is no point on a 150-epoch axis
    run = R.load_run(write_run(tmp_path / "gpu", epochs=150,
                               top1=[60.0] * 145 + [70, 75, 74, 76, 73]))
    fig = R.plot_paper_sweep("6.1", runs=[run])
    c10 = fig.axes[0]
    first = c10.lines[0]  # sim Col, agg Col: Conv2d (λ = 0) ... ConvNN (λ = 1)
    assert first.get_xdata()[0] == 0.0 and first.get_xdata()[-1] == 1.0
    assert first.get_ydata()[0] == 80.8 and first.get_ydata()[-1] == 55.31
    stars = [ln for ln in c10.lines if ln.get_marker() == "*"]
    assert len(stars) == 1
    assert (stars[0].get_xdata()[0], stars[0].get_ydata()[0]) == (0.5, 76)
    assert not [ln for ln in fig.axes[1].lines if ln.get_marker() == "*"]  # CIFAR-100
    assert "ours (NVIDIA H100, 150/150 epochs, CIFAR-10 (JPEG copy), float32)" \
        in fig.get_suptitle()
    assert "ours" not in R.plot_paper_sweep("6.1").get_suptitle()


def test_paper_points_carry_their_sampling_error(tmp_path):
    """Every best point of the paper has a bar: the 95 % Wilson interval on 10,000 images."""
    from matplotlib.collections import LineCollection

    fig = R.plot_paper_sweep("6.1")
    c10 = fig.axes[0]
    bars = [c for c in c10.collections if isinstance(c, LineCollection)]
    first = c10.lines[0]
    segments = bars[0].get_segments()
    assert len(segments) == len(first.get_xdata())
    (x0, low), (_, high) = segments[0]
    expected = stats.sampling_interval(80.8, 10_000)  # Conv2d at λ = 0
    assert x0 == 0.0 and low == pytest.approx(expected.low) and high == pytest.approx(
        expected.high)
    assert 0.7 < high - 80.8 < 0.9  # about ±0.8 points on 10,000 images
    below, above = R.sampling_error_bars([80.8, math.nan], "cifar10")
    assert below[1] == above[1] == 0.0 and below[0] == pytest.approx(80.8 - expected.low)
    with pytest.raises(ValueError, match="test_images"):
        R.sampling_error_bars([50.0], "no-such-dataset")
    dots = R.plot_paper_bars("6.2").axes[0]
    assert [c for c in dots.collections if isinstance(c, LineCollection)]


def test_plot_paper_sweep_needs_x_for_tables_without_sweep():
    with pytest.raises(ValueError, match="no default sweep"):
        R.plot_paper_sweep("6.2")
    fig = R.plot_paper_sweep("6.9", x="k", group=("conv_type",))
    assert len(fig.axes) == 2


@pytest.mark.parametrize("table", ["6.2", "6.6", "6.9", "6.10"])
def test_plot_paper_bars(table, tmp_path):
    fig = R.plot_paper_bars(table)
    labels = {r["setting"] for r in R.paper_table(table)}
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] != []
    assert {t.get_text() for t in fig.axes[0].get_yticklabels()} == labels
    assert fig._repr_png_()[:4] == b"\x89PNG"


def test_comparison_markdown(tmp_path):
    short = R.comparison_markdown("6.2", runs=[])
    assert short.count("no run yet") == 6 and "<details>" not in short
    assert R.PAPER_LABEL in short
    run = R.load_run(write_run(tmp_path / "gpu", "vgg11-c10-conv2d", epochs=5))
    long = R.comparison_markdown("6.1", runs=[run])
    assert "Rows of table 6.1 with a committed run of ours (3 of 54)" in long
    assert "<details><summary>All 54 rows of table 6.1</summary>" in long
    assert "NVIDIA H100, 5/150 epochs, CIFAR-10 (JPEG copy)" in long
    assert "Our runs of 5/150 epochs stopped before the paper's protocol ended" in long
    assert "stopped before" not in short
    assert "A run of 5 epochs has no more than 5 epochs: its *ours last-5 mean* is the mean " \
        "over all the epochs it ran." in long
    assert "all the epochs it ran" not in short
    assert "No committed run of ours for any of the 112 rows" in R.comparison_markdown(
        "6.3", runs=[run])
