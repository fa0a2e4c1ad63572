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
    cpu = ConvNNAttention(64, 2, k=9, path="reference", **kwargs).double()
    gpu = ConvNNAttention(64, 2, k=9, **kwargs).double().cuda()
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
    cpu = ConvNN2d(16, 24, path="reference", **kwargs).double()
    gpu = ConvNN2d(16, 24, **kwargs).double().cuda()
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


# --- the fused 2-D path of ConvNN2d (convnn.kernels_conv2d), compiled -----------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_fused_2d_selection_compiled_equals_float32_ranking_up_to_near_ties(dtype, layout):
    from convnn import kernels_conv2d, ops

    torch.manual_seed(3)
    x = torch.randn(4, 64, 32, 32, device="cuda").relu().to(dtype)
    x = x.contiguous(memory_format=layout)
    got = kernels_conv2d.select_2d(x, 8, 1)
    values = torch.nn.functional.pad(x.float(), (1, 1, 1, 1)).flatten(2).transpose(1, 2)
    qpos = ops.interior_positions(32, 32, 1, device="cuda")
    q, keys, _ = ops._prepare(values[:, qpos], values, "cosine")
    scores = torch.matmul(q.double(), keys.double().transpose(1, 2))  # float64 truth
    scores[:, torch.arange(qpos.numel()), qpos] = float("-inf")
    want = torch.sort(scores, dim=-1, descending=True, stable=True).indices[..., :8]
    # TF32 / bf16 products: lists equal except where scores are within rounding (near-ties)
    tol = 2e-3 if dtype == torch.float32 else 1e-2
    torch.testing.assert_close(scores.gather(-1, got), scores.gather(-1, want), rtol=0, atol=tol)
    differ = (got != want).any(-1).float().mean().item()
    print(f"fused 2-D selection {dtype}: {differ:.4f} of the lists differ (near-ties)")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_2d_layer_compiled_matches_the_torch_path(dtype):
    torch.manual_seed(4)
    ref = ConvNN2d(32, 48, backend="torch").cuda()
    fused = ConvNN2d(32, 48, backend="triton").cuda()
    fused.load_state_dict(ref.state_dict())
    x = torch.randn(4, 32, 16, 16, device="cuda").contiguous(memory_format=torch.channels_last)
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        out_f, out_r = fused(x), ref(x)
    assert fused.backend_decision(x)[0] == "triton"
    assert out_f.is_contiguous(memory_format=torch.channels_last)
    rel = (out_f.float() - out_r.float()).abs().mean() / out_r.float().abs().mean()
    assert rel < (2e-3 if dtype == torch.float32 else 3e-2), rel
    g = torch.randn_like(out_f.float())
    (out_f.float() * g).sum().backward()
    (out_r.float() * g).sum().backward()
    for a, b in zip(fused.parameters(), ref.parameters()):
        err = (a.grad - b.grad).abs().mean() / b.grad.abs().mean()
        assert err < (5e-3 if dtype == torch.float32 else 5e-2), err
