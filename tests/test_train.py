"""Tests of convnn.train and convnn._io: the config, crash-safe run folders, exact resume,
learning on synthetic data and 2-process DDP on the CPU (gloo). Everything runs on the CPU
with tiny models defined here, so it does not depend on convnn.models."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

from convnn import ConvNN2d
from convnn import train as train_mod
from convnn._io import (
    append_jsonl_atomic,
    atomic_torch_save,
    atomic_write_json,
    atomic_write_text,
    git_commit,
)
from convnn.data import synthetic_dataset
from convnn.imagenet import load_imagenet, write_synthetic_imagenet
from convnn.run_folder import RunFolder
from convnn.train import (
    VOLATILE_FIELDS,
    TrainConfig,
    evaluate,
    evaluate_run,
    fit,
    load_run_checkpoint,
    lr_at,
    set_eval_sampling,
    summarize,
)

REPO_ROOT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- tiny models


def convnn_model() -> nn.Module:
    """Random candidates + dropout: training consumes the global RNG on every step."""
    return nn.Sequential(
        ConvNN2d(3, 8, k=5, sampling="random", candidates=3),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Dropout(0.2),
        nn.Linear(32, 4),
    )


def convnet() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 16, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 4),
    )


@pytest.fixture(scope="module")
def ds():
    return synthetic_dataset(n_train=256, n_test=64, num_classes=4, image_size=16)


def small_config(**kw) -> TrainConfig:
    base = {"lr": 3e-3, "epochs": 3, "batch_size": 64, "deterministic": True, "log_every": 0}
    base.update(kw)
    return TrainConfig(**base)


def quiet(out, ds, factory=convnn_model, config=None, **kw):
    kw.setdefault("device", "cpu")
    return fit(factory, ds, config or small_config(), out, progress=False, log=None, **kw)


def stable(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in VOLATILE_FIELDS} for r in records]


class Killed(Exception):
    pass


def kill_after(epoch: int):
    def callback(record):
        if record["epoch"] == epoch:
            raise Killed

    return callback


# --------------------------------------------------------------------------- _io


def _logs(run_dir) -> list[dict]:
    """The metrics records of a run folder, through its reader."""
    return RunFolder.read(run_dir, checkpoint="none").records


def test_atomic_writers(tmp_path):
    p = tmp_path / "sub" / "a.txt"
    atomic_write_text(p, "hello\n")
    assert p.read_text() == "hello\n"
    atomic_write_json(tmp_path / "a.json", {"x": [1, 2]})
    assert json.loads((tmp_path / "a.json").read_text()) == {"x": [1, 2]}
    m = tmp_path / "m.jsonl"
    append_jsonl_atomic(m, {"epoch": 1})
    m.write_text(m.read_text().rstrip("\n"))  # a file without a final newline is repaired
    append_jsonl_atomic(m, {"epoch": 2})
    assert [json.loads(line) for line in m.read_text().splitlines()] == [{"epoch": 1},
                                                                         {"epoch": 2}]
    atomic_torch_save({"w": torch.arange(3)}, tmp_path / "c.pt")
    assert torch.equal(torch.load(tmp_path / "c.pt", weights_only=True)["w"], torch.arange(3))
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]  # no temporaries left


def test_atomic_write_keeps_old_content_when_writing_fails(tmp_path):
    p = tmp_path / "c.pt"
    atomic_torch_save({"v": 1}, p)
    with pytest.raises(Exception):  # noqa: B017 - pickling a lambda fails mid-write
        atomic_torch_save({"v": lambda: 0}, p)
    assert torch.load(p, weights_only=True) == {"v": 1}
    assert sorted(os.listdir(tmp_path)) == ["c.pt"]


def test_git_commit_never_fails(tmp_path):
    assert git_commit(tmp_path) == "unknown"  # not a repository
    assert git_commit(tmp_path / "does-not-exist") == "unknown"
    assert isinstance(git_commit(), str)


# --------------------------------------------------------------------------- config


def test_config_defaults_are_the_paper_protocol():
    c = TrainConfig()
    assert (c.optimizer, c.lr, c.weight_decay, c.schedule) == ("adamw", 1e-4, 0.01, "none")
    assert (c.epochs, c.batch_size, c.grad_clip, c.seed, c.augment) == (150, 256, 1.0, 42, False)


def test_config_round_trip_and_unknown_keys():
    c = TrainConfig(optimizer="sgd", betas=(0.8, 0.9), resize=224, schedule="cosine")
    d = json.loads(json.dumps(c.to_dict()))
    assert TrainConfig.from_dict(d) == c
    with pytest.raises(ValueError, match="unknown TrainConfig keys.*'lrr'"):
        TrainConfig.from_dict({"lrr": 0.1})


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("optimizer", "lion"),
        ("lr", 0.0),
        ("lr", "1e-4"),
        ("weight_decay", -1.0),
        ("betas", (0.9,)),
        ("schedule", "linear"),
        ("epochs", 0),
        ("batch_size", 2.5),
        ("grad_clip", -1.0),
        ("amp", "fp8"),
        ("compile", 1),
        ("seed", -1),
        ("eval_sampling", "random"),
        ("resize", 0),
        ("label_smoothing", 2.0),
    ],
)
def test_config_rejects_bad_values(field, value):
    with pytest.raises(ValueError, match=field.split("[")[0]):
        TrainConfig(**{field: value})


def test_lr_schedules():
    c = TrainConfig(lr=1.0, epochs=10)
    assert [lr_at(c, e) for e in (0, 9)] == [1.0, 1.0]
    c = TrainConfig(lr=1.0, epochs=10, schedule="step", step_size=3, gamma=0.5)
    assert [lr_at(c, e) for e in range(7)] == [1, 1, 1, 0.5, 0.5, 0.5, 0.25]
    c = TrainConfig(lr=1.0, epochs=12, schedule="cosine", warmup_epochs=2)
    assert lr_at(c, 0) == pytest.approx(1 / 3) and lr_at(c, 1) == pytest.approx(2 / 3)
    assert lr_at(c, 2) == 1.0 and lr_at(c, 7) == pytest.approx(0.5)
    assert 0 < lr_at(c, 11) < 0.03


def test_set_eval_sampling():
    m = nn.Sequential(ConvNN2d(3, 4, k=4, sampling="random", candidates=2), convnn_model())
    assert set_eval_sampling(m, "resample") == 2
    assert all(x.eval_sampling == "resample" for x in m.modules() if hasattr(x, "eval_sampling"))
    with pytest.raises(ValueError, match="eval_sampling"):
        set_eval_sampling(m, "never")


def test_train_rejects_bad_arguments(tmp_path, ds):
    with pytest.raises(ValueError, match="config"):
        fit(convnet, ds, {"lr": 1e-3}, tmp_path / "r")
    with pytest.raises(ValueError, match="dataset"):
        fit(convnet, "cifar10", small_config(), tmp_path / "r")
    with pytest.raises(ValueError, match="model_factory"):
        quiet(tmp_path / "r", ds, factory=42)
    with pytest.raises(ValueError, match="model_factory"):
        quiet(tmp_path / "r2", ds, factory=lambda: "not a module")
    with pytest.raises(ValueError, match="extra"):
        quiet(tmp_path / "r", ds, extra={"f": object()})
    with pytest.raises(ValueError, match="resume and overwrite"):
        quiet(tmp_path / "r", ds, resume=True, overwrite=True)


# --------------------------------------------------------------------------- evaluation


def test_evaluate_top5_with_fewer_than_five_classes(ds):
    torch.manual_seed(0)
    model = convnet()
    model.train()
    res = evaluate(model, ds.test_loader(16, "cpu"))
    assert res["count"] == 64 and res["top5"] == 100.0 and 0 <= res["top1"] <= 100
    assert model.training  # mode restored
    logits = torch.cat([model.eval()(x) for x, _ in ds.test_loader(64, "cpu")])
    loss = nn.functional.cross_entropy(logits, ds.test_labels)
    assert res["loss"] == pytest.approx(loss.item(), rel=1e-5)
    assert res["top1"] == pytest.approx(100 * (logits.argmax(1) == ds.test_labels).float().mean())


def test_summarize():
    recs = [{"epoch": i + 1, "test_top1": t, "epoch_seconds": 1.0, "train_loss": 0,
             "train_top1": 0, "train_top5": 0, "test_loss": 0, "test_top5": 0}
            for i, t in enumerate([10, 50, 40, 30, 20, 10, 20])]  # fmt: skip
    s = summarize(recs, parameters=7, epochs=7)
    assert (s["best_test_top1"], s["best_epoch"]) == (50, 2)
    assert s["last5_mean_test_top1"] == pytest.approx((40 + 30 + 20 + 10 + 20) / 5)
    assert s["epochs_completed"] == 7 and s["finished"] and s["total_seconds"] == 7.0
    assert summarize(recs[:2])["last5_mean_test_top1"] == 30


# --------------------------------------------------------------------------- run folders


def test_run_folder_contents(tmp_path, ds):
    out = tmp_path / "run"
    summary = quiet(out, ds, config=small_config(epochs=2), extra={"model": {"name": "tiny"}})
    assert sorted(os.listdir(out)) == ["checkpoint.pt", "checkpoint.pt.sha256", "config.json",
                                       "metrics.jsonl", "summary.json",
                                       "test_predictions.npz"]  # fmt: skip
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["train"] == small_config(epochs=2).to_dict()
    assert cfg["extra"] == {"model": {"name": "tiny"}}
    assert cfg["dataset"]["train_images"] == 256 and cfg["model"]["seeded"] is True
    assert cfg["run"]["amp_active"] == "off" and cfg["run"]["device"] == "cpu"
    records = _logs(out)
    assert [r["epoch"] for r in records] == [1, 2]
    want = {"epoch", "train_loss", "train_top1", "train_top5", "test_loss", "test_top1",
            "test_top5", "lr", "epoch_seconds", "images_per_second", "peak_memory_bytes",
            "peak_memory_kind", "device", "git_commit", "time"}  # fmt: skip
    assert want <= set(records[0])
    assert records[0]["test_images"] == 64 and records[0]["peak_memory_bytes"] > 0
    assert summary == json.loads((out / "summary.json").read_text())
    assert summary["epochs_completed"] == 2 and summary["finished"]
    assert summary["parameters"] == sum(p.numel() for p in convnn_model().parameters())
    assert summary["final"]["test_top1"] == records[-1]["test_top1"]

    config, ckpt = load_run_checkpoint(out)  # weights_only=True inside
    assert ckpt["epoch"] == 2 and config["train"]["epochs"] == 2
    res = evaluate_run(out, convnn_model, ds, device="cpu")
    assert res["epoch"] == 2 and res["top1"] == pytest.approx(records[-1]["test_top1"])

    with pytest.raises(FileExistsError, match="resume=True"):
        quiet(out, ds, config=small_config(epochs=2))
    quiet(out, ds, config=small_config(epochs=1), overwrite=True)
    assert len(_logs(out)) == 1
    with pytest.raises(FileNotFoundError):
        load_run_checkpoint(tmp_path / "nothing")


def test_progress_bar_and_log_lines(tmp_path, ds, monkeypatch, capsys):
    monkeypatch.setenv("CI", "1")
    assert not train_mod._progress_enabled(None)
    assert train_mod._progress_enabled(True)
    fit(convnet, ds, small_config(epochs=1), tmp_path / "r", progress=True, device="cpu")
    out, err = capsys.readouterr()
    assert "epoch 1/1  train loss" in out and "done: best test top1" in out
    assert "epoch 1/1:" in err  # the tqdm bar (on stderr)


def test_ready_module_warns_that_seed_did_not_apply(tmp_path, ds):
    with pytest.warns(UserWarning, match="seed did not control"):
        quiet(tmp_path / "r", ds, factory=convnet(), config=small_config(epochs=1))


# --------------------------------------------------------------------------- resume


def test_killed_and_resumed_run_equals_uninterrupted_run(tmp_path, ds):
    # eval_sampling="resample": evaluation also draws random candidates from the global RNG
    cfg = small_config(eval_sampling="resample")
    straight, broken = tmp_path / "straight", tmp_path / "broken"
    s1 = quiet(straight, ds, config=cfg)
    with pytest.raises(Killed):
        quiet(broken, ds, config=cfg, callback=kill_after(2))
    assert len(_logs(broken)) == 2
    assert json.loads((broken / "summary.json").read_text())["finished"] is False
    s2 = quiet(broken, ds, config=cfg, resume=True)

    assert stable(_logs(straight)) == stable(
        _logs(broken)
    )
    a, b = load_run_checkpoint(straight)[1], load_run_checkpoint(broken)[1]
    assert a["epoch"] == b["epoch"] == 3
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for k in ("best_test_top1", "best_epoch", "last5_mean_test_top1", "final", "parameters"):
        assert s1[k] == s2[k]
    assert json.loads((broken / "config.json").read_text())["resumed"][0]["from_epoch"] == 2


@pytest.fixture(scope="module")
def stream(tmp_path_factory):
    """A synthetic ImageNet-layout tree, streamed from JPEG files like ImageNet."""
    root = tmp_path_factory.mktemp("stream")
    write_synthetic_imagenet(root / "tree", num_classes=4, train_per_class=32,
                             test_per_class=8, image_size=24)
    return load_imagenet(root / "tree", image_size=16, cache_dir=root / "cache")


def test_killed_and_resumed_streamed_run_equals_uninterrupted_run(tmp_path, stream):
    # random-resized crops + flips: every sample's augmentation must be the same after resume
    cfg = small_config(eval_sampling="resample", augment=True)
    straight, broken = tmp_path / "straight", tmp_path / "broken"
    s1 = quiet(straight, stream, config=cfg)
    with pytest.raises(Killed):
        quiet(broken, stream, config=cfg, callback=kill_after(2))
    s2 = quiet(broken, stream, config=cfg, resume=True)
    assert stable(_logs(straight)) == stable(
        _logs(broken))
    a, b = load_run_checkpoint(straight)[1], load_run_checkpoint(broken)[1]
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert s1["final"] == s2["final"]
    info = json.loads((straight / "config.json").read_text())["dataset"]
    assert info["name"] == "imagenet" and info["image_size"] == [16, 16]
    assert info["source"].startswith("SYNTHETIC")
    with pytest.raises(ValueError, match="resize=32 applies to in-memory datasets only"):
        quiet(tmp_path / "resized", stream, config=small_config(resize=32))


def test_resume_without_rng_state_differs(tmp_path, ds, monkeypatch):
    """Control for the test above: the RNG state matters for this model."""
    cfg = small_config(epochs=2)
    quiet(tmp_path / "straight", ds, config=cfg)
    with pytest.raises(Killed):
        quiet(tmp_path / "broken", ds, config=cfg, callback=kill_after(1))
    monkeypatch.setattr(train_mod, "restore_rng", lambda *args: True)
    quiet(tmp_path / "broken", ds, config=cfg, resume=True)
    a, b = load_run_checkpoint(tmp_path / "straight")[1], load_run_checkpoint(tmp_path / "broken")[1]
    assert not all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


def test_resume_drops_log_lines_past_the_checkpoint(tmp_path, ds):
    out = tmp_path / "r"
    cfg = small_config(epochs=2, eval_sampling="resample")
    with pytest.raises(Killed):
        quiet(out, ds, config=cfg, callback=kill_after(1))
    lines = (out / "metrics.jsonl").read_text().splitlines()
    fake = json.loads(lines[0]) | {"epoch": 2, "test_top1": 99.0}
    (out / "metrics.jsonl").write_text(lines[0] + "\n" + json.dumps(fake) + "\n")  # crash
    quiet(out, ds, config=cfg, resume=True)
    records = _logs(out)
    assert [r["epoch"] for r in records] == [1, 2] and records[1]["test_top1"] != 99.0
    quiet(tmp_path / "ref", ds, config=cfg)
    assert stable(records) == stable(_logs(tmp_path / "ref"))


def test_resume_checks_config_and_extends_epochs(tmp_path, ds):
    out = tmp_path / "r"
    quiet(out, ds, config=small_config(epochs=1))
    with pytest.raises(ValueError, match="lr: 0.003 -> 0.1"):
        quiet(out, ds, config=small_config(epochs=1, lr=0.1), resume=True)
    s = quiet(out, ds, config=small_config(epochs=2), resume=True)  # more epochs is fine
    assert s["epochs_completed"] == 2 and len(_logs(out)) == 2
    s = quiet(out, ds, config=small_config(epochs=2), resume=True)  # finished: nothing to do
    assert s["epochs_completed"] == 2
    fresh = quiet(tmp_path / "fresh", ds, config=small_config(epochs=1), resume=True)
    assert fresh["epochs_completed"] == 1  # resume=True without a checkpoint starts afresh


# --------------------------------------------------------------------------- learning


def test_tiny_convnet_learns_synthetic_data(tmp_path):
    ds = synthetic_dataset(n_train=512, n_test=128, num_classes=4, image_size=16, seed=1)
    cfg = TrainConfig(lr=5e-3, epochs=2, batch_size=32, seed=0, log_every=0)
    s = fit(convnet, ds, cfg, tmp_path / "r", progress=False, log=None, device="cpu")
    assert s["final"]["test_top1"] > 70.0  # chance is 25%; seeds 0-4 gave 87-100%


# --------------------------------------------------------------------------- DDP


DDP_SCRIPT = """
import os, sys, torch
from torch import nn
from convnn.data import synthetic_dataset
from convnn.imagenet import load_imagenet, write_synthetic_imagenet
from convnn.train import TrainConfig, fit

built = []

def factory():
    m = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
                      nn.Flatten(), nn.Dropout(0.2), nn.Linear(32, 4))
    built.append(m)
    return m

out = sys.argv[1]
if len(sys.argv) > 2:  # streamed from an image tree (the ImageNet loader)
    from convnn.imagenet import load_imagenet
    ds = load_imagenet(sys.argv[2], image_size=8, cache_dir=out + "/cache")
else:
    ds = synthetic_dataset(n_train=128, n_test=33, num_classes=4, image_size=8)
cfg = TrainConfig(lr=1e-2, epochs=2, batch_size=32, seed=0, log_every=0)
summary = fit(factory, ds, cfg, out + "/run", progress=False, device="cpu")  # gloo
import torch.distributed as dist
assert not dist.is_initialized()  # the trainer destroyed the group it created
rank = int(os.environ["RANK"])
torch.save({"params": built[0].state_dict(), "summary": summary}, f"{out}/rank{rank}.pt")
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("data", ["memory", "stream"])
def test_ddp_two_cpu_processes(tmp_path, data):
    script = tmp_path / "ddp_train.py"
    script.write_text(textwrap.dedent(DDP_SCRIPT))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO_ROOT))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), str(script),
           str(tmp_path)]  # fmt: skip
    if data == "stream":  # 3 classes: 129 training images (one left out), 33 test images
        tree = write_synthetic_imagenet(tmp_path / "tree", num_classes=3, train_per_class=43,
                                        test_per_class=11, image_size=16)
        cmd.append(str(tree))
    proc = subprocess.run(cmd, check=False, env=env, capture_output=True, text=True,
                          timeout=3600)  # an hour: a hang guard only
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    for k in r0["params"]:  # gradients were averaged: the replicas never drifted apart
        assert torch.equal(r0["params"][k], r1["params"][k]), k
    for s in (r0["summary"], r1["summary"]):
        s.pop("total_seconds")  # each rank's own clock
    assert r0["summary"] == r1["summary"]
    ckpt = load_run_checkpoint(tmp_path / "run")[1]
    for k in r0["params"]:
        assert torch.equal(ckpt["model"][k], r0["params"][k])
    assert len(ckpt["rng"]) == 2 and not torch.equal(
        ckpt["rng"][0]["torch_cpu"], ckpt["rng"][1]["torch_cpu"]
    )  # each rank its own dropout stream, both saved
    records = _logs(tmp_path / "run")
    assert [r["epoch"] for r in records] == [1, 2]  # written once, by rank 0
    assert all(r["world_size"] == 2 for r in records)
    assert records[0]["train_images"] == 128 and records[0]["test_images"] == 33  # all counted
    assert proc.stdout.count("epoch 1/2  train loss") == 1  # only rank 0 logs
    # the final test predictions: every rank's slice and rank 0's remainder, in order
    from convnn.run_folder import read_predictions

    found = read_predictions(tmp_path / "run")
    assert found.epoch == 2 and found.predicted.shape == (33,)
    assert found.top1 == pytest.approx(records[-1]["test_top1"])
    if data == "memory":
        labels = synthetic_dataset(n_train=128, n_test=33, num_classes=4, image_size=8).test_labels
        assert found.labels.tolist() == labels.tolist()


# --------------------------------------------------------------------------- CUDA

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("amp", ["off", "bf16", "fp16"])
def test_cuda_amp_learns(tmp_path, amp):
    ds = synthetic_dataset(n_train=512, n_test=128, num_classes=4, image_size=16, seed=1)
    cfg = TrainConfig(lr=5e-3, epochs=2, batch_size=32, seed=0, log_every=0, amp=amp)
    s = fit(convnet, ds, cfg, tmp_path / "r", progress=False, log=None, device="cuda")
    assert s["final"]["test_top1"] > 70.0
    cfg_json = json.loads((tmp_path / "r" / "config.json").read_text())
    assert cfg_json["run"]["amp_active"] == amp
    rec = _logs(tmp_path / "r")[-1]
    assert rec["peak_memory_kind"] == "cuda_max_memory_allocated" and rec["peak_memory_bytes"] > 0
    assert rec["device"] == torch.cuda.get_device_name()
    res = evaluate_run(tmp_path / "r", convnet, ds, device="cuda")
    assert res["top1"] == pytest.approx(rec["test_top1"])


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("amp", ["off", "fp16"])
def test_cuda_killed_and_resumed_run_equals_uninterrupted_run(tmp_path, ds, amp):
    cfg = small_config(amp=amp, eval_sampling="resample")
    quiet(tmp_path / "a", ds, config=cfg, device="cuda")
    with pytest.raises(Killed):
        quiet(tmp_path / "b", ds, config=cfg, device="cuda", callback=kill_after(2))
    ckpt = load_run_checkpoint(tmp_path / "b")[1]
    assert "torch_cuda" in ckpt["rng"][0] and (amp != "fp16" or ckpt["scaler"])
    quiet(tmp_path / "b", ds, config=cfg, device="cuda", resume=True)
    assert stable(_logs(tmp_path / "a")) == stable(
        _logs(tmp_path / "b")
    )
    a, b = load_run_checkpoint(tmp_path / "a")[1], load_run_checkpoint(tmp_path / "b")[1]
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k


@pytest.mark.gpu
@cuda
def test_cuda_compile(tmp_path, ds):
    cfg = small_config(epochs=2, compile=True, amp="bf16", deterministic=False)
    s = quiet(tmp_path / "r", ds, factory=convnet, config=cfg, device="cuda")
    assert s["epochs_completed"] == 2
    ckpt = load_run_checkpoint(tmp_path / "r")[1]
    assert not any(k.startswith("_orig_mod") for k in ckpt["model"])  # the plain module's keys


def test_a_run_saved_before_a_field_rename_still_resumes(tmp_path, ds):
    """``ModelConfig.heads`` became ``num_heads``: a run folder whose ``extra.model`` has the
    old name resumes under the new one, and a real change is still refused."""
    cfg = small_config(epochs=3, checkpoint_minutes=0)
    old_extra = {"model": {"name": "vit_tiny", "heads": 1}}
    with pytest.raises(Killed):
        quiet(tmp_path / "run", ds, config=cfg, extra=old_extra, callback=kill_after(1))
    with pytest.raises(train_mod.RunFolderError, match="num_heads"):
        quiet(tmp_path / "run", ds, config=cfg, resume=True,
              extra={"model": {"name": "vit_tiny", "num_heads": 3}})
    summary = quiet(tmp_path / "run", ds, config=cfg, resume=True,
                    extra={"model": {"name": "vit_tiny", "num_heads": 1}})
    assert summary["epochs_completed"] == 3


def test_fit_is_a_top_level_entry_point_and_the_module_is_a_plain_module(tmp_path, ds):
    import types

    import convnn
    from convnn import fit as top_level_fit

    assert "fit" in convnn.__all__ and top_level_fit is fit is train_mod.fit
    assert type(convnn.train) is types.ModuleType and not callable(convnn.train)
    cfg = small_config(epochs=1)
    summary = top_level_fit(convnn_model, ds, cfg, tmp_path / "a", progress=False, log=None,
                            device="cpu")
    assert summary["epochs_completed"] == 1
