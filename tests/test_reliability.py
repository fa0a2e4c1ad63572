"""Reliability: run folders that refuse what they should, one writer per run, divergence
stops, strict JSON, clear errors for bad arguments and inputs, and a command line whose user
errors are one line with exit 2. Everything runs on the CPU with tiny models."""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import subprocess
import sys

import pytest
import torch
from torch import nn

from convnn import (
    BranchingConv2d,
    ConvNN2d,
    ConvNN2dOptions,
    ConvNNAttention,
    ConvNNAttentionOptions,
    HybridTokenMixer,
    ops,
)
from convnn._io import (
    CheckpointError,
    atomic_write_json,
    folder_lock,
    load_checkpoint,
    read_json,
    read_jsonl,
    save_checkpoint,
)
from convnn.data import synthetic_dataset
from convnn.train import (
    DivergedError,
    RunFolderError,
    TrainConfig,
    fit,
    load_run_checkpoint,
)

# --------------------------------------------------------------------------- helpers


def tiny() -> nn.Module:
    return nn.Sequential(ConvNN2d(3, 4, k=3, sampling="random", candidates=3), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 4))


@pytest.fixture(scope="module")
def ds():
    return synthetic_dataset(n_train=64, n_test=32, num_classes=4, image_size=8)


def cfg(**kw) -> TrainConfig:
    base = {"lr": 3e-3, "epochs": 2, "batch_size": 32, "log_every": 0}
    return TrainConfig(**(base | kw))


def run(out, ds, config=None, factory=tiny, **kw):
    kw.setdefault("device", "cpu")
    return fit(factory, ds, config or cfg(), out, progress=False, log=None, **kw)


class Killed(Exception):
    pass


def kill_after(epoch):
    def callback(record):
        if record["epoch"] == epoch:
            raise Killed
    return callback


def snapshot(folder) -> dict:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.fixture
def one_epoch(tmp_path, ds):
    """A run of 2 epochs killed after the first: resumable."""
    out = tmp_path / "run"
    with pytest.raises(Killed):
        run(out, ds, extra={"preset": "a"}, callback=kill_after(1))
    return out


# --------------------------------------------------------------------------- 1. fingerprint


def test_resume_refuses_another_run_and_names_the_fields(one_epoch, ds):
    before = snapshot(one_epoch)
    with pytest.raises(RunFolderError, match=r"extra\.preset: 'a' -> 'b'"):
        run(one_epoch, ds, extra={"preset": "b"}, resume=True)
    other = synthetic_dataset(n_train=96, n_test=32, num_classes=4, image_size=8)
    with pytest.raises(RunFolderError, match=r"dataset\.train_images: 64 -> 96"):
        run(one_epoch, other, extra={"preset": "a"}, resume=True)
    with pytest.raises(RunFolderError, match=r"train\.lr: 0\.003 -> 0\.1"):
        run(one_epoch, ds, config=cfg(lr=0.1), extra={"preset": "a"}, resume=True)
    with pytest.raises(RunFolderError, match=r"model\.class"):  # same shapes, another class
        run(one_epoch, ds, extra={"preset": "a"}, resume=True,
            factory=lambda: type("Other", (nn.Sequential,), {})(*tiny()))
    assert snapshot(one_epoch) == before  # refused without touching anything
    s = run(one_epoch, ds, config=cfg(epochs=3), extra={"preset": "a", "command": "x"},
            resume=True)  # more epochs and another command line are fine
    assert s["epochs_completed"] == 3


def few_synthetic_images(**kwargs):
    """A smoke run's synthetic data with 16 + 8 images instead of 500 + 200: the CLI tests check
    what the command line does with a run folder, and a VGG smoke epoch on 700 images is slow on
    a CPU (set with monkeypatch on ``convnn.data.synthetic_dataset``, which the smoke stand-in
    of the DATASETS entry calls)."""
    return synthetic_dataset(**{**kwargs, "n_train": 16, "n_test": 8})


def test_cli_resume_with_another_preset_is_refused(tmp_path, capsys, monkeypatch):
    import convnn.data
    from convnn.__main__ import main as cli

    monkeypatch.setenv("CONVNN_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("CONVNN_DATA_DIR", raising=False)
    monkeypatch.setattr(convnn.data, "synthetic_dataset", few_synthetic_images)
    out = str(tmp_path / "R")
    common = ["--smoke", "--synthetic", "--out", out, "--no-download", "--device", "cpu"]
    assert cli(["train", "--preset", "vgg11-c10-branching-r0.5", "--epochs", "1", *common]) == 0
    config = (tmp_path / "R" / "config.json").read_text()
    capsys.readouterr()
    assert cli(["train", "--preset", "vgg11-c10-branching-r0.5-random-r4", "--epochs", "2",
                "--resume", *common]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "extra.preset: 'vgg11-c10-branching-r0.5' -> 'vgg11-c10-branching-r0.5-random-r4'" \
        in err and "model.config.layer_options.sampling" in err
    assert (tmp_path / "R" / "config.json").read_text() == config


# --------------------------------------------------------------------------- 2. missing ckpt


def test_resume_without_checkpoint_never_deletes_the_records(one_epoch, ds):
    (one_epoch / "checkpoint.pt").unlink()
    before = snapshot(one_epoch)
    with pytest.raises(RunFolderError, match="checkpoint.pt is missing.*metrics.jsonl"):
        run(one_epoch, ds, extra={"preset": "a"}, resume=True)
    assert snapshot(one_epoch) == before


def test_resume_of_a_run_stopped_before_its_first_epoch_restarts_it(tmp_path, ds):
    out = tmp_path / "r"
    with pytest.raises(Killed):
        run(out, ds, callback=kill_after(1))
    for name in ("metrics.jsonl", "checkpoint.pt", "checkpoint.pt.sha256", "summary.json"):
        (out / name).unlink()  # as if killed during epoch 1: only config.json
    with pytest.raises(RunFolderError, match=r"train\.seed"):
        run(out, ds, config=cfg(seed=1), resume=True)
    assert run(out, ds, resume=True)["epochs_completed"] == 2


# --------------------------------------------------------------------------- 3. lock


def test_a_second_writer_fails_at_once(tmp_path, ds):
    out = tmp_path / "r"
    with folder_lock(out) as lock:  # a live process (this one) trains in the folder
        assert lock.path.read_text().split()[0] == str(os.getpid())
        with pytest.raises(RunFolderError, match=f"in use by another process \\(PID {os.getpid()}"):
            run(out, ds)
        with pytest.raises(RunFolderError, match="in use"):
            run(out, ds, resume=True)
    assert not (out / ".lock").exists()  # released
    run(out, ds)
    assert [r["epoch"] for r in read_jsonl(out / "metrics.jsonl")] == [1, 2]
    assert not (out / ".lock").exists()


def test_a_stale_lock_is_taken_over(tmp_path, ds):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    out = tmp_path / "r"
    out.mkdir()
    import socket

    (out / ".lock").write_text(f"{dead.pid} {socket.gethostname()}\n")
    assert run(out, ds)["epochs_completed"] == 2
    assert not (out / ".lock").exists()


# --------------------------------------------------------------------------- 4. the log


def test_resume_refuses_a_log_out_of_epoch_order(one_epoch, ds):
    log = one_epoch / "metrics.jsonl"
    line = log.read_text()
    log.write_text(line + line)  # a duplicated line
    with pytest.raises(RunFolderError, match="not in epoch order.*line 2 has epoch 1"):
        run(one_epoch, ds, extra={"preset": "a"}, resume=True)
    assert log.read_text() == line + line


def test_resume_refuses_an_edited_log(one_epoch, ds):
    log = one_epoch / "metrics.jsonl"
    record = json.loads(log.read_text())
    log.write_text(json.dumps(record | {"test_top1": 99.9}) + "\n")
    with pytest.raises(RunFolderError, match="does not match checkpoint.pt.*99.9 at epoch 1"):
        run(one_epoch, ds, extra={"preset": "a"}, resume=True)
    _, ckpt = load_run_checkpoint(one_epoch)
    assert ckpt["log"]["best_test_top1"] == record["test_top1"] and ckpt["log"]["epochs"] == 1


def test_resume_refuses_a_missing_log(one_epoch, ds):
    (one_epoch / "metrics.jsonl").unlink()
    with pytest.raises(RunFolderError, match="metrics.jsonl is missing.*epoch 1"):
        run(one_epoch, ds, extra={"preset": "a"}, resume=True)


# --------------------------------------------------------------------------- 5. checksums


def test_checkpoint_sidecar_holds_its_sha256(one_epoch):
    digest = hashlib.sha256((one_epoch / "checkpoint.pt").read_bytes()).hexdigest()
    assert (one_epoch / "checkpoint.pt.sha256").read_text() == f"{digest}  checkpoint.pt\n"


def test_flipped_bytes_in_a_checkpoint_are_refused(one_epoch, ds):
    path = one_epoch / "checkpoint.pt"
    good = path.read_bytes()
    for offset in (len(good) // 3, len(good) // 2, len(good) - 100):
        bad = bytearray(good)
        bad[offset] ^= 0x01
        path.write_bytes(bytes(bad))
        with pytest.raises(CheckpointError, match="does not match its SHA-256"):
            load_run_checkpoint(one_epoch)
        with pytest.raises(CheckpointError, match="does not match its SHA-256"):
            run(one_epoch, ds, extra={"preset": "a"}, resume=True)
    path.write_bytes(good)
    assert load_run_checkpoint(one_epoch)[1]["epoch"] == 1


def test_checksum_survives_a_crash_between_the_writes(tmp_path, monkeypatch):
    path = tmp_path / "c.pt"
    save_checkpoint({"v": 1}, path)
    import convnn._io as io

    real = io.os.replace
    monkeypatch.setattr(io.os, "replace", lambda a, b: (_ for _ in ()).throw(OSError("kill"))
                        if str(b) == str(path) else real(a, b))
    with pytest.raises(OSError, match="kill"):
        save_checkpoint({"v": 2}, path)  # the sidecar already lists both hashes
    monkeypatch.setattr(io.os, "replace", real)
    assert load_checkpoint(path) == {"v": 1}
    save_checkpoint({"v": 2}, path)
    assert load_checkpoint(path) == {"v": 2}
    assert len((tmp_path / "c.pt.sha256").read_text().splitlines()) == 1


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04 truncated", os.urandom(256)])
def test_unreadable_checkpoints_are_a_clear_error(tmp_path, content):
    (tmp_path / "c.pt").write_bytes(content)
    with pytest.raises(CheckpointError, match="c.pt"):
        load_checkpoint(tmp_path / "c.pt")


# --------------------------------------------------------------------------- 6. leftovers


def test_resume_removes_leftover_temporary_files(one_epoch, ds):
    tmp = one_epoch / ".checkpoint.pt.abc123.tmp"
    tmp.write_bytes(b"half a checkpoint")
    run(one_epoch, ds, extra={"preset": "a"}, resume=True)
    assert not tmp.exists()
    assert not [p for p in one_epoch.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("out", ["", "  "])
def test_empty_out_dir_is_rejected(ds, out, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="out_dir must be a folder path"):
        run(out, ds)
    assert os.listdir(tmp_path) == []


# --------------------------------------------------------------------------- 7. divergence


@pytest.mark.parametrize(("field", "value"), [
    ("lr", math.inf), ("weight_decay", math.inf), ("grad_clip", math.inf), ("lr", math.nan),
    ("momentum", math.nan), ("gamma", -math.inf), ("lr", 10**400), ("label_smoothing", "0.1"),
])
def test_config_numbers_must_be_finite(field, value):
    with pytest.raises(ValueError, match=f"{field} must be"):
        TrainConfig(**{field: value})


def test_a_diverging_run_stops_and_keeps_its_last_good_checkpoint(tmp_path, ds):
    poison = {"on": False}

    class Poisonable(nn.Module):
        def forward(self, x):
            return x * math.nan if poison["on"] else x

    def factory():
        return nn.Sequential(tiny(), Poisonable())

    def callback(record):
        poison["on"] = True  # epoch 2 diverges

    out = tmp_path / "r"
    with pytest.raises(DivergedError, match="diverged in epoch 2.*still holds epoch 1"):
        run(out, ds, factory=factory, callback=callback)
    assert load_run_checkpoint(out)[1]["epoch"] == 1
    assert [r["epoch"] for r in read_jsonl(out / "metrics.jsonl")] == [1]
    summary = read_json(out / "summary.json")  # strict JSON
    assert summary["epochs_completed"] == 1 and not (out / ".lock").exists()


def test_a_huge_learning_rate_is_stopped_not_reported_as_a_result(tmp_path, ds):
    with pytest.raises(DivergedError, match="diverged in epoch 1.*no checkpoint"):
        run(tmp_path / "r", ds, config=cfg(lr=1e30, grad_clip=None))
    assert not (tmp_path / "r" / "summary.json").exists()


def test_json_is_strict(tmp_path):
    with pytest.raises(ValueError):
        atomic_write_json(tmp_path / "a.json", {"x": math.nan})
    (tmp_path / "b.json").write_text('{"x": NaN}')
    with pytest.raises(ValueError, match="b.json is not valid JSON"):
        read_json(tmp_path / "b.json")
    (tmp_path / "c.jsonl").write_text('{"x": 1}\n{"x": Infinity}\n')
    with pytest.raises(ValueError, match="c.jsonl line 2 is not valid JSON"):
        read_jsonl(tmp_path / "c.jsonl")
    (tmp_path / "d.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="d.json must hold a JSON object"):
        read_json(tmp_path / "d.json")


# --------------------------------------------------------------------------- 13. the CLI

PRESET = "vgg11-c10-conv2d"


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    """A finished 1-epoch smoke run of PRESET (a few synthetic images), written by the CLI."""
    import convnn.data
    from convnn.__main__ import main as cli

    root = tmp_path_factory.mktemp("cli")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CONVNN_CACHE_DIR", str(root / "cache"))
        mp.delenv("CONVNN_DATA_DIR", raising=False)
        mp.setattr(convnn.data, "synthetic_dataset", few_synthetic_images)
        assert cli(["train", "--preset", PRESET, "--smoke", "--epochs", "1", "--out",
                    str(root / "base"), "--no-download", "--synthetic", "--device", "cpu"]) == 0
    return root / "base"


def _damage(kind):
    """Functions that damage a copy of the run folder; each returns the extra CLI args."""
    def checkpoint_bytes(content, sidecar=True):
        def f(run):
            (run / "checkpoint.pt").write_bytes(content(run))
            if not sidecar:
                (run / "checkpoint.pt.sha256").unlink()
        return f
    return {
        "empty checkpoint": checkpoint_bytes(lambda run: b""),
        "truncated checkpoint": checkpoint_bytes(
            lambda run: (run / "checkpoint.pt").read_bytes()[:5000]),
        "truncated checkpoint, no checksum": checkpoint_bytes(
            lambda run: (run / "checkpoint.pt").read_bytes()[:5000], sidecar=False),
        "random checkpoint, no checksum": checkpoint_bytes(
            lambda run: os.urandom(4096), sidecar=False),
        "config.json a list": lambda run: (run / "config.json").write_text("[1, 2]"),
        "config.json not JSON": lambda run: (run / "config.json").write_text("{oops"),
        "config.json empty": lambda run: (run / "config.json").write_text(""),
        "metrics.jsonl deleted": lambda run: (run / "metrics.jsonl").unlink(),
        "checkpoint.pt deleted": lambda run: (run / "checkpoint.pt").unlink(),
        "run folder missing": lambda run: __import__("shutil").rmtree(run),
    }[kind]


CLI_SCENARIOS = [
    # (name, damage or None, command (RUN = the damaged copy), fragment of the error)
    ("empty checkpoint", "empty checkpoint", ["eval", "--run", "RUN"], "checkpoint.pt is empty"),
    ("truncated checkpoint", "truncated checkpoint", ["eval", "--run", "RUN"],
     "does not match its SHA-256"),
    ("truncated checkpoint, resume", "truncated checkpoint, no checksum", ["RESUME"],
     "checkpoint.pt is not a readable checkpoint"),
    ("random checkpoint", "random checkpoint, no checksum", ["eval", "--run", "RUN"],
     "checkpoint.pt is not a readable checkpoint"),
    ("config.json a list", "config.json a list", ["eval", "--run", "RUN"],
     "config.json must hold a JSON object, got list"),
    ("config.json a list, resume", "config.json a list", ["RESUME"],
     "config.json must hold a JSON object"),
    ("config.json not JSON", "config.json not JSON", ["eval", "--run", "RUN"],
     "config.json is not valid JSON"),
    ("config.json empty, resume", "config.json empty", ["RESUME"],
     "config.json is not valid JSON"),
    ("metrics.jsonl deleted, resume", "metrics.jsonl deleted", ["RESUME"],
     "metrics.jsonl is missing"),
    ("checkpoint.pt deleted, resume", "checkpoint.pt deleted", ["RESUME"],
     "checkpoint.pt is missing"),
    ("checkpoint.pt deleted, eval", "checkpoint.pt deleted", ["eval", "--run", "RUN"],
     "checkpoint.pt does not exist"),
    ("no run folder, eval", "run folder missing", ["eval", "--run", "RUN"], "does not exist"),
    ("run exists, no --resume", None, ["TRAIN"], "already holds a run"),
    ("--device tpu", None, ["TRAIN", "--device", "tpu"], "device must be 'cpu', 'cuda'"),
    ("--device tpu, eval", None, ["eval", "--run", "RUN", "--device", "tpu"],
     "device must be"),
    ("--out under a file", None, ["TRAIN", "--out", "RUN/config.json/sub"],
     "cannot use"),
    ("--out a file", None, ["TRAIN", "--out", "RUN/config.json"], "cannot use"),
    ("--out empty", None, ["TRAIN", "--out", ""], "out_dir must be a folder path"),
    ("--epochs 0", None, ["TRAIN", "--out", "RUN/new", "--epochs", "0"], "epochs must be >= 1"),
    ("--batch-size -1", None, ["TRAIN", "--out", "RUN/new", "--batch-size", "-1"],
     "batch_size must be >= 1"),
    ("--workers on CIFAR", None, ["TRAIN", "--out", "RUN/new", "--workers", "2"],
     "applies to streamed datasets (ImageNet) only"),
    ("unknown preset", None, ["train", "--preset", "VGG11-C10-CONV", "--smoke"],
     "'vgg11-c10-conv2d'"),
    ("synthetic run, eval", None, ["eval", "--run", "RUN"], "trained on synthetic data"),
    ("presets --table 99", None, ["presets", "--table", "99"], "the tables are 6.1, 6.2"),
    ("presets no match", None, ["presets", "vgg11-c10-conv2"], "did you mean vgg11-c10-conv2d"),
]
if not torch.cuda.is_available():
    CLI_SCENARIOS.append(("--device cuda without a GPU", None, ["TRAIN", "--device", "cuda"],
                          "no CUDA GPU is available"))


@pytest.mark.parametrize(("damage", "command", "fragment"),
                         [s[1:] for s in CLI_SCENARIOS], ids=[s[0] for s in CLI_SCENARIOS])
def test_cli_user_errors_are_one_line_with_exit_2(cli_run, tmp_path, capsys, monkeypatch,
                                                  damage, command, fragment):
    import shutil

    import convnn.data
    from convnn.__main__ import main as cli

    monkeypatch.setenv("CONVNN_CACHE_DIR", str(cli_run.parent / "cache"))
    monkeypatch.delenv("CONVNN_DATA_DIR", raising=False)
    monkeypatch.setattr(convnn.data, "synthetic_dataset", few_synthetic_images)  # as cli_run
    monkeypatch.chdir(tmp_path)  # where an empty --out would write
    run_dir = tmp_path / "run"
    shutil.copytree(cli_run, run_dir)
    if damage:
        _damage(damage)(run_dir)
    before = snapshot(run_dir) if run_dir.exists() else None
    train_args = ["train", "--preset", PRESET, "--smoke", "--synthetic", "--no-download",
                  "--device", "cpu"]
    args = []
    for a in command:
        if a == "TRAIN":
            args += [*train_args, "--epochs", "2", "--out", str(run_dir)]
        elif a == "RESUME":
            args += [*train_args, "--epochs", "2", "--out", str(run_dir), "--resume"]
        else:
            args.append(a.replace("RUN", str(run_dir)))
    capsys.readouterr()
    assert cli(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert fragment in err, err
    if before is not None:
        assert snapshot(run_dir) == before  # nothing changed, nothing lost


def test_cli_state_dict_mismatch_is_a_clear_error(tmp_path, ds):
    from convnn.train import evaluate_run

    run(tmp_path / "r", ds)
    def wide():
        return nn.Sequential(ConvNN2d(3, 8, k=3, sampling="random", candidates=3), nn.ReLU(),
                             nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))

    with pytest.raises(RunFolderError, match="checkpoint.pt do not fit the model.*size mism"):
        evaluate_run(tmp_path / "r", wide, ds, device="cpu")


def test_cli_prints_a_traceback_only_with_debug(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text('{"train": {}}')
    (tmp_path / "run" / "checkpoint.pt").write_bytes(b"")
    command = [sys.executable, "-m", "convnn", "eval", "--run", str(tmp_path / "run")]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    plain = subprocess.run(command, capture_output=True, text=True, cwd=root, check=False)
    assert plain.returncode == 2 and "Traceback" not in plain.stderr
    empty = tmp_path / "run" / "checkpoint.pt"
    assert plain.stderr.strip().splitlines() == [
        f"error: {empty} is empty; restore it or start the run again"]
    debug = subprocess.run([*command, "--debug"], capture_output=True, text=True, cwd=root,
                           check=False)
    assert debug.returncode == 1 and "Traceback" in debug.stderr


def test_cli_rejects_abbreviated_flags(capsys):
    from convnn.__main__ import main as cli

    with pytest.raises(SystemExit) as exit_info:
        cli(["train", "--preset", PRESET, "--smo"])
    assert exit_info.value.code == 2
    assert "unrecognized arguments: --smo" in capsys.readouterr().err


def test_damaged_decoded_cache_is_rebuilt_with_a_note(tmp_path, monkeypatch, capsys):
    import numpy as np

    from convnn import data

    calls = []
    decoded = {"train_images": np.arange(2 * 4 * 3, dtype=np.uint8).reshape(2, 2, 2, 3),
               "train_labels": np.array([0, 1]), "test_images": np.zeros((1, 2, 2, 3), np.uint8),
               "test_labels": np.array([1]), "classes": np.array(["a", "b"])}
    monkeypatch.setattr(data, "_read_tree", lambda path: [])
    monkeypatch.setattr(data, "_decode_items",
                        lambda items, path, name, progress: calls.append(1) or dict(decoded))
    (tmp_path / "tree").mkdir()

    def load():
        return data._load_decoded("cifar10", "tree", tmp_path / "tree", tmp_path / "cache",
                                  False)

    first = load()
    (cache,) = (tmp_path / "cache" / "decoded").iterdir()
    cache.write_bytes(cache.read_bytes()[:40])  # truncated: a BadZipFile
    again = load()
    assert np.array_equal(first["train_images"], again["train_images"]) and len(calls) == 2
    assert "is damaged" in capsys.readouterr().err
    load()
    assert len(calls) == 2  # repaired: read from the cache again
    # a valid but altered cache (one pixel), and one missing a key: rebuilt, never used
    with np.load(cache) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["train_images"][1, 0, 0, 0] ^= 1
    np.savez(cache, **arrays)
    assert np.array_equal(load()["train_images"], decoded["train_images"]) and len(calls) == 3
    assert "train_images does not match the digest" in capsys.readouterr().err
    del arrays["test_labels"]
    np.savez(cache, **arrays)
    assert np.array_equal(load()["test_labels"], decoded["test_labels"]) and len(calls) == 4
    assert "it lacks test_labels" in capsys.readouterr().err


# --------------------------------------------------------------------------- 14. presets


def test_preset_search_matches_whole_words_case_insensitively(capsys):
    from convnn.__main__ import main as cli
    from convnn.experiments import get_preset, list_presets

    c10 = [p.name for p in list_presets("c10")]
    assert c10 and all("-c10-" in n for n in c10) and not any("c100" in n for n in c10)
    assert [p.name for p in list_presets("vgg11 c10 branching")] == [
        p.name for p in list_presets("VGG11 C10 Branching")]
    assert "vgg11-c10-conv2d" in [p.name for p in list_presets("VGG11-C10-CONV2D")]
    assert get_preset("VGG11-C10-CONV2D").name == "vgg11-c10-conv2d"
    assert cli(["presets", "c10", "--table", "6.2"]) == 0
    out = capsys.readouterr().out
    assert out and "c100" not in out


# --------------------------------------------------------------------------- 8-11. layers

LAYERS = {
    "ConvNN2d": (ConvNN2d.from_config, {"in_channels": 3, "out_channels": 4, "k": 3}, (2, 3, 6, 6)),
    "ConvNN2d-random": (ConvNN2d.from_config, {"in_channels": 3, "out_channels": 4, "k": 3,
                                   "sampling": "random", "candidates": 3}, (2, 3, 6, 6)),
    "ConvNNAttention": (ConvNNAttention.from_config, {"dim": 8, "num_heads": 2, "k": 3}, (2, 5, 8)),
    "BranchingConv2d": (BranchingConv2d, {"in_channels": 3, "out_channels": 4, "k": 3},
                        (2, 3, 6, 6)),
    "HybridTokenMixer": (HybridTokenMixer, {"dim": 8, "num_heads": 2, "k": 3}, (2, 5, 8)),
}

INT_BAD = [0, -1, 2.5, "3", None, True, math.nan, math.inf]
BOOL_BAD = ["no", "False", 1, 0, 0.0, None]
OPT_BOOL_BAD = ["no", "yes", 1, 0, 1.0]
FLOAT_BAD = [math.nan, math.inf, -math.inf, "0.5", True, None]
FRACTION_BAD = [*FLOAT_BAD, -0.1, 1.5]
CHOICE_BAD = ["bogus", 1, None, True]
ARGS = {
    "ConvNN2d": {"in_channels": INT_BAD, "out_channels": INT_BAD, "k": INT_BAD,
                 "padding": [-1, 1.5, "1", None, True], "seed": [-1, 1.5, "abc", None, True],
                 "bias": BOOL_BAD, "self_first": OPT_BOOL_BAD, "sort_by_position": OPT_BOOL_BAD,
                 "mix": FRACTION_BAD, "selection": CHOICE_BAD, "similarity": ["bogus", 1, True],
                 "sampling": CHOICE_BAD, "weighting": CHOICE_BAD, "aggregation": CHOICE_BAD,
                 "backend": ["bogus", 1, True], "eval_sampling": CHOICE_BAD,
                 "candidate_layout": CHOICE_BAD},
    "ConvNN2d-random": {"candidates": [0, -1, 2.5, "3", None, True]},
    "ConvNNAttention": {"dim": INT_BAD, "num_heads": [*INT_BAD, 3], "k": INT_BAD,
                        "seed": [-1, 1.5, "abc", None, True], "bias": BOOL_BAD,
                        "self_first": BOOL_BAD, "coord_scale": FLOAT_BAD,
                        "attn_dropout": FRACTION_BAD, "selection": CHOICE_BAD,
                        "weighting": CHOICE_BAD, "aggregation": CHOICE_BAD,
                        "backend": ["bogus", 1, True], "options": [{"seed": 1}, "paper"]},
    "BranchingConv2d": {"in_channels": INT_BAD, "out_channels": INT_BAD, "ratio": FRACTION_BAD,
                        "kernel_size": INT_BAD, "conv_bias": BOOL_BAD, "bias": BOOL_BAD,
                        "seed": ["abc", -1], "mix": FRACTION_BAD},
    "HybridTokenMixer": {"dim": INT_BAD, "ratio": [*FRACTION_BAD, 0.0, 1.0],
                         "partner": CHOICE_BAD, "attn_dropout": FRACTION_BAD,
                         "coord_scale": FLOAT_BAD, "self_first": BOOL_BAD},
}
CONSTRUCTOR_CASES = [(layer, arg, value) for layer, args in ARGS.items()
                     for arg, values in args.items() for value in values]


def _names_it(err: BaseException, arg: str) -> bool:
    return arg in str(err)


@pytest.mark.parametrize(("layer", "arg", "value"), CONSTRUCTOR_CASES,
                         ids=[f"{lay}-{a}-{v!r}" for lay, a, v in CONSTRUCTOR_CASES])
def test_fuzz_constructors_reject_bad_values_naming_the_argument(layer, arg, value):
    cls, kwargs, _ = LAYERS[layer]
    with pytest.raises((ValueError, TypeError)) as info:
        cls(**(kwargs | {arg: value}))
    assert _names_it(info.value, arg), str(info.value)


def _bad_inputs(shape):
    good = torch.randn(*shape)
    return {
        "numpy array": good.numpy(),
        "list": good.tolist(),
        "None": None,
        "int tensor": torch.ones(*shape, dtype=torch.long),
        "bool tensor": torch.ones(*shape, dtype=torch.bool),
        "float64 tensor": good.double(),
        "float16 tensor": good.half(),
        "one dim fewer": good[0],
        "one dim more": good[None],
        "wrong width": torch.randn(*shape[:-1], shape[-1] + 1) if len(shape) == 3
        else torch.randn(shape[0], shape[1] + 1, *shape[2:]),
    }


FORWARD_CASES = [(layer, bad) for layer in LAYERS for bad in _bad_inputs((2, 3, 6, 6))]


@pytest.mark.parametrize(("layer", "bad"), FORWARD_CASES,
                         ids=[f"{lay}-{b}" for lay, b in FORWARD_CASES])
def test_fuzz_forward_rejects_bad_inputs_naming_the_input(layer, bad):
    cls, kwargs, shape = LAYERS[layer]
    x = _bad_inputs(shape)[bad]
    with pytest.raises((ValueError, TypeError)) as info:
        cls(**kwargs)(x)
    assert "input" in str(info.value) or "x " in str(info.value), str(info.value)
    if bad in ("numpy array", "list"):
        assert isinstance(info.value, TypeError) and "torch.Tensor" in str(info.value)
    if bad in ("int tensor", "bool tensor"):
        assert "floating" in str(info.value)
    if bad.startswith("float"):
        assert "dtype" in str(info.value)


@pytest.mark.parametrize("layer", list(LAYERS))
def test_empty_batch_gives_an_empty_output(layer):
    cls, kwargs, shape = LAYERS[layer]
    module = cls(**kwargs)
    full = module(torch.randn(*shape))
    out = module(torch.randn(0, *shape[1:]))
    assert out.shape == (0, *full.shape[1:])
    out.sum().backward()  # in the graph, as nn.Conv2d's empty output


def test_empty_batch_through_a_model():
    from convnn.experiments import get_preset, reduced
    from convnn.models import build_model

    for name in ("vgg11-c10-branching-r0.5", "vit-tiny-c10-convnn-random-r32-k9"):
        net = build_model(reduced(get_preset(name))[0]).eval()
        assert net(torch.randn(0, 3, 32, 32)).shape == (0, 10)


def test_string_flags_and_nan_scale_are_not_taken_as_values():
    for kwargs in ({"self_first": "no"}, {"bias": "no"}, {"sort_by_position": "no"}):
        with pytest.raises(TypeError, match=f"{next(iter(kwargs))} must be True or False"):
            ConvNN2d.from_config(3, 4, k=3, **kwargs)
    with pytest.raises(ValueError, match="coord_scale must be a finite number"):
        ConvNNAttention(8, 2, k=3, selection="mixed",
                        options=ConvNNAttentionOptions(coord_scale=math.nan))
    with pytest.raises(ValueError, match="seed must be an integer"):
        ConvNN2d(3, 4, k=3, sampling="random", candidates=3, options=ConvNN2dOptions(seed="abc"))


def test_autocast_keeps_running_mixed_dtypes():
    layer = ConvNN2d(3, 4, k=3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert layer(torch.randn(2, 3, 6, 6).bfloat16()).shape == (2, 4, 6, 6)


@pytest.mark.parametrize(("call", "arg"), [
    (lambda v, i: ops.gather_neighbours(v, i), "indices"),
    (lambda v, i: ops.gather_aggregate(v, i, None, torch.ones(4, 4, 2)), "indices"),
    (lambda v, i: ops.aggregate_reference(v, i, None, torch.ones(4, 4, 2)), "indices"),
])
@pytest.mark.parametrize("bad", ["out of range", "negative", "float", "wrong rank",
                                 "wrong batch", "list"])
def test_ops_check_index_arguments(call, arg, bad):
    values = torch.randn(2, 5, 4)
    index = {"out of range": torch.tensor([[0, 5], [1, 2]]),
             "negative": torch.tensor([[0, -1], [1, 2]]),
             "float": torch.zeros(3, 2),
             "wrong rank": torch.zeros(2, dtype=torch.long),
             "wrong batch": torch.zeros(3, 3, 2, dtype=torch.long),
             "list": [[0, 1]]}[bad]
    with pytest.raises((ValueError, TypeError), match=arg):
        call(values, index)


@pytest.mark.parametrize("name", ["query_positions", "candidate_positions"])
def test_ops_select_checks_positions(name):
    q = torch.randn(1, 4, 3)
    bad = {"query_positions": torch.tensor([0, 1, 2, 9]),
           "candidate_positions": torch.tensor([0, 7])}
    kwargs = {name: bad[name]} | ({"self_first": True} if name == "candidate_positions" else {})
    with pytest.raises(ValueError, match=f"{name} must hold indices in \\[0, 4\\)"):
        ops.select_neighbours(q, q, 2, "dot", **kwargs)


# --------------------------------------------------------------------------- float16 (item 12)
@pytest.mark.parametrize("similarity", ["dot", "cosine", "euclidean"])
@pytest.mark.parametrize("weighting", ["ones", "softmax", "similarity"])
@pytest.mark.parametrize("kind", ["2d", "attention"])
def test_float16_stays_finite_wherever_the_result_fits_in_float16(similarity, weighting, kind):
    """Scores and weights are computed in float32, so a float16 layer gives finite outputs and
    input gradients whenever the exact (float32) result fits in float16. (With similarity
    weighting, ρ multiplies the values by their raw scores: for large inputs the *result*
    exceeds float16's range, which no baseline shares, so those inputs are out of scope.)"""
    torch.manual_seed(0)
    if kind == "2d":
        layer = ConvNN2d(8, 8, k=9, similarity=similarity, weighting=weighting)
        x = 10 * torch.randn(2, 8, 8, 8)
    else:
        layer = ConvNNAttention(32, num_heads=2, k=9, similarity=similarity, weighting=weighting)
        x = 10 * torch.randn(2, 20, 32)
    half = layer.half()
    xh = x.half().requires_grad_()
    # the same float16 numbers, computed in float32: selection sees identical inputs
    exact = copy.deepcopy(half).float()(xh.detach().float())
    assert exact.abs().max() < 0.25 * torch.finfo(torch.float16).max  # in range, with margin
    out = half(xh)
    out.float().square().mean().backward()
    assert torch.isfinite(out).all() and torch.isfinite(xh.grad).all()
    assert ((out.float() - exact).abs().max() / exact.abs().max()) < 0.02
