"""Presets, the runner and the CLI: every paper row is one command away."""

import dataclasses
import json
import os

import pytest
import torch
import torch.nn.functional as F

from convnn import experiments as E
from convnn.__main__ import main as cli
from convnn.layers import PAPER_ATTENTION
from convnn.models import ModelConfig, build_model, count_parameters


def test_every_paper_row_has_a_preset():
    assert not E.UNSUPPORTED_TABLES
    for record in E.paper_records():
        preset = E.preset_for_record(record)
        assert preset is not None, record
        assert record in preset.paper_rows()
    assert {r["table"] for r in E.paper_records()} >= {"6.1", "6.10", "10"}
    covered = {E.preset_for_record(r).name for r in E.paper_records()}
    lean = {name for name, p in E.PRESETS.items() if p.description.startswith("LEAN VARIANT")}
    assert len(lean) == len(E.NON_PAPER_PRESETS) == 2
    laptop = {name for name, p in E.PRESETS.items() if p.description.startswith("LAPTOP STUDY")}
    assert len(laptop) == len(E.LAPTOP_PRESETS) == 6
    assert covered == set(E.PRESETS) - lean - laptop, \
        "every preset but the labelled lean variants and the laptop study reproduces a paper row"


def test_lean_vit_presets_are_cifar_native_labelled_and_rowless():
    for name in ("vit-tiny-cifar-c10-attention", "vit-tiny-cifar-c10-convnn-random-r32-k9"):
        preset = E.get_preset(name)
        assert preset.paper_rows() == []
        assert "not in the paper" in preset.description
        model = preset.model_config()
        assert model.name == "vit_tiny_cifar"
        assert preset.train_config().resize is None  # 32 px, not upscaled to 224
        assert preset.train_config().epochs == 150
    random = E.get_preset("vit-tiny-cifar-c10-convnn-random-r32-k9").model_config()
    paper = E.get_preset("vit-tiny-c10-convnn-random-r32-k9").model_config()
    assert random.layer_options == paper.layer_options  # same layer, smaller input


def test_imagenet_presets_match_the_papers_parameter_counts():
    """Table "10" prints params in M truncated to 3 decimals. One row disagrees with its own
    label: ViT-Base ConvNN spatial r=128 (k=9) prints 86.391, the count of the k=16 model."""
    presets = E.list_presets("in1k")
    assert len(presets) == 10
    for preset in presets:
        count = count_parameters(build_model(preset.model_config(), device="meta"))
        (row,) = preset.paper_rows()
        truncated = int(count // 1000) / 1000
        if preset.name == "vit-base-in1k-convnn-spatial-r128-k9":
            k9 = E.get_preset("vit-base-in1k-convnn-all-k9").paper_rows()[0]["params_m"]
            assert (truncated, row["params_m"]) == (k9, 86.391)
        else:
            assert truncated == row["params_m"], preset.name
    resnet = E.get_preset("resnet50-in1k-branching-r0.5-random-r32-k9").model_config()
    assert resnet.layer_options["candidate_layout"] == "count"
    assert E.get_preset("vit-base-in1k-attention").model_config().num_heads == 12
    t = E.get_preset("resnet50-in1k-conv2d").train_config()
    assert (t.optimizer, t.augment, t.resize) == ("sgd", True, None)


def test_example_names_and_their_rows():
    p = E.get_preset("vgg11-c10-branching-r0.5")
    assert {r["table"] for r in p.paper_rows()} >= {"6.2"}
    cfg = p.model_config()
    assert (cfg.name, cfg.layer, cfg.ratio, cfg.head) == ("vgg11", "branching", 0.5, "paper")
    vit = E.get_preset("vit-tiny-c100-convnn-random-r32-k9")
    assert vit.model_config().layer_options == {"k": 9, "aggregation": "depthwise",
                                                "sampling": "random", "candidates": 32,
                                                **PAPER_ATTENTION.changes()}
    t = vit.train_config()
    assert (t.lr, t.weight_decay, t.epochs, t.batch_size, t.grad_clip, t.seed, t.resize) == \
        (1e-4, 0.01, 150, 256, 1.0, 42, 224)
    assert E.get_preset("vgg11-c10-branching-r0.5-k9-ks3-e100-seed0").train_config().seed == 0


def test_unknown_preset_suggests_close_names():
    with pytest.raises(ValueError, match="did you mean"):
        E.get_preset("vgg11-c10-branching-r0.55")


def test_full_size_parameter_counts_match_the_paper_where_printed():
    checked = 0
    for preset in E.PRESETS.values():
        counts = {r["params"] for r in preset.paper_rows() if "params" in r}
        if len(counts) != 1 or preset.family != "vit":
            continue  # VGG counts: tests/test_models.py (one build per distinct model)
        model = build_model(preset.model_config(), device="meta")
        assert count_parameters(model) == counts.pop(), preset.name
        checked += 1
    assert checked >= 4


def test_every_preset_builds_and_trains_one_step_at_reduced_size():
    seen = {}
    for preset in E.PRESETS.values():
        model_cfg, train_cfg = E.reduced(preset)
        key = json.dumps(model_cfg.to_dict(), sort_keys=True)
        seen.setdefault(key, (preset.name, model_cfg, train_cfg))
    assert len(seen) > 50
    for name, model_cfg, _ in seen.values():
        torch.manual_seed(0)
        model = build_model(model_cfg)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        size = model_cfg.image_size or 32
        x = torch.randn(2, 3, size, size)
        loss = F.cross_entropy(model(x), torch.tensor([0, 1]))
        loss.backward()
        optimizer.step()
        assert torch.isfinite(loss), name


def test_cli_lists_and_filters_presets(capsys):
    assert cli(["presets", "vit", "c100", "random-r32"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out and all("vit-tiny-c100" in line and "random-r32" in line for line in out)
    assert cli(["presets", "--table", "6.9", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 12 and all("6.9" in r["paper_tables"] for r in rows)


def test_cli_verbose_listing_shows_the_papers_numbers(capsys):
    assert cli(["presets", "--table", "10", "-v"]) == 0
    out = capsys.readouterr().out
    assert "resnet50-in1k-branching-r0.5-all-k9" in out and "10: 79.42" in out
    assert cli(["presets", "vgg11-c10-conv2d", "-v"]) == 0
    assert "6.2: 80.97" in capsys.readouterr().out


def test_cli_unknown_preset_is_a_clear_error(capsys):
    assert cli(["train", "--preset", "no-such-preset", "--smoke"]) == 2
    assert "unknown preset 'no-such-preset'" in capsys.readouterr().err


def test_cli_smoke_train_resume_and_eval(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("CONVNN_CACHE_DIR", str(tmp_path / "cache"))
    data = os.environ.get("CONVNN_DATA_DIR")
    out = tmp_path / "run"
    args = ["train", "--preset", "vit-tiny-c10-convnn-random-r32-k9", "--smoke", "--out",
            str(out), "--no-download", "--epochs", "1"]
    if data is None:
        monkeypatch.delenv("CONVNN_DATA_DIR", raising=False)
        args.insert(3, "--synthetic")  # asked for: no data and no download is an error
    assert cli(args) == 0
    first = capsys.readouterr().out
    assert "best test top-1" in first
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 1
    config = json.loads((out / "config.json").read_text())
    assert config["extra"]["preset"] == "vit-tiny-c10-convnn-random-r32-k9"
    if data is None:
        assert "SYNTHETIC" in first and config["extra"]["dataset"]["name"] == "synthetic"
    else:
        assert config["extra"]["dataset"]["name"] == "cifar10"
    assert cli(args) == 2  # the folder holds a run: refuse to overwrite it
    assert "resume" in capsys.readouterr().err
    assert cli([*args[:-1], "2", "--resume"]) == 0  # continue to 2 epochs
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2
    summary = json.loads((out / "summary.json").read_text())
    assert summary["epochs_completed"] == 2
    capsys.readouterr()
    if data is not None:
        assert cli(["eval", "--run", str(out)]) == 0
        evaluated = capsys.readouterr().out
        last = json.loads(
            (out / "metrics.jsonl").read_text().splitlines()[-1])
        assert f"top1={last['test_top1']:.4g}" in evaluated


def test_vgg11_learns_cifar10_on_cpu(tmp_path):
    """One epoch of VGG-11 (lean head) on 5,000 CIFAR-10 images: clearly above chance."""
    from convnn.data import DatasetNotFoundError, load_dataset
    from convnn.train import TrainConfig, fit

    try:
        ds = load_dataset("cifar10", download=False, train_per_class=500, test_per_class=100)
    except DatasetNotFoundError as err:
        print(f"skipping: no CIFAR-10 copy ({str(err).splitlines()[0]})")
        pytest.skip("no CIFAR-10 copy: set CONVNN_DATA_DIR to run the learning test")
    config = TrainConfig(epochs=1, batch_size=64, lr=1e-4, seed=0)  # the paper's lr
    summary = fit(lambda: build_model(ModelConfig(name="vgg11", layer="conv2d", head="lean")),
                  ds, config, tmp_path / "run", progress=False, log=None)
    assert ds.test_images.shape[0] == 1000
    assert summary["final"]["test_top1"] >= 30.0, summary


def test_reduced_presets_keep_the_layer_options():
    preset = E.get_preset("vgg11-c10-branching-r0.5-spatial-r8")
    model_cfg, train_cfg = E.reduced(preset)
    assert model_cfg.layer_options["sampling"] == "spatial"
    assert model_cfg.head == "lean" and train_cfg.resize is None
    assert dataclasses.asdict(train_cfg)["lr"] == 1e-4


def test_cli_imagenet_preset_smoke_train_resume_and_eval(tmp_path, capsys, monkeypatch):
    """No ImageNet here: the smoke run streams a labelled synthetic tree through the same
    loader, resumes, and evaluates from the run folder."""
    monkeypatch.setenv("CONVNN_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("CONVNN_IMAGENET_DIR", raising=False)
    monkeypatch.setenv("CONVNN_DATA_DIR", str(tmp_path / "nothing"))
    out = tmp_path / "run"
    args = ["train", "--preset", "resnet50-in1k-branching-r0.5-random-r32-k9", "--smoke",
            "--out", str(out), "--workers", "0", "--epochs", "1"]
    assert cli(args) == 0
    first = capsys.readouterr().out
    assert "SYNTHETIC" in first
    config = json.loads((out / "config.json").read_text())
    info = config["extra"]["dataset"]
    assert info["synthetic"] and info["source"].startswith("SYNTHETIC")
    assert config["train"]["optimizer"] == "sgd" and config["train"]["augment"]
    assert config["train"]["lr"] == 0.1 * 64 / 256  # the recipe's lr, scaled to batch 64
    assert config["extra"]["model"]["name"] == "resnet50"
    assert cli([*args[:-1], "2", "--resume"]) == 0
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2
    capsys.readouterr()
    assert cli(["eval", "--run", str(out), "--workers", "1"]) == 0
    last = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert f"top1={last['test_top1']:.4g}" in capsys.readouterr().out
    assert cli(["train", "--preset", "vgg11-c10-conv2d", "--smoke", "--workers", "2"]) == 2
    assert "applies to streamed datasets (ImageNet) only" in capsys.readouterr().err


def test_full_imagenet_run_without_imagenet_says_where_to_put_it(tmp_path, monkeypatch):
    from convnn.data import DatasetNotFoundError
    from convnn.runner import run_preset

    monkeypatch.setenv("CONVNN_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("CONVNN_IMAGENET_DIR", raising=False)
    monkeypatch.delenv("CONVNN_DATA_DIR", raising=False)
    with pytest.raises(DatasetNotFoundError, match="image-net.org") as err:
        run_preset("vit-base-in1k-attention", smoke=False, out_dir=tmp_path / "run",
                   device="cpu", log=None)
    assert "CONVNN_IMAGENET_DIR" in str(err.value)
    assert not (tmp_path / "run").exists()


def test_register_preset_adds_a_non_paper_experiment_in_one_place(monkeypatch):
    """The issue's demonstration: a new experiment is one value, registered once, and the
    runner, the listing and the reduced (smoke) version all know it."""
    from convnn import runner
    from convnn.train import TrainConfig

    monkeypatch.setattr(E, "PRESETS", dict(E.PRESETS))  # leave the real registry alone
    preset = E.register_preset(E.Preset(
        name="my-vgg-c10-branching-r0.25", family="vgg", dataset="cifar10",
        model=ModelConfig(name="vgg11", num_classes=10, layer="branching", ratio=0.25,
                          head="lean", layer_options={"k": 5}),
        train=TrainConfig(lr=3e-4, epochs=7, batch_size=32, seed=3),
        description="NOT IN THE PAPER: VGG-11, branching λ = 0.25, k = 5"))
    assert E.get_preset("my-vgg-c10-branching-r0.25") is preset
    assert [p.name for p in E.list_presets("my-vgg")] == [preset.name]
    assert preset.paper_rows() == [] and E.preset_for_record(E.paper_records()[0]) is not preset
    model_cfg, train_cfg = runner.preset_configs(preset, smoke=False)
    assert (model_cfg.layer, model_cfg.ratio, model_cfg.layer_options) == \
        ("branching", 0.25, {"k": 5})
    assert (train_cfg.lr, train_cfg.epochs, train_cfg.batch_size, train_cfg.seed) == \
        (3e-4, 7, 32, 3)
    model_cfg, train_cfg = runner.preset_configs(preset, smoke=True)
    assert model_cfg.width_multiplier == 0.125 and model_cfg.layer_options == {"k": 5}
    assert train_cfg.epochs == runner.SMOKE_EPOCHS
    build_model(model_cfg)
    with pytest.raises(ValueError, match="exists already"):
        E.register_preset(preset)
    with pytest.raises(ValueError, match="paper row"):
        E.register_preset(E.make_preset("vgg", "cifar10", {"layer": "conv2d"}, name="mine"))
    # the value is not shared: changing a config a preset hands out leaves the preset alone
    runner.preset_configs(preset, smoke=False)[0].layer_options["k"] = 9
    assert preset.model_config().layer_options == {"k": 5}
    # and the paper-style helper builds the same kind of value from a family's settings
    lean = E.make_preset("vit", "cifar10", {"model": "vit_tiny_cifar", "mixer": "kvt", "k": 4},
                         name="my-vit-kvt-k4", train_overrides={"resize": None})
    E.register_preset(lean)
    model_cfg, train_cfg = runner.preset_configs(E.get_preset("my-vit-kvt-k4"), smoke=False)
    assert (model_cfg.mixer, model_cfg.layer_options, train_cfg.resize) == ("kvt", {"k": 4}, None)
