"""Tests of convnn.models: paper parameter counts, forward/backward, plans and validation.

The paper-size models (VGG-11 ≈130M, ViT-Tiny ≈5.5M, ViT-Base ≈86M parameters) are built on the
``meta`` device, which allocates nothing; forwards run on reduced models only.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from convnn.layers import ConvNN2d, ConvNN2dOptions, ConvNNAttention
from convnn.models import (
    MIXERS,
    VGG,
    CoordAggregationConvNN2d,
    ModelConfig,
    ViT,
    build_model,
    count_parameters,
    paper_layer_options,
    sampling_for_map,
    sinusoidal_positions,
    vgg11,
    vgg19,
    vit_base_paper,
    vit_tiny_cifar,
    vit_tiny_paper,
)
from convnn.package_data import data_file

META = torch.device("meta")
PAPER_RESULTS = data_file("paper_results.json")
NUM_CLASSES = {"cifar10": 10, "cifar100": 100}

# ------------------------------------------------------------------ paper parameter counts
# VGG-11, tables 6.1 / 6.2: (dataset, layer, λ, similarity, aggregation) -> params.
# Every conv2d / branching / convnn row with aggregation "Col" has the same count; aggregation
# "Loc_Col" adds 2·9 weights per ConvNN output channel.
VGG11_COUNTS = [
    ("cifar10", "conv2d", None, "Col", "Col", 130_015_690),
    ("cifar10", "branching", 0.5, "Col", "Col", 130_015_690),
    ("cifar10", "branching", 0.125, "Loc_Col", "Col", 130_015_690),
    ("cifar10", "convnn", None, "Col", "Col", 130_015_690),
    ("cifar10", "branching", 0.125, "Loc_Col", "Loc_Col", 130_021_882),
    ("cifar10", "branching", 0.5, "Loc_Col", "Loc_Col", 130_040_458),
    ("cifar10", "branching", 0.875, "Loc_Col", "Loc_Col", 130_059_034),
    ("cifar10", "convnn", None, "Loc_Col", "Loc_Col", 130_065_226),
    ("cifar100", "conv2d", None, "Col", "Col", 130_384_420),
    ("cifar100", "branching", 0.5, "Col", "Col", 130_384_420),
    ("cifar100", "convnn", None, "Col", "Col", 130_384_420),
    ("cifar100", "branching", 0.625, "Loc_Col", "Loc_Col", 130_415_380),
    ("cifar100", "convnn", None, "Loc_Col", "Loc_Col", 130_433_956),
]

# ViT-Tiny (224 input, patch 16, 1 head), table 6.6: (dataset, mixer, options) -> params.
VIT_TINY_COUNTS = [
    ("cifar10", "attention", {}, 5_479_306),
    ("cifar10", "local", {}, 4_299_658),
    ("cifar10", "sparse_local", {}, 5_479_306),
    ("cifar10", "sparse_strided", {}, 5_479_306),
    ("cifar10", "convnn_attention", {"k": 9}, 5_500_042),
    ("cifar10", "convnn_attention", {"k": 9, "sampling": "random", "candidates": 32}, 5_500_042),
    ("cifar10", "convnn_attention", {"k": 9, "sampling": "spatial", "candidates": 32}, 5_500_042),
    ("cifar100", "attention", {}, 5_496_676),
    ("cifar100", "local", {}, 4_317_028),
    ("cifar100", "sparse_local", {}, 5_496_676),
    ("cifar100", "sparse_strided", {}, 5_496_676),
    ("cifar100", "convnn_attention", {"k": 9}, 5_517_412),
    ("cifar100", "convnn_attention", {"k": 9, "sampling": "random", "candidates": 32}, 5_517_412),
]

# Table 6.9: ConvNN-attention aggregation ("conv_type") x k -> params in millions (3 decimals).
TABLE_6_9 = [
    ("cifar10", "standard", 9, 9.461), ("cifar10", "standard", 16, 12.557),
    ("cifar10", "depthwise", 9, 5.500), ("cifar10", "depthwise", 16, 5.516),
    ("cifar10", "separable", 9, 5.942), ("cifar10", "separable", 16, 5.959),
    ("cifar100", "standard", 9, 9.478), ("cifar100", "standard", 16, 12.575),
    ("cifar100", "depthwise", 9, 5.517), ("cifar100", "depthwise", 16, 5.534),
    ("cifar100", "separable", 9, 5.960), ("cifar100", "separable", 16, 5.976),
]

# Table 6.10: heads -> params in millions.
TABLE_6_10 = [
    ("cifar10", "attention", 1, 5.479), ("cifar10", "attention", 3, 5.479),
    ("cifar10", "local", 1, 4.300), ("cifar10", "local", 3, 5.479),
    ("cifar100", "attention", 1, 5.497), ("cifar100", "attention", 3, 5.497),
    ("cifar100", "local", 1, 4.317), ("cifar100", "local", 3, 5.497),
]


def _vgg_config(dataset, layer, ratio, similarity, aggregation, **extra) -> ModelConfig:
    return ModelConfig(name="vgg11", num_classes=NUM_CLASSES[dataset], layer=layer, ratio=ratio,
                       layer_options=paper_layer_options(similarity, aggregation), **extra)


@pytest.mark.parametrize(("dataset", "layer", "ratio", "similarity", "aggregation", "params"),
                         VGG11_COUNTS)
def test_vgg11_paper_parameter_counts(dataset, layer, ratio, similarity, aggregation, params):
    model = build_model(_vgg_config(dataset, layer, ratio, similarity, aggregation), device=META)
    assert count_parameters(model) == params


@pytest.mark.parametrize(("dataset", "mixer", "options", "params"), VIT_TINY_COUNTS)
def test_vit_tiny_paper_parameter_counts(dataset, mixer, options, params):
    model = vit_tiny_paper(NUM_CLASSES[dataset], mixer, device=META, **options)
    assert count_parameters(model) == params


@pytest.mark.parametrize(("dataset", "aggregation", "k", "params_m"), TABLE_6_9)
def test_convnn_attention_aggregation_counts_table_6_9(dataset, aggregation, k, params_m):
    model = vit_tiny_paper(NUM_CLASSES[dataset], "convnn_attention", k=k,
                           aggregation=aggregation, device=META)
    assert round(count_parameters(model) / 1e6, 3) == params_m


@pytest.mark.parametrize(("dataset", "mixer", "heads", "params_m"), TABLE_6_10)
def test_heads_counts_table_6_10(dataset, mixer, heads, params_m):
    model = vit_tiny_paper(NUM_CLASSES[dataset], mixer, num_heads=heads, device=META)
    assert round(count_parameters(model) / 1e6, 3) == params_m


def test_kvt_has_attention_parameters():
    assert count_parameters(vit_tiny_paper(10, "kvt", k=9, device=META)) == 5_479_306


@pytest.mark.parametrize(("mixer", "options", "params_m"), [
    ("attention", {}, 86.379),
    ("convnn_attention", {"k": 9}, 86.386),
    ("convnn_attention", {"k": 9, "sampling": "random", "candidates": 32}, 86.386),
])
def test_vit_base_imagenet_counts(mixer, options, params_m):
    # Table "10" (v3 material). ConvNN attention with 12 heads: one [64, 1, k] aggregation
    # weight per block, shared by the heads.
    model = vit_base_paper(1000, mixer, device=META, **options)
    assert round(count_parameters(model) / 1e6, 3) == params_m


def _paper_records():
    if not PAPER_RESULTS.is_file():
        return []
    return json.loads(PAPER_RESULTS.read_text())["records"]


@pytest.mark.skipif(not PAPER_RESULTS.is_file(), reason=f"{PAPER_RESULTS} not present")
def test_every_cifar_count_in_paper_results():
    """Every VGG-11 / ViT-Tiny record with a parameter count in paper_results.json matches."""
    conv_types = {"standard": "standard", "depthwise": "depthwise",
                  "depthwise-separable": "separable"}
    mixers = {"attention": "attention", "local_attention": "local", "kvt": "kvt",
              "sparse_local": "sparse_local", "sparse_strided": "sparse_strided",
              "convnn_attention": "convnn_attention"}
    checked = set()
    for rec in _paper_records():
        if rec["dataset"] not in NUM_CLASSES or ("params" not in rec and "params_m" not in rec):
            continue
        classes = NUM_CLASSES[rec["dataset"]]
        if rec["model"] == "vgg11":
            layer = rec["layer"]
            ratio = rec.get("branch_ratio") if layer == "branching" else None
            options = paper_layer_options(rec.get("similarity", "Col"),
                                          rec.get("aggregation", "Col"))
            options["k"] = rec.get("k", 9)
            key = ("vgg11", classes, layer, ratio, tuple(sorted(options.items())),
                   rec.get("kernel_size", 3))
            if key in checked:
                continue
            model = build_model(ModelConfig(name="vgg11", num_classes=classes, layer=layer,
                                            ratio=ratio, kernel_size=rec.get("kernel_size", 3),
                                            layer_options=options), device=META)
        elif rec["model"] == "vit_tiny":
            mixer = mixers[rec["layer"]]
            options = {}
            if mixer in ("convnn_attention", "kvt"):
                options["k"] = rec.get("k", 9)
            if mixer == "convnn_attention":
                if rec.get("sampling", "all") != "all":
                    options.update(sampling=rec["sampling"], candidates=rec["candidates"])
                if "conv_type" in rec:
                    options["aggregation"] = conv_types[rec["conv_type"]]
            key = ("vit_tiny", classes, mixer, rec.get("heads", 1),
                   tuple(sorted(options.items())))
            if key in checked:
                continue
            model = vit_tiny_paper(classes, mixer, num_heads=rec.get("heads", 1), device=META,
                                   **options)
        else:
            continue
        checked.add(key)
        count = count_parameters(model)
        if "params" in rec:
            assert count == rec["params"], rec
        else:
            assert round(count / 1e6, 3) == rec["params_m"], rec
    assert len(checked) >= 80


# ------------------------------------------------------------------ VGG structure and plan
def test_vgg_structure_matches_paper():
    model = vgg11(10, "branching", ratio=0.5, device=META)
    convs = [m for m in model.features if type(m).__name__ == "BranchingConv2d"]
    assert [c.out_channels for c in convs] == [64, 128, 256, 256, 512, 512, 512, 512]
    assert [p["map_size"][0] for p in model.layer_plan] == [32, 16, 8, 8, 4, 4, 2, 2]
    # each layer: BranchingConv2d -> BatchNorm2d -> ReLU
    kinds = [type(m).__name__ for m in model.features]
    for i, kind in enumerate(kinds):
        if kind == "BranchingConv2d":
            assert kinds[i + 1:i + 3] == ["BatchNorm2d", "ReLU"]
    assert kinds.count("MaxPool2d") == 5
    assert convs[0].conv_channels == 32 and convs[0].convnn_channels == 32
    assert model.classifier[0].in_features == 25088
    assert len(vgg19(device=META).layer_plan) == 16


def test_conv2d_and_convnn_layers_keep_the_1x1_mix():
    conv = vgg11(layer="conv2d", head="lean", device=META).features[0]
    assert conv.convnn is None and conv.conv.kernel_size == (3, 3)
    assert conv.mix.kernel_size == (1, 1)
    convnn = vgg11(layer="convnn", head="lean", device=META).features[0]
    assert convnn.conv is None and isinstance(convnn.convnn, ConvNN2d)
    assert convnn.mix.kernel_size == (1, 1)


def test_layer_plan_falls_back_to_all_candidates_on_small_maps():
    model = vgg11(10, "convnn", head="lean", width_multiplier=0.0625, device=META,
                  layer_options={"sampling": "spatial", "candidates": 4})
    used = [(p["map_size"][0], p["sampling"], p["candidates"]) for p in model.layer_plan]
    assert used[:6] == [(32, "spatial", 4), (16, "spatial", 4), (8, "spatial", 4),
                        (8, "spatial", 4), (4, "spatial", 4), (4, "spatial", 4)]
    assert used[6:] == [(2, "all", None), (2, "all", None)]
    assert model.layer_plan[6]["fallback"] and model.layer_plan[6]["requested_candidates"] == 4
    assert model.layer_plan[0]["fallback"] is None
    convs = [m.convnn for m in model.features if type(m).__name__ == "BranchingConv2d"]
    assert [c.sampling for c in convs] == [p["sampling"] for p in model.layer_plan]
    assert "fallback" in model.format_plan().splitlines()[0]
    # the layer itself never clamps: the same options on a 2x2 map are an error
    layer = ConvNN2d(4, 4, sampling="spatial", candidates=4)
    with pytest.raises(ValueError, match="candidates"):
        layer(torch.randn(1, 4, 2, 2))


def test_sampling_for_map_rule():
    assert sampling_for_map("random", 4, 4, 4) == ("random", 4, None)
    assert sampling_for_map("random", 4, 2, 2)[:2] == ("all", None)
    assert sampling_for_map("spatial", 3, 2, 8)[:2] == ("all", None)
    assert sampling_for_map("all", None, 2, 2) == ("all", None, None)


def test_layer_plan_random_fallback_and_seeds():
    model = vgg11(layer="branching", ratio=0.5, head="lean", width_multiplier=0.0625,
                  device=META, layer_options={"sampling": "random", "candidates": 4, "seed": 7})
    assert [p["sampling"] for p in model.layer_plan] == ["random"] * 6 + ["all"] * 2
    assert [p["seed"] for p in model.layer_plan] == list(range(7, 15))
    conv2d = vgg11(layer="conv2d", head="lean", device=META,
                   layer_options={"sampling": "random", "candidates": 4})
    assert all(p["sampling"] is None and p["convnn_channels"] == 0 for p in conv2d.layer_plan)


# ------------------------------------------------------------------ forwards (reduced size)
SMALL_VGG = {"head": "lean", "width_multiplier": 0.125}


@pytest.mark.parametrize(("layer", "ratio", "options"), [
    ("conv2d", None, {}),
    ("branching", 0.5, {}),
    ("convnn", None, {}),
    ("branching", 0.5, {"sampling": "random", "candidates": 4}),
    ("convnn", None, {"sampling": "spatial", "candidates": 4}),
    ("branching", 0.5, paper_layer_options("Loc_Col", "Loc_Col")),
])
def test_vgg_forward_shapes(layer, ratio, options):
    torch.manual_seed(0)
    model = vgg11(10, layer, ratio=ratio, layer_options=options, **SMALL_VGG)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
@pytest.mark.parametrize("kernel_size", [1, 2, 3])
def test_vgg_conv_branch_kernel_sizes(kernel_size):
    model = vgg11(100, "branching", ratio=0.5, kernel_size=kernel_size, **SMALL_VGG)
    assert model.features[0].conv.kernel_size == (kernel_size, kernel_size)
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 100)


def test_vgg_rejects_inputs_of_another_size():
    model = vgg11(10, "convnn", **SMALL_VGG)
    with pytest.raises(ValueError, match=r"\[B, C, 32, 32\]"):
        model(torch.randn(1, 3, 64, 64))


def test_vgg_paper_head_forward_small_width():
    model = vgg11(10, "conv2d", width_multiplier=0.0625).eval()
    assert model.classifier[0].in_features == 32 * 49
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 10)


def test_vgg_backward_reaches_both_branches():
    torch.manual_seed(0)
    model = vgg11(10, "branching", ratio=0.5, **SMALL_VGG)
    model(torch.randn(2, 3, 32, 32)).logsumexp(-1).sum().backward()
    first = model.features[0]
    assert first.conv.weight.grad.abs().sum() > 0
    assert first.convnn.weight.grad.abs().sum() > 0
    assert all(p.grad is not None for p in model.parameters())


def test_coord_aggregation_equals_convnn_with_zero_coordinate_weights():
    torch.manual_seed(0)
    plain = ConvNN2d(5, 6, selection="mixed", options=ConvNN2dOptions(mix=0.3))
    coord = CoordAggregationConvNN2d(5, 6, selection="mixed", options=ConvNN2dOptions(mix=0.3))
    assert coord.weight.shape == (6, 7, 9)
    assert count_parameters(coord) - count_parameters(plain) == 2 * 9 * 6
    with torch.no_grad():
        coord.weight.zero_()
        coord.weight[:, :5].copy_(plain.weight)
        coord.bias.copy_(plain.bias)
    x = torch.randn(2, 5, 6, 6)
    torch.testing.assert_close(coord(x), plain(x))
    with torch.no_grad():
        coord.weight[:, 5:].fill_(1.0)
    assert not torch.allclose(coord(x), plain(x))
    with pytest.raises(ValueError, match="weighting"):
        CoordAggregationConvNN2d(5, 6, weighting="softmax")


SMALL_VIT = {"image_size": 32, "patch_size": 8, "dim": 32, "depth": 2, "mlp_dim": 64}


@pytest.mark.parametrize("mixer", sorted(MIXERS))
def test_vit_forward_shapes_every_mixer(mixer):
    torch.manual_seed(0)
    options = {"convnn_attention": {"k": 5}, "kvt": {"k": 5},
               "convnn_attention_hybrid": {"k": 5, "ratio": 0.5},
               "convnn_conv1d_hybrid": {"k": 5, "kernel_size": 3},
               "local": {"window": 8, "head_dim": 16}}.get(mixer, {})
    model = ViT(10, num_heads=2, mixer=mixer, layer_options=options, **SMALL_VIT)
    assert model.num_tokens == 17
    out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10)
    out.sum().backward()
    assert model.cls_token.grad is not None


def test_vit_convnn_attention_sampled_forward_and_backward():
    torch.manual_seed(0)
    model = ViT(10, mixer="convnn_attention",
                layer_options={"k": 4, "sampling": "random", "candidates": 8}, **SMALL_VIT)
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    assert [p["sampling"] for p in model.layer_plan] == ["random", "random"]
    assert [b.mixer.seed for b in model.blocks] == [p["seed"] for p in model.layer_plan] == [0, 1]


def test_vit_sampling_fallback_when_candidates_exceed_tokens():
    model = vit_tiny_cifar(10, "convnn_attention", k=9, sampling="spatial", candidates=128,
                           device=META)
    assert model.num_tokens == 65
    assert all(p["sampling"] == "all" and p["fallback"] for p in model.layer_plan)
    assert all(b.mixer.sampling == "all" for b in model.blocks)
    paper = vit_tiny_paper(10, "convnn_attention", sampling="spatial", candidates=128,
                           device=META)
    assert all(p["sampling"] == "spatial" and p["fallback"] is None for p in paper.layer_plan)


def test_vit_positions_are_a_fixed_sinusoidal_buffer():
    model = vit_tiny_cifar(10, depth=1)
    assert "pos_embed" in dict(model.named_buffers())
    assert "pos_embed" not in dict(model.named_parameters())
    assert not model.pos_embed.requires_grad
    assert model.pos_embed.shape == (1, 65, 192)
    table = sinusoidal_positions(65, 192)
    torch.testing.assert_close(model.pos_embed[0], table)
    assert torch.equal(table[0, 0::2], torch.zeros(96))
    assert torch.equal(table[0, 1::2], torch.ones(96))
    t, i = 5, 3
    assert math.isclose(table[t, 2 * i].item(), math.sin(t / 10000 ** (2 * i / 192)),
                        rel_tol=1e-5)


def test_vit_architecture_details():
    model = vit_tiny_paper(10, device=META)
    assert model.num_tokens == 197 and len(model.blocks) == 12
    block = model.blocks[0]
    assert block.mlp[0].out_features == 768 and type(block.mlp[1]).__name__ == "GELU"
    assert block.drop1.p == 0.1 and block.mixer.attn_dropout == 0.1
    assert isinstance(model.patch_embed.norm, torch.nn.LayerNorm)
    assert model.patch_embed.proj.stride == (16, 16)
    assert not any(isinstance(m, torch.nn.LayerNorm) for m in model.children())  # no final LN


# ------------------------------------------------------------------ configs
def test_model_config_round_trip_and_build():
    cfg = ModelConfig(name="vit_tiny_cifar", num_classes=100, mixer="convnn_attention",
                      layer_options={"k": 9, "sampling": "random", "candidates": 32},
                      depth=1)
    data = json.loads(json.dumps(cfg.to_dict()))
    assert ModelConfig.from_dict(data) == cfg
    model = build_model(data, device=META)
    assert isinstance(model, ViT) and model.head.out_features == 100 and model.depth == 1
    vgg = build_model(ModelConfig(name="vgg13", layer="branching", ratio=0.25), device=META)
    assert isinstance(vgg, VGG) and len(vgg.layer_plan) == 10
    assert vgg.features[0].convnn_channels == 16


def test_vit_config_ratio_and_kernel_size():
    model = build_model(ModelConfig(name="vit_tiny_cifar", mixer="convnn_conv1d_hybrid",
                                    ratio=0.25, kernel_size=5, depth=1), device=META)
    mixer = model.blocks[0].mixer
    assert mixer.convnn_dim == 48 and mixer.partner.kernel_size == 5


@pytest.mark.parametrize(("config", "match"), [
    (ModelConfig(name="vgg12"), "name"),
    (ModelConfig(name="vgg11", layer="conv3d"), "layer"),
    (ModelConfig(name="vgg11", head="huge"), "head"),
    (ModelConfig(name="vgg11", layer="conv2d", ratio=0.5), "ratio"),
    (ModelConfig(name="vgg11", layer="branching", ratio=1.0), "ratio"),
    (ModelConfig(name="vgg11", layer_options={"kk": 9}), "kk"),
    (ModelConfig(name="vgg11", layer="convnn", layer_options={"similarity": "l1"}),
     "similarity"),
    (ModelConfig(name="vgg11", mixer="attention"), "mixer"),
    (ModelConfig(name="vgg11", image_size=16), "image_size"),
    (ModelConfig(name="vgg11", width_multiplier=0), "width_multiplier"),
    (ModelConfig(name="vgg11", layer="convnn", layer_options={"k": 400}), "k=400"),
    (ModelConfig(name="vit_tiny", mixer="flash"), "mixer"),
    (ModelConfig(name="vit_tiny", head="lean"), "head"),
    (ModelConfig(name="vit_tiny", layer="conv2d"), "layer"),
    (ModelConfig(name="vit_tiny", ratio=0.5), "ratio"),
    (ModelConfig(name="vit_tiny", mixer="convnn_attention", layer_options={"kk": 1}), "kk"),
    (ModelConfig(name="vit_tiny_cifar", mixer="kvt", layer_options={"k": 100}), "k=100"),
    (ModelConfig(name="vit_tiny", patch_size=15), "patch_size"),
])
def test_bad_options_raise_value_error_naming_them(config, match):
    with pytest.raises(ValueError, match=match):
        build_model(config, device=META)


def test_from_dict_rejects_unknown_fields():
    with pytest.raises(ValueError, match="colour"):
        ModelConfig.from_dict({"name": "vgg11", "colour": "red"})
    with pytest.raises(ValueError, match="config"):
        build_model("vgg11")


def test_paper_layer_options_mapping():
    assert paper_layer_options() == {"selection": "features"}
    assert paper_layer_options("Loc_Col", "Col", 0.25) == {"selection": "mixed", "mix": 0.25}
    assert paper_layer_options("Col", "Loc_Col") == {"selection": "features",
                                                      "aggregate_coords": True}
    with pytest.raises(ValueError, match="similarity"):
        paper_layer_options("Colour")


def test_count_parameters_trainable_only():
    model = vgg11(10, head="lean", width_multiplier=0.0625, device=META)
    total = count_parameters(model)
    model.classifier.weight.requires_grad_(False)
    assert count_parameters(model) == total - model.classifier.weight.numel()
    assert count_parameters(model, trainable_only=False) == total


def test_one_fallback_rule_for_maps_and_sequences():
    from convnn.models import candidates_fallback

    assert candidates_fallback("random", 4, height=2, width=2)[:2] == ("all", None)
    assert candidates_fallback("spatial", 8, tokens=8) == ("spatial", 8, None)
    assert candidates_fallback("random", 9, tokens=8) == ("all", None,
                                                          "random: candidates=9 > T=8")
    with pytest.raises(ValueError, match="tokens, or height and width"):
        candidates_fallback("random", 4)


# --- the token-mixer registry (one place to add a mixer) -----------------------------------


class _ScaledTokens(torch.nn.Module):
    """A toy mixer: ``x * scale`` through a linear layer."""

    def __init__(self, dim, num_heads=1, scale=1.0, attn_dropout=0.0, device=None, dtype=None):
        super().__init__()
        self.scale, self.num_heads, self.attn_dropout = scale, num_heads, attn_dropout
        self.proj = torch.nn.Linear(dim, dim, device=device, dtype=dtype)

    def forward(self, x):
        return self.proj(x) * self.scale


@pytest.fixture
def toy_mixer():
    from convnn.attention import register_mixer, unregister_mixer

    register_mixer("toy_scaled", _ScaledTokens, {"scale", "attn_dropout"})
    yield "toy_scaled"
    unregister_mixer("toy_scaled")


def test_registered_mixer_builds_inside_a_vit_through_model_config(toy_mixer):
    from convnn.models import mixer_option_names

    assert toy_mixer in MIXERS and MIXERS[toy_mixer] == (_ScaledTokens, {})
    assert mixer_option_names(toy_mixer) == ["scale"]
    model = build_model(ModelConfig(name="vit_tiny_cifar", mixer=toy_mixer, depth=2, num_heads=3,
                                    attn_dropout=0.25, layer_options={"scale": 2.0}))
    mixers = [block.mixer for block in model.blocks]
    assert all(isinstance(m, _ScaledTokens) for m in mixers)
    assert all(m.scale == 2.0 and m.attn_dropout == 0.25 and m.num_heads == 3 for m in mixers)
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 10)
    with pytest.raises(ValueError, match="unknown option"):
        build_model(ModelConfig(name="vit_tiny_cifar", mixer=toy_mixer,
                                layer_options={"scael": 2.0}))


def test_registered_mixer_is_gone_after_unregister():
    from convnn.attention import register_mixer, unregister_mixer

    register_mixer("toy_gone", _ScaledTokens, {"scale"}, vit=False, baseline=True)
    assert "toy_gone" not in MIXERS
    from convnn.attention import TOKEN_MIXERS

    assert TOKEN_MIXERS["toy_gone"] is _ScaledTokens
    unregister_mixer("toy_gone")
    assert "toy_gone" not in TOKEN_MIXERS
    with pytest.raises(ValueError, match="mixer must be one of"):
        ViT(10, mixer="toy_gone", **SMALL_VIT)


def test_create_mixer_names_unknown_mixers_and_options():
    from convnn.attention import (
        TOKEN_MIXERS,
        KVTAttention,
        SparseAttention,
        create_mixer,
        register_mixer,
    )

    m = create_mixer("kvt", 16, 2, k=3, attn_dropout=0.1)
    assert isinstance(m, KVTAttention) and m.k == 3 and m.num_heads == 2
    assert create_mixer("sparse_strided", 16, 2).mode == "strided"
    assert isinstance(create_mixer("convnn_attention", 16, 2, k=3), ConvNNAttention)
    with pytest.raises(ValueError, match="unknown mixer 'nope'.*known mixers"):
        create_mixer("nope", 16, 2)
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['kk'\] for mixer='kvt'"):
        create_mixer("kvt", 16, 2, kk=3)
    with pytest.raises(ValueError, match=r"\['mode'\] for mixer='sparse_local'"):
        create_mixer("sparse_local", 16, 2, mode="strided")
    with pytest.raises(ValueError, match=r"\['attn_dropout'\] for mixer='conv1d'"):
        create_mixer("conv1d", 16, 2, attn_dropout=0.1)
    with pytest.raises(ValueError, match="already registered"):
        register_mixer("kvt", KVTAttention, {"k"})
    with pytest.raises(ValueError, match="fixed by the entry"):
        register_mixer("bad", SparseAttention, {"mode"}, fixed={"mode": "local"})
    with pytest.raises(TypeError):
        TOKEN_MIXERS["x"] = KVTAttention  # read-only view
    with pytest.raises(TypeError):
        MIXERS["x"] = (KVTAttention, {})


def test_deprecated_names_warn_and_still_work():
    """The old name of ``num_heads`` (``heads``, in saved config.json files) still works."""
    with pytest.warns(DeprecationWarning, match="use num_heads"):
        config = ModelConfig(name="vit_tiny_cifar", heads=3)
    assert config.num_heads == 3 and "heads" not in config.to_dict()
    saved = {**ModelConfig(name="vit_tiny_cifar").to_dict(), "heads": 3}
    del saved["num_heads"]
    with pytest.warns(DeprecationWarning, match="use num_heads"):
        assert ModelConfig.from_dict(saved) == config
    with pytest.warns(DeprecationWarning, match="use num_heads"):
        model = vit_tiny_cifar(10, heads=3, device=META)
    assert model.blocks[0].mixer.num_heads == 3
    with pytest.raises(ValueError, match="not both"):
        ModelConfig(name="vit_tiny_cifar", heads=3, num_heads=2)
