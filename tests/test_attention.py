"""Tests for convnn.attention: every mixer against an independent naive implementation."""

from __future__ import annotations

import math

import pytest
import torch

from convnn.attention import (
    TOKEN_MIXERS,
    KVTAttention,
    LocalAttention,
    MultiHeadSelfAttention,
    NeighborhoodAttention1d,
    SparseAttention,
    TokenConv1d,
    kvt_attention_weights,
    local_attention_mask,
    neighborhood_indices,
    sparse_attention_mask,
)

F64 = torch.float64


# ------------------------------------------------------------------------------------------------
# Independent naive reference: dense scores, explicit mask, plain softmax
# ------------------------------------------------------------------------------------------------


def naive_rotary(t: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Rotate channel pairs (c, c + d/2) by positions * 10000**(-2c/d), via complex numbers."""
    d = t.shape[-1]
    inv_freq = 10000.0 ** (-torch.arange(0, d, 2, dtype=F64) / d)
    z = torch.complex(t[..., : d // 2], t[..., d // 2 :])
    z = z * torch.polar(
        torch.ones(len(positions), d // 2, dtype=F64), positions[:, None] * inv_freq
    )
    return torch.cat((z.real, z.imag), dim=-1)


def naive_attention(module, x, allowed=None, query_shift=None, weights_only=False):
    """softmax(Q K^T / sqrt(d) masked) V with the module's own weights; allowed: [T, T] or
    [B, h, T, T] bool. query_shift: rotary with query position i + shift, key position j."""
    B, T, _ = x.shape
    h, d = module.num_heads, module.head_dim

    def heads(lin):
        y = x @ lin.weight.T + (0 if lin.bias is None else lin.bias)
        return y.reshape(B, T, h, d).permute(0, 2, 1, 3)

    q, k, v = heads(module.q_proj), heads(module.k_proj), heads(module.v_proj)
    if query_shift is not None:
        pos = torch.arange(T, dtype=F64)
        q, k = naive_rotary(q, pos + query_shift), naive_rotary(k, pos)
    scores = torch.einsum("bhid,bhjd->bhij", q, k) / math.sqrt(d)
    if allowed is not None:
        scores = scores.masked_fill(~allowed, float("-inf"))
    weights = torch.softmax(scores, dim=-1)
    if weights_only:
        return weights
    out = torch.einsum("bhij,bhjd->bhid", weights, v).permute(0, 2, 1, 3).reshape(B, T, h * d)
    return out @ module.out_proj.weight.T


def grads(fn, x, module, g):
    """Gradients of <fn(x), g> w.r.t. x and every parameter of module."""
    params = list(module.parameters())
    return torch.autograd.grad((fn(x) * g).sum(), [x, *params])


def rand(*shape, seed=0, dtype=F64, requires_grad=False):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=gen, dtype=dtype).requires_grad_(requires_grad)


def build(cls, *args, seed=0, **kwargs):
    torch.manual_seed(seed)
    return cls(*args, **kwargs).to(F64).eval()


def changed_outputs(module, x, j):
    """Bool [T]: which output tokens move when input token j is perturbed."""
    with torch.no_grad():
        y0 = module(x)
        x1 = x.clone()
        x1[:, j] += torch.randn_like(x1[:, j])
        return (module(x1) - y0).abs().amax(dim=(0, 2)) > 1e-10


# ------------------------------------------------------------------------------------------------
# MultiHeadSelfAttention
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("heads", [1, 3, 4])
@pytest.mark.parametrize("T", [1, 5, 197])
def test_mhsa_matches_naive_forward_and_backward(heads, T):
    m = build(MultiHeadSelfAttention, 12, heads)
    x = rand(2, T, 12, requires_grad=True)
    torch.testing.assert_close(m(x), naive_attention(m, x), rtol=1e-10, atol=1e-12)
    g = rand(2, T, 12, seed=1)
    for a, b in zip(grads(m, x, m, g), grads(lambda t: naive_attention(m, t), x, m, g)):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)


def test_mhsa_with_bias_matches_naive():
    m = build(MultiHeadSelfAttention, 8, 2, bias=True)
    x = rand(1, 6, 8)
    torch.testing.assert_close(m(x), naive_attention(m, x) + m.out_proj.bias)


def test_attention_weights_reference_path_rows_sum_to_one():
    m = build(MultiHeadSelfAttention, 8, 2)
    x = rand(2, 7, 8)
    w = m.attention_weights(x)
    assert w.shape == (2, 2, 7, 7)
    torch.testing.assert_close(w.sum(-1), torch.ones(2, 2, 7, dtype=F64))
    torch.testing.assert_close(w, naive_attention(m, x, weights_only=True))


@pytest.mark.parametrize("name", ["attention", "kvt", "local", "sparse", "neighborhood"])
def test_attention_dropout_only_in_training(name):
    kwargs = {"kvt": {"k": 5}, "local": {"window": 4, "head_dim": 4}}.get(name, {})
    m = build(TOKEN_MIXERS[name], 8, 2, attn_dropout=0.5, **kwargs)
    x = rand(2, 9, 8)
    y = m(x)
    assert torch.equal(m(x), y)  # eval: deterministic, no dropout
    m.train()
    torch.manual_seed(0)
    assert not torch.allclose(m(x), y)


# ------------------------------------------------------------------------------------------------
# KVTAttention
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("heads", [1, 3])
def test_kvt_with_k_equal_T_is_full_attention(heads):
    T = 11
    full = build(MultiHeadSelfAttention, 12, heads)
    kvt = build(KVTAttention, 12, heads, k=T, seed=5)
    kvt.load_state_dict(full.state_dict())
    x = rand(2, T, 12)
    torch.testing.assert_close(kvt(x), full(x), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("heads,k", [(1, 1), (3, 4), (4, 7)])
def test_kvt_matches_naive_topk_masked_attention(heads, k):
    m = build(KVTAttention, 12, heads, k=k)
    x = rand(2, 13, 12, requires_grad=True)
    scores = naive_attention(m, x.detach(), weights_only=True)  # ranking of softmax = of scores
    kth = scores.topk(k, dim=-1).values[..., -1:]
    allowed = scores >= kth  # [B, h, T, T], k keys per row (no ties with random data)
    assert (allowed.sum(-1) == k).all()
    torch.testing.assert_close(m(x), naive_attention(m, x, allowed), rtol=1e-10, atol=1e-12)
    g = rand(2, 13, 12, seed=2)
    for a, b in zip(grads(m, x, m, g), grads(lambda t: naive_attention(m, t, allowed), x, m, g)):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)


def test_kvt_weights_have_exactly_k_nonzeros_per_query():
    q, k = rand(2, 3, 10, 4), rand(2, 3, 10, 4, seed=1)
    w = kvt_attention_weights(q, k, k=3)
    assert ((w != 0).sum(-1) == 3).all()
    torch.testing.assert_close(w.sum(-1), torch.ones(2, 3, 10, dtype=F64))
    # the kept keys are the best-scoring ones
    scores = q @ k.transpose(-2, -1)
    assert torch.equal((w != 0), scores >= scores.topk(3, dim=-1).values[..., -1:])
    m = build(KVTAttention, 12, 3, k=5)
    assert ((m.attention_weights(rand(2, 10, 12)) != 0).sum(-1) == 5).all()


# ------------------------------------------------------------------------------------------------
# SparseAttention
# ------------------------------------------------------------------------------------------------


def test_sparse_masks_exact():
    local = torch.tensor(
        [
            [1, 1, 0, 0, 0, 0],
            [1, 1, 1, 0, 0, 0],
            [0, 1, 1, 1, 0, 0],
            [0, 0, 1, 1, 1, 0],
            [0, 0, 0, 1, 1, 1],
            [0, 0, 0, 0, 1, 1],
        ],
        dtype=torch.bool,
    )
    strided = torch.tensor(
        [
            [1, 0, 0, 1, 0, 0],
            [0, 1, 0, 0, 1, 0],
            [0, 0, 1, 0, 0, 1],
            [1, 0, 0, 1, 0, 0],
            [0, 1, 0, 0, 1, 0],
            [0, 0, 1, 0, 0, 1],
        ],
        dtype=torch.bool,
    )
    assert torch.equal(sparse_attention_mask(6, "local", 3), local)
    assert torch.equal(sparse_attention_mask(6, "local", 2), local)  # band |i-j| <= context // 2
    band2 = (local.int() @ local.int()) > 0  # |i - j| <= 2
    assert torch.equal(sparse_attention_mask(6, "local", 4), band2)
    assert torch.equal(sparse_attention_mask(6, "local", 5), band2)
    assert torch.equal(sparse_attention_mask(6, "local", 1), torch.eye(6, dtype=torch.bool))
    assert torch.equal(sparse_attention_mask(6, "strided", 3), strided)
    assert sparse_attention_mask(6, "strided", 1).all()
    assert sparse_attention_mask(197, "local", 49).sum(-1).max() == 49


@pytest.mark.parametrize("mode,context", [("local", 5), ("strided", 3), ("local", 49)])
def test_sparse_matches_naive_masked_attention(mode, context):
    m = build(SparseAttention, 12, 3, mode=mode, context=context)
    x = rand(2, 17, 12, requires_grad=True)
    allowed = sparse_attention_mask(17, mode, context)
    torch.testing.assert_close(m(x), naive_attention(m, x, allowed), rtol=1e-10, atol=1e-12)
    g = rand(2, 17, 12, seed=3)
    for a, b in zip(grads(m, x, m, g), grads(lambda t: naive_attention(m, t, allowed), x, m, g)):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)
    assert torch.equal(m.attention_weights(x) != 0, allowed.expand(2, 3, 17, 17))


def test_sparse_default_context_is_the_papers():
    assert SparseAttention(12, mode="local").context == 49
    assert SparseAttention(12, mode="strided").context == 14


def test_sparse_eval_is_deterministic_with_attention_dropout():
    # the reference applies functional dropout even in eval mode; ours must not
    m = build(SparseAttention, 12, 3, mode="local", context=5, attn_dropout=0.1)
    x = rand(2, 17, 12)
    assert torch.equal(m(x), m(x))


# ------------------------------------------------------------------------------------------------
# LocalAttention
# ------------------------------------------------------------------------------------------------


def test_local_attention_mask_exact():
    blocks = torch.tensor(
        [
            [1, 1, 1, 1, 0, 0],
            [1, 1, 1, 1, 0, 0],
            [1, 1, 1, 1, 1, 1],
            [1, 1, 1, 1, 1, 1],
            [0, 0, 1, 1, 1, 1],
            [0, 0, 1, 1, 1, 1],
        ],
        dtype=torch.bool,
    )
    assert torch.equal(local_attention_mask(6, 2, exact_window=False), blocks)
    for T, w in [(6, 2), (30, 8), (197, 128), (5, 7)]:  # exact window = band |i - j| <= window
        pos = torch.arange(T)
        band = (pos[:, None] - pos[None, :]).abs() <= w
        assert torch.equal(local_attention_mask(T, w, exact_window=True), band)


@pytest.mark.parametrize("exact", [False, True])
@pytest.mark.parametrize("T,window", [(30, 8), (32, 8), (5, 7), (1, 3)])
def test_local_matches_naive_masked_attention(T, window, exact):
    m = build(LocalAttention, 12, 2, window=window, head_dim=4, exact_window=exact, rotary=False)
    x = rand(2, T, 12, requires_grad=True)
    allowed = local_attention_mask(T, window, exact)
    torch.testing.assert_close(m(x), naive_attention(m, x, allowed), rtol=1e-10, atol=1e-12)
    g = rand(2, T, 12, seed=4)
    for a, b in zip(grads(m, x, m, g), grads(lambda t: naive_attention(m, t, allowed), x, m, g)):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("T,window", [(30, 8), (197, 128)])
def test_local_rotary_matches_naive(T, window):
    # queries rotated as position i + window, keys as j (the reference's rotary frame)
    m = build(LocalAttention, 12, 1, window=window, head_dim=8, rotary=True)
    x = rand(2, T, 12)
    allowed = local_attention_mask(T, window, True)
    expected = naive_attention(m, x, allowed, query_shift=window)
    torch.testing.assert_close(m(x), expected, rtol=1e-9, atol=1e-11)
    torch.testing.assert_close(
        m.attention_weights(x),
        naive_attention(m, x, allowed, query_shift=window, weights_only=True),
    )


@pytest.mark.parametrize("exact", [False, True])
def test_local_perturbation_stays_in_window(exact):
    T, window = 37, 6
    m = build(LocalAttention, 8, 2, window=window, head_dim=4, exact_window=exact)
    x = rand(1, T, 8)
    allowed = local_attention_mask(T, window, exact)
    for j in [0, 5, 6, 17, 36]:
        assert torch.equal(changed_outputs(m, x, j), allowed[:, j])  # queries that see key j


def test_local_with_one_big_window_is_full_attention():
    full = build(MultiHeadSelfAttention, 12, 3)
    local = build(LocalAttention, 12, 3, window=16, head_dim=4, rotary=False)
    local.load_state_dict(full.state_dict())
    x = rand(2, 16, 12)
    torch.testing.assert_close(local(x), full(x), rtol=1e-10, atol=1e-12)


# ------------------------------------------------------------------------------------------------
# NeighborhoodAttention1d
# ------------------------------------------------------------------------------------------------


def test_neighborhood_indices_at_borders():
    expected = torch.tensor(
        [[0, 1, 2, 3, 4], [0, 1, 2, 3, 4], [0, 1, 2, 3, 4], [1, 2, 3, 4, 5],
         [2, 3, 4, 5, 6], [2, 3, 4, 5, 6], [2, 3, 4, 5, 6]]
    )  # fmt: skip
    assert torch.equal(neighborhood_indices(7, 5), expected)
    assert torch.equal(neighborhood_indices(4, 1), torch.arange(4)[:, None])
    assert torch.equal(neighborhood_indices(3, 3), torch.tensor([[0, 1, 2]] * 3))
    idx = neighborhood_indices(50, 9)
    assert (idx[:, 1:] - idx[:, :-1] == 1).all()  # consecutive, exactly 9 distinct keys
    assert ((idx == torch.arange(50)[:, None]).sum(-1) == 1).all()  # contains the query
    assert torch.equal(idx[4:46, 4], torch.arange(4, 46))  # centred away from the borders


@pytest.mark.parametrize("heads,ks", [(1, 1), (3, 5), (4, 13)])
def test_neighborhood_matches_naive_masked_attention(heads, ks):
    T = 13
    m = build(NeighborhoodAttention1d, 12, heads, kernel_size=ks)
    x = rand(2, T, 12, requires_grad=True)
    allowed = torch.zeros(T, T, dtype=torch.bool).scatter_(1, neighborhood_indices(T, ks), True)
    torch.testing.assert_close(m(x), naive_attention(m, x, allowed), rtol=1e-10, atol=1e-12)
    g = rand(2, T, 12, seed=5)
    for a, b in zip(grads(m, x, m, g), grads(lambda t: naive_attention(m, t, allowed), x, m, g)):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)


def test_neighborhood_perturbation_locality():
    T, ks = 20, 5
    m = build(NeighborhoodAttention1d, 8, 2, kernel_size=ks)
    x = rand(1, T, 8)
    idx = neighborhood_indices(T, ks)
    for j in [0, 1, 2, 10, 18, 19]:
        sees_j = (idx == j).any(-1)
        assert torch.equal(changed_outputs(m, x, j), sees_j)
    assert changed_outputs(m, x, 0).sum() == 3  # queries 0, 1, 2 (window shifted at the border)


# ------------------------------------------------------------------------------------------------
# TokenConv1d
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("heads,ks", [(4, 3), (2, 5), (1, 1)])
def test_token_conv_locality(heads, ks):
    T = 15
    m = build(TokenConv1d, 8, heads, kernel_size=ks)
    x = rand(2, T, 8)
    for j in [0, 7, 14]:
        near = (torch.arange(T) - j).abs() <= ks // 2
        assert torch.equal(changed_outputs(m, x, j), near)


def test_token_conv_groups_channels_per_head_and_matches_conv():
    m = build(TokenConv1d, 8, 4, kernel_size=3)
    with torch.no_grad():
        m.out_proj.weight.copy_(torch.eye(8, dtype=F64))
    x = rand(2, 9, 8)
    expected = torch.nn.functional.conv1d(x.transpose(1, 2), m.conv.weight, padding=1, groups=4)
    torch.testing.assert_close(m(x), expected.transpose(1, 2))
    x1 = x.clone()
    x1[:, 4, 2] += 1.0  # channel 2 belongs to head 1 (channels 2, 3)
    diff = (m(x1) - m(x)).abs().amax(0) > 1e-12  # [T, D]
    assert diff[:, [0, 1, 4, 5, 6, 7]].sum() == 0
    assert diff[3:6, 2:4].all() and diff[[0, 1, 2, 6, 7, 8]].sum() == 0


# ------------------------------------------------------------------------------------------------
# Shared conventions: parameters, state dicts, validation, dtypes
# ------------------------------------------------------------------------------------------------


def n_params(m):
    return sum(p.numel() for p in m.parameters())


def test_parameter_counts_match_the_paper():
    assert n_params(MultiHeadSelfAttention(192, 1)) == 147_456
    assert n_params(LocalAttention(192, 1, head_dim=64)) == 49_152
    assert n_params(LocalAttention(192, 3, head_dim=64)) == 147_456
    # paper: ViT-Tiny 5,479,306 (attention) vs 4,299,658 (local) = 12 layers x the difference
    assert 12 * (147_456 - 49_152) == 5_479_306 - 4_299_658
    for name in ["kvt", "sparse", "neighborhood"]:
        assert n_params(TOKEN_MIXERS[name](192, 3)) == 147_456
    assert n_params(TokenConv1d(192, 3, kernel_size=3)) == 192 * 64 * 3 + 192 * 192


def test_state_dicts_are_interchangeable():
    keys = {"q_proj.weight", "k_proj.weight", "v_proj.weight", "out_proj.weight"}
    src = MultiHeadSelfAttention(12, 3).state_dict()
    for cls in [KVTAttention, SparseAttention, NeighborhoodAttention1d]:
        m = cls(12, 3)
        assert set(m.state_dict()) == keys
        m.load_state_dict(src)
    LocalAttention(12, 3, head_dim=4).load_state_dict(src)


def test_extra_repr():
    assert "k=5" in repr(KVTAttention(12, 3, k=5))
    assert "window=8" in repr(LocalAttention(12, 2, window=8, head_dim=4))
    assert "mode='strided', context=3" in repr(SparseAttention(12, 3, "strided", 3))
    assert "kernel_size=5" in repr(NeighborhoodAttention1d(12, 3, kernel_size=5))
    assert "num_heads=4, kernel_size=3" in repr(TokenConv1d(12, 4))
    assert "num_heads=3" in repr(MultiHeadSelfAttention(12, 3))


@pytest.mark.parametrize(
    "make,x,match",
    [
        (lambda: MultiHeadSelfAttention(10, 3), None, r"dim=10 must be divisible by num_heads=3"),
        (lambda: KVTAttention(10, 4), None, r"dim=10 must be divisible by num_heads=4"),
        (lambda: TokenConv1d(10, 3), None, r"dim=10 must be divisible by num_heads=3"),
        (lambda: MultiHeadSelfAttention(12, 0), None, r"num_heads must be >= 1, got 0"),
        (
            lambda: MultiHeadSelfAttention(12),
            torch.randn(5, 12),
            r"\[B, T, D\].*got shape \(5, 12\)",
        ),
        (lambda: TokenConv1d(12), torch.randn(5, 12), r"\[B, T, D\].*got shape \(5, 12\)"),
        (lambda: MultiHeadSelfAttention(12), torch.randn(1, 5, 8), r"size 12.*\(1, 5, 8\)"),
        (lambda: LocalAttention(12), torch.randn(1, 5, 8), r"size 12.*\(1, 5, 8\)"),
        (lambda: TokenConv1d(12), torch.randn(1, 5, 8), r"size 12.*\(1, 5, 8\)"),
        (lambda: KVTAttention(12, k=9), torch.randn(1, 5, 12), r"k=9 must be <= .*T=5"),
        (lambda: KVTAttention(12, k=0), None, r"k must be >= 1, got 0"),
        (lambda: SparseAttention(12, mode="dilated"), None, r"mode must be one of.*'dilated'"),
        (lambda: SparseAttention(12, context=0), None, r"context must be >= 1, got 0"),
        (lambda: TokenConv1d(12, kernel_size=4), None, r"kernel_size must be odd.*4"),
        (lambda: NeighborhoodAttention1d(12, kernel_size=6), None, r"kernel_size must be odd"),
        (
            lambda: NeighborhoodAttention1d(12, kernel_size=7),
            torch.randn(1, 5, 12),
            r"kernel_size=7 must be <= .*T=5",
        ),
        (lambda: LocalAttention(12, window=0), None, r"window must be >= 1, got 0"),
        (lambda: LocalAttention(12, head_dim=5), None, r"even head_dim.*5"),
        (lambda: MultiHeadSelfAttention(12, attn_dropout=1.5), None, r"attn_dropout.*1.5"),
    ],
)
def test_bad_arguments_raise_value_error(make, x, match):
    with pytest.raises(ValueError, match=match):
        m = make()
        m(x)


def test_pure_functions_validate():
    with pytest.raises(ValueError, match=r"mode must be one of"):
        sparse_attention_mask(5, "causal", 2)
    with pytest.raises(ValueError, match=r"kernel_size=7 must be <= .*T=5"):
        neighborhood_indices(5, 7)
    with pytest.raises(ValueError, match=r"k=4 must be <= .*T=3"):
        kvt_attention_weights(torch.randn(3, 2), torch.randn(3, 2), k=4)
    with pytest.raises(ValueError, match=r"window must be >= 1"):
        local_attention_mask(5, 0)


MIXER_KWARGS = {
    "attention": {},
    "kvt": {"k": 5},
    "local": {"window": 8, "head_dim": 8},
    "sparse": {"mode": "strided", "context": 4},
    "neighborhood": {"kernel_size": 5},
    "conv1d": {"kernel_size": 3},
}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", list(TOKEN_MIXERS))
def test_half_precision_forward_on_cpu_is_finite_and_close(name, dtype):
    torch.manual_seed(0)
    m = TOKEN_MIXERS[name](16, num_heads=2, **MIXER_KWARGS[name]).eval()
    x = torch.randn(2, 21, 16)
    ref = m.to(F64)(x.to(F64))
    y = m.to(dtype)(x.to(dtype))
    assert y.dtype == dtype and y.shape == (2, 21, 16)
    assert torch.isfinite(y).all()
    if name != "kvt":  # top-k may pick different keys after rounding
        torch.testing.assert_close(y.to(F64), ref, rtol=0.1, atol=0.05)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", list(TOKEN_MIXERS))
def test_cuda_matches_cpu_float64(name, dtype):
    torch.manual_seed(0)
    m = TOKEN_MIXERS[name](192, num_heads=3, **MIXER_KWARGS[name]).eval()
    x = torch.randn(4, 197, 192)
    ref = m.to(F64)(x.to(F64))
    m = m.to("cuda", dtype)
    x = x.to("cuda", dtype).requires_grad_(True)
    y = m(x)
    y.float().square().mean().backward()
    assert y.dtype == dtype and torch.isfinite(y).all() and torch.isfinite(x.grad).all()
    # float32 convolutions may use TF32 on CUDA (cudnn.allow_tf32 is on by default)
    tol = {torch.float32: 2e-3, torch.bfloat16: 5e-2, torch.float16: 1e-2}[dtype]
    if name != "kvt" or dtype == torch.float32:
        torch.testing.assert_close(y.double().cpu(), ref, rtol=tol * 10, atol=tol)
