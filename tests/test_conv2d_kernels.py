"""The fused 2-D kernels of ConvNN2d (selection and gather-GEMM, :mod:`convnn.kernels_conv2d`),
channels-last ConvNN models, and the precision a run picks. The kernel checks run in one
subprocess with ``TRITON_INTERPRET=1`` (see ``_conv2d_checks.py``) on 5×5 and 6×7 maps."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from convnn import ConvNN2d, ops
from convnn.experiments import PAPER_PRECISION, get_preset, list_presets
from convnn.layers import BranchingConv2d
from convnn.models import ModelConfig, build_model
from convnn.train import (
    AUTO_AMP_MEASUREMENTS,
    model_family,
    precision_label,
    resolve_amp,
    to_fast_layout,
)

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent


def test_fused_2d_kernels_match_the_torch_path_under_the_interpreter():
    pytest.importorskip("triton", reason="Triton is not installed (CPU-only torch build)")
    env = {**os.environ, "TRITON_INTERPRET": "1", "CONVNN_BACKEND": "torch"}
    code = (f"import sys; sys.path.insert(0, {str(TESTS)!r}); import _conv2d_checks as c; "
            "c.run_all()")
    proc = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=900, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for marker in ("SELECT OK", "GATHER GEMM OK", "LAYER OK"):
        assert marker in proc.stdout


def test_backend_decision_of_convnn2d(monkeypatch):
    x = torch.randn(1, 4, 5, 5)
    assert ConvNN2d(4, 4).backend_decision(x) == ("torch", "backend='torch'")  # the default
    with ops.default_backend(None):  # auto: opt-in only
        backend, reason = ConvNN2d(4, 4).backend_decision(x)
    assert backend == "torch" and "auto" in reason
    for kwargs, word in (({"similarity": "euclidean"}, "similarity"),
                         ({"weighting": "softmax"}, "weighting"),
                         ({"sampling": "random", "candidates": 3}, "sampling"),
                         ({"k": 20}, "k=20")):
        backend, reason = ConvNN2d(4, 4, backend="triton", **kwargs).backend_decision(x)
        assert backend == "torch" and word in reason, reason
    assert ConvNN2d(4, 4, backend="reference").backend_decision(x)[0] == "reference"
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(RuntimeError, match="needs CUDA tensors"):
        ConvNN2d(4, 4, backend="triton")(x)


def test_channels_last_branching_vgg_matches_nchw_and_stays_nhwc():
    torch.manual_seed(0)
    net = build_model(ModelConfig(name="vgg11", layer="branching", ratio=0.5,
                                  width_multiplier=0.125, head="lean"))
    x = torch.randn(2, 3, 32, 32)
    want = net(x)
    # on CUDA the trainer converts every model with convolutions, ConvNN layers included
    assert to_fast_layout(net, torch.device("cuda"))
    assert not to_fast_layout(net, torch.device("cpu"))
    conv = next(m for m in net.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    outputs = {}
    for m in net.modules():
        if isinstance(m, (ConvNN2d, BranchingConv2d)):
            m.register_forward_hook(lambda mod, args, out: outputs.setdefault(id(mod), out))
    got = net(x)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    assert outputs and all(o.is_contiguous(memory_format=torch.channels_last)
                           for o in outputs.values())


def test_auto_amp_follows_the_committed_measurements(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    vgg = build_model(ModelConfig(name="vgg11", width_multiplier=0.125, head="lean"))
    vit = build_model(ModelConfig(name="vit_tiny_cifar", dim=32, depth=1, mlp_dim=32))
    assert model_family(vgg) == "vgg" and model_family(vit) == "vit"
    assert model_family(nn.Linear(2, 2)) is None
    assert resolve_amp("auto", "cuda", vgg) == "tf32"
    assert resolve_amp("auto", "cuda", vit) == "bf16"
    assert resolve_amp("auto", "cuda", nn.Linear(2, 2)) == "bf16"  # unmeasured: the default
    assert resolve_amp("tf32", "cpu") == "off"
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
    assert resolve_amp("auto", "cuda", vgg) == "fp16"
    # every entry is the faster precision of a committed file, with its numbers
    names = {"vgg": "vgg11", "vit": "vit_tiny"}
    for family, entry in AUTO_AMP_MEASUREMENTS.items():
        rows = json.loads((ROOT / entry["file"]).read_text())
        trainer = {r["amp"]: r["images_per_second"] for r in rows
                   if r["model"] == names[family] and r["runner"] == "trainer"}
        measured = {"tf32": trainer["off"], "bf16": trainer["bf16"]}
        for amp, ips in entry["images_per_second"].items():
            assert ips == pytest.approx(measured[amp], rel=1e-4)
        assert entry["amp"] == max(measured, key=measured.get)


def test_paper_presets_record_their_precision():
    paper = get_preset("vgg11-c10-branching-r0.5")
    assert paper.paper_precision == PAPER_PRECISION == "off"
    assert paper.to_dict()["paper_precision"] == "off"
    assert precision_label(paper.paper_precision) == "float32 (no AMP)"
    assert all(p.paper_precision is None for p in list_presets("laptop"))
    assert precision_label("tf32").startswith("float32") and "bf16" in precision_label("bf16")
    with pytest.raises(ValueError, match="amp_active"):
        precision_label("fp8")


def test_a_bf16_channels_last_vgg_step_reaches_the_fused_2d_path(monkeypatch):
    """Which path a bf16 VGG-11 branching step takes with backend="triton": every ConvNN2d
    layer decides for the fused kernels and gets bf16 NHWC input (the kernels themselves
    stand in for the torch path here; the interpreter checks above compare them)."""
    from convnn import kernels

    monkeypatch.setattr(kernels, "available", lambda device=None: True)
    seen = []

    def spy(self, x):
        seen.append((x.dtype, x.is_contiguous(memory_format=torch.channels_last)))
        with ops.default_backend("torch"):
            saved, self.backend = self.backend, None
            try:
                return self.forward(x)
            finally:
                self.backend = saved

    monkeypatch.setattr(ConvNN2d, "_fused_forward", spy)
    net = build_model(ModelConfig(name="vgg11", layer="branching", ratio=0.5,
                                  width_multiplier=0.125, head="lean",
                                  layer_options={"backend": "triton"}))
    to_fast_layout(net, torch.device("cuda"))
    layers = [m for m in net.modules() if isinstance(m, ConvNN2d)]
    x = torch.randn(2, 3, 32, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = net(x).float().sum()
    loss.backward()
    assert len(seen) == len(layers) >= 8
    # the first layer reads the loader's NCHW float32 image in place; every later one gets
    # the bf16 NHWC output of a channels-last convolution
    assert seen[1:] == [(torch.bfloat16, True)] * (len(seen) - 1), seen
