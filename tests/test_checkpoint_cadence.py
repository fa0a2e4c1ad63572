"""Checkpoint cadence (``TrainConfig.checkpoint_every`` / ``checkpoint_minutes``): fewer
checkpoints change no number of a run; the metrics log gets every epoch, and a crash between
checkpoints or a stop resumes exactly from the last checkpoint."""

from __future__ import annotations

import pytest
import torch
from test_train import convnn_model, quiet, small_config, stable

from convnn.run_folder import RunFolder
from convnn.train import TrainConfig, fit, load_run_checkpoint


class Crash(BaseException):
    """Not an Exception: like a kill, it ends the run without the stop-time save."""


class Stop(Exception):
    pass


def saved_epochs_seen(out):
    """A callback recording, after each epoch, the epochs the run folder holds."""
    seen = []

    def callback(record):
        path = out / "checkpoint.pt"
        saved = load_run_checkpoint(out)[1]["epoch"] if path.is_file() else 0
        seen.append((record["epoch"], saved, len(RunFolder.read(out, checkpoint="none").records)
                     if (out / "metrics.jsonl").is_file() else 0))

    return seen, callback


@pytest.fixture(scope="module")
def ds():
    from convnn.data import synthetic_dataset

    return synthetic_dataset(n_train=128, n_test=32, num_classes=4, image_size=8)


def test_every_n_epochs_saves_then_and_at_the_end(tmp_path, ds):
    cfg = small_config(epochs=7, checkpoint_every=3, checkpoint_minutes=None)
    seen, callback = saved_epochs_seen(tmp_path / "run")
    quiet(tmp_path / "run", ds, config=cfg, callback=callback)
    # (epoch, checkpoint's epoch, metrics lines) after each epoch: the first epoch of a call
    # is saved, then every 3 epochs, and the last
    assert seen == [(1, 1, 1), (2, 1, 2), (3, 1, 3), (4, 4, 4), (5, 4, 5), (6, 4, 6),
                    (7, 7, 7)]
    assert load_run_checkpoint(tmp_path / "run")[1]["epoch"] == 7
    assert len(RunFolder.read(tmp_path / "run", checkpoint="none").records) == 7


def test_zero_minutes_saves_every_epoch(tmp_path, ds):
    cfg = small_config(epochs=3, checkpoint_minutes=0)
    seen, callback = saved_epochs_seen(tmp_path / "run")
    quiet(tmp_path / "run", ds, config=cfg, callback=callback)
    assert [s[1] for s in seen] == [1, 2, 3]


def test_default_saves_by_time_and_at_the_end(tmp_path, ds):
    assert TrainConfig().checkpoint_every is None and TrainConfig().checkpoint_minutes == 2.0
    seen, callback = saved_epochs_seen(tmp_path / "run")
    quiet(tmp_path / "run", ds, config=small_config(epochs=3), callback=callback)
    assert [s[1] for s in seen] == [1, 1, 3]  # tiny epochs: the first and the last
    assert load_run_checkpoint(tmp_path / "run")[1]["epoch"] == 3


def test_cadence_changes_no_number(tmp_path, ds):
    every = quiet(tmp_path / "a", ds, config=small_config(epochs=4, checkpoint_minutes=0))
    rare = quiet(tmp_path / "b", ds, config=small_config(epochs=4, checkpoint_every=3,
                                                         checkpoint_minutes=None))
    assert stable(RunFolder.read(tmp_path / "a", checkpoint="none").records) == stable(
        RunFolder.read(tmp_path / "b", checkpoint="none").records)
    assert every["best_test_top1"] == rare["best_test_top1"]
    a, b = load_run_checkpoint(tmp_path / "a")[1], load_run_checkpoint(tmp_path / "b")[1]
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k


def _crash_after(epoch, error):
    def callback(record):
        if record["epoch"] == epoch:
            raise error

    return callback


def test_crash_between_checkpoints_resumes_exactly_from_the_last_one(tmp_path, ds):
    cfg = small_config(epochs=6, checkpoint_every=2, checkpoint_minutes=None,
                       eval_sampling="resample")
    quiet(tmp_path / "straight", ds, config=cfg, factory=convnn_model)
    with pytest.raises(Crash):  # saves after epochs 1, 3, 5, 6; crashes after epoch 4
        quiet(tmp_path / "broken", ds, config=cfg, callback=_crash_after(4, Crash()))
    assert load_run_checkpoint(tmp_path / "broken")[1]["epoch"] == 3
    assert len(RunFolder.read(tmp_path / "broken", checkpoint="none").records) == 4
    notes = []
    fit(convnn_model, ds, cfg, tmp_path / "broken", resume=True, device="cpu",
        progress=False, log=notes.append)
    assert any("dropping 1 metrics line(s)" in n for n in notes)
    assert stable(RunFolder.read(tmp_path / "straight", checkpoint="none").records) == stable(
        RunFolder.read(tmp_path / "broken", checkpoint="none").records)


def test_a_stopping_callback_saves_its_epoch(tmp_path, ds):
    cfg = small_config(epochs=6, checkpoint_every=4, checkpoint_minutes=None)
    quiet(tmp_path / "straight", ds, config=cfg)
    with pytest.raises(Stop):
        quiet(tmp_path / "stopped", ds, config=cfg, callback=_crash_after(3, Stop()))
    assert load_run_checkpoint(tmp_path / "stopped")[1]["epoch"] == 3
    assert len(RunFolder.read(tmp_path / "stopped", checkpoint="none").records) == 3
    # the cadence may change on resume
    quiet(tmp_path / "stopped", ds, config=small_config(epochs=6, checkpoint_minutes=0),
          resume=True)
    assert stable(RunFolder.read(tmp_path / "straight", checkpoint="none").records) == stable(
        RunFolder.read(tmp_path / "stopped", checkpoint="none").records)


@pytest.mark.parametrize(("field", "value"), [("checkpoint_every", 0),
                                              ("checkpoint_every", 1.5),
                                              ("checkpoint_minutes", -1.0),
                                              ("checkpoint_minutes", "2")])
def test_bad_cadence_is_a_clear_error(field, value):
    with pytest.raises((ValueError, TypeError), match=field):
        TrainConfig(**{field: value})


def test_cli_cadence_flags(tmp_path, capsys, monkeypatch):
    from convnn.__main__ import main as cli

    monkeypatch.setenv("CONVNN_DATA_DIR", str(tmp_path / "no-data"))
    rc = cli(["train", "--preset", "vgg11-c10-conv2d", "--smoke", "--checkpoint-every", "0",
              "--out", str(tmp_path / "run"), "--no-download"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "checkpoint_every" in err[0]
    assert not (tmp_path / "run").exists()
