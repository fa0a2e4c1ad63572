"""The run folder has one owner: :class:`convnn.run_folder.RunFolder` writes it and reads it.

The checkpoint is the authority (a kill at any moment resumes bit-identically, and a run is
finished only when its verified checkpoint holds the last epoch), resume validates the
epochs and the config against the checkpoint, the data is recognised by its content, and the
lock is atomic and knows about other hosts. Everything runs on the CPU with tiny models."""

from __future__ import annotations

import ast
import dataclasses
import io
import json
import multiprocessing
import os
import pickle
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
import torch
from torch import nn

import convnn
from convnn import _io
from convnn import checkpoint as CK
from convnn import run_folder as RF
from convnn._io import CheckpointError, FolderLockedError, folder_lock, save_checkpoint
from convnn.data import dataset_fingerprint, load_dataset, synthetic_dataset
from convnn.results import find_runs, load_run
from convnn.run_folder import RunFolder, RunFolderError
from convnn.train import TrainConfig, evaluate_run, fit, load_run_checkpoint

PACKAGE = Path(convnn.__file__).resolve().parent
REPO = PACKAGE.parent
VOLATILE = ("epoch_seconds", "train_seconds", "images_per_second", "peak_memory_bytes", "time")


def tiny() -> nn.Module:
    return nn.Sequential(convnn.ConvNN2d(3, 4, k=3, sampling="random", candidates=3),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 4))


@pytest.fixture(scope="module")
def ds():
    return synthetic_dataset(n_train=64, n_test=32, num_classes=4, image_size=8)


def cfg(**kw) -> TrainConfig:
    return TrainConfig(**({"lr": 3e-3, "epochs": 4, "batch_size": 32, "log_every": 0} | kw))


def run(out, ds, config=None, factory=tiny, **kw):
    kw.setdefault("device", "cpu")
    return fit(factory, ds, config or cfg(), out, progress=False, log=None, **kw)


def stable(records):
    return [{k: v for k, v in r.items() if k not in VOLATILE} for r in records]


def weights(out):
    return load_run_checkpoint(out)[1]["model"]


class Killed(BaseException):
    """Like a kill: not an Exception, so nothing is saved on the way out."""


# --------------------------------------------------------------------------- one owner
#: A run folder's files, and a study's training logs.
RUN_FILE_NAMES = ("config.json", "metrics.jsonl", "summary.json", "checkpoint.pt",
                  "test_predictions.npz", "train.log")


def _code_strings(path: Path):
    """String constants of a module that are not documentation (docstrings, and the
    attribute docstrings under assignments); f-string parts included."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docs = {id(n.value) for n in ast.walk(tree)
            if isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) \
                and id(node) not in docs:
            yield node.lineno, node.value


def test_run_folder_file_names_appear_in_run_folder_py_only():
    found = [f"{p.relative_to(REPO)}:{line}: {text!r}"
             for p in sorted(PACKAGE.rglob("*.py")) if p.name != "run_folder.py"
             for line, text in _code_strings(p)
             if any(name in text for name in RUN_FILE_NAMES)
             or text.rstrip("*").endswith("-seed")]  # a study's run names: <preset>-seed<n>
    assert found == []


#: Calls that open, write, list or remove a file, by the name called.
_FILE_CALLS = {"open", "read_text", "read_bytes", "write_text", "write_bytes", "read_json",
               "atomic_write_json", "atomic_write_text", "append_jsonl_atomic", "glob", "rglob",
               "unlink", "load", "save", "verify_checksum"}
#: What names a run file in code: run_folder's constants and paths.
_RUN_FILE_REFERENCES = {"CONFIG", "METRICS", "SUMMARY", "CHECKPOINT", "PREDICTIONS", "RUN_FILES",
                        "LOG_FILES", "RETURNED_FILES", "checkpoint_path", "paths"}
#: Who loads and saves a checkpoint, by the call (``receiver.name`` as written, ``None``: a bare
#: name) and the one module allowed to make it: torch only in _io's verified helpers, those
#: only in checkpoint.py (what a checkpoint holds), and the run's checkpoint file only in
#: run_folder.py (where it lies and when it is read).
_CHECKPOINT_CALLS = {("torch", "load"): "_io.py", ("torch", "save"): "_io.py",
                     (None, "load_checkpoint"): "checkpoint.py",
                     ("_io", "load_checkpoint"): "checkpoint.py",
                     (None, "save_checkpoint"): "checkpoint.py",
                     ("_io", "save_checkpoint"): "checkpoint.py",
                     (None, "read_checkpoint"): "run_folder.py",
                     ("checkpoint", "read_checkpoint"): "run_folder.py",
                     (None, "write_checkpoint"): "run_folder.py",
                     ("checkpoint", "write_checkpoint"): "run_folder.py"}


def _run_file_accesses(path: Path):
    """``(line, call, owner module)`` of every call in ``path`` that opens, writes or lists a
    run file (a file call whose receiver or arguments name one of run_folder's run-file
    constants: owned by run_folder.py), and of every checkpoint load or save (owned as
    :data:`_CHECKPOINT_CALLS` says)."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        receiver = func.value.id if isinstance(func, ast.Attribute) and isinstance(
            func.value, ast.Name) else None
        if not isinstance(func, (ast.Attribute, ast.Name)):
            continue
        if isinstance(func, ast.Attribute) and receiver is None:
            receiver = "?"  # e.g. self.folder.save_checkpoint: a method, not the helper
        if (receiver, name) in _CHECKPOINT_CALLS:
            yield node.lineno, name, _CHECKPOINT_CALLS[receiver, name]
            continue
        if name not in _FILE_CALLS:
            continue
        parts = [func.value] if isinstance(func, ast.Attribute) else []
        parts += [*node.args, *(k.value for k in node.keywords)]
        named = {n.id if isinstance(n, ast.Name) else n.attr for part in parts
                 for n in ast.walk(part) if isinstance(n, (ast.Name, ast.Attribute))}
        if named & _RUN_FILE_REFERENCES:
            yield node.lineno, name, "run_folder.py"


def test_only_the_run_folder_opens_the_run_files(tmp_path):
    """config.json, metrics.jsonl, summary.json and the checkpoint file are opened, written,
    listed and removed by run_folder.py only (_io.py holds the byte-level helpers it calls);
    a checkpoint is loaded and saved by checkpoint.py only, which alone knows what it holds:
    the campaign, the results tables, the study and the trainer go through these two."""
    found = [f"{p.relative_to(REPO)}:{line}: {call} (only in {owner})"
             for p in sorted(PACKAGE.rglob("*.py"))
             for line, call, owner in _run_file_accesses(p)
             if p.name != owner and not (p.name == "_io.py" and owner == "run_folder.py")]
    assert found == []
    # the check sees every kind of access
    probe = tmp_path / "probe.py"
    probe.write_text("from convnn.run_folder import METRICS\n"
                     "def f(d, folder):\n    folder.save_checkpoint({})\n"
                     "    torch.save({}, d)\n    read_checkpoint(d)\n"
                     "    return (d / METRICS).read_text(), _io.load_checkpoint(d)\n")
    assert sorted(c for _, c, _ in _run_file_accesses(probe)) == [
        "load_checkpoint", "read_checkpoint", "read_text", "save"]


def test_every_checkpoint_load_is_weights_only_and_verified():
    loads = [f"{p.relative_to(REPO)}:{i}" for p in sorted(PACKAGE.rglob("*.py"))
             for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
             if "torch.load(" in line and not line.lstrip().startswith(("#", "``"))
             and "``torch.load" not in line]
    assert loads == ["convnn/_io.py:" + str(next(
        i for i, line in enumerate((PACKAGE / "_io.py").read_text().splitlines(), 1)
        if "obj = torch.load(" in line))]
    assert "weights_only=True" in (PACKAGE / "_io.py").read_text()


def test_all_committed_run_folders_still_load():
    root = REPO / "data" / "results"
    folders = sorted({p.parent for p in root.rglob("metrics.jsonl")})
    assert len(folders) >= 20
    for folder in folders:
        record = RunFolder.read(folder)
        assert record.records and record.skipped_lines == 0, folder
        assert record.records == load_run(folder).records
        assert record.dataset.get("name") in ("cifar10", "cifar100", "imagenet"), folder
        assert record.model_config is None or "name" in record.model_config, folder
    assert len(find_runs(root)) == len(folders)


def test_read_returns_everything_of_a_run(tmp_path, ds):
    from convnn.experiments import get_preset, reduced

    model_cfg, _ = reduced(get_preset("vgg11-c10-branching-r0.5"))
    data = synthetic_dataset(n_train=40, n_test=20, num_classes=10, image_size=32)
    out = tmp_path / "r"
    fit(model_cfg, data, cfg(epochs=1, batch_size=20), out, device="cpu", progress=False,
          log=None, extra={"preset": "p"})
    record = RunFolder.read(out)
    assert record.config["extra"] == {"preset": "p"}  # no second model or dataset section
    assert record.model_config == model_cfg.to_dict()
    assert record.dataset["content"] == dataset_fingerprint(data)
    assert record.dataset["train_images"] == 40 and record.dataset["synthetic"]
    assert [r["epoch"] for r in record.records] == [1]
    assert record.summary["checkpoint"]["epoch"] == 1 == record.checkpoint["epoch"]
    assert record.finished and record.checkpoint_epoch == 1
    assert record.summary["checkpoint"]["sha256"] == record.checkpoint_sha256
    assert RunFolder.read(out, checkpoint="verify").checkpoint is None
    assert RunFolder.read(out, checkpoint="verify").finished
    with pytest.raises(ValueError, match="checkpoint must be one of"):
        RunFolder.read(out, checkpoint="yes")


# --------------------------------------------------------------------------- checkpoint format
def _as_format_2(out: Path) -> None:
    """Rewrite a run folder as convnn wrote it with checkpoint format 2: the model config and
    the dataset recorded a second time under ``extra``, no content hash, a summary without
    the checkpoint's record."""
    ckpt = _io.load_checkpoint(out / "checkpoint.pt")
    config = json.loads((out / "config.json").read_text())
    data = {k: v for k, v in config["dataset"].items() if k not in ("content", "synthetic")}
    old_extra = {**config["extra"], "model": config["model"].pop("config"),
                 "dataset": {"name": data["name"], "source": data["source"],
                             "synthetic": True, "root": None,
                             "train_images": data["train_images"],
                             "test_images": data["test_images"],
                             "train_per_class": None, "test_per_class": None}}
    config.update(extra=old_extra, dataset=data)
    (out / "config.json").write_text(json.dumps(config, indent=2))
    fp = ckpt["fingerprint"]
    ckpt.update(format=2, fingerprint={
        "train": fp["train"], "model": {k: fp["model"][k] for k in ("class", "parameters")},
        "dataset": {k: v for k, v in data.items() if k != "source"},
        "extra": {**old_extra, "dataset": {k: v for k, v in old_extra["dataset"].items()
                                           if k != "root"}}})
    save_checkpoint(ckpt, out / "checkpoint.pt")
    summary = json.loads((out / "summary.json").read_text())
    summary.pop("checkpoint")
    (out / "summary.json").write_text(json.dumps(summary))


def test_a_change_of_the_checkpoint_format_still_reads_the_old_one(tmp_path):
    """The contributor task "change the checkpoint format": bump CHECKPOINT_FORMAT and teach
    ``upgrade_checkpoint`` the old layout, in checkpoint.py. Format 2 kept the model config
    and the dataset under ``extra``; such a run still evaluates and resumes."""
    from convnn.models import ModelConfig

    model_cfg = ModelConfig(name="vgg11", layer="conv2d", width_multiplier=0.125,
                            head="lean", num_classes=10)
    data = synthetic_dataset(n_train=40, n_test=20, num_classes=10, image_size=32)
    out = tmp_path / "r"
    with pytest.raises(Killed):
        fit(model_cfg, data, cfg(epochs=2, batch_size=20), out, device="cpu",
              progress=False, log=None, callback=_raise_at(1, Killed()))
    _as_format_2(out)
    assert _io.load_checkpoint(out / "checkpoint.pt")["format"] == 2
    record = RunFolder.read(out)
    assert record.model_config == model_cfg.to_dict() and record.checkpoint_epoch == 1
    assert evaluate_run(out, model_cfg, data, device="cpu")["epoch"] == 1
    summary = fit(model_cfg, data, cfg(epochs=2, batch_size=20), out, device="cpu",
                    progress=False, log=None, resume=True)
    assert summary["epochs_completed"] == 2
    assert _io.load_checkpoint(out / "checkpoint.pt")["format"] == CK.CHECKPOINT_FORMAT
    newer = _io.load_checkpoint(out / "checkpoint.pt") | {"format": CK.CHECKPOINT_FORMAT + 1}
    save_checkpoint(newer, out / "checkpoint.pt")
    with pytest.raises(CheckpointError, match="update convnn"):
        RunFolder.read(out)


def _as_format_1(out: Path) -> None:
    """Rewrite a run folder's checkpoint as convnn wrote it with format 1 (commit 88e76df):
    these entries only, no fingerprint, no log digest, no SHA-256 sidecar; a summary without
    the checkpoint's record."""
    ckpt = _io.load_checkpoint(out / "checkpoint.pt")
    old = {"format": 1, **{k: ckpt[k] for k in ("epoch", "model", "optimizer", "scaler",
                                                "schedule", "rng", "world_size", "config")}}
    buf = io.BytesIO()
    torch.save(old, buf)
    (out / "checkpoint.pt").write_bytes(buf.getvalue())
    (out / "checkpoint.pt.sha256").unlink()
    summary = json.loads((out / "summary.json").read_text())
    summary.pop("checkpoint")
    (out / "summary.json").write_text(json.dumps(summary))


def test_a_format_1_checkpoint_evaluates_and_resumes_exactly(tmp_path, ds, straight):
    """The oldest format: no fingerprint (the run's is taken from config.json) and no
    sidecar. It loads through ``upgrade_checkpoint`` and the run continues bit-identically
    to one never interrupted (its RNG states, optimizer and weights are all there)."""
    out = tmp_path / "r"
    config = cfg(checkpoint_minutes=0)
    with pytest.raises(Killed):
        run(out, ds, config, callback=_raise_at(2, Killed()))
    _as_format_1(out)
    loaded = CK.read_checkpoint(out / "checkpoint.pt")
    assert loaded["upgraded_from"] == 1 and loaded["format"] == CK.CHECKPOINT_FORMAT
    assert loaded["fingerprint"] is None and loaded["log"] is None
    assert RunFolder.read(out).checkpoint_epoch == 2
    assert evaluate_run(out, tiny, ds, device="cpu")["epoch"] == 2
    assert run(out, ds, config, resume=True)["epochs_completed"] == 4
    a, b = weights(out), weights(straight)
    assert all(torch.equal(a[k], b[k]) for k in b)
    assert _io.load_checkpoint(out / "checkpoint.pt")["format"] == CK.CHECKPOINT_FORMAT


def test_upgrade_checkpoint_refuses_what_no_format_wrote():
    good = {"format": 3, "epoch": 1, "model": {}, "optimizer": {}, "rng": [{}], "config": {},
            "fingerprint": {}, "log": {}}
    assert CK.upgrade_checkpoint(good)["upgraded_from"] == 3
    for bad, message in [({"format": "3"}, "format '3'"), ({"format": True}, "format True"),
                         ({"epoch": 0}, "epoch 0"), ({"model": None}, "'model' is missing"),
                         ({"rng": {}}, "'rng' is missing")]:
        with pytest.raises(CheckpointError, match=message):
            CK.upgrade_checkpoint(good | bad, "x.pt")


def _raise_at(epoch, error):
    def callback(record):
        if record["epoch"] == epoch:
            raise error
    return callback


# --------------------------------------------------------------------------- kill and resume
def _kill_in_save(monkeypatch, nth: int, where: str):
    """Make the ``nth`` checkpoint write of this process die at ``where``: "torch.save"
    (half a file in the temporary), "rename" (the sidecar written, the complete new file
    still in its temporary), "replace" (the new file in place, the sidecar listing both
    hashes), or "summary" (the checkpoint complete, the summary not yet written)."""
    calls = {"save": 0}
    real_save, real_text = torch.save, _io.atomic_write_text
    real_summary = RunFolder.save_summary

    def save(obj, f, *a, **k):
        calls["save"] += 1
        calls["sidecar"] = 0
        if where == "torch.save" and calls["save"] == nth:
            buf = io.BytesIO()
            real_save(obj, buf)
            half = buf.getvalue()[: len(buf.getvalue()) // 2]
            f.write(half)
            f.flush()
            # a real kill leaves the temporary file behind (the simulated one is removed on
            # the way out), so leave a copy as the leftover the next open must clean
            Path(f.name).with_name(".checkpoint.pt.killed.tmp").write_bytes(half)
            raise Killed
        return real_save(obj, f, *a, **k)

    def text(path, content):
        real_text(path, content)
        if str(path).endswith(".sha256"):
            calls["sidecar"] = calls.get("sidecar", 0) + 1
        if where == "rename" and calls["save"] == nth and calls["sidecar"] == 1:
            # the sidecar lists the new file, which is complete in its temporary file
            live = next(Path(path).parent.glob(".checkpoint.pt.*.tmp"))
            live.with_name(".checkpoint.pt.killed.tmp").write_bytes(live.read_bytes())
            raise Killed
        if where == "replace" and str(path).endswith(".sha256") and calls["save"] == nth \
                and content.count("\n") == 2:
            raise Killed

    def summary(self, s):
        if where == "summary" and calls["save"] == nth:
            raise Killed
        return real_summary(self, s)

    monkeypatch.setattr(_io.torch, "save", save)
    monkeypatch.setattr(_io, "atomic_write_text", text)
    monkeypatch.setattr(RunFolder, "save_summary", summary)


def _kill_in_metrics(monkeypatch, epoch: int):
    real = RF.append_jsonl_atomic

    def append(path, record):
        if record["epoch"] == epoch:
            raise Killed
        return real(path, record)

    monkeypatch.setattr(RF, "append_jsonl_atomic", append)


# (cadence, how the process dies): eleven kills (and SIGTERM below) at different moments of a 4-epoch run
KILLS = [
    ("every", ("torch.save", 4)),  # during the final checkpoint write (the repro)
    ("every", ("replace", 4)),  # the final checkpoint in place, its sidecar not final
    ("every", ("summary", 4)),  # the final checkpoint complete, the summary not
    ("every", ("torch.save", 1)),
    ("every", ("rename", 1)),  # the first checkpoint complete in its temporary file
    ("every", ("torch.save", 2)),
    ("every", ("replace", 3)),
    ("every", ("metrics", 4)),
    ("every", ("metrics", 1)),
    ("default", ("torch.save", 2)),  # default cadence: epochs 1 and 4 are saved
    ("default", ("metrics", 3)),
]


@pytest.fixture(scope="module")
def straight(tmp_path_factory, ds):
    out = tmp_path_factory.mktemp("straight") / "run"
    run(out, ds, cfg(checkpoint_minutes=0))
    return out


def test_the_final_epoch_writes_its_test_predictions_and_old_folders_still_read(
        tmp_path, ds, straight):
    found = RF.read_predictions(straight)
    last = RunFolder.read(straight, checkpoint="none").records[-1]
    assert found.epoch == 4 and found.predicted.shape == (ds.num_test,)
    assert (found.labels == ds.test_labels.numpy()).all()
    assert found.top1 == pytest.approx(last["test_top1"])  # the same pass as the log's number
    assert (straight / RF.PREDICTIONS).stat().st_size < 2_000
    old = tmp_path / "old"
    shutil.copytree(straight, old)
    (old / RF.PREDICTIONS).unlink()  # a run folder of an older convnn
    assert RF.read_predictions(old) is None and RunFolder.read(old).finished
    (old / RF.PREDICTIONS).write_bytes(b"not an npz")
    with pytest.raises(ValueError, match="is not a predictions file"):
        RF.read_predictions(old)


@pytest.mark.parametrize(("cadence", "kill"), KILLS, ids=[f"{c}-{k[0]}-{k[1]}"
                                                          for c, k in KILLS])
def test_a_kill_at_any_moment_resumes_bit_identically(tmp_path, ds, straight, monkeypatch,
                                                      cadence, kill):
    config = cfg(checkpoint_minutes=0) if cadence == "every" else cfg()
    out = tmp_path / "run"
    with monkeypatch.context() as m:
        if kill[0] == "metrics":
            _kill_in_metrics(m, kill[1])
        else:
            _kill_in_save(m, kill[1], kill[0])
        with pytest.raises(Killed):
            run(out, ds, config)
    record = RunFolder.read(out, checkpoint="verify") if (out / "config.json").is_file() \
        else None
    assert record is None or not record.finished  # never "finished" with stale weights
    notes = []
    summary = fit(tiny, ds, config, out, resume=True, device="cpu", progress=False,
                    log=notes.append)
    assert summary["epochs_completed"] == 4
    assert stable(RunFolder.read(out).records) == stable(RunFolder.read(straight).records)
    a, b = weights(out), weights(straight)
    assert all(torch.equal(a[k], b[k]) for k in b)
    assert RunFolder.read(out, checkpoint="verify").finished
    mine, theirs = RF.read_predictions(out), RF.read_predictions(straight)
    assert (mine.predicted == theirs.predicted).all() and mine.epoch == theirs.epoch == 4
    assert not list(out.glob(".*.tmp")) and not (out / ".lock").exists()


def test_sigterm_saves_at_the_next_step_boundary_and_resumes_bit_identically(tmp_path, ds,
                                                                             straight):
    """The twelfth kill: SIGTERM (Colab recycling a runtime) after epoch 2 of a run whose
    cadence saves epochs 1 and 4 only; the stop saves epoch 2 and resume ends bit-identical."""
    import signal

    from convnn.train import Terminated

    out = tmp_path / "run"

    def term(record):
        if record["epoch"] == 2:
            os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(Terminated, match="SIGTERM during epoch 3.*checkpoint of epoch 2"):
        run(out, ds, cfg(), callback=term)
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # the handler is put back
    assert load_run_checkpoint(out)[1]["epoch"] == 2  # saved though the cadence would not
    fit(tiny, ds, cfg(), out, resume=True, device="cpu", progress=False, log=None)
    assert stable(RunFolder.read(out).records) == stable(RunFolder.read(straight).records)
    a, b = weights(out), weights(straight)
    assert all(torch.equal(a[k], b[k]) for k in b)


def test_cli_sigterm_is_one_line_and_exit_143(monkeypatch, capsys):
    from convnn import __main__ as cli
    from convnn.train import Terminated

    def stopped(args):
        raise Terminated("stopped by SIGTERM during epoch 3")

    monkeypatch.setattr(cli, "_presets", stopped)
    assert cli.main(["presets"]) == 143
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "SIGTERM" in err and "Traceback" not in err


def test_the_runner_does_not_take_a_killed_final_write_for_a_finished_run(tmp_path,
                                                                          monkeypatch):
    """The issue's repro through ``run_preset``: a smoke run killed while its last
    checkpoint is written is resumed and trained to the end, not "loaded"."""
    from convnn.runner import run_preset

    common = {"smoke": True, "out_dir": tmp_path / "R", "synthetic": True, "device": "cpu",
              "progress": False, "log": lambda _: None, "epochs": 2}
    with monkeypatch.context() as m:
        _kill_in_save(m, 2, "torch.save")
        with pytest.raises(Killed):
            run_preset("vgg11-c10-conv2d", **common)
    assert list((tmp_path / "R").glob(".checkpoint.pt.*.tmp"))
    lines = []
    summary = run_preset("vgg11-c10-conv2d", resume=True,
                         **common | {"log": lines.append})
    assert not any("has finished all" in " ".join(line.split()) for line in lines)
    assert any("resuming" in line and "after epoch 1/2" in line for line in lines)
    assert summary["epochs_completed"] == 2 and weights(tmp_path / "R") is not None
    assert load_run_checkpoint(tmp_path / "R")[1]["epoch"] == 2
    assert not list((tmp_path / "R").glob(".checkpoint.pt.*.tmp"))
    lines = []
    run_preset("vgg11-c10-conv2d", resume=True,
               **common | {"log": lines.append})
    assert any("has finished all 2 epochs" in " ".join(line.split()) for line in lines)


# --------------------------------------------------------------------------- resume checks
@pytest.fixture
def three_epochs(tmp_path, ds):
    out = tmp_path / "run"
    run(out, ds, cfg(epochs=3))
    return out


def test_resume_with_fewer_epochs_than_done_is_refused(three_epochs, ds):
    before = (three_epochs / "config.json").read_bytes()
    with pytest.raises(RunFolderError, match=r"epochs=1: it has already finished 3 epochs") \
            as err:
        run(three_epochs, ds, cfg(epochs=1), resume=True)
    assert "\n" not in str(err.value)
    assert (three_epochs / "config.json").read_bytes() == before


def _edit_config(out: Path, edit) -> None:
    config = json.loads((out / "config.json").read_text())
    edit(config)
    (out / "config.json").write_text(json.dumps(config, indent=2))


def test_an_edited_config_is_detected_by_eval_and_resume(three_epochs, ds):
    _edit_config(three_epochs, lambda c: c["train"].update(lr=0.5))
    for call in (lambda: load_run_checkpoint(three_epochs),
                 lambda: evaluate_run(three_epochs, tiny, ds, device="cpu"),
                 lambda: run(three_epochs, ds, cfg(epochs=4), resume=True)):
        with pytest.raises(RunFolderError, match=r"train\.lr: 0\.003 in the checkpoint, now "
                                                 r"0\.5\); the file was edited"):
            call()
    with pytest.raises(RunFolderError, match="was edited"):
        RunFolder.read(three_epochs, checkpoint="verify")


def test_cli_fewer_epochs_and_an_edited_model_config_are_one_line(tmp_path, capsys,
                                                                   monkeypatch):
    from convnn.__main__ import main as cli

    out = tmp_path / "R"
    common = ["--smoke", "--out", str(out), "--synthetic", "--device", "cpu",
              "--preset", "vgg11-c10-conv2d"]
    assert cli(["train", "--epochs", "2", *common]) == 0
    capsys.readouterr()
    assert cli(["train", "--epochs", "1", "--resume", *common]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "already finished 2 epochs" in err
    _edit_config(out, lambda c: c["model"]["config"].update(
        width_multiplier=c["model"]["config"]["width_multiplier"] * 2))
    assert cli(["eval", "--run", str(out), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "model.config.width_multiplier" in err
    assert cli(["train", "--epochs", "3", "--resume", *common]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "model.config.width_multiplier" in err


# --------------------------------------------------------------------------- data fingerprint
def _cifar_like_tarball(path: Path, seed: int = 0, per_class: int = 2) -> Path:
    """A tiny CIFAR-10-shaped image-folder tarball (10 classes, PNG files)."""
    from PIL import Image

    from convnn.data import CIFAR10_CLASSES

    gen = torch.Generator().manual_seed(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        for split in ("train", "test"):
            for cls in CIFAR10_CLASSES:
                for i in range(per_class):
                    pixels = torch.randint(0, 256, (32, 32, 3), generator=gen,
                                           dtype=torch.uint8).numpy()
                    buf = io.BytesIO()
                    Image.fromarray(pixels).save(buf, format="PNG")
                    info = tarfile.TarInfo(f"tiny/{split}/{cls}/{i}.png")
                    info.size = len(buf.getvalue())
                    tar.addfile(info, io.BytesIO(buf.getvalue()))
    return path


def test_resume_recognises_the_data_by_its_content(tmp_path, monkeypatch):
    monkeypatch.setenv("CONVNN_CACHE_DIR", str(tmp_path / "cache"))
    first = _cifar_like_tarball(tmp_path / "A" / "cifar.tar.gz")
    data = load_dataset("cifar10", data_dir=first, download=False)
    out = tmp_path / "run"
    config = cfg(epochs=5, batch_size=10)

    def factory():
        return nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                             nn.Linear(4, 10))

    with pytest.raises(Killed):
        run(out, data, config, factory, callback=_raise_at(1, Killed()))

    # 1. the same data moved to another folder
    moved = tmp_path / "B" / "cifar.tar.gz"
    moved.parent.mkdir()
    shutil.move(first, moved)
    again = load_dataset("cifar10", data_dir=moved, download=False)
    assert again.source != data.source and dataset_fingerprint(again) == \
        dataset_fingerprint(data)
    with pytest.raises(Killed):
        run(out, again, config, factory, resume=True, callback=_raise_at(2, Killed()))
    # 2. described as a download the first time, as the cache after a restart
    cached = dataclasses.replace(again, source="cifar10 (torchvision files at /cache/x)")
    with pytest.raises(Killed):
        run(out, cached, config, factory, resume=True, callback=_raise_at(3, Killed()))
    # 3. a copy of the archive
    copy = tmp_path / "C" / "copy.tar.gz"
    copy.parent.mkdir()
    shutil.copy(moved, copy)
    with pytest.raises(Killed):
        run(out, load_dataset("cifar10", data_dir=copy, download=False), config, factory,
            resume=True, callback=_raise_at(4, Killed()))
    assert RunFolder.read(out).dataset["source"].count(str(copy)) == 1  # where it is now
    # 4. other data of the same shape and size: refused, naming the difference
    other = load_dataset("cifar10", data_dir=_cifar_like_tarball(tmp_path / "D" / "o.tar.gz",
                                                                  seed=1), download=False)
    with pytest.raises(RunFolderError, match=r"dataset\.content: '[0-9a-f]{8}"):
        run(out, other, config, factory, resume=True)
    assert run(out, again, config, factory, resume=True)["epochs_completed"] == 5


def test_an_old_run_without_a_content_fingerprint_still_resumes(tmp_path, ds):
    out = tmp_path / "r"
    with pytest.raises(Killed):
        run(out, ds, cfg(epochs=2), callback=_raise_at(1, Killed()))
    ckpt = _io.load_checkpoint(out / "checkpoint.pt")
    ckpt["fingerprint"]["dataset"].pop("content")
    ckpt["fingerprint"]["dataset"]["source"] = "an old description"
    save_checkpoint(ckpt, out / "checkpoint.pt")
    _edit_config(out, lambda c: c["dataset"].pop("content"))
    moved = dataclasses.replace(ds, source="the same data, described otherwise")
    assert run(out, moved, cfg(epochs=2), resume=True)["epochs_completed"] == 2
    bigger = synthetic_dataset(n_train=96, n_test=32, num_classes=4, image_size=8)
    with pytest.raises(RunFolderError, match=r"dataset\.train_images: 64 -> 96"):
        run(out, bigger, cfg(epochs=3), resume=True)


# --------------------------------------------------------------------------- the lock
def _race(args):
    """One contender: in each trial wait for the other, try the lock, and while holding it
    wait until the other has tried too."""
    root, trials, barrier, results = args
    held = []
    for t in range(trials):
        folder = Path(root) / f"t{t}"
        barrier.wait()
        try:
            with folder_lock(folder, heartbeat=None):
                barrier.wait()  # the other one tries while we hold it
                held.append(t)
        except FolderLockedError:
            barrier.wait()
    results.put((os.getpid(), held))


@pytest.mark.parametrize("mode", ["fresh", "stale", "empty"])
def test_two_processes_never_both_hold_the_lock(tmp_path, mode):
    trials = 200
    for t in range(trials):
        folder = tmp_path / f"t{t}"
        folder.mkdir()
        if mode == "stale":  # left by a process of this host that no longer runs
            (folder / ".lock").write_text(f"999999999 {_io.hostname()}\n")
        elif mode == "empty":  # created, its PID not written yet (or killed right then)
            (folder / ".lock").write_text("")
    ctx = multiprocessing.get_context("fork")
    barrier, results = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_race, args=((tmp_path, trials, barrier, results),))
             for _ in range(2)]
    for p in procs:
        p.start()
    held = [results.get(timeout=600)[1] for _ in procs]
    for p in procs:
        p.join()
    both = set(held[0]) & set(held[1])
    assert len(both) == 0, f"both held the lock in {len(both)} of {trials} trials"
    assert set(held[0]) | set(held[1]) == set(range(trials))  # and one always got it


def test_a_lock_of_another_host_with_a_live_heartbeat_is_respected(tmp_path):
    lock = tmp_path / ".lock"
    lock.write_text("123 otherhost\n")
    now = lock.stat().st_mtime
    with pytest.raises(FolderLockedError, match=r"PID 123 on host otherhost.*refreshed 60 s "
                                                r"ago.*300 s old"), \
            folder_lock(tmp_path, clock=lambda: now + 60, stale_after=300):
        pass
    assert lock.read_text() == "123 otherhost\n"


def test_a_lock_of_another_host_with_an_old_heartbeat_is_taken_over(tmp_path):
    lock = tmp_path / ".lock"
    lock.write_text("123 otherhost\n")
    now = lock.stat().st_mtime
    notes = []
    with folder_lock(tmp_path, clock=lambda: now + 301, stale_after=300, log=notes.append):
        assert lock.read_text().split()[:2] == [str(os.getpid()), _io.hostname()]
    assert notes and "took over the lock of PID 123 on host otherhost" in notes[0]
    assert "301 s old" in notes[0] and not lock.exists()


def test_a_dead_process_of_this_host_is_taken_over_at_once(tmp_path, monkeypatch):
    monkeypatch.setattr(_io, "hostname", lambda: "colab-runtime-2")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / ".lock").write_text(f"{dead.pid} colab-runtime-2\n")
    with folder_lock(tmp_path, clock=lambda: 0.0):  # no heartbeat age is waited for
        assert (tmp_path / ".lock").read_text().startswith(f"{os.getpid()} colab-runtime-2")


def test_the_holder_refreshes_its_heartbeat(tmp_path):
    lock = tmp_path / ".lock"
    with folder_lock(tmp_path, heartbeat=0.05):
        os.utime(lock, (0, 0))
        for _ in range(6000):  # the heartbeat thread moves the mtime back to now
            if lock.stat().st_mtime > 0:
                break
            time.sleep(0.01)
        assert lock.stat().st_mtime > 0


def test_a_resumed_run_takes_over_the_lock_of_a_gone_colab_runtime(tmp_path, ds, monkeypatch):
    out = tmp_path / "r"
    with pytest.raises(Killed):
        run(out, ds, cfg(epochs=2), callback=_raise_at(1, Killed()))
    (out / ".lock").write_text("123 otherhost\n")
    os.utime(out / ".lock", (1, 1))  # its heartbeat stopped long ago
    notes = []
    summary = fit(tiny, ds, cfg(epochs=2), out, resume=True, device="cpu", progress=False,
                    log=notes.append)
    assert summary["epochs_completed"] == 2
    assert any("took over the lock of PID 123 on host otherhost" in n for n in notes)


def test_two_live_writers_never_interleave(tmp_path, ds):
    out = tmp_path / "r"
    with folder_lock(out), pytest.raises(RunFolderError, match="in use by another process"):
        run(out, ds)  # a live writer (this process) holds the folder
    run(out, ds, cfg(epochs=2))
    assert [r["epoch"] for r in RunFolder.read(out).records] == [1, 2]


# --------------------------------------------------------------------------- study weights
class _Payload:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_study_weights_go_through_the_verified_reader(tmp_path, ds):
    out = tmp_path / "r"
    run(out, ds, cfg(epochs=1))
    dest = tmp_path / "w.pt"
    assert RF.save_weights(out, dest) > 0
    assert (tmp_path / "w.pt.sha256").is_file()
    # a pickle payload in place of the checkpoint is refused, not run
    with open(out / "checkpoint.pt", "wb") as f:
        pickle.dump({"model": _Payload()}, f)
    with pytest.raises(CheckpointError):
        RF.save_weights(out, tmp_path / "x.pt")
    (out / "checkpoint.pt.sha256").write_text(
        f"{_io._sha256(out / 'checkpoint.pt')}  checkpoint.pt\n")
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        RF.save_weights(out, tmp_path / "x.pt")
    assert not (tmp_path / "x.pt").exists()


# --------------------------------------------------------------------------- foreign files
@pytest.fixture(scope="module")
def finished_one(tmp_path_factory, ds):
    out = tmp_path_factory.mktemp("one") / "run"
    run(out, ds, cfg(epochs=1))
    return out


@pytest.mark.parametrize("name", [".lock", "metrics.jsonl", "config.json", "checkpoint.pt",
                                  "checkpoint.pt.sha256", "summary.json", "test_predictions.npz"])
def test_a_link_in_a_run_folder_is_refused_and_its_target_untouched(tmp_path, ds,
                                                                     finished_one, name):
    """The issue's repro: ``ln -s ~/victim R/.lock`` then a resume truncated the victim."""
    out = tmp_path / "R"
    shutil.copytree(finished_one, out)
    victim = tmp_path / "victim"
    victim.write_bytes((out / name).read_bytes() if (out / name).exists() else b"precious\n")
    before = victim.read_bytes()
    (out / name).unlink(missing_ok=True)
    (out / name).symlink_to(victim)
    with pytest.raises(ValueError, match=rf"{name}.*is a symbolic link.*Remove the link"):
        run(out, ds, cfg(epochs=2), resume=True)
    with pytest.raises(ValueError, match="symbolic link"):
        RunFolder.read(out, checkpoint="verify")
    assert victim.read_bytes() == before and (out / name).is_symlink()


def test_folder_lock_refuses_a_link_even_a_dangling_one(tmp_path):
    (tmp_path / ".lock").symlink_to(tmp_path / "nowhere")
    with pytest.raises(_io.LinkRefusedError, match="symbolic link"), folder_lock(tmp_path):
        pass
    assert not (tmp_path / "nowhere").exists()


@pytest.mark.parametrize("how", [{"resume": True}, {}, {"overwrite": True}])
def test_another_programs_config_json_is_never_replaced(tmp_path, ds, how):
    """The issue's repro: ``--resume`` replaced ``{"app": 1}`` and exited 0; without it, the
    refusal suggested resuming."""
    out = tmp_path / "P"
    out.mkdir()
    (out / "config.json").write_text('{"app":1}\n')
    with pytest.raises(RunFolderError, match="not a convnn run config") as err:
        run(out, ds, cfg(epochs=1), **how)
    assert "resume" not in str(err.value)
    assert (out / "config.json").read_text() == '{"app":1}\n'
    assert sorted(p.name for p in out.iterdir()) == ["config.json"]
    with pytest.raises(RunFolderError, match="not a convnn run config"):
        RunFolder.read(out)


def test_a_first_checkpoint_killed_before_its_rename_is_recovered_or_redone(tmp_path, ds,
                                                                           monkeypatch):
    """The issue's repro: killed between the sidecar and the rename of the first checkpoint,
    resume said "Restore checkpoint.pt" forever; the complete file sat in the temporary."""
    for complete in (True, False):
        out = tmp_path / f"run-{complete}"
        with monkeypatch.context() as m:
            _kill_in_save(m, 1, "rename")
            with pytest.raises(Killed):
                run(out, ds, cfg(epochs=2, checkpoint_minutes=0))
        assert not (out / "checkpoint.pt").exists() and (out / "checkpoint.pt.sha256").exists()
        if not complete:  # the temporary file does not match the sidecar: nothing to recover
            (out / ".checkpoint.pt.killed.tmp").write_bytes(b"half")
        notes = []
        summary = fit(tiny, ds, cfg(epochs=2, checkpoint_minutes=0), out, resume=True,
                      device="cpu", progress=False, log=notes.append)
        assert summary["epochs_completed"] == 2
        said = " ".join(notes)
        assert ("recovered checkpoint.pt (epoch 1)" in said) == complete
        assert ("nothing could be recovered" in said) != complete
        assert not list(out.glob(".*.tmp"))


@pytest.mark.parametrize("key", ["test_images", "classes", "content"])
def test_a_key_deleted_from_the_dataset_section_is_detected(tmp_path, finished_one, key):
    """The issue's repro: with ``test_per_class`` deleted, eval scored the full test set."""
    out = tmp_path / "R"
    shutil.copytree(finished_one, out)
    config = json.loads((out / "config.json").read_text())
    del config["dataset"][key]
    (out / "config.json").write_text(json.dumps(config))
    with pytest.raises(RunFolderError, match=rf"differs in dataset\.{key}: .* now '<absent>'"):
        RunFolder.read(out, checkpoint="verify")


def test_resume_refuses_data_with_one_image_outside_the_old_sample_replaced(tmp_path):
    """The issue's repro: the fingerprint sampled 64 images a split, so resume accepted 436
    of 500 training images replaced; now every image and label is hashed."""
    data = synthetic_dataset(n_train=130, n_test=130, num_classes=4, image_size=8)
    out = tmp_path / "r"
    with pytest.raises(Killed):
        run(out, data, cfg(epochs=2), callback=_raise_at(1, Killed()))
    for split, index in (("train", 1), ("test", 1)):  # neither in the 64-image sample
        images = getattr(data, f"{split}_images").clone()
        images[index] = images[0]
        altered = dataclasses.replace(data, **{f"{split}_images": images})
        assert dataset_fingerprint(altered) == dataset_fingerprint(data)  # the old sample
        with pytest.raises(RunFolderError, match=r"dataset\.content_sha256"):
            run(out, altered, cfg(epochs=2), resume=True)
    assert run(out, data, cfg(epochs=2), resume=True)["epochs_completed"] == 2


# --------------------------------------------------------------------------- across hosts
def _no_shared_flock(monkeypatch):
    """A network or Drive mount: every host's flock succeeds."""
    monkeypatch.setattr(_io, "_try_lock", lambda fd: True)


def test_a_holder_taken_over_by_another_host_notices_and_stops(tmp_path, monkeypatch):
    _no_shared_flock(monkeypatch)
    notes = []
    with folder_lock(tmp_path, host="hostA", heartbeat=None, log=notes.append) as a:
        a.check()
        now = (tmp_path / ".lock").stat().st_mtime
        with folder_lock(tmp_path, host="hostB", heartbeat=None, clock=lambda: now + 400,
                         log=notes.append) as b:  # A's heartbeat looks 400 s old to B
            with pytest.raises(_io.LockLostError, match=r"taken over by PID \d+ on host hostB"):
                a.check()  # before its next write
            with pytest.raises(_io.LockLostError):
                a.check()  # and from then on
            b.check()
    assert any("took over the lock" in n for n in notes)
    assert any("stopped without writing anything more" in n for n in notes)
    assert not list(tmp_path.iterdir())  # B released cleanly; A removed nothing of B's


def test_the_heartbeat_notices_a_takeover(tmp_path, monkeypatch):
    _no_shared_flock(monkeypatch)
    notes = []
    with folder_lock(tmp_path, host="hostA", heartbeat=0.01, log=notes.append) as a:
        (tmp_path / ".lock").write_text("1 hostB othertoken\n")  # B took it over
        for _ in range(3000):
            if a.lost:
                break
            time.sleep(0.01)
        assert a.lost and "taken over by PID 1 on host hostB" in a.lost
    assert notes and "stopped without writing" in notes[0]
    assert (tmp_path / ".lock").read_text() == "1 hostB othertoken\n"  # B's lock kept


def test_fit_stops_before_its_next_write_when_taken_over(tmp_path, ds):
    """The issue's repro in one process: a holder taken over kept writing (19 lines for 10
    epochs, and the folder read as finished)."""
    out = tmp_path / "r"

    def taken_over(record):
        if record["epoch"] == 1:
            (out / ".lock").write_text("1 hostB othertoken\n")

    with pytest.raises(_io.LockLostError, match="taken over by PID 1 on host hostB"):
        run(out, ds, cfg(epochs=3), callback=taken_over)
    assert [r["epoch"] for r in RunFolder.read(out).records] == [1]
    assert not RunFolder.read(out, checkpoint="verify").finished


def _frozen_holder(folder, ready, result):
    """A holder on "hostA" appending a line at a time, checking its lock before each."""
    import convnn._io as io_

    io_._try_lock = lambda fd: True  # this child's own copy: no shared flock
    log = folder / "log.txt"
    try:
        with folder_lock(folder, host="hostA", heartbeat=0.02, log=lambda _: None) as held:
            ready.set()
            for _ in range(100_000):
                held.check()
                with open(log, "a") as f:
                    f.write("A\n")
                time.sleep(0.005)
    except _io.LockLostError as err:
        result.put(str(err))


def test_sigstop_takeover_sigcont_the_old_holder_stops(tmp_path, monkeypatch):
    """Freeze holder A, let B take over once A's heartbeat is old, wake A: A stops."""
    import signal

    ctx = multiprocessing.get_context("fork")
    ready, result = ctx.Event(), ctx.Queue()
    a = ctx.Process(target=_frozen_holder, args=(tmp_path, ready, result))
    a.start()
    assert ready.wait(120)
    while not (tmp_path / "log.txt").exists():
        time.sleep(0.01)
    os.kill(a.pid, signal.SIGSTOP)
    _no_shared_flock(monkeypatch)
    now = time.time()
    notes = []
    with folder_lock(tmp_path, host="hostB", heartbeat=None, clock=lambda: now + 400,
                     log=notes.append) as b:
        before = (tmp_path / "log.txt").read_text().count("A")
        os.kill(a.pid, signal.SIGCONT)
        message = result.get(timeout=120)
        a.join(120)
        after = (tmp_path / "log.txt").read_text().count("A")
        b.check()  # B still holds it
    assert "taken over by" in message and "hostB" in message
    assert after - before <= 1  # at most the line that was being written when A froze
    assert any("took over the lock" in n and "hostA" in n for n in notes)


def _start_race(folder, late_position: int) -> tuple[int, int]:
    """Three hosts start on ``folder``: two at the same moment (the fake settle clock lets
    both write their claims before either looks) and one once the winner holds the lock.
    Returns (the most holders at once, how many held it)."""
    import threading

    both_claimed = threading.Barrier(2)
    release, won_once, count = threading.Event(), threading.Event(), threading.Lock()
    inside, holders = [0, 0], []

    def contender(host, sleep, late=False):
        if late and not won_once.wait(120):
            return
        try:
            with folder_lock(folder, host=host, heartbeat=None, settle=1.0, sleep=sleep) as held:
                with count:
                    inside[0] += 1
                    inside[1] = max(inside)
                holders.append(host)
                won_once.set()
                held.check()
                release.wait(120)
                with count:
                    inside[0] -= 1
        except FolderLockedError:
            pass

    def at_once():
        first = [True]

        def sleep(_):  # the first claim waits for the other's; a retry does not
            if first.pop() if first else False:
                both_claimed.wait(120)
        return sleep

    threads = [threading.Thread(target=contender, args=(h, at_once())) for h in ("h1", "h2")]
    late = threading.Thread(target=contender, args=("h3", lambda _: None, True))
    threads.insert(late_position, late)
    for th in threads:
        th.start()
    late.join(240)
    release.set()
    for th in threads:
        th.join(240)
    return inside[1], len(holders)


def test_simultaneous_starts_without_shared_flock_never_both_win(tmp_path, monkeypatch):
    """200 trials of three hosts starting at once on a mount without shared flock: never two
    holders at once. (The timeouts only bound a hang: a slow machine fails no trial.)"""
    _no_shared_flock(monkeypatch)
    trials, doubles, none_won = 200, 0, 0
    for t in range(trials):
        folder = tmp_path / f"t{t}"
        folder.mkdir()
        most, held = _start_race(folder, t % 3)
        doubles += most > 1
        none_won += held == 0
        assert not list(folder.glob(".lock.*"))  # claims and markers released or removed
    assert doubles == 0, f"two holders at once in {doubles} of {trials} trials"
    assert none_won == 0
