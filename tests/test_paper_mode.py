"""Paper mode (method.md §7): each of the authors' behaviours pinned on a small case computed by
hand in float64, the presets that use it, and ranking that bf16 autocast does not change."""

import math

import pytest
import torch

from convnn import experiments as E
from convnn import ops
from convnn.layers import (
    PAPER_ATTENTION,
    PAPER_CONVNN2D,
    ConvNN2d,
    ConvNN2dOptions,
    ConvNNAttention,
)
from convnn.models import build_model, sampling_for_map

F64 = {"rtol": 1e-12, "atol": 1e-12}


def _identity_attention(tokens: torch.Tensor, **kwargs) -> ConvNNAttention:
    """One head, width 2, identity projections, rank weights of one: out_i = Σ_j ρ_ij x_j."""
    layer = ConvNNAttention.from_config(2, 1, **kwargs).double()
    with torch.no_grad():
        for proj in (layer.q_proj, layer.k_proj, layer.v_proj, layer.out_proj):
            proj.weight.copy_(torch.eye(2, dtype=torch.float64))
    return layer


TOKENS = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [2.0, 0.0]]], dtype=torch.float64)


# --------------------------------------------------------------- 1. constant self logit
@pytest.mark.parametrize("backend", ["torch", "reference"])
def test_constant_self_logit_weight_is_e_over_e_plus_the_neighbours(backend):
    # Token 0 = (1, 0); scores q·k/√2 with tokens 1, 2, 3 are 0, 1/√2, √2, so with k = 3 it
    # selects itself, then token 3, then token 2. The spatial set of r = 4 on T = 4 is every token.
    layer = _identity_attention(TOKENS, k=3, sampling="spatial", candidates=4,
                                self_score="constant", backend=backend).eval()
    assert layer.neighbours(TOKENS)[0, 0, 0].tolist() == [0, 3, 2]
    s3, s2 = math.sqrt(2.0), 1.0 / math.sqrt(2.0)
    denominator = math.e + math.exp(s3) + math.exp(s2)
    weights = [math.e / denominator, math.exp(s3) / denominator, math.exp(s2) / denominator]
    expected = weights[0] * TOKENS[0, 0] + weights[1] * TOKENS[0, 3] + weights[2] * TOKENS[0, 2]
    torch.testing.assert_close(layer(TOKENS)[0, 0], expected, **F64)

    # Our default scores the token itself: its logit is q·q/√2 = 1/√2, not 1.
    ours = _identity_attention(TOKENS, k=3, sampling="spatial", candidates=4, backend=backend).eval()
    real = [math.exp(s2), math.exp(s3), math.exp(s2)]
    expected_ours = sum(w / sum(real) * TOKENS[0, j] for w, j in zip(real, (0, 3, 2)))
    torch.testing.assert_close(ours(TOKENS)[0, 0], expected_ours, **F64)


def test_constant_self_logit_in_the_operator_scores():
    q = torch.randn(2, 6, 4, dtype=torch.float64)
    candidates = torch.tensor([1, 3, 4])
    for select in (ops.select_neighbours, ops.select_neighbours_reference):
        idx, scores = select(q, q, 3, "dot", candidate_positions=candidates, self_first=True,
                             self_score="constant")
        assert torch.equal(idx[..., 0], torch.arange(6).expand(2, 6))
        assert torch.all(scores[..., 0] == ops.PAPER_SELF_LOGIT)


# --------------------------------------------------------------- 2. dropout placement
def _record_rho_and_output(layer, x, monkeypatch):
    seen = {}
    original = ops.gather_aggregate

    def spy(values, indices, rho, *args, **kwargs):
        seen["rho"] = rho.detach().clone()
        return original(values, indices, rho, *args, **kwargs)

    monkeypatch.setattr(ops, "gather_aggregate", spy)
    handle = layer.out_proj.register_forward_pre_hook(
        lambda module, inputs: seen.__setitem__("aggregated", inputs[0].detach().clone()))
    torch.manual_seed(3)
    layer(x)
    handle.remove()
    return seen


def test_output_dropout_zeros_the_aggregated_output_not_rho(monkeypatch):
    torch.manual_seed(0)
    x = torch.randn(2, 12, 2, dtype=torch.float64)
    layer = _identity_attention(x, k=4, attn_dropout=0.5, attn_dropout_on="output")
    clean = _record_rho_and_output(layer.eval(), x, monkeypatch)
    dropped = _record_rho_and_output(layer.train(), x, monkeypatch)
    assert torch.all(dropped["rho"] > 0)
    torch.testing.assert_close(dropped["rho"], clean["rho"], **F64)
    zeros = dropped["aggregated"] == 0
    assert zeros.any() and not (clean["aggregated"] == 0).any()
    # Inverted dropout: kept entries are the clean output / (1 - p).
    torch.testing.assert_close(dropped["aggregated"][~zeros], 2.0 * clean["aggregated"][~zeros],
                               **F64)


def test_weight_dropout_zeros_rho(monkeypatch):
    torch.manual_seed(0)
    x = torch.randn(2, 12, 2, dtype=torch.float64)
    layer = _identity_attention(x, k=4, attn_dropout=0.5, attn_dropout_on="weights").train()
    assert (_record_rho_and_output(layer, x, monkeypatch)["rho"] == 0).any()


# --------------------------------------------------------------- 3. Loc_Col coordinates
def test_loc_col_coordinates_of_a_3x3_map_padded_by_1_are_the_linspace_values():
    layer = ConvNN2d(2, 2, selection="mixed", options=PAPER_CONVNN2D).double()
    steps = [-1.0, -0.5, 0.0, 0.5, 1.0]
    expected = torch.tensor([[x, y] for y in steps for x in steps], dtype=torch.float64)
    assert torch.equal(layer.coordinates(3, 3, dtype=torch.float64), expected)
    # One spacing per axis: x over W + 2 = 5, y over H + 2 = 3 on a 1 x 3 map.
    wide = ConvNN2d(2, 2, selection="mixed", options=PAPER_CONVNN2D).coordinates(1, 3)
    assert wide[:5, 0].tolist() == steps and wide[::5, 1].tolist() == [-1.0, 0.0, 1.0]
    # Ours: isotropic, the image spans [-1, 1] and the border lies outside.
    ours = ConvNN2d(2, 2, selection="mixed").coordinates(3, 3, dtype=torch.float64)
    assert ours[:5, 0].tolist() == [-2.0, -1.0, 0.0, 1.0, 2.0]


def test_loc_col_selection_features_scale_features_by_lambda_over_std():
    torch.manual_seed(1)
    layer = ConvNN2d.from_config(2, 2, k=4, selection="mixed", mix=0.25,
                                 coord_grid="padded").double()
    x = torch.randn(1, 2, 3, 3, dtype=torch.float64)
    values = torch.nn.functional.pad(x, (1, 1, 1, 1)).flatten(2).transpose(1, 2)  # (1, 25, 2)
    flat = values.reshape(-1)
    std = math.sqrt(((flat - flat.mean()) ** 2).sum().item() / (flat.numel() - 1))
    coords = layer.coordinates(3, 3, dtype=torch.float64)
    by_hand = torch.cat((0.25 * values / (std + 1e-6), 0.75 * coords.unsqueeze(0)), dim=-1)
    qpos = ops.interior_positions(3, 3, 1)
    expected, _ = ops.select_neighbours_reference(by_hand[:, qpos], by_hand, 4, "cosine",
                                                  query_positions=qpos, self_first=True)
    assert torch.equal(layer.neighbours(x), expected)


# --------------------------------------------------------------- 4. random candidates
def test_random_candidates_can_land_on_the_border():
    border = set(range(25)) - set(ops.interior_positions(3, 3, 1).tolist())
    padded = ConvNN2d.from_config(2, 2, k=3, sampling="random", candidates=5,
                                  candidate_layout="count", random_region="padded").train()
    image = ConvNN2d.from_config(2, 2, k=3, sampling="random", candidates=5,
                                 candidate_layout="count").train()
    torch.manual_seed(0)
    drawn_padded = set().union(*(padded.candidate_positions(3, 3).tolist() for _ in range(20)))
    drawn_image = set().union(*(image.candidate_positions(3, 3).tolist() for _ in range(20)))
    assert drawn_padded & border
    assert not drawn_image & border
    # All 25 positions of the padded 3 x 3 map are a valid draw; 26 are not.
    full = ConvNN2d.from_config(2, 2, k=3, sampling="random", candidates=25,
                                candidate_layout="count", random_region="padded")
    assert sorted(full.candidate_positions(3, 3).tolist()) == list(range(25))
    too_many = ConvNN2d.from_config(2, 2, k=3, sampling="random", candidates=26,
                                    candidate_layout="count", random_region="padded")
    with pytest.raises(ValueError, match="26 random positions"):
        too_many.candidate_positions(3, 3)


def test_random_fallback_counts_the_padded_map():
    # 16 x 16 map: r = 18 is 324 = 18 x 18 padded positions, more than the 256 pixels.
    assert sampling_for_map("random", 18, 16, 16, random_region="padded")[0] == "random"
    assert sampling_for_map("random", 19, 16, 16, random_region="padded")[0] == "all"
    assert sampling_for_map("random", 18, 16, 16)[0] == "all"


# --------------------------------------------------------------- 5. spatial indices
def test_spatial_indices_are_truncated():
    assert ops.spatial_candidates_1d(32, 4, rounding="truncate").tolist() == [0, 10, 20, 31]
    assert ops.spatial_candidates_1d(32, 4).tolist() == [0, 10, 21, 31]
    layer = ConvNN2d(2, 2, sampling="spatial", candidates=4,
                     options=ConvNN2dOptions(spatial_rounding="truncate"))
    rows = torch.tensor([0, 10, 20, 31]) + 1  # on the unpadded image, addressed in the padded map
    assert layer.candidate_positions(32, 32).tolist() == (rows[:, None] * 34 + rows).reshape(
        -1).tolist()
    # Tokens: CLS is index 0; token 0 takes itself and the other three candidates.
    attention = ConvNNAttention.from_config(4, 1, k=4, sampling="spatial", candidates=4,
                                            spatial_rounding="truncate").eval()
    assert attention.neighbours(torch.randn(1, 32, 4))[0, 0, 0].sort().values.tolist() == \
        [0, 10, 20, 31]


def test_paper_options_are_validated():
    for build, name in (
        (lambda: ConvNNAttention.from_config(4, self_score="real"), "self_score"),
        (lambda: ConvNNAttention.from_config(4, attn_dropout_on="rho"), "attn_dropout_on"),
        (lambda: ConvNNAttention.from_config(4, spatial_rounding="floor"), "spatial_rounding"),
        (lambda: ConvNN2d.from_config(2, 2, coord_grid="unpadded"), "coord_grid"),
        (lambda: ConvNN2d.from_config(2, 2, random_region="border"), "random_region"),
    ):
        with pytest.raises(ValueError, match=name):
            build()


# --------------------------------------------------------------- fast path = reference path
def _forward_backward(module, x):
    x = x.clone().requires_grad_(True)
    torch.manual_seed(11)
    out = module(x)
    (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view(out.shape)).sum().backward()
    return out.detach(), x.grad, {n: p.grad for n, p in module.named_parameters()}


def _assert_paths_agree(cls, args, kwargs, x, train):
    torch.manual_seed(0)
    fast = cls.from_config(*args, backend="torch", **kwargs).double().train(train)
    reference = cls.from_config(*args, backend="reference", **kwargs).double().train(train)
    reference.load_state_dict(fast.state_dict())
    out_f, gx_f, gp_f = _forward_backward(fast, x)
    out_r, gx_r, gp_r = _forward_backward(reference, x)
    torch.testing.assert_close(out_f, out_r, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(gx_f, gx_r, rtol=1e-9, atol=1e-9)
    for name, grad in gp_f.items():
        torch.testing.assert_close(grad, gp_r[name], rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("selection", ["features", "mixed", "coords"])
@pytest.mark.parametrize("sampling", ["all", "random", "spatial"])
@pytest.mark.parametrize("train", [False, True])
def test_paper_mode_convnn2d_fast_path_matches_reference_path(selection, sampling, train):
    kwargs = {"k": 5, "selection": selection, "sampling": sampling,
              "candidates": None if sampling == "all" else 3, **PAPER_CONVNN2D.changes()}
    x = torch.randn(2, 3, 5, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    _assert_paths_agree(ConvNN2d, (3, 4), kwargs, x, train)


@pytest.mark.parametrize("sampling", ["all", "random", "spatial"])
@pytest.mark.parametrize("train", [False, True])
def test_paper_mode_attention_fast_path_matches_reference_path(sampling, train):
    kwargs = {"k": 4, "sampling": sampling, "candidates": None if sampling == "all" else 7,
              "attn_dropout": 0.3, **PAPER_ATTENTION.changes()}
    x = torch.randn(2, 11, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    _assert_paths_agree(ConvNNAttention, (12, 3), kwargs, x, train)


# --------------------------------------------------------------- presets
def test_every_convnn_preset_is_in_paper_mode():
    checked = 0
    for preset in E.PRESETS.values():
        options = preset.model_config().layer_options
        s = preset.settings
        if preset.family in ("vgg", "resnet") and s["layer"] != "conv2d":
            assert PAPER_CONVNN2D.changes().items() <= options.items(), preset.name
            checked += 1
        elif preset.family == "vit" and s["mixer"] == "convnn_attention":
            assert PAPER_ATTENTION.changes().items() <= options.items(), preset.name
            checked += 1
    assert checked > 100


@pytest.mark.parametrize("name", ["vit-tiny-c10-convnn-random-r32-k9",
                                  "vgg11-c10-branching-r0.5-sim-loccol-agg-loccol",
                                  "vgg11-c100-convnn-random-r10",
                                  "resnet50-in1k-branching-r0.5-spatial-r25-k9"])
def test_paper_presets_build_layers_with_the_paper_behaviour(name):
    preset = E.get_preset(name)
    for config in (preset.model_config(), E.reduced(preset)[0]):
        model = build_model(config, device="meta")
        layers = [m for m in model.modules() if isinstance(m, (ConvNN2d, ConvNNAttention))]
        assert layers
        for layer in layers:
            paper = (PAPER_ATTENTION if isinstance(layer, ConvNNAttention)
                     else PAPER_CONVNN2D).changes()
            assert {key: getattr(layer, key) for key in paper} == paper, (name, layer)


# --------------------------------------------------------------- bf16 autocast
@pytest.mark.parametrize("backend", ["torch", "reference"])
@pytest.mark.parametrize("selection", ["features", "mixed"])
def test_bf16_autocast_does_not_change_the_convnn2d_selection(backend, selection):
    torch.manual_seed(0)
    # No padding: the zero border would tie at cosine 0; random features are tie-free.
    layer = ConvNN2d(16, 16, k=9, padding=0, selection=selection, backend=backend)
    x = torch.randn(2, 16, 12, 12)
    expected = layer.neighbours(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = layer.neighbours(x)
        out = layer(x)
    assert torch.equal(got, expected)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("backend", ["torch", "reference"])
@pytest.mark.parametrize("sampling", ["all", "random"])
def test_bf16_autocast_does_not_change_the_attention_selection(backend, sampling):
    torch.manual_seed(0)
    layer = ConvNNAttention(32, 2, k=9, sampling=sampling,
                            candidates=None if sampling == "all" else 24, backend=backend).eval()
    x = torch.randn(2, 40, 32)
    expected = layer.neighbours(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = layer.neighbours(x)
        out = layer(x)
    assert torch.equal(got, expected)
    assert torch.isfinite(out).all()
