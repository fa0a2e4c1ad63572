"""The precision contract of selection (``convnn.ops`` docstring): bf16×3 scores with float32
accumulation keep the float32 neighbour lists except on near-ties within the stated bound.

Measured here with the contract's arithmetic emulated in PyTorch (:func:`ops.contract_scores`)
for both layers, on random and post-ReLU inputs; the Triton kernel itself is held to the same
contract under the interpreter in ``_fused_checks.py``. Run with ``-s`` to see the fractions.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from convnn import ConvNN2d, ConvNNAttention, kernels_attention, ops


def _stable_lists(scores: torch.Tensor, k: int) -> torch.Tensor:
    return torch.sort(scores, dim=-1, descending=True, stable=True).indices[..., :k]


def _bf16_only(q, key, scale):
    """One bf16 product (``hi·hi``): the plain bf16 tensor-core alternative."""
    return torch.matmul(q.bfloat16().float(), key.bfloat16().float().transpose(-1, -2)) * scale


def _tf32(x):
    """Round float32 to TF32 (10 explicit mantissa bits, nearest, ties away)."""
    bits = x.float().contiguous().view(torch.int32)
    return ((bits + 0x1000) & ~0x1FFF).view(torch.float32)


def _tf32_only(q, key, scale):
    return torch.matmul(_tf32(q), _tf32(key).transpose(-1, -2)) * scale


def _compare(query, keys, k, scale, scores_fn, self_mask=None, bound_check=True):
    """Fraction of neighbour lists (in rank order) that differ from the float32 lists; with
    ``bound_check``, every differing rank must be a near-tie within the contract's bound."""
    with torch.no_grad():
        ref_scores = torch.matmul(query, keys.transpose(-1, -2)) * scale
        got_scores = scores_fn(query, keys, scale)
        if self_mask is not None:
            ref_scores = ref_scores.masked_fill(self_mask, float("-inf"))
            got_scores = got_scores.masked_fill(self_mask, float("-inf"))
        ref = _stable_lists(ref_scores, k)
        got = _stable_lists(got_scores, k)
        differs = (ref != got).any(-1)
        if bound_check and bool(differs.any()):
            tau = ops.selection_score_bound(query, keys, scale)
            if self_mask is not None:
                tau = tau.masked_fill(self_mask, 0.0)
            row_tau = tau.amax(-1, keepdim=True)  # (B, n, 1)
            gap = (ref_scores.gather(-1, got) - ref_scores.gather(-1, ref)).abs()
            assert bool((gap <= 2 * row_tau).all()), float((gap / row_tau).max())
    return float(differs.float().mean())


def _attention_features(heads, post_relu, seed=0, batch=4, tokens=197, dim=192):
    torch.manual_seed(seed)
    layer = ConvNNAttention(dim, heads, k=9)
    x = torch.randn(batch, tokens, dim)
    if post_relu:
        x = F.relu(x)
    with torch.no_grad():
        q, key = layer._selection_features(x)
    return q, key, 1.0 / math.sqrt(layer.head_dim)


def _conv2d_features(post_relu, seed=0, batch=2, channels=64, side=32):
    torch.manual_seed(seed)
    layer = ConvNN2d(channels, channels, k=9)
    x = torch.randn(batch, channels, side, side)
    if post_relu:
        x = F.relu(x)
    with torch.no_grad():
        _, sel, _, qpos, _ = layer._select(x)
        query, keys, _ = ops.get_similarity(layer.similarity).prepare(sel[:, qpos], sel)
    mask = qpos[:, None] == torch.arange(keys.shape[1])[None, :] if layer.self_first else None
    k = layer.k - 1 if layer.self_first else layer.k
    return query, keys, k, mask


@pytest.mark.parametrize("post_relu", [False, True], ids=["random", "post_relu"])
@pytest.mark.parametrize("heads", [1, 3])
def test_attention_lists_equal_float32_except_near_ties(heads, post_relu):
    q, key, scale = _attention_features(heads, post_relu)
    contract = _compare(q, key, 9, scale, ops.contract_scores)
    bf16 = _compare(q, key, 9, scale, _bf16_only, bound_check=False)
    tf32 = _compare(q, key, 9, scale, _tf32_only, bound_check=False)
    print(f"\nConvNNAttention {heads}x{192 // heads} T=197 k=9 "
          f"{'post-ReLU' if post_relu else 'random'}: lists differing from float32: "
          f"bf16x3 {contract:.2e}, bf16 {bf16:.2e}, tf32 {tf32:.2e}")
    assert contract <= 1e-3
    assert contract < bf16 or bf16 == 0.0  # the split is what keeps the lists


@pytest.mark.parametrize("post_relu", [False, True], ids=["random", "post_relu"])
def test_conv2d_lists_equal_float32_except_near_ties(post_relu):
    query, keys, k, mask = _conv2d_features(post_relu)
    contract = _compare(query, keys, k, 1.0, ops.contract_scores, self_mask=mask)
    bf16 = _compare(query, keys, k, 1.0, _bf16_only, self_mask=mask, bound_check=False)
    tf32 = _compare(query, keys, k, 1.0, _tf32_only, self_mask=mask, bound_check=False)
    print(f"\nConvNN2d 64ch 32x32 pad 1 cosine k=9 {'post-ReLU' if post_relu else 'random'}: "
          f"lists differing from float32: bf16x3 {contract:.2e}, bf16 {bf16:.2e}, "
          f"tf32 {tf32:.2e}")
    assert contract <= 1e-3
    assert contract < bf16 or bf16 == 0.0


def test_bound_covers_the_contract_score_error():
    """The stated bound holds pair by pair against a float64 computation, with room: the
    observed error stays below τ, on large, small and mixed-magnitude operands."""
    gen = torch.Generator().manual_seed(3)
    for scale_in in (1.0, 1e-3, 1e3):
        q = torch.randn(2, 40, 192, generator=gen) * scale_in
        key = torch.randn(2, 50, 192, generator=gen) * torch.rand(2, 50, 1, generator=gen)
        exact = torch.matmul(q.double(), key.double().transpose(-1, -2)) * 0.07
        for scores in (ops.contract_scores(q, key, 0.07),
                       torch.matmul(q, key.transpose(-1, -2)) * 0.07):
            err = (scores.double() - exact).abs()
            assert bool((err <= ops.selection_score_bound(q, key, 0.07).double()).all())
    # bf16 operands: lo is zero, and the one product is exact up to float32 accumulation
    hi, lo = ops.split_bf16(torch.randn(5, 7).bfloat16())
    assert not bool(lo.float().any())
    x = torch.randn(3, 9, 192, generator=gen)
    hi, lo = ops.split_bf16(x)
    assert bool(((x - hi.float() - lo.float()).abs() <= 2.0 ** -16 * x.abs()).all())


def _packed(scores: torch.Tensor, column_bits: int) -> torch.Tensor:
    """The ranking keys of the attention kernel, as floats: the order-preserving int32 of
    each score with its low ``column_bits`` bits cleared (ties then go to the lower column,
    as in a stable sort)."""
    bits = scores.float().contiguous().view(torch.int32)
    ordered = bits ^ ((bits >> 31) & 0x7FFFFFFF)
    ordered = ordered & ~((1 << column_bits) - 1)
    back = ordered ^ ((ordered >> 31) & 0x7FFFFFFF)
    return back.view(torch.float32)


@pytest.mark.parametrize("post_relu", [False, True], ids=["random", "post_relu"])
def test_packed_ranking_keys_stay_within_the_widened_bound(post_relu):
    """bf16×3 scores ranked by packed int32 keys (8 column bits, T = 197): every differing
    list is a near-tie within 2 (τ + δ), δ = 2^-15 |score| (ops docstring)."""
    q, key, scale = _attention_features(1, post_relu)
    bits = kernels_attention.column_bits(256)
    with torch.no_grad():
        ref_scores = torch.matmul(q, key.transpose(-1, -2)) * scale
        got = _stable_lists(_packed(ops.contract_scores(q, key, scale), bits), 9)
        ref = _stable_lists(ref_scores, 9)
        tau = ops.selection_score_bound(q, key, scale).amax(-1, keepdim=True)
        delta = 2.0 ** (bits - 23) * ref_scores.abs().amax(-1, keepdim=True)
        gap = (ref_scores.gather(-1, got) - ref_scores.gather(-1, ref)).abs()
        assert bool((gap <= 2 * (tau + delta)).all())
    differs = float((got != ref).any(-1).float().mean())
    print(f"\npacked keys, bf16x3, 1x192 {'post-ReLU' if post_relu else 'random'}: lists "
          f"differing from float32: {differs:.2e}")
    assert bits == 8 and differs <= 1e-3
    # the packing preserves the order: sorted scores give non-increasing keys
    ranked = torch.sort(torch.randn(1000) * 10, descending=True).values
    assert bool((_packed(ranked, bits).diff() <= 0).all())


@pytest.mark.parametrize("post_relu", [False, True], ids=["random", "post_relu"])
def test_rank_then_rescore_gap_check_rates(post_relu):
    """The alternative the ops docstring weighs: rank on one bf16 product, rescore the best
    16 or 32 in float32, gap check with the norm bound τ_bf16 = 2^-7·scale·‖q‖·max‖k‖ (plus
    accumulation). Prints the rows and 64-query tiles whose check fails (those would need the
    bf16×3 pass too); at 32 kept, none fail on these features."""
    q, key, scale = _attention_features(1, post_relu, batch=8)
    dim = q.shape[-1]
    with torch.no_grad():
        exact = torch.matmul(q, key.transpose(-1, -2)) * scale
        rough = torch.matmul(q.bfloat16().float(), key.bfloat16().float().transpose(-1, -2))
        rough = rough * scale
        unit = 2.0 ** -7 + 2.0 ** -16 + 2 * dim * 2.0 ** -24
        tau = unit * scale * q.norm(dim=-1) * key.norm(dim=-1).amax(-1, keepdim=True)
        assert bool(((rough - exact).abs() <= tau[..., None]).all())  # the bound holds
        rates = {}
        for kept in (16, 32):
            top = rough.topk(kept, dim=-1)
            kth = exact.gather(-1, top.indices).topk(9, dim=-1).values[..., -1]
            fail = kth <= top.values[..., -1] + tau
            tiles = fail[:, :192].reshape(fail.shape[0], 3, 64).any(-1)
            rates[kept] = (float(fail.float().mean()), float(tiles.float().mean()))
    print(f"\nrank bf16 + rescore, 1x192 {'post-ReLU' if post_relu else 'random'}: "
          + ", ".join(f"k+m={m}: rows {r:.1%} tiles {t:.0%}" for m, (r, t) in rates.items()))
    assert rates[16][0] > 0.0 and rates[32] == (0.0, 0.0)


def test_contract_projection_error_and_gradients():
    """:func:`ops.contract_linear` (the selection's q/k projection on bf16 tensor cores) stays
    within :func:`ops.selection_score_bound` (of x and the weight) of the exact projection, and its gradients are a bf16
    linear's: bf16 operands, float32 accumulation."""
    gen = torch.Generator().manual_seed(5)
    for magnitude in (1.0, 1e-3, 1e3):
        x = (torch.randn(2, 30, 192, generator=gen) * magnitude).requires_grad_()
        weight = (torch.randn(64, 192, generator=gen) / 14).requires_grad_()
        bias = torch.randn(64, generator=gen).requires_grad_()
        out = ops.contract_linear(x, weight, bias)
        assert out.dtype == torch.float32 and out.shape == (2, 30, 64)
        exact = F.linear(x.double(), weight.double(), bias.double())
        err = (out.double() - exact).abs()
        assert bool((err <= ops.selection_score_bound(x, weight).double()).all())
        assert float(err.detach().max()) > 0.0  # the split is not exact: the bound is what holds
        grad = torch.randn(2, 30, 64, generator=gen)
        out.backward(grad)
        g16, w16 = grad.bfloat16().float(), weight.detach().bfloat16().float()
        torch.testing.assert_close(x.grad, g16 @ w16, rtol=1e-5, atol=1e-5 * magnitude)
        torch.testing.assert_close(
            weight.grad, g16.reshape(-1, 64).t() @ x.detach().bfloat16().float().reshape(-1, 192),
            rtol=1e-5, atol=1e-4 * magnitude)
        torch.testing.assert_close(bias.grad, grad.sum((0, 1)))


@pytest.mark.parametrize("post_relu", [False, True], ids=["random", "post_relu"])
def test_training_precision_lists_equal_float32_except_near_ties(post_relu):
    """What a bf16 training step ranks on a card: q/k projected by :func:`ops.contract_linear`,
    scored under the contract. Its lists equal the float32 lists (float32 projections and
    scores) except on near-ties within the projection's and the scores' bounds; bf16
    projections (plain autocast) change many."""
    torch.manual_seed(0)
    layer = ConvNNAttention(192, 1, k=9)
    x = torch.randn(4, 197, 192)
    if post_relu:
        x = F.relu(x)
    scale = 1.0 / math.sqrt(layer.head_dim)
    with torch.no_grad():
        wq, wk = layer.q_proj, layer.k_proj
        q, key = F.linear(x, wq.weight, wq.bias), F.linear(x, wk.weight, wk.bias)
        q_c = ops.contract_linear(x, wq.weight, wq.bias)
        k_c = ops.contract_linear(x, wk.weight, wk.bias)
        eq, ek = ops.selection_score_bound(x, wq.weight), ops.selection_score_bound(x, wk.weight)
        ref = _stable_lists(torch.matmul(q, key.transpose(-1, -2)) * scale, 9)
        got = _stable_lists(ops.contract_scores(q_c, k_c, scale), 9)
        # how far a pair's contract score may be from its float32 score: the score contract
        # on the projected features, plus what the projection error moves the product by
        tau = ops.selection_score_bound(q_c, k_c, scale) + scale * (
            torch.matmul(eq, key.abs().transpose(-1, -2)) + torch.matmul(q.abs() + eq, ek.transpose(-1, -2)))
        ref_scores = torch.matmul(q, key.transpose(-1, -2)) * scale
        differs = (ref != got).any(-1)
        gap = (ref_scores.gather(-1, got) - ref_scores.gather(-1, ref)).abs()
        assert bool((gap <= 2 * tau.amax(-1, keepdim=True)).all())
        assert wq.bias is None and wk.bias is None
        q16 = F.linear(x.bfloat16(), wq.weight.bfloat16()).float()
        k16 = F.linear(x.bfloat16(), wk.weight.bfloat16()).float()
        bf16 = (_stable_lists(torch.matmul(q16, k16.transpose(-1, -2)) * scale, 9) != ref).any(-1)
    rate, bf16_rate = float(differs.float().mean()), float(bf16.float().mean())
    print(f"\nConvNNAttention 1x192 T=197 k=9 {'post-ReLU' if post_relu else 'random'}, training "
          f"precision: lists differing from float32: contract projections + bf16x3 scores "
          f"{rate:.2e}, bf16 projections {bf16_rate:.2e}")
    assert rate <= 2e-3
    assert bf16_rate > 10 * max(rate, 1e-3)


def test_contract_projection_applies_only_under_bf16_autocast_on_a_bf16_card(monkeypatch):
    from convnn import kernels

    assert not ops.contract_projection_applies("cpu")
    assert not ops.contract_projection_applies(None)
    monkeypatch.setattr(torch, "is_autocast_enabled", lambda device_type=None: True)
    monkeypatch.setattr(torch, "get_autocast_dtype", lambda device_type: torch.bfloat16)
    for capability, expected in (((9, 0), True), ((8, 0), True), ((7, 5), False), (None, False)):
        monkeypatch.setattr(kernels, "device_capability", lambda device, c=capability: c)
        assert ops.contract_projection_applies("cuda:0") is expected, capability
    monkeypatch.setattr(torch, "get_autocast_dtype", lambda device_type: torch.float16)
    assert not ops.contract_projection_applies("cuda:0")
    monkeypatch.setattr(torch, "is_autocast_enabled", lambda device_type=None: False)
    monkeypatch.setattr(torch, "get_autocast_dtype", lambda device_type: torch.bfloat16)
    assert not ops.contract_projection_applies("cuda:0")


def test_layer_takes_the_contract_projection_where_it_applies(monkeypatch):
    """Where the contract projection applies, the layer's q/k come from one
    :func:`ops.contract_linear` of both weights: within the bound of the float32 projection,
    the same lists here, and the step's gradients are finite and close to float32's."""
    torch.manual_seed(1)
    layer = ConvNNAttention(96, 2, k=5)
    x = torch.randn(2, 40, 96, requires_grad=True)
    q32, k32 = layer._selection_features(x)
    lists32 = layer.neighbours(x)
    grad32 = torch.autograd.grad(layer(x).square().sum(), [x, layer.q_proj.weight])
    calls = []
    original = ops.contract_linear

    def counted(*args):
        calls.append(tuple(args[1].shape))
        return original(*args)

    monkeypatch.setattr(ops, "contract_projection_applies", lambda device: True)
    monkeypatch.setattr(ops, "contract_linear", counted)
    q, key = layer._selection_features(x)
    assert calls == [(192, 96)]  # q and k weights stacked: one split of x, one GEMM
    bound = ops.selection_score_bound(x, torch.cat((layer.q_proj.weight, layer.k_proj.weight)))
    for got, ref in ((q, q32), (key, k32)):
        assert 0.0 < float((got - ref).abs().max()) <= float(bound.max())
    assert torch.equal(layer.neighbours(x), lists32)
    grad = torch.autograd.grad(layer(x).square().sum(), [x, layer.q_proj.weight])
    for g, g32 in zip(grad, grad32):
        assert torch.isfinite(g).all()
        assert float((g - g32).norm() / g32.norm()) < 2e-2
