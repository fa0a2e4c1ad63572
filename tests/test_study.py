"""The laptop-scale study: its presets, its committed runs and weights, its helpers."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from convnn import experiments as E
from convnn import study
from convnn.results import load_run

FAMILIES = {"vgg": ("laptop-vgg-c10-conv2d", "laptop-vgg-c10-branching-r0.5",
                    "laptop-vgg-c10-convnn"),
            "vit": ("laptop-vit-c10-attention", "laptop-vit-c10-convnn-all-k9",
                    "laptop-vit-c10-convnn-random-r32-k9")}


def test_presets_are_labelled_small_and_rowless():
    assert set(study.PRESETS) == {n for names in FAMILIES.values() for n in names}
    for name in study.PRESETS:
        preset = E.get_preset(name)
        assert preset.paper_rows() == []
        assert "not the paper's protocol" in preset.description
        model, train = preset.model_config(), preset.train_config(seed=1)
        assert train.seed == 1 and train.epochs == E.LAPTOP_PROTOCOL["epochs"]
        if preset.family == "vgg":
            assert model.head == "lean" and model.width_multiplier == 0.25
        else:
            assert (model.name, model.dim, model.depth) == ("vit_tiny_cifar", 128, 4)
            assert train.resize is None
    vgg = study.build("laptop-vgg-c10-convnn")
    assert max(p["out_channels"] for p in vgg.layer_plan) == 128


def test_committed_study_has_three_seeds_per_variant_with_provenance():
    root = study.study_dir()
    runs = study.study_runs()
    readme = (root.parent / "README.md").read_text(encoding="utf-8")
    assert study.STUDY_DIR in readme
    for names in FAMILIES.values():
        for name in names:
            assert len(runs[name]) == 3, name
            seeds = set()
            for folder in runs[name]:
                run = load_run(folder, root=root.parent)
                assert run.summary is not None, folder
                assert len(run.records) == E.LAPTOP_PROTOCOL["epochs"]
                assert run.config["extra"]["preset"] == name
                assert run.config["extra"]["dataset"]["synthetic"] is False
                assert run.config["extra"]["dataset"]["train_images"] == 10 * study.TRAIN_PER_CLASS
                assert run.records[-1]["device"] == "cpu"
                assert re.fullmatch(r"[0-9a-f]{7,40}", run.records[-1]["git_commit"])
                assert run.provenance and "2-core CPU" in run.provenance
                seeds.add(run.config["train"]["seed"])
            assert seeds == set(study.SEEDS)
    rows = study.summary_rows()
    assert [r["preset"] for r in rows] == list(study.PRESETS)
    assert all(r["best"][0] > 20 for r in rows), "every variant learned (chance is 10%)"


def test_committed_text_names_no_machine_paths():
    for path in study.study_dir().rglob("*"):
        if path.suffix in (".json", ".jsonl", ".log"):
            text = path.read_text(encoding="utf-8")
            assert "/work/" not in text and "/tmp/" not in text, path


@pytest.mark.parametrize("name", study.PRESETS)
def test_weights_load_into_the_study_models(name):
    path = study.weights_file(name, study.WEIGHTS_SEED)
    assert path == study.study_dir() / "weights" / f"{name}.pt"  # the committed layout
    assert path.stat().st_size <= 2 * 1024 * 1024
    model = study.trained_model(name)
    with torch.no_grad():
        out = model(torch.zeros(2, 3, 32, 32))
    assert out.shape == (2, 10) and torch.isfinite(out).all()


def test_weights_total_size_and_wheel_pattern():
    files = list((study.study_dir() / "weights").glob("*.pt"))
    assert len(files) == 6
    assert sum(f.stat().st_size for f in files) <= 12 * 1024 * 1024
    pyproject = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    assert '"results/**/weights/*.pt"' in pyproject


def test_selection_helpers_on_small_inputs():
    torch.manual_seed(0)
    vgg = study.build("laptop-vgg-c10-convnn").eval()
    x = torch.randn(2, 3, 32, 32)
    inputs = study.layer_inputs(vgg, x)
    assert list(inputs) == list(study.convnn_layers(vgg))
    first = next(iter(study.convnn_layers(vgg).values()))
    share, chance = study.spatial_fraction(first, inputs[next(iter(inputs))])
    # the pixel itself is always selected (rank 1); the other 8 ranks would hit the other 8
    # of its 9 window positions among the 34 x 34 - 1 others by chance
    assert 1 / 9 - 1e-6 <= share <= 1
    assert chance == pytest.approx((1 + 8 * 8 / (34 ** 2 - 1)) / 9)
    assert study.rank_weights(first).shape == (9,)
    vit = study.build("laptop-vit-c10-convnn-random-r32-k9").eval()
    ins = study.layer_inputs(vit, x)
    layer = next(iter(study.convnn_layers(vit).values()))
    same, ceiling = study.dense_agreement(layer, ins[next(iter(ins))])
    assert 0 < same <= ceiling + 1e-6 <= 1 + 1e-6


def test_interventions_change_what_they_say_and_nothing_else():
    from convnn.data import synthetic_dataset

    vgg = study.initial_model("laptop-vgg-c10-convnn", 3)
    again = study.initial_model("laptop-vgg-c10-convnn", 3)
    assert all(torch.equal(a, b) for a, b in zip(vgg.state_dict().values(),
                                                 again.state_dict().values()))
    norms = study.rank_update_norms(vgg, again)
    assert all(float(v.abs().max()) == 0 for v in norms.values())
    uniform = study.with_uniform_rank_weights(vgg)
    for (name, layer), before in zip(study.convnn_layers(uniform).items(),
                                     study.convnn_layers(vgg).values()):
        w = layer.weight
        assert torch.allclose(w, w[..., :1].expand_as(w)), name  # all ranks alike
        assert torch.allclose(w.mean(-1), before.weight.mean(-1))  # the mean is kept
    moved = study.rank_update_norms(uniform, vgg)
    assert all(float(v.min()) > 0 for v in moved.values())
    coords = study.with_coordinate_selection(vgg)
    x = torch.randn(1, 3, 8, 8)
    first = next(iter(study.convnn_layers(coords).values()))
    d = study.selected_offsets(first, x)
    assert int(d.max()) == 1 and bool((d[..., 0] == 0).all())  # the 3x3 window, self first
    assert next(iter(study.convnn_layers(vgg).values())).selection == "features"  # a copy
    vit = study.initial_model("laptop-vit-c10-convnn-random-r32-k9", 0)
    dense = study.with_candidates(vit)
    assert all(m.sampling == "all" for m in study.convnn_layers(dense).values())
    r16 = study.with_candidates(vit, 16, resample=True)
    assert all(m.candidates == 16 and m.eval_sampling == "resample"
               for m in study.convnn_layers(r16).values())
    with pytest.raises(ValueError, match="sampled candidates"):
        study.with_candidates(dense)
    with pytest.raises(ValueError, match="ConvNN2d"):
        study.with_coordinate_selection(vit)
    data = synthetic_dataset(n_train=20, n_test=30, image_size=32)
    right = study.correct_per_image(vit, data, batch_size=8, limit=12)
    assert len(right) == 12 and set(right) <= {0, 1}
    assert study.evaluate(vit, data) == pytest.approx(
        100 * sum(study.correct_per_image(vit, data)) / 30)
    models = study.intervention_models("laptop-vit-c10-convnn-random-r32-k9", 0)
    assert all(m.sampling == "random" and m.eval_sampling == "resample"
               for m in study.convnn_layers(models["resampled"]).values())
    assert all(m.sampling == "all" for m in study.convnn_layers(models["all candidates"]).values())
    assert all(m.candidates == 32 and m.seed == 1
               for m in study.convnn_layers(models["other fixed draw"]).values())
    labels = set(study.intervention_models.__doc__.split('"')[1::2])
    assert {"trained", "uniform rank weights", "all candidates", "resampled"} <= labels


def test_committed_interventions_are_complete_and_consistent():
    found = study.read_interventions()
    rows = found["rows"]
    assert found["test_images"] == 1000 and rows
    for row in rows:
        assert len(row["correct"]) == 1000
        assert row["top1"] == pytest.approx(row["correct"].count("1") / 10)
    trained = {(r["preset"], r["seed"]): r for r in rows if r["intervention"] == "trained"}
    for (preset, seed), row in trained.items():
        # the trained model scores what its run logged at its last epoch: the study's run for
        # seed 0, the rerun committed with the interventions for the other seeds
        root = study.study_dir() if seed == study.WEIGHTS_SEED else study.interventions_dir()
        run = root / f"{preset}-seed{seed}"
        assert run in study.study_runs(root)[preset]
        last = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()][-1]
        # float16 weights: a few of the 1,000 images may flip
        assert row["top1"] == pytest.approx(last["test_top1"], abs=0.5)
        assert study.weights_file(preset, seed).is_file()


def test_collect_copies_logs_and_the_weights_of_every_seed(tmp_path):
    from convnn.data import synthetic_dataset

    name = "laptop-vgg-c10-conv2d"
    runs = tmp_path / "runs"
    for seed in (0, 1):
        data = synthetic_dataset(n_train=20, n_test=10, image_size=32)
        study.run_one(name, seed, runs, data=data, epochs=1, log=lambda *a, **k: None)
    # the log a worker of study.main writes beside its run folder
    (runs / f"{name}-seed0.log").write_text(f"DONE in {runs.resolve()}/{name}-seed0\n")
    only_seed0 = study.collect(runs, tmp_path / "seed0")
    assert sorted(p.name for p in only_seed0) == [f"{name}-seed0", f"{name}-seed1"]
    assert (only_seed0[0] / "train.log").read_text() == f"DONE in runs/{name}-seed0\n"
    assert not (only_seed0[1] / "train.log").exists()
    assert [p.name for p in (tmp_path / "seed0" / "weights").glob("*.pt")] == [f"{name}.pt"]
    assert not list((tmp_path / "seed0").rglob("checkpoint*"))
    study.collect(runs, tmp_path / "all", every_seed=True)
    for seed in (0, 1):
        path = study.weights_file(name, seed, tmp_path / "all")
        assert path.is_file() and path.with_name(path.name + ".sha256").is_file()
        model = study.trained_model(name, seed, tmp_path / "all")
        final = torch.load(runs / f"{name}-seed{seed}" / "checkpoint.pt",
                           weights_only=True)["model"]
        for key, value in model.state_dict().items():  # float16 copies of the final weights
            assert torch.equal(value, final[key].half().float()), key
    assert study.weights_file(name, 1, tmp_path / "all").name == f"{name}-seed1.pt"


def test_every_committed_model_has_its_per_image_predictions():
    """scripts/laptop_predictions.py: one predictions file per committed weights file, over
    the study's 1,000 test images in order (100 per class), scoring within 0.5 points of the
    accuracy its run logged (float16 weights; ConvNN2d selection moves with float rounding)."""
    root = Path(__file__).resolve().parents[1] / "data" / "results"
    found = 0
    for name in study.PRESETS:
        for seed in study.SEEDS:
            folder = root / (study.STUDY_DIR if seed == study.WEIGHTS_SEED
                             else study.INTERVENTIONS_DIR)
            if not study.weights_file(name, seed, folder).is_file():
                continue
            p = study.predictions(name, seed, folder)
            assert p.labels.tolist() == [c for c in range(10) for _ in range(100)], name
            logged = load_run(folder / f"{name}-seed{seed}").records[-1]["test_top1"]
            assert abs(p.top1 - logged) <= 0.5, (name, seed, p.top1, logged)
            found += 1
    assert found == 14
