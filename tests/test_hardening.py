"""Repros of the hardening issues, each a test: non-finite inputs, loader statistics, torch.func,
device mismatches, absurd ``k``, missing data without a download, the CLI's ``--debug`` and
multi-line messages, the offline note, ``eval`` downloading like ``train``, and the LICENSE
in the wheel."""

from __future__ import annotations

import math
import shutil
import subprocess
import sys
import types
import zipfile
from pathlib import Path

import pytest
import torch
from torch import nn

from convnn import data as D
from convnn import runner
from convnn.__main__ import main as cli
from convnn.experiments import get_preset
from convnn.layers import BranchingConv2d, ConvNN2d, ConvNNAttention

ROOT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- non-finite inputs
def _bad_fraction(out: torch.Tensor) -> float:
    return (~out.isfinite()).float().mean().item()


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
@pytest.mark.parametrize("options", [{}, {"similarity": "dot"}, {"similarity": "euclidean"},
                                     {"sampling": "random", "candidates": 6},
                                     {"weighting": "softmax"}],
                         ids=["cosine", "dot", "euclidean", "random", "softmax"])
def test_one_bad_pixel_spreads_no_further_than_in_a_convolution(bad, options):
    """One NaN or Inf pixel made every output of its image NaN (torch ranks NaN first, so the
    pixel was every pixel's neighbour). Non-finite candidates now rank last: the damage stays
    within what nn.Conv2d's 3x3 window spreads."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 16, 16)
    x[0, 1, 5, 7] = bad
    layer = ConvNN2d(3, 8, **options)
    conv = nn.Conv2d(3, 8, 3, padding=1)
    ours, theirs = _bad_fraction(layer(x)[0]), _bad_fraction(conv(x)[0])
    assert 0 < ours <= theirs, (ours, theirs)  # still visible, never poisoning the image
    assert _bad_fraction(layer(x)[1]) == 0  # the other image is untouched


def test_one_bad_token_does_not_spread_to_the_others():
    torch.manual_seed(0)
    layer = ConvNNAttention(16, 2, k=4)
    x = torch.randn(2, 20, 16)
    x[0, 3, 0] = float("nan")
    out = layer(x)
    finite = out[0].isfinite().all(-1)
    assert finite.sum() >= 19 and out[1].isfinite().all()  # 94 % of tokens were NaN


def test_a_bad_pixel_is_still_selected_when_fewer_than_k_are_finite():
    """The rule ranks non-finite scores last; it does not hide them where nothing else is
    left (k = every position)."""
    x = torch.randn(1, 2, 3, 3)
    x[0, 0, 1, 1] = float("nan")
    out = ConvNN2d(2, 4, k=9, padding=0)(x)
    assert not out.isfinite().all()


# --------------------------------------------------------------------------- loader statistics
@pytest.mark.parametrize(("mean", "std", "fragment"), [
    ((0.5, 0.5, 0.5), (math.nan, 0.2, 0.2), "std must have 3 values"),
    ((0.5, 0.5, 0.5), (math.inf, 0.2, 0.2), "std must have 3 values"),
    ((0.5, 0.5, 0.5), (0.0, 0.2, 0.2), "std must be positive"),
    ((0.5, 0.5, 0.5), (-1.0, 0.2, 0.2), "std must be positive"),
    ((0.5, 0.5, 0.5), (0.2, 0.2), "std must have 3 values"),
    ((0.5, 0.5, 0.5), 0.2, "std must have 3 values"),
    ((0.5, 0.5, 0.5), "abc", "std must have 3 values"),
    ((math.nan, 0.5, 0.5), (0.2, 0.2, 0.2), "mean must have 3 values"),
    ((0.5, 0.5, 0.5, 0.5), (0.2, 0.2, 0.2), "mean must have 3 values"),
    ((True, 0.5, 0.5), (0.2, 0.2, 0.2), "mean must have 3 values"),
])
def test_make_loader_statistics_are_checked(mean, std, fragment):
    images = torch.zeros(8, 4, 4, 3, dtype=torch.uint8)
    labels = torch.zeros(8, dtype=torch.long)
    with pytest.raises(ValueError, match=fragment):
        D.make_loader(images, labels, 4, mean=mean, std=std)
    loader = D.make_loader(images, labels, 4, mean=torch.tensor([0.1, 0.2, 0.3]),
                           std=[0.25, 0.25, 0.25])
    x, _ = next(iter(loader))
    assert x.isfinite().all()


# --------------------------------------------------------------------------- layer entry points
@pytest.mark.parametrize("make", [lambda: ConvNN2d(3, 4), lambda: BranchingConv2d(3, 4)],
                         ids=["convnn", "branching"])
def test_torch_func_transforms_are_a_clear_error(make):
    layer = make()
    x = torch.randn(2, 3, 6, 6)
    for transform in (lambda: torch.func.vmap(layer)(x),
                      lambda: torch.func.grad(lambda t: layer(t).sum())(x),
                      lambda: torch.func.grad(lambda p: torch.func.functional_call(
                          layer, p, (x,)).sum())(dict(layer.named_parameters()))):
        with pytest.raises(NotImplementedError, match=r"torch\.func transforms.*backward"):
            transform()
    x.requires_grad_(True)
    layer(x).sum().backward()  # ordinary autograd works
    assert x.grad is not None and x.grad.isfinite().all()


def test_attention_torch_func_is_a_clear_error():
    layer = ConvNNAttention(8, 2, k=3)
    with pytest.raises(NotImplementedError, match="torch.func"):
        torch.func.vmap(layer)(torch.randn(2, 5, 5, 8))


def test_a_device_mismatch_names_both_devices():
    meta = ConvNN2d(3, 4, device="meta")
    with pytest.raises(RuntimeError, match="input is on device cpu but the layer's weights "
                                           "are on meta"):
        meta(torch.randn(1, 3, 4, 4))
    with pytest.raises(RuntimeError, match="on device meta but .* on cpu"):
        ConvNNAttention(8, 2, k=3)(torch.randn(1, 5, 8, device="meta"))


@pytest.mark.parametrize("make", [lambda k: ConvNN2d(3, 4, k=k),
                                  lambda k: ConvNNAttention(8, 2, k=k)],
                         ids=["convnn", "attention"])
def test_an_absurd_k_is_a_clear_error_at_construction(make):
    with pytest.raises(ValueError, match=r"k must be <= 65536 .*got 1000000000"):
        make(10**9)
    assert make(9).k == 9


# --------------------------------------------------------------------------- missing data
def _no_data(monkeypatch, tmp_path):
    monkeypatch.setenv("CONVNN_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("CONVNN_DATA_DIR", str(tmp_path / "nonexistent"))


def test_missing_data_without_download_is_an_error_not_a_synthetic_run(tmp_path, monkeypatch,
                                                                        capsys):
    _no_data(monkeypatch, tmp_path)
    out = tmp_path / "run"
    rc = cli(["train", "--preset", "vgg11-c10-conv2d", "--smoke", "--data-dir",
              str(tmp_path / "nonexistent"), "--no-download", "--out", str(out),
              "--device", "cpu", "--epochs", "1"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: CIFAR-10 ('cifar10') was not found.\n"), err
    assert "Traceback" not in err and "\n  - " in err  # the bulleted list keeps its lines
    assert not (out / "metrics.jsonl").exists()


def test_synthetic_data_must_be_asked_for(tmp_path, monkeypatch):
    preset = get_preset("vgg11-c10-conv2d")
    _no_data(monkeypatch, tmp_path)
    notes = []
    ds = runner.load_preset_data(preset, smoke=True, download=False, log=notes.append,
                                 synthetic=True)
    assert ds.synthetic and "SYNTHETIC" in notes[0]
    with pytest.raises(ValueError, match="smoke runs only"):
        runner.load_preset_data(preset, smoke=False, synthetic=True)
    with pytest.raises(D.DatasetNotFoundError) as info:
        runner.load_preset_data(preset, smoke=True, download=False, log=notes.append)
    assert info.value.download_error is None


def test_a_failed_download_names_itself_and_how_to_provide_the_data(tmp_path, monkeypatch):
    """Offline (the download fails), a smoke run still runs on synthetic data, and its note
    says that the download failed and how to provide the data."""
    _no_data(monkeypatch, tmp_path)

    def offline(name, root, download):
        if download:
            raise OSError("<urlopen error [Errno -3] Temporary failure in name resolution>")
        raise RuntimeError("Dataset not found")

    monkeypatch.setattr(D, "_load_torchvision", offline)
    notes = []
    ds = runner.load_preset_data(get_preset("vgg11-c10-conv2d"), smoke=True, log=notes.append)
    assert ds.synthetic
    note = notes[0]
    assert "download failed (OSError: <urlopen error" in note
    assert "CONVNN_DATA_DIR" in note and "--data-dir" in note and "SYNTHETIC" in note


def test_eval_downloads_when_train_would(tmp_path, monkeypatch):
    calls = []

    def fake_load_dataset(name, **kwargs):
        calls.append(kwargs.get("download"))
        raise D.DatasetNotFoundError("stop here")

    config = {"extra": {"model": {"name": "vgg11"}, "dataset": {"name": "cifar10"}}}
    monkeypatch.setattr(runner, "load_run_checkpoint", lambda run_dir: (config, None))
    monkeypatch.setattr(runner, "ModelConfig", type("M", (), {
        "from_dict": staticmethod(lambda d: types.SimpleNamespace(image_size=None))}))
    monkeypatch.setattr(D, "load_dataset", fake_load_dataset)  # what the DATASETS loader calls
    for flags, expected in (([], True), (["--no-download"], False)):
        assert cli(["eval", "--run", str(tmp_path), "--device", "cpu", *flags]) == 2
        assert calls[-1] is expected


# --------------------------------------------------------------------------- the CLI
@pytest.mark.parametrize("where", ["before", "after"])
def test_debug_works_before_and_after_the_command(tmp_path, where):
    args = ["eval", "--run", str(tmp_path / "missing")]
    args = ["--debug", *args] if where == "before" else [*args, "--debug"]
    done = subprocess.run([sys.executable, "-m", "convnn", *args], capture_output=True,
                          text=True, cwd=ROOT, check=False)
    assert done.returncode == 1 and "Traceback" in done.stderr, done.stderr
    without = [a for a in args if a != "--debug"]
    plain = subprocess.run([sys.executable, "-m", "convnn", *without], capture_output=True,
                           text=True, cwd=ROOT, check=False)
    assert plain.returncode == 2 and "Traceback" not in plain.stderr


def test_cli_errors_keep_their_line_breaks(capsys, monkeypatch):
    from convnn import __main__ as M

    def fail(args):
        raise ValueError("two causes:\n  - the first\n\n  - the second   \n")

    monkeypatch.setattr(M, "_demo", fail)
    assert cli(["demo"]) == 2
    assert capsys.readouterr().err == "error: two causes:\n  - the first\n  - the second\n"


# --------------------------------------------------------------------------- the license
def test_the_license_is_mit_and_ships_in_the_wheel(tmp_path):
    import tomllib

    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License") and "convnn contributors" in text
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert meta["license"] == {"text": "MIT"}
    # a wheel of the package without its (large) data files: what it ships besides them
    src = tmp_path / "src"
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "convnn", src / "convnn",
                    ignore=shutil.ignore_patterns("__pycache__"))
    (src / "data").mkdir()
    shutil.copy(ROOT / "data" / "__init__.py", src / "data" / "__init__.py")
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps",
                           "--no-build-isolation", "-q", "-w", str(tmp_path / "whl"), str(src)],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    (wheel,) = (tmp_path / "whl").glob("convnn-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        licenses = [n for n in zf.namelist() if n.split("/")[-1] == "LICENSE"]
        assert licenses and ".dist-info/" in licenses[0]
        assert zf.read(licenses[0]).decode() == text
        metadata = zf.read(next(n for n in zf.namelist() if n.endswith("/METADATA"))).decode()
    assert "License: MIT" in metadata or "License-Expression: MIT" in metadata


def test_the_input_checks_add_no_graph_break_under_torch_compile():
    import torch._dynamo as dynamo

    explained = dynamo.explain(ConvNN2d(3, 4))(torch.randn(2, 3, 8, 8))
    assert explained.graph_break_count == 0, explained.break_reasons
