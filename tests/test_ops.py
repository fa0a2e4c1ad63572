"""The operator's steps and layers: paths agree, locality, sampling, finiteness, bad input."""

import inspect
import itertools
from pathlib import Path

import pytest
import torch

from convnn import (
    BranchingConv2d,
    ConvNN2d,
    ConvNN2dOptions,
    ConvNNAttention,
    HybridTokenMixer,
    ops,
)


def _forward_backward(module, x, seed):
    """Output and gradients, with the RNG (random candidates) reset before the forward."""
    module.zero_grad()
    x = x.clone().requires_grad_(True)
    torch.manual_seed(seed)
    out = module(x)
    upstream = torch.randn(out.shape, dtype=out.dtype, generator=torch.Generator().manual_seed(7))
    (out * upstream).sum().backward()
    grads = {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}
    return out.detach(), x.grad, grads


def _assert_paths_agree(fast, reference, x, tol):
    reference.load_state_dict(fast.state_dict())
    out_f, gx_f, gp_f = _forward_backward(fast, x, seed=11)
    out_r, gx_r, gp_r = _forward_backward(reference, x, seed=11)
    torch.testing.assert_close(out_f, out_r, **tol)
    torch.testing.assert_close(gx_f, gx_r, **tol)
    assert gp_f.keys() == gp_r.keys()
    for name in gp_f:
        torch.testing.assert_close(gp_f[name], gp_r[name], **tol)


F64 = {"rtol": 1e-9, "atol": 1e-9}

CONV_OPTIONS = list(itertools.product(
    ["features", "coords", "mixed"], ["cosine", "dot", "euclidean"],
    ["all", "random", "spatial"], ["ones", "softmax", "similarity"],
    ["standard", "depthwise", "separable"]))


@pytest.mark.parametrize("selection,similarity,sampling,weighting,aggregation", [
    opt for opt in CONV_OPTIONS if not (opt[0] == "coords" and opt[1] != "euclidean")])
def test_convnn2d_fast_path_matches_reference_path(selection, similarity, sampling, weighting,
                                                    aggregation):
    torch.manual_seed(0)
    kwargs = {"k": 5, "padding": 1, "selection": selection, "similarity": similarity, "sampling": sampling,
                  "candidates": None if sampling == "all" else 3, "weighting": weighting,
                  "aggregation": aggregation}
    fast = ConvNN2d.from_config(4, 4, backend="torch", **kwargs).double()
    reference = ConvNN2d.from_config(4, 4, backend="reference", **kwargs).double()
    x = torch.randn(2, 4, 5, 6, dtype=torch.float64)
    _assert_paths_agree(fast, reference, x, F64)


@pytest.mark.parametrize("selection,similarity,sampling,weighting,aggregation", [
    opt for opt in CONV_OPTIONS if not (opt[0] == "coords" and opt[1] != "euclidean")])
def test_attention_fast_path_matches_reference_path(selection, similarity, sampling, weighting,
                                                     aggregation):
    torch.manual_seed(1)
    kwargs = {"k": 4, "sampling": sampling, "candidates": None if sampling == "all" else 7,
                  "similarity": similarity, "weighting": weighting, "aggregation": aggregation,
                  "selection": selection}
    fast = ConvNNAttention.from_config(12, 3, backend="torch", **kwargs).double()
    reference = ConvNNAttention.from_config(12, 3, backend="reference", **kwargs).double()
    with torch.no_grad():  # break the symmetry of the identity/ones initialisation
        fast.weight.add_(0.1 * torch.randn_like(fast.weight))
    x = torch.randn(2, 11, 12, dtype=torch.float64)
    _assert_paths_agree(fast, reference, x, F64)


def test_fast_selection_in_blocks_matches_one_block():
    torch.manual_seed(2)
    q, keys = torch.randn(3, 40, 8), torch.randn(3, 40, 8)
    full_idx, full_s = ops.select_neighbours(q, keys, 6, "dot")
    blk_idx, blk_s = ops.select_neighbours(q, keys, 6, "dot", block_elements=3 * 40 * 7)
    assert torch.equal(full_idx, blk_idx)
    torch.testing.assert_close(full_s, blk_s)


def test_sampled_selection_only_scores_the_candidates(monkeypatch):
    seen = []
    original = ops._block_scores

    def spy(query, keys, *args, **kwargs):
        seen.append(tuple(keys.shape))
        return original(query, keys, *args, **kwargs)

    monkeypatch.setattr(ops, "_block_scores", spy)
    q = torch.randn(2, 50, 4)
    ops.select_neighbours(q, q, 3, "dot", candidate_positions=torch.arange(0, 50, 5),
                          self_first=True)
    assert seen and all(shape[1] == 10 for shape in seen)


# ----------------------------------------------------------------------------- locality
@pytest.mark.parametrize("backend", ["torch", "reference"])
@pytest.mark.parametrize("heads", [1, 3])
def test_coordinate_selection_attention_is_local(backend, heads):
    torch.manual_seed(3)
    tokens, k = 13, 3
    layer = ConvNNAttention(6 * heads, heads, k=k, selection="coords", backend=backend).double()
    x = torch.randn(2, tokens, 6 * heads, dtype=torch.float64)
    neighbours = {i: {min(max(i + d, 0), tokens - 1) for d in (-1, 0, 1)} for i in range(tokens)}
    neighbours[0], neighbours[tokens - 1] = {0, 1, 2}, {tokens - 3, tokens - 2, tokens - 1}
    base = layer(x)
    for j in (0, 5, tokens - 1):
        x2 = x.clone()
        x2[:, j] += torch.randn(6 * heads, dtype=torch.float64)
        changed = (layer(x2) - base).abs().amax(dim=(0, 2)) > 1e-12
        expected = torch.tensor([j in neighbours[i] for i in range(tokens)])
        assert torch.equal(changed, expected), (j, changed, expected)


def test_hybrid_token_mixer_with_conv1d_is_local_in_its_conv_branch():
    torch.manual_seed(4)
    mixer = HybridTokenMixer(12, 2, ratio=0.5, partner="conv1d", kernel_size=3,
                             selection="coords", k=3).double()
    x = torch.randn(1, 15, 12, dtype=torch.float64)
    base = mixer(x)
    x2 = x.clone()
    x2[:, 7] += 1.0
    changed = ((mixer(x2) - base).abs().amax(dim=(0, 2)) > 1e-12).nonzero().flatten().tolist()
    assert changed == [6, 7, 8]


# ----------------------------------------------------------------------------- sampling
def test_spatial_candidates_are_the_grid_of_the_unpadded_image():
    idx = ops.spatial_candidates_2d(8, 8, 3, padding=1)
    rows, cols = idx // 10 - 1, idx % 10 - 1  # back to unpadded coordinates
    assert sorted(set(rows.tolist())) == [0, 4, 7] and sorted(set(cols.tolist())) == [0, 4, 7]
    assert ops.spatial_candidates_1d(197, 5).tolist() == [0, 49, 98, 147, 196]


def test_spatial_sampling_layer_picks_only_grid_pixels():
    layer = ConvNN2d(3, 3, k=5, padding=1, sampling="spatial", candidates=3)
    idx = layer.neighbours(torch.randn(2, 3, 8, 8))  # (2, 64, 5)
    grid = set(ops.spatial_candidates_2d(8, 8, 3, padding=1).tolist())
    own = ops.interior_positions(8, 8, 1)
    assert torch.equal(idx[:, :, 0], own.expand(2, -1))
    assert set(idx[:, :, 1:].flatten().tolist()) <= grid


@pytest.mark.parametrize("layer_kind", ["2d", "attention"])
def test_random_sampling_puts_self_first_and_never_again(layer_kind):
    torch.manual_seed(5)
    layer = ConvNN2d(3, 3, k=6, sampling="random", candidates=3)
    x = torch.randn(4, 3, 6, 6)
    for _ in range(20):
        idx = layer.neighbours(x)
        own = ops.interior_positions(6, 6, 1).view(1, -1, 1)
        assert torch.equal(idx[..., :1], own.expand(4, -1, 1))
        assert not (idx[..., 1:] == own).any()
        assert (idx.sort(-1).values.diff(dim=-1) != 0).all()  # k distinct positions
    if layer_kind == "attention":
        attn = ConvNNAttention(6, 2, k=4, sampling="random", candidates=5)
        q = torch.randn(3, 10, 3)
        cands = attn._random_draw(10, 5, q.device)
        idx, _ = ops.select_neighbours(q, q, 4, "dot", candidate_positions=cands, self_first=True)
        assert torch.equal(idx[..., 0], torch.arange(10).expand(3, -1))
        assert not (idx[..., 1:] == torch.arange(10).view(1, -1, 1)).any()


def test_random_candidates_fixed_in_eval_fresh_in_training():
    layer = ConvNNAttention(8, 2, k=3, sampling="random", candidates=4)
    x = torch.randn(2, 30, 8)
    layer.eval()
    with torch.no_grad():
        first = layer(x)
        assert torch.equal(first, layer(x))
        layer.eval_sampling = "resample"
        assert any(not torch.equal(first, layer(x)) for _ in range(5))
        layer.train()
        assert any(not torch.equal(layer(x), layer(x)) for _ in range(5))


# ----------------------------------------------------------------------------- finiteness
@pytest.mark.parametrize("weighting", ["softmax", "similarity"])
def test_euclidean_is_finite_at_zero_distance(weighting):
    x = torch.zeros(2, 9, 4, dtype=torch.float64, requires_grad=True)  # all points coincide
    idx, scores = ops.select_neighbours(x, x, 3, "euclidean")
    rho = ops.neighbour_weights(scores, weighting)
    out = ops.aggregate(ops.gather_neighbours(x, idx), rho, torch.ones(4, 1, 3,
                        dtype=torch.float64), aggregation="depthwise")
    out.sum().backward()
    assert torch.isfinite(out).all() and torch.isfinite(x.grad).all()
    layer = ConvNNAttention(8, 2, k=4, similarity="euclidean").double()
    y = torch.ones(1, 6, 8, dtype=torch.float64, requires_grad=True)
    layer(y).sum().backward()
    assert torch.isfinite(y.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in layer.parameters())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("similarity", ["dot", "cosine", "euclidean"])
@pytest.mark.parametrize("scale", [0.0, 1e-20, 1e4])
def test_no_nan_in_16_bit_on_extreme_inputs(dtype, similarity, scale):
    torch.manual_seed(6)
    if dtype == torch.float16 and scale > 100:
        scale = 100.0  # float16 overflows at 65504 in the projections themselves
    attn = ConvNNAttention(16, 2, k=5, similarity=similarity).to(dtype)
    x = (torch.randn(2, 12, 16) * scale).to(dtype).requires_grad_(True)
    out = attn(x)
    out.float().sum().backward()
    assert torch.isfinite(out).all() and torch.isfinite(x.grad).all()
    conv = ConvNN2d(3, 4, k=5, similarity=similarity, weighting="softmax").to(dtype)
    img = (torch.randn(2, 3, 6, 6) * scale).to(dtype)
    assert torch.isfinite(conv(img)).all()


def test_bf16_huge_scores_give_finite_softmax():
    scores = torch.tensor([[[float("inf"), 1e30, -float("inf")]]], dtype=torch.bfloat16)
    rho = ops.neighbour_weights(scores, "softmax")
    assert torch.isfinite(rho).all() and torch.allclose(rho.float().sum(-1), torch.ones(1, 1))


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("build,match", [
    (lambda: ConvNNAttention(10, 3), "dim=10 must be divisible by num_heads=3"),
    (lambda: ConvNNAttention(8, 2, sampling="random", candidates=3, k=4), "k=4"),
    (lambda: ConvNNAttention(8, 2, sampling="random", candidates=-1), "candidates must be >= 1"),
    (lambda: ConvNNAttention(8, 2, sampling="random"), "needs candidates"),
    (lambda: ConvNNAttention(8, 2, similarity="manhattan"), "similarity must be one of"),
    (lambda: ConvNNAttention(8, 2, weighting="sigmoid"), "weighting must be one of"),
    (lambda: ConvNN2d(3, 4, aggregation="grouped"), "aggregation must be one of"),
    (lambda: ConvNN2d(3, 4, sampling="everything"), "sampling must be one of"),
    (lambda: ConvNN2d(3, 4, selection="colour"), "selection must be one of"),
    (lambda: ConvNN2d(3, 4, sampling="all", candidates=4), "candidates must be None"),
    (lambda: ConvNN2d(3, 4, sampling="spatial", candidates=0), "candidates must be >= 1"),
    (lambda: ConvNN2d(3, 4, aggregation="depthwise"), "out_channels == in_channels"),
    (lambda: ConvNN2d(3, 4, selection="coords", similarity="cosine"), "similarity='euclidean'"),
    (lambda: ConvNN2d(3, 4, k=0), "k must be >= 1"),
    (lambda: ConvNN2d(3, 4, k=9, sampling="random", candidates=2), "k=9 must be <="),
    (lambda: ConvNN2d(3, 4, options=ConvNN2dOptions(eval_sampling="sometimes")),
     "eval_sampling must be one of"),
    (lambda: BranchingConv2d(3, 4, ratio=1.5), "ratio must be in"),
    (lambda: HybridTokenMixer(8, 2, partner="mlp"), "partner must be one of"),
])
def test_bad_arguments_raise_value_errors(build, match):
    with pytest.raises(ValueError, match=match):
        build()


@pytest.mark.parametrize("call,match", [
    (lambda: ConvNN2d(3, 4)(torch.randn(3, 8, 8)), r"\[B, C, H, W\]"),
    (lambda: ConvNN2d(3, 4)(torch.randn(1, 5, 8, 8)), "3 channels"),
    (lambda: ConvNN2d(3, 4, k=50, padding=0)(torch.randn(1, 3, 4, 4)), "k=50 must be <="),
    (lambda: ConvNN2d(3, 4, sampling="random", candidates=5)(torch.randn(1, 3, 4, 4)),
     "candidates=5"),
    (lambda: ConvNN2d(3, 4, sampling="spatial", candidates=5)(torch.randn(1, 3, 4, 4)),
     "candidates=5"),
    (lambda: ConvNNAttention(8, 2, k=9)(torch.randn(2, 5, 8)), "k=9 must be <= the number of"),
    (lambda: ConvNNAttention(8, 2)(torch.randn(5, 8)), r"\[B, T, D\]"),
    (lambda: ConvNNAttention(8, 2)(torch.randn(1, 5, 6)), "D=8"),
    (lambda: ConvNNAttention(8, 2, k=3, sampling="spatial", candidates=9)(torch.randn(1, 5, 8)),
     "candidates=9"),
    (lambda: ops.select_neighbours(torch.randn(1, 4, 2), torch.randn(1, 4, 2), 5, "dot"),
     "k=5 must be <= the number of positions"),
    (lambda: ops.pairwise_scores(torch.randn(1, 4, 2), torch.randn(1, 4, 2), "l1"),
     "similarity must be one of"),
])
def test_bad_inputs_raise_value_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_both_selectors_take_the_one_parameter_list_of_selection_problem():
    shared = list(inspect.signature(ops.SelectionProblem).parameters.values())
    assert list(inspect.signature(ops.select_neighbours_reference).parameters.values()) == shared
    fast = list(inspect.signature(ops.select_neighbours).parameters)
    assert fast == [p.name for p in shared] + ["block_elements", "backend"]
    q = torch.randn(1, 4, 2)
    for select in (ops.select_neighbours, ops.select_neighbours_reference):
        name = select.__name__
        with pytest.raises(TypeError, match=rf"{name}\(\) got an unexpected keyword argument 'kk'"):
            select(q, q, 2, "dot", kk=1)
        with pytest.raises(TypeError, match=rf"{name}\(\) takes 4 positional arguments"):
            select(q, q, 2, "dot", None)
        with pytest.raises(ValueError, match="self_first must be True"):
            select(q, q, 2, "dot", candidate_positions=torch.tensor([0, 1]))
    with pytest.raises(TypeError, match="'block_elements'"):
        ops.select_neighbours_reference(q, q, 2, "dot", block_elements=4)


# ----------------------------------------------------------------------------- gradcheck
@pytest.mark.parametrize("similarity,weighting,aggregation", [
    ("dot", "softmax", "depthwise"), ("cosine", "similarity", "standard"),
    ("euclidean", "softmax", "separable")])
def test_gradcheck_operator(similarity, weighting, aggregation):
    torch.manual_seed(8)
    opts = {"dtype": torch.float64, "requires_grad": True}
    values, query = torch.randn(2, 6, 3, **opts), torch.randn(2, 6, 4, **opts)
    if aggregation == "standard":
        weight = torch.randn(5, 3, 3, **opts)
    else:
        weight = torch.randn(3, 1, 3, **opts)
    pointwise = torch.randn(5, 3, 1, **opts) if aggregation == "separable" else None

    def fn(values, query, weight):
        return ops.convnn(values, query, query, 3, weight, similarity=similarity,
                          weighting=weighting, aggregation=aggregation, pointwise=pointwise)

    assert torch.autograd.gradcheck(fn, (values, query, weight))


def test_gradcheck_layers():
    torch.manual_seed(9)
    attn = ConvNNAttention(6, 2, k=3).double()
    x = torch.randn(1, 5, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(attn, (x,))
    conv = ConvNN2d(2, 3, k=4, weighting="softmax").double()
    img = torch.randn(1, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(conv, (img,))


# ----------------------------------------------------------------------------- layers
def test_branching_channel_split_and_limits():
    layer = BranchingConv2d(8, 16, ratio=0.5)
    assert (layer.conv_channels, layer.convnn_channels) == (8, 8)
    assert layer(torch.randn(2, 8, 6, 6)).shape == (2, 16, 6, 6)
    only_conv = BranchingConv2d(8, 16, ratio=0.0)
    assert only_conv.convnn is None and only_conv.conv.out_channels == 16
    only_nn = BranchingConv2d(8, 16, ratio=1.0)
    assert only_nn.conv is None and only_nn.convnn.out_channels == 16
    assert BranchingConv2d(8, 10, ratio=0.625).convnn_channels == 6


@pytest.mark.parametrize("shape", [(1, 3, 1, 1), (2, 3, 5, 7), (3, 3, 16, 16)])
def test_convnn2d_any_shape_is_a_drop_in(shape):
    layer = ConvNN2d(3, 7, k=min(9, (shape[2] + 2) * (shape[3] + 2)))
    assert layer(torch.randn(shape)).shape == (shape[0], 7, shape[2], shape[3])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
def test_layers_run_in_every_dtype(dtype):
    attn = ConvNNAttention(8, 2, k=3, sampling="random", candidates=4).to(dtype)
    assert attn(torch.randn(2, 9, 8).to(dtype)).dtype == dtype
    conv = ConvNN2d(3, 4, sampling="spatial", candidates=3).to(dtype)
    assert conv(torch.randn(2, 3, 5, 5).to(dtype)).dtype == dtype


def test_extra_repr_names_the_options():
    text = repr(ConvNN2d(3, 4, sampling="random", candidates=4))
    assert "sampling='random'" in text and "candidates=4" in text
    assert "k=9" in repr(ConvNNAttention(8, 2))


@pytest.mark.parametrize("aggregation", ["standard", "depthwise", "separable"])
@pytest.mark.parametrize("with_rho", [False, True])
@pytest.mark.parametrize("shared_indices", [False, True])
def test_fused_gather_aggregate_matches_plain_gather_then_aggregate(aggregation, with_rho,
                                                                     shared_indices):
    torch.manual_seed(10)
    opts = {"dtype": torch.float64, "requires_grad": True}
    values = torch.randn(3, 10, 4, **opts)
    indices = torch.randint(0, 10, (6, 5) if shared_indices else (3, 6, 5))
    rho = torch.randn(3, 6, 5, **opts) if with_rho else None
    weight = torch.randn(7, 4, 5, **opts) if aggregation == "standard" else \
        torch.randn(4, 1, 5, **opts)
    pointwise = torch.randn(7, 4, 1, **opts) if aggregation == "separable" else None
    bias = torch.randn(7 if aggregation != "depthwise" else 4, **opts)
    inputs = [t for t in (values, rho, weight, pointwise, bias) if t is not None]
    fused = ops.gather_aggregate(values, indices, rho, weight, bias, aggregation, pointwise)
    plain = ops.aggregate(ops.gather_neighbours(values, indices), rho, weight, bias,
                          aggregation, pointwise)
    torch.testing.assert_close(fused, plain)
    upstream = torch.randn_like(fused)
    g_fused = torch.autograd.grad((fused * upstream).sum(), inputs)
    g_plain = torch.autograd.grad((plain * upstream).sum(), inputs)
    for a, b in zip(g_fused, g_plain):
        torch.testing.assert_close(a, b)
    assert torch.autograd.gradcheck(
        lambda v, w: ops.gather_aggregate(v, indices, rho, w, None, aggregation, pointwise),
        (values, weight))


def test_fixed_candidates_are_deterministic_distinct_and_seeded():
    a = ops.fixed_candidates(197, 32, seed=3)
    assert torch.equal(a, ops.fixed_candidates(197, 32, seed=3))
    assert not torch.equal(a, ops.fixed_candidates(197, 32, seed=4))
    assert len(set(a.tolist())) == 32 and bool((a.diff() > 0).all())
    with pytest.raises(ValueError, match="candidates=10 must be <="):
        ops.fixed_candidates(5, 10)


def test_compiles_without_graph_breaks_and_matches_eager():
    import torch._dynamo as dynamo

    torch.manual_seed(12)
    x = torch.randn(2, 21, 16)
    for layer in (ConvNNAttention(16, 2, k=5), ConvNNAttention(16, 2, k=5, sampling="random",
                                                                candidates=8).eval()):
        explanation = dynamo.explain(layer)(x)
        assert explanation.graph_break_count == 0, explanation.break_reasons
    img = torch.randn(2, 4, 6, 6)
    for layer in (ConvNN2d(4, 4), ConvNN2d(4, 4, sampling="spatial", candidates=3)):
        assert dynamo.explain(layer)(img).graph_break_count == 0
    layer = ConvNNAttention(16, 2, k=5)
    compiled = torch.compile(layer)
    xs = [x.clone().requires_grad_(True) for _ in range(2)]
    out_c, out_e = compiled(xs[0]), layer(xs[1])
    torch.testing.assert_close(out_c, out_e, rtol=1e-5, atol=1e-5)
    out_c.sum().backward()
    out_e.sum().backward()
    torch.testing.assert_close(xs[0].grad, xs[1].grad, rtol=1e-5, atol=1e-5)


def test_coordinate_ties_go_to_the_lowest_position_in_both_paths():
    # Tokens on a line: 4 and 6 are both at distance 1 from 5. The candidates are given in
    # descending order, so a tie broken by column would pick 6.
    coords = torch.arange(10, dtype=torch.float32).view(1, 10, 1)
    candidates = torch.tensor([9, 6, 4, 2])
    for select in (ops.select_neighbours, ops.select_neighbours_reference):
        idx, _ = select(coords, coords, 2, "euclidean", candidate_positions=candidates,
                        self_first=True,
                        with_scores=False, stable=True)
        assert idx[0, 5].tolist() == [5, 4]
        assert idx[0, 0].tolist() == [0, 2]


@pytest.mark.parametrize("grid", ["image", "padded"])
def test_coordinate_selection_is_identical_in_every_block_size_and_path(grid):
    # Distances on a grid in [-1, 1] tie exactly only if each pair's distance does not depend
    # on the matrix product (block, candidate subset) it is computed in.
    coords = ops.grid_coordinates(5, 6, 1, grid=grid).unsqueeze(0)  # (1, 56, 2)
    qpos = ops.interior_positions(5, 6, 1)
    candidates = ops.spatial_candidates_2d(5, 6, 3, 1).flip(0)
    for cand, first in ((None, False), (candidates, True)):
        kwargs = {"query_positions": qpos, "candidate_positions": cand, "self_first": first,
                  "stable": True}
        ref_idx, ref_s = ops.select_neighbours_reference(coords[:, qpos], coords, 5,
                                                         "euclidean", **kwargs)
        for block in (None, 7, 56):
            idx, s = ops.select_neighbours(coords[:, qpos], coords, 5, "euclidean",
                                           block_elements=block, **kwargs)
            assert torch.equal(idx, ref_idx)
            assert torch.equal(s, ref_s)


# ----------------------------------------------------------------------------- a new similarity
def test_a_new_similarity_is_one_table_entry(monkeypatch):
    """Registering negative L1 distance in one place makes the fast and the reference path,
    and the layers, accept it, with the same neighbours, weights and outputs."""
    from convnn.layers import ConvNN2d

    neg_l1 = ops.Similarity(
        "neg_l1",
        prepare=lambda query, keys: (query, keys, None),
        score_block=lambda q, kk, extra, scale, dtype: -torch.cdist(q, kk, p=1).to(dtype),
        score_row=lambda q, kk, scale: -(q - kk).abs().sum(-1),
    )
    monkeypatch.setitem(ops.SIMILARITIES, "neg_l1", neg_l1)  # = ops.register_similarity(neg_l1)
    torch.manual_seed(0)
    q = torch.randn(2, 40, 5, dtype=torch.float64)
    values = torch.randn(2, 40, 3, dtype=torch.float64)
    weight = torch.randn(4, 3, 6, dtype=torch.float64)
    fast_idx, fast_s = ops.select_neighbours(q, q, 6, "neg_l1", self_first=True,
                                             block_elements=2 * 40 * 7)
    ref_idx, ref_s = ops.select_neighbours_reference(q, q, 6, "neg_l1", self_first=True)
    assert torch.equal(fast_idx, ref_idx)
    torch.testing.assert_close(fast_s, ref_s)
    distances = (q[:, :, None] - q[:, None]).abs().sum(-1)  # (B, n, n)
    expected = (-distances).sort(-1, descending=True).values
    torch.testing.assert_close(ref_s[..., 1:], expected[..., 1:6])  # self (0) comes first
    outs = [ops.convnn(values, q, q, 6, weight, similarity="neg_l1", weighting="softmax",
                       backend=backend) for backend in ("torch", "reference")]
    torch.testing.assert_close(outs[0], outs[1])
    layers = [ConvNN2d(3, 4, k=5, similarity="neg_l1", backend=backend)
              for backend in ("torch", "reference")]
    layers[1].load_state_dict(layers[0].state_dict())
    x = torch.randn(1, 3, 6, 6)
    torch.testing.assert_close(layers[0](x), layers[1](x))


# ----------------------------------------------------------------------------- one backend choice
def test_one_backend_choice_with_a_global_default():
    assert ops.get_default_backend() == "torch"
    assert ops.choose_backend(None, "cpu") == "torch"
    assert ops.choose_backend("reference", "cpu", step="topk", k=3, width=5) == "reference"
    with ops.default_backend("reference"):
        assert ops.choose_backend(None, "cpu") == "reference"
        assert ops.choose_backend("torch", "cpu") == "torch"  # an argument beats the default
        assert ops.requested_backend(ConvNN2d(3, 4, k=5).backend) == "reference"
    with ops.default_backend(None):  # auto: PyTorch off CUDA
        assert ops.choose_backend(None, "cpu", step="topk", k=3, width=5) == "torch"
        assert ops.get_default_backend() is None
    with pytest.raises(ValueError, match="backend must be one of"):
        ops.choose_backend("fast", "cpu")
    with pytest.raises(ValueError, match="backend must be one of"):
        ConvNN2d(3, 4, k=5, backend="fast")
    torch.manual_seed(0)
    x = torch.randn(2, 3, 6, 6)
    layers = [ConvNN2d(3, 4, k=5, weighting="softmax", backend=b) for b in ("torch", "reference")]
    layers[1].load_state_dict(layers[0].state_dict())
    assert "backend='reference'" in repr(layers[1])
    torch.testing.assert_close(layers[0](x), layers[1](x))
    with ops.default_backend("reference"):
        layer = ConvNN2d.from_conv2d(torch.nn.Conv2d(3, 4, 3, padding=1))
        assert layer.backend is None
        assert ops.requested_backend(layer.backend) == "reference"
        assert layer(x).shape == (2, 4, 6, 6)


def test_one_ordered_list_decides_and_each_kernel_module_says_what_it_runs():
    import convnn

    assert [b.name for b in ops.BACKEND_ORDER] == ["triton", "torch", "reference"]
    from convnn.bench.compile import KERNEL_MODULES  # the modules the compile gate compiles

    kernel_modules = set(KERNEL_MODULES)
    for step, kernel in ops.KERNEL_STEPS.items():
        assert kernel.can_run.__module__ in kernel_modules, step
        assert kernel.can_run.__name__ == f"can_run_{step}", step
    # no module but ops compares backend names: the layers ask ops.backend_decision
    package = Path(convnn.__file__).parent
    for path in package.rglob("*.py"):
        if path.name != "ops.py":
            text = path.read_text(encoding="utf-8")
            for name in ops.BACKENDS:
                assert f'== "{name}"' not in text and f'!= "{name}"' not in text, (path, name)


def _problems(dtype):
    attention = {"k": 9, "width": 197, "aggregation": "depthwise", "similarity": "dot",
                 "options": {"sampling": "all", "selection": "features", "weighting": "softmax",
                             "attn_dropout": 0.0, "dtypes": (torch.float32, dtype)}}
    conv2d = {"k": 9, "similarity": "cosine", "dtype": dtype,
              "options": {"sampling": "all", "selection": "features", "weighting": "ones",
                          "aggregation": "standard", "self_first": True,
                          "sort_by_position": False}}
    return {"gather_aggregate": {"aggregation": "depthwise", "dtype": dtype},
            "fused_topk": {"k": 8, "similarity": "dot", "dtype": dtype},
            "fused_attention": attention, "conv2d_fused": conv2d}


def test_the_decider_and_the_compile_gate_agree_on_which_cards_run_bf16():
    from convnn import kernels
    from convnn.bench.compile import CARDS

    for card in CARDS:  # the gate builds bf16 variants exactly where the decider allows them
        assert ((card.arch // 10, card.arch % 10) >= kernels.BF16_CAPABILITY) == card.bf16


@pytest.mark.parametrize("capability", [(7, 5), (8, 0), (9, 0)])
def test_no_bf16_kernel_variant_on_a_card_without_bf16(capability, monkeypatch):
    """A T4 (7.5) has no bf16 variants (the compile gate builds them from sm_80 on): a bf16
    problem falls back to PyTorch there, even under backend='triton'; fp16 and float32 still
    take the kernels, and 8.0+ takes bf16."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    bf16_runs = capability >= (8, 0)
    with ops.default_backend("triton"):
        for dtype in (torch.bfloat16, torch.float16, torch.float32):
            for step, problem in _problems(dtype).items():
                backend, reason = ops.backend_decision(None, "cuda", step=step, **problem)
                if dtype == torch.bfloat16 and not bf16_runs:
                    assert backend == "torch", (step, reason)
                    assert "bfloat16" in reason and f"{capability[0]}.{capability[1]}" in reason
                else:
                    assert backend == "triton", (step, dtype, reason)
        # the projection kernel's products are bf16 whatever its float32 input: not on a T4
        backend, reason = ops.backend_decision(None, "cuda", step="contract_projection",
                                               width=192, heads=3, dtype=torch.float32)
        assert backend == ("triton" if bf16_runs else "torch"), reason
        # the layer's own problem (ConvNN2d.backend_decision asks the same decider)
        problem = ConvNN2d(4, 4, k=5)._fused_problem(torch.zeros(1, 4, 5, 5, dtype=torch.bfloat16))
        assert ops.choose_backend(None, "cuda", step="conv2d_fused", **problem) == (
            "triton" if bf16_runs else "torch")
