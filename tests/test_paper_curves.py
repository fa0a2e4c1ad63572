"""The authors' per-epoch curves shipped in the package, the comparison of our runs with
them at the same epoch, and the redrawn evaluation of random-candidate runs."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import pytest
import torch
from torch import nn

from convnn import ConvNN2d, package_data
from convnn import results as R
from convnn import train as train_mod
from convnn.data import synthetic_dataset
from convnn.experiments import paper_records
from convnn.train import TrainConfig, fit, has_random_candidates


def test_every_cifar_record_has_its_curve_with_the_same_best_and_avg5():
    records = paper_records()
    covered = 0
    for i, record in enumerate(records):
        curves = R.paper_curves(i)
        if record["table"] == R.IMAGENET_TABLE:
            assert curves == []
            continue
        (curve,) = curves
        covered += 1
        assert curve.epochs == record.get("epochs", 150) == len(curve.test_top1) \
            == len(curve.seconds)
        # the table's numbers are the curve's, to the table's 2 decimals
        assert round(max(curve.test_top1), 2) == pytest.approx(record["best"], abs=0.011)
        assert round(sum(curve.test_top1[-5:]) / 5, 2) == pytest.approx(record["avg5"],
                                                                         abs=0.011)
        assert curve.best_at(curve.epochs) == max(curve.test_top1)
    assert covered == len(records) - 10 == 454


def test_shipped_file_is_small_and_abridged():
    path = package_data.data_file(R.PAPER_CURVES_FILE)
    assert path.stat().st_size < 1.5e6
    with gzip.open(path, "rt", encoding="utf-8") as f:
        data = json.load(f)
    run = data["runs"][0]
    assert "args" not in run and "test_top5" not in run
    assert set(data["columns"]) == {"seconds", "train_loss", "train_top1", "test_loss",
                                    "test_top1"}
    assert "original CIFAR" in data["source"] or "torchvision" in data["source"]


def test_curve_lookup_by_preset_row_and_index():
    conv2d = R.paper_curves("vgg11-c10-conv2d")
    # the Conv2d baseline was run separately for table 6.1 (three times) and 6.2/6.5
    assert len(conv2d) == 4 and len({c.path for c in conv2d}) == 4
    assert R.paper_curve("vgg11-c10-conv2d") == conv2d[0]
    row = R.find_record("6.2", dataset="cifar10", layer="conv2d")
    assert R.paper_curve(row).tables == ("6.2", "6.5")
    table_row = next(r for r in R.paper_table("6.2") if r["dataset"] == "cifar10"
                     and r["layer"] == "conv2d")
    assert R.paper_curve(table_row) == R.paper_curve(row)
    curve = R.paper_curve(0)
    assert curve.test_top1[0] == 51.0938 and curve.epoch[:3] == (1, 2, 3)
    assert curve.best_at(3) == max(curve.test_top1[:3])
    assert curve.last5_at(2) == pytest.approx(sum(curve.test_top1[:2]) / 2)
    assert curve.last5_at(10) == pytest.approx(sum(curve.test_top1[5:10]) / 5)


@pytest.mark.parametrize("bad", ["vgg11-c10-nonsense", 10_000, -1, 3.5, {"table": "6.1"}])
def test_bad_lookups_say_what_is_wrong(bad):
    with pytest.raises(ValueError, match="preset|preset_or_row"):
        R.paper_curves(bad)


def test_no_curve_for_imagenet_or_lean_presets():
    with pytest.raises(ValueError, match="no per-epoch curve"):
        R.paper_curve("resnet50-in1k-conv2d")
    assert R.paper_curves("vit-tiny-cifar-c10-attention") == []
    with pytest.raises(ValueError, match="epoch must be"):
        R.paper_curve(0).best_at(151)


def test_missing_file_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setattr(package_data, "data_root", lambda: tmp_path)
    R._paper_curves.cache_clear()
    R._curve_by_record.cache_clear()
    try:
        with pytest.raises(package_data.PackageDataError, match="per-epoch curves"):
            R.paper_curve("vgg11-c10-conv2d")
    finally:
        R._paper_curves.cache_clear()
        R._curve_by_record.cache_clear()


# --------------------------------------------------------------------------- comparisons
def test_committed_runs_are_comparable_at_their_epoch():
    count = R.comparable_count()
    # 4 committed H200 runs (VGG-11 Conv2d / branching, 5 epochs; ViT-Tiny, 3 epochs)
    assert count["runs"] >= 4 and count["rows"] >= 15
    assert count["total"] == 454
    rows = {(r["table"], r["setting"]): r for r in R.comparable_rows()}
    conv2d = rows[("6.2", "Conv2d")]
    curve = R.paper_curve(R.find_record("6.2", dataset="cifar10", layer="conv2d"))
    if conv2d["epoch"] == 5:  # the committed 5-epoch run
        assert conv2d["paper_best_at"] == curve.best_at(5) == max(curve.test_top1[:5])
        assert conv2d["ours_best_at"] == 70.41
        assert conv2d["gap_last5"] == pytest.approx(64.474 - curve.last5_at(5))
    assert conv2d["ours_dataset"] == "CIFAR-10 (JPEG copy)"
    # counted as distinct runs: one of ours per preset, each author run once
    assert count["runs"] == count["presets"] == len(R.comparable_choice())
    assert count["author_runs"] >= count["runs"]
    text = R.comparable_markdown()
    assert text.startswith(f"**{count['runs']} run(s) of ours** ({count['presets']} preset(s))")
    assert f"**{count['author_runs']} distinct runs of the authors**" in text


def _copy_run(tmp_path: Path, name: str) -> Path:
    src = next(r.path for r in R.find_runs() if r.preset == name)
    dst = tmp_path / "results" / name
    shutil.copytree(src, dst)
    return dst


def test_smoke_subset_and_other_protocols_are_not_comparable(tmp_path):
    run_dir = _copy_run(tmp_path, "vgg11-c10-conv2d")
    assert R.comparable_reason(R.load_run(run_dir)) is None
    config = json.loads((run_dir / "config.json").read_text())
    for change, reason in (({"lr": 1e-3}, "another protocol"), ({"seed": 1}, "seed"),
                           ({"augment": True}, "augment")):
        edited = json.loads(json.dumps(config))
        edited["train"].update(change)
        (run_dir / "config.json").write_text(json.dumps(edited))
        assert reason in R.comparable_reason(R.load_run(run_dir))
    edited = json.loads(json.dumps(config))
    edited["extra"]["smoke"] = True
    (run_dir / "config.json").write_text(json.dumps(edited))
    assert R.comparable_reason(R.load_run(run_dir)) == "a smoke run"
    assert R.comparable_count(R.find_runs(tmp_path))["rows"] == 0
    with pytest.raises(ValueError, match="no run is comparable"):
        R.plot_paper_overlay(R.find_runs(tmp_path))


def test_resampled_key_is_what_is_compared(tmp_path):
    run_dir = _copy_run(tmp_path, "vit-tiny-c10-convnn-random-r32-k9")
    lines = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines()]
    for line in lines:
        line[R.RESAMPLED_KEY] = line["test_top1"] - 1.0  # a made-up redrawn evaluation
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(ln) + "\n" for ln in lines))
    run = R.load_run(run_dir)
    assert R.comparable_metric(run) == R.RESAMPLED_KEY
    (row, *_) = [r for r in R.comparable_rows([run]) if r["table"] == "6.6"]
    assert row["ours_best_at"] == pytest.approx(max(ln["test_top1"] for ln in lines) - 1.0)
    assert row["ours_metric"] == R.RESAMPLED_KEY
    assert "redrawn" in R.comparable_markdown([run])


def test_overlay_and_gap_plots_draw_every_comparable_run():
    runs = R.comparable_choice()  # one per preset: the most epochs
    assert {r.preset for r in runs} == {r.preset for r in R.comparable_runs()}
    fig = R.plot_paper_overlay(runs)
    panels = [ax for ax in fig.axes if ax.get_visible()]
    assert len(panels) == len(runs)
    for ax, run in zip(panels, runs):
        assert run.preset in ax.get_title()
        ours = [ln for ln in ax.get_lines() if ln.get_label().startswith("ours test")]
        assert list(ours[0].get_ydata()) == run.series(R.comparable_metric(run))
        # every authors' run is drawn (grey, solid); the legend names them once
        curves = R.paper_curves(run.preset)
        paper = [ln for ln in ax.get_lines()
                 if ln.get_color() == "#7f7f7f" and ln.get_linestyle() == "-"]
        assert len(paper) == len(curves)
        named = [ln.get_label() for ln in ax.get_lines() if ln.get_label().startswith("paper test")]
        assert named == ["paper test" + (f" ({len(curves)} runs)" if len(curves) > 1 else "")]
        # the box gives the authors' side as the comparison table does: their mean
        row = next(r for r in R.comparable_summary([run]) if r["preset"] == run.preset)
        box = "\n".join(t.get_text() for t in ax.texts)
        assert f"/ {row['authors_last5_at']:.2f}" in box, box
    gap = R.plot_gap(runs)
    lines = [ln for ln in gap.axes[0].get_lines() if ln.get_label().split(" ")[0] in
             {r.preset for r in runs}]
    assert len(lines) == len(runs)
    run = runs[0]
    curve = R.paper_curves(run.preset)[0]
    expected = [r["test_top1"] - curve.test_top1[r["epoch"] - 1] for r in run.records]
    assert list(lines[0].get_ydata()) == pytest.approx(expected)


# --------------------------------------------------------------------------- redrawn evaluation
def _random_model() -> nn.Module:
    return nn.Sequential(ConvNN2d(3, 8, k=5, sampling="random", candidates=3), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, 4))


def _all_model() -> nn.Module:
    return nn.Sequential(ConvNN2d(3, 8, k=5), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
                         nn.Flatten(), nn.Linear(32, 4))


def test_random_candidate_runs_log_the_redrawn_evaluation_too(tmp_path, monkeypatch):
    ds = synthetic_dataset(n_train=128, n_test=64, num_classes=4, image_size=8)
    cfg = TrainConfig(lr=3e-3, epochs=2, batch_size=32, amp="off")
    assert has_random_candidates(_random_model()) and not has_random_candidates(_all_model())
    fit(_random_model, ds, cfg, tmp_path / "a", progress=False, device="cpu")
    fit(_random_model, ds, cfg, tmp_path / "b", progress=False, device="cpu")
    fit(_all_model, ds, cfg, tmp_path / "c", progress=False, device="cpu")
    a, b, c = (R.load_run(tmp_path / n).records for n in "abc")
    assert all(R.RESAMPLED_KEY in r and "test_loss_resampled" in r for r in a)
    assert not any(R.RESAMPLED_KEY in r for r in c)
    for ra, rb in zip(a, b):  # seeded: both evaluations are reproducible
        assert ra["test_top1"] == rb["test_top1"]
        assert ra[R.RESAMPLED_KEY] == rb[R.RESAMPLED_KEY]
        assert ra["test_loss_resampled"] == rb["test_loss_resampled"]
    # the redrawn pass draws other candidates than the fixed one
    assert any(r["test_loss_resampled"] != r["test_loss"] for r in a)
    # and it leaves the training and the fixed-draw numbers alone: same as without the pass
    monkeypatch.setattr(train_mod, "_resampled_test", lambda *args: None)
    fit(_random_model, ds, cfg, tmp_path / "d", progress=False, device="cpu")
    d = R.load_run(tmp_path / "d").records
    assert not any(R.RESAMPLED_KEY in r for r in d)
    for key in ("train_loss", "train_top1", "test_loss", "test_top1"):
        assert [r[key] for r in a] == [r[key] for r in d]


def test_redrawn_pass_restores_fixed_sampling(tmp_path):
    ds = synthetic_dataset(n_train=64, n_test=32, num_classes=4, image_size=8)
    model = _random_model()
    fit(model, ds, TrainConfig(lr=1e-3, epochs=1, batch_size=32, amp="off"),
        tmp_path / "run", progress=False, device="cpu")
    assert model[0].eval_sampling == "fixed"
    model.eval()
    x = torch.randn(2, 3, 8, 8)
    assert torch.equal(model(x), model(x))
