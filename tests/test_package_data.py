"""The files the package reads at run time ship inside it (``convnn._data``), and the
precision of a run is chosen by its device (``amp="auto"``)."""

from __future__ import annotations

import json

import pytest
import torch

from convnn import package_data, results
from convnn.experiments import paper_records
from convnn.train import AMP_MODES, TrainConfig, resolve_amp


# --------------------------------------------------------------------------- package data
def test_package_data_is_read_through_the_package() -> None:
    root = package_data.data_root()
    assert (root / "__init__.py").is_file()  # the convnn._data package, not a loose folder
    paper = package_data.data_file("paper_results.json")
    assert len(json.loads(paper.read_text())["records"]) == len(paper_records()) > 400
    assert results.RESULTS_ROOT == package_data.results_root()


def test_a_missing_shipped_file_names_itself(monkeypatch, tmp_path) -> None:
    monkeypatch.setattr(package_data, "data_root", lambda: tmp_path)
    with pytest.raises(package_data.PackageDataError,
                       match=r"paper_results.json is missing from convnn's data files"):
        package_data.data_file("paper_results.json")
    assert issubclass(package_data.PackageDataError, FileNotFoundError)


def test_missing_run_logs_are_no_runs_not_an_error(tmp_path) -> None:
    """The committed logs are optional: without them the book says there is no run yet."""
    assert results.find_runs(tmp_path / "absent") == []
    assert results.load_bench(tmp_path / "absent") == []


def test_committed_runs_ship_with_the_package() -> None:
    runs = results.find_runs()
    assert runs, "data/results/ holds committed runs; they must be found through the package"
    assert all(r.path.is_relative_to(package_data.results_root()) for r in runs)


# --------------------------------------------------------------------------- amp="auto"
@pytest.mark.parametrize("capability, expected", [
    ((7, 5), "fp16"),  # T4: bfloat16 is emulated, fp16 runs on the tensor cores
    ((7, 0), "fp16"),  # V100
    ((8, 0), "bf16"),  # A100
    ((8, 9), "bf16"),  # L4
    ((9, 0), "bf16"),  # H100
])
def test_auto_precision_follows_the_gpu(monkeypatch, capability, expected) -> None:
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    assert resolve_amp("auto", "cuda") == expected
    assert resolve_amp("off", "cuda") == "off"
    assert resolve_amp("bf16", "cuda") == "bf16"  # an explicit choice is kept


def test_auto_precision_is_float32_off_cuda() -> None:
    for amp in AMP_MODES:
        assert resolve_amp(amp, "cpu") == "off"
    assert TrainConfig().amp == "auto"
    with pytest.raises(ValueError, match="amp must be one of"):
        resolve_amp("fp8", "cpu")


def test_the_run_records_the_precision_it_used(tmp_path) -> None:
    from convnn.data import synthetic_dataset
    from convnn.train import fit

    ds = synthetic_dataset(n_train=32, n_test=16, num_classes=4, image_size=8)
    cfg = TrainConfig(epochs=3, batch_size=16, amp="auto")
    logs: list[str] = []
    fit(lambda: torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 64, 4)), ds, cfg,
        tmp_path / "run", device="cpu", progress=False, log=logs.append)
    # the first epoch tells how long the rest will take, once
    assert sum("expected time of the remaining 2 epochs: about" in line for line in logs) == 1
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["train"]["amp"] == "auto"
    assert config["run"]["amp_active"] == "off"  # float32 on a CPU


def test_main_entry_points_at_the_top_level() -> None:
    import subprocess
    import sys

    code = ("import sys, convnn; heavy = 'convnn.runner' in sys.modules; "
            "from convnn import ModelConfig, TrainConfig, build_model, get_preset, run_preset; "
            "print(heavy, get_preset('vgg11-c10-conv2d').name, callable(run_preset))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["False", "vgg11-c10-conv2d", "True"]  # light import, lazy entry points
    import convnn

    with pytest.raises(AttributeError, match="no attribute 'nonsense'"):
        _ = convnn.nonsense


def test_the_wheel_lists_every_subpackage() -> None:
    """pyproject.toml names the packages explicitly (for the data mapping): a new sub-package
    missing from the list would be left out of the wheel."""
    from pathlib import Path

    import tomllib

    root = Path(__file__).resolve().parents[1]
    listed = set(tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]
                 ["packages"])
    found = {".".join(p.parent.relative_to(root).parts)
             for p in (root / "convnn").rglob("__init__.py") if "__pycache__" not in p.parts}
    assert listed == found | {"convnn._data"}
