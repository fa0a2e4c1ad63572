"""The fused Triton kernels match the PyTorch fast path (checked on a CPU with the Triton
interpreter, in a subprocess so that ``TRITON_INTERPRET=1`` is set before Triton loads)."""

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from convnn import ConvNNAttention, ops

triton = pytest.importorskip("triton", reason="Triton is not installed (CPU-only torch build)")

CHECK = textwrap.dedent("""
    import torch
    from convnn import ConvNNAttention, kernels, ops
    assert kernels.available(torch.device("cpu"))
    torch.manual_seed(0)
    for with_rho in (False, True):
        for dtype in (torch.float64, torch.float32):
            opts = {"dtype": dtype, "requires_grad": True}
            values = torch.randn(2, 9, 12, **opts)
            indices = torch.randint(0, 9, (2, 7, 5))
            rho = torch.rand(2, 7, 5, **opts) if with_rho else None
            weight = torch.randn(12, 1, 5, **opts)
            inputs = [t for t in (values, rho, weight) if t is not None]
            outs = {}
            for kernel in ("torch", "triton"):
                with ops.default_backend(kernel):
                    out = ops.gather_aggregate(values, indices, rho, weight, None, "depthwise")
                upstream = torch.linspace(-1, 1, out.numel(), dtype=dtype).view_as(out)
                grads = torch.autograd.grad((out * upstream).sum(), inputs)
                outs[kernel] = (out.detach(), grads)
            tol = 1e-10 if dtype == torch.float64 else 1e-5
            torch.testing.assert_close(outs["triton"][0], outs["torch"][0], rtol=tol, atol=tol)
            for a, b in zip(outs["triton"][1], outs["torch"][1]):
                torch.testing.assert_close(a, b, rtol=tol, atol=tol)
    layer = ConvNNAttention(16, 2, k=4, sampling="random", candidates=6).double()
    x = torch.randn(2, 11, 16, dtype=torch.float64)
    with ops.default_backend("torch"):
        torch.manual_seed(1); ref = layer(x)
    with ops.default_backend("triton"):
        torch.manual_seed(1); got = layer(x)
    torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-10)
    print("TRITON KERNELS MATCH")
""")


def test_triton_kernels_match_the_torch_fast_path_under_the_interpreter():
    env = {**os.environ, "TRITON_INTERPRET": "1", "CONVNN_BACKEND": "torch"}
    proc = subprocess.run([sys.executable, "-c", CHECK], env=env, capture_output=True,
                          text=True, timeout=3600, check=False)  # an hour: a hang guard only
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "TRITON KERNELS MATCH" in proc.stdout


def test_kernel_switch_validates_and_refuses_cpu_without_interpreter(monkeypatch):
    with pytest.raises(ValueError, match="backend must be one of"):
        ops.set_default_backend("cuda")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    layer = ConvNNAttention(8, 2, k=3)
    with ops.default_backend("triton"), pytest.raises(RuntimeError, match="needs CUDA tensors"):
        layer(torch.randn(1, 5, 8))
    with ops.default_backend(None):  # falls back to the PyTorch path on a CPU
        assert layer(torch.randn(1, 5, 8)).shape == (1, 5, 8)
    assert ops.get_default_backend() == "torch"
