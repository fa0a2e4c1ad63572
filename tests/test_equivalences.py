"""The special cases of method.md §3, proven numerically, forward and backward."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from convnn import ConvNN2d, ConvNNAttention

TOL = {torch.float32: {"rtol": 1e-5, "atol": 1e-5}, torch.float64: {"rtol": 1e-10, "atol": 1e-10}}


def _grads(module, x):
    x = x.clone().requires_grad_(True)
    out = module(x)
    torch.manual_seed(123)
    upstream = torch.randn(out.shape, dtype=out.dtype)
    (out * upstream).sum().backward()
    params = module.named_parameters() if isinstance(module, nn.Module) else []
    return out.detach(), x.grad, {n: p.grad for n, p in params}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("backend", ["torch", "reference"])
@pytest.mark.parametrize("kernel", [3, 5])
@pytest.mark.parametrize("channels", [(1, 1), (3, 8), (8, 4)])
def test_convolution_limit_equals_conv2d(dtype, backend, kernel, channels):
    torch.manual_seed(0)
    cin, cout = channels
    conv = nn.Conv2d(cin, cout, kernel, padding=kernel // 2).to(dtype)
    layer = ConvNN2d.from_conv2d(conv, backend=backend)
    assert layer.selection == "coords" and layer.weighting == "ones" and layer.k == kernel ** 2
    x = torch.randn(2, cin, 7, 6, dtype=dtype)  # non-square: checks the isotropic grid
    out_c, gx_c, gp_c = _grads(conv, x)
    out_n, gx_n, gp_n = _grads(layer, x)
    torch.testing.assert_close(out_n, out_c, **TOL[dtype])
    torch.testing.assert_close(gx_n, gx_c, **TOL[dtype])
    torch.testing.assert_close(gp_n["weight"].reshape(conv.weight.shape), gp_c["weight"],
                               **TOL[dtype])
    torch.testing.assert_close(gp_n["bias"], gp_c["bias"], **TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("backend", ["torch", "reference"])
@pytest.mark.parametrize("kernel", [3, 5])
def test_depthwise_limit_equals_depthwise_conv2d(dtype, backend, kernel):
    torch.manual_seed(1)
    conv = nn.Conv2d(5, 5, kernel, padding=kernel // 2, groups=5).to(dtype)
    layer = ConvNN2d.from_conv2d(conv, backend=backend)
    assert layer.aggregation == "depthwise"
    x = torch.randn(3, 5, 6, 6, dtype=dtype)
    out_c, gx_c, gp_c = _grads(conv, x)
    out_n, gx_n, gp_n = _grads(layer, x)
    torch.testing.assert_close(out_n, out_c, **TOL[dtype])
    torch.testing.assert_close(gx_n, gx_c, **TOL[dtype])
    torch.testing.assert_close(gp_n["weight"].reshape(conv.weight.shape), gp_c["weight"],
                               **TOL[dtype])


def test_conv_limit_neighbours_are_the_window_in_raster_order():
    layer = ConvNN2d(1, 1, k=9, padding=1, selection="coords")
    idx = layer.neighbours(torch.zeros(1, 1, 4, 5))[0]  # (20, 9) into the 6x7 padded map
    width = 7
    for i in range(4):
        for j in range(5):
            centre = (i + 1) * width + (j + 1)
            window = [centre + dy * width + dx for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
            assert idx[i * 5 + j].tolist() == window


def _split(x, heads):
    b, t, d = x.shape
    return x.view(b, t, heads, d // heads).transpose(1, 2)  # (B, h, T, d)


def sdpa_attention(layer, x, mask=None):
    """Multi-head attention with ``layer``'s projections on F.scaled_dot_product_attention."""
    h = layer.num_heads
    q, k, v = (_split(p(x), h) for p in (layer.q_proj, layer.k_proj, layer.v_proj))
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, h, T, d)
    b, _, t, d = out.shape
    return layer.out_proj(out.transpose(1, 2).reshape(b, t, h * d))


def kvt_mask(layer, x, topk):
    """Boolean [B, h, T, T] mask keeping each query's top-k keys (KVT attention)."""
    h = layer.num_heads
    q, k = _split(layer.q_proj(x), h), _split(layer.k_proj(x), h)
    scores = q @ k.transpose(-1, -2)
    keep = torch.zeros_like(scores, dtype=torch.bool)
    keep.scatter_(-1, scores.topk(topk, dim=-1).indices, True)
    return keep


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("backend", ["torch", "reference"])
@pytest.mark.parametrize("heads,tokens", [(1, 1), (1, 17), (2, 9), (3, 13), (4, 197)])
def test_attention_limit_equals_sdpa(dtype, backend, heads, tokens):
    torch.manual_seed(2)
    dim = 12 * heads if tokens < 100 else 16 * heads
    layer = ConvNNAttention(dim, heads, k=tokens, backend=backend).to(dtype)
    assert layer.weighting == "softmax" and bool((layer.weight == 1).all())
    x = torch.randn(2, tokens, dim, dtype=dtype)
    out_n, gx_n, _gp_n = _grads(layer, x)
    out_a, gx_a, _gp_a = _grads(lambda t: sdpa_attention(layer, t), x)
    torch.testing.assert_close(out_n, out_a, **TOL[dtype])
    torch.testing.assert_close(gx_n, gx_a, **TOL[dtype])


@pytest.mark.parametrize("backend", ["torch", "reference"])
@pytest.mark.parametrize("heads,tokens,k", [(1, 20, 5), (3, 16, 4), (2, 197, 9)])
def test_topk_limit_equals_kvt_attention(backend, heads, tokens, k):
    torch.manual_seed(3)
    dtype = torch.float64
    layer = ConvNNAttention(6 * heads, heads, k=k, backend=backend).to(dtype)
    x = torch.randn(2, tokens, 6 * heads, dtype=dtype)
    out_n, gx_n, _ = _grads(layer, x)
    mask = kvt_mask(layer, x, k)
    out_k, gx_k, _ = _grads(lambda t: sdpa_attention(layer, t, mask), x)
    torch.testing.assert_close(out_n, out_k, **TOL[dtype])
    torch.testing.assert_close(gx_n, gx_k, **TOL[dtype])


def test_equals_package_baselines_with_copied_weights():
    attention = pytest.importorskip("convnn.attention")
    torch.manual_seed(4)
    dim, heads, tokens = 24, 3, 11
    x = torch.randn(2, tokens, dim, dtype=torch.float64)
    mhsa = attention.MultiHeadSelfAttention(dim, heads).double()
    layer = ConvNNAttention(dim, heads, k=tokens).double()
    layer.load_state_dict(mhsa.state_dict(), strict=False)
    torch.testing.assert_close(layer(x), mhsa(x), **TOL[torch.float64])
    kvt = attention.KVTAttention(dim, heads, k=4).double()
    layer = ConvNNAttention(dim, heads, k=4).double()
    layer.load_state_dict(kvt.state_dict(), strict=False)
    torch.testing.assert_close(layer(x), kvt(x), **TOL[torch.float64])
