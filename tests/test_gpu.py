"""CUDA checks: the fast path on the GPU matches the reference path on the CPU.

Skipped without CUDA (CI has none); run on a GPU machine with ``python -m pytest tests/test_gpu.py``.
"""

import pytest
import torch

from convnn import ConvNN2d, ConvNNAttention

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def _run(layer, x, seed=0):
    layer.zero_grad()
    x = x.clone().requires_grad_(True)
    torch.manual_seed(seed)
    out = layer(x)
    upstream = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(out)
    (out.float() * upstream.float()).sum().backward()
    return out.detach().double().cpu(), x.grad.double().cpu(), {
        n: p.grad.double().cpu() for n, p in layer.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("kwargs", [{}, {"aggregation": "standard"},
                                    {"similarity": "euclidean", "weighting": "similarity"},
                                    {"selection": "mixed"}])
def test_attention_cuda_fast_matches_cpu_reference(kwargs):
    torch.manual_seed(0)
    cpu = ConvNNAttention.from_config(64, 2, k=9, backend="reference", **kwargs).double()
    gpu = ConvNNAttention.from_config(64, 2, k=9, **kwargs).double().cuda()
    with torch.no_grad():
        cpu.weight.add_(0.1 * torch.randn_like(cpu.weight))
    gpu.load_state_dict(cpu.state_dict())
    x = torch.randn(4, 197, 64, dtype=torch.float64)
    for a, b in zip(_run(cpu, x)[:2], _run(gpu, x.cuda())[:2]):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("kwargs", [{}, {"sampling": "spatial", "candidates": 6},
                                    {"weighting": "softmax", "aggregation": "separable"}])
def test_convnn2d_cuda_fast_matches_cpu_reference(kwargs):
    torch.manual_seed(1)
    cpu = ConvNN2d.from_config(16, 24, backend="reference", **kwargs).double()
    gpu = ConvNN2d.from_config(16, 24, **kwargs).double().cuda()
    gpu.load_state_dict(cpu.state_dict())
    x = torch.randn(3, 16, 20, 20, dtype=torch.float64)
    out_c, gx_c, gp_c = _run(cpu, x)
    out_g, gx_g, gp_g = _run(gpu, x.cuda())
    torch.testing.assert_close(out_g, out_c, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(gx_g, gx_c, rtol=1e-9, atol=1e-9)
    for name in gp_c:
        torch.testing.assert_close(gp_g[name], gp_c[name], rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_on_cuda_is_finite_and_close(dtype):
    torch.manual_seed(2)
    layer = ConvNNAttention(192, 1, k=9).cuda()
    x = torch.randn(8, 197, 192, device="cuda")
    ref = layer(x).double()
    with torch.autocast("cuda", dtype=dtype):
        out = layer(x)
    assert torch.isfinite(out).all()
    # Rounding can change which neighbour is k-th for a few tokens; on average the output
    # stays within a few percent of float32.
    relative = (out.double() - ref).abs().mean() / ref.abs().mean()
    assert relative < 0.1, relative
    conv = ConvNN2d(32, 32).cuda()
    img = torch.randn(4, 32, 16, 16, device="cuda")
    with torch.autocast("cuda", dtype=dtype):
        y = conv(img)
    y.float().sum().backward()
    assert torch.isfinite(y).all()


def test_random_candidates_fixed_in_eval_on_cuda():
    layer = ConvNNAttention(32, 2, k=5, sampling="random", candidates=16).cuda().eval()
    x = torch.randn(2, 65, 32, device="cuda")
    with torch.no_grad():
        assert torch.equal(layer(x), layer(x))
        cpu = ConvNNAttention(32, 2, k=5, sampling="random", candidates=16).eval()
        cpu.load_state_dict(layer.state_dict())
        torch.testing.assert_close(cpu(x.cpu()), layer(x).cpu(), rtol=1e-4, atol=1e-4)
