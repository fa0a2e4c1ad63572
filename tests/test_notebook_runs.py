"""What a notebook's training cell relies on: run it again after a disconnect and the run
continues; run it after the run finished and the run is loaded, not trained again."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

import convnn.runner
from convnn.runner import run_preset, runs_root, smoke_mode

ROOT = Path(__file__).resolve().parents[1]
PRESET = "vgg11-c10-conv2d"


def _epochs(run_dir: Path) -> list[int]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["epoch"] for line in lines]


def test_a_rerun_training_cell_continues_then_loads(tmp_path, monkeypatch) -> None:
    out = tmp_path / "runs" / PRESET
    logs: list[str] = []
    cell = {"smoke": True, "out_dir": out, "resume": True, "device": "cpu", "progress": False,
            "download": False, "log": logs.append}

    run_preset(PRESET, epochs=1, **cell)  # the first run: one epoch, then "a disconnect"
    assert _epochs(out) == [1]
    logs.clear()
    summary = run_preset(PRESET, epochs=2, **cell)  # the cell again, asking for 2 epochs
    assert _epochs(out) == [1, 2], "the run must continue, not restart"
    assert any("resuming" in line and "after epoch 1/2" in line for line in logs)
    resumed = json.loads((out / "config.json").read_text())["resumed"]
    assert [r["from_epoch"] for r in resumed] == [1]

    def no_training(*args, **kwargs):
        raise AssertionError("a finished run must be loaded, not trained again")

    monkeypatch.setattr(convnn.runner, "fit", no_training)
    monkeypatch.setattr(convnn.runner, "load_preset_data", no_training)
    logs.clear()
    again = run_preset(PRESET, epochs=2, **cell)
    assert again == summary
    assert any("loaded its summary" in " ".join(line.split()) for line in logs)
    assert _epochs(out) == [1, 2]


def test_a_finished_run_of_another_protocol_is_not_loaded(tmp_path) -> None:
    """Only the same preset and protocol count as 'finished': anything else goes to
    train(resume=True), which continues or refuses it."""
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.json").write_text(json.dumps(
        {"extra": {"preset": "vgg11-c10-convnn", "smoke": True}, "train": {}}))
    (out / "summary.json").write_text(json.dumps({"epochs_completed": 2}))
    _, train_cfg = convnn.runner.preset_configs(convnn.runner.get_preset(PRESET), smoke=True)
    assert convnn.runner._finished_summary(out, PRESET, True, train_cfg) is None


def test_notebook_training_cells_resume_and_never_overwrite() -> None:
    calls = 0
    for path in sorted((ROOT / "book").glob("*.ipynb")):
        nb = json.loads(path.read_text(encoding="utf-8"))
        for cell in nb["cells"]:
            source = "".join(cell["source"])
            if cell["cell_type"] != "code" or "run_preset(" not in source:
                continue
            calls += 1
            assert "overwrite=True" not in source, f"{path.name}: a training cell overwrites"
            assert re.search(r"run_preset\([^)]*resume=True", source, re.DOTALL), path.name
    assert calls >= 2  # the VGG and ViT chapters


def test_settings_cell_comes_first_and_the_environment_wins(monkeypatch) -> None:
    for name in ("vgg_cifar", "vit_cifar"):
        nb = json.loads((ROOT / "book" / f"{name}.ipynb").read_text(encoding="utf-8"))
        code = ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]
        assert code[1].startswith("# Settings"), f"{name}: cell 2 is not the settings cell"
        for setting in ("SMOKE =", "EPOCHS =", "RUN_ROOT =", "KEEP_RUNS_ON_DRIVE ="):
            assert setting in code[1], f"{name}: the settings cell has no {setting}"
    monkeypatch.setenv("CONVNN_SMOKE", "0")
    assert smoke_mode(default=True) is False
    monkeypatch.setenv("CONVNN_SMOKE", "1")
    assert smoke_mode(default=False) is True
    monkeypatch.delenv("CONVNN_SMOKE")
    assert smoke_mode(default=True) is True
    monkeypatch.setenv("CONVNN_SMOKE", "yes")
    with pytest.raises(ValueError, match="CONVNN_SMOKE must be 0 or 1"):
        smoke_mode()


def test_keep_on_drive_outside_colab_keeps_the_local_folder() -> None:
    notes: list[str] = []
    assert runs_root("runs", keep_on_drive=True, log=notes.append) == Path("runs")
    assert notes and "Google Colab only" in notes[0]
    with pytest.raises(ValueError, match="keep_on_drive must be True or False"):
        runs_root(keep_on_drive="yes")
