"""ResNet with pluggable 3×3 layers, and the "count" candidate layout it uses."""

import math

import pytest
import torch
import torchvision

from convnn import ConvNN2d
from convnn.experiments import paper_records
from convnn.models import PAPER_RESNET50, ModelConfig, ResNet, build_model, count_parameters


def _small(layer="conv2d", **kwargs):
    return ResNet(50, 10, layer=layer, image_size=32, width_multiplier=0.125, **kwargs)


@pytest.mark.parametrize("layer", ["conv2d", "convnn", "branching"])
def test_resnet50_parameter_counts_match_the_paper(layer):
    """Table "10" prints params in M truncated to 3 decimals; every row of a layer agrees."""
    rows = [r for r in paper_records() if r.get("model") == "resnet50" and r["layer"] == layer]
    assert rows
    cfg = PAPER_RESNET50[layer]
    model = build_model(ModelConfig(name="resnet50", num_classes=1000, layer=layer,
                                    conv_bias=cfg["conv_bias"],
                                    layer_options=dict(cfg["layer_options"])), device="meta")
    count = count_parameters(model)
    for row in rows:
        assert math.floor(count / 1000) / 1000 == row["params_m"], (count, row)


def test_resnet50_conv2d_is_torchvisions_resnet50():
    tv = torchvision.models.resnet50(num_classes=10).eval()
    ours = ResNet(50, 10, image_size=64).eval()
    ours.load_state_dict(tv.state_dict())  # same names and shapes
    x = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(ours(x), tv(x))


def test_resnet_convnn_with_coordinate_selection_is_the_conv2d_resnet():
    """The convolution limit inside a whole network: ConvNN layers ranking neighbours by
    position (k = 9, raster order) compute the 3×3 convolutions exactly."""
    torch.manual_seed(0)
    conv = ResNet(18, 5, image_size=32, width_multiplier=0.25, dtype=torch.float64).eval()
    nn_model = ResNet(18, 5, layer="convnn", image_size=32, width_multiplier=0.25,
                      layer_options={"selection": "coords", "bias": False},
                      dtype=torch.float64).eval()
    state = conv.state_dict()
    for plan in nn_model.layer_plan:
        if plan["kind"] == "convnn":
            key = plan["module"] + ".weight"
            state[key] = state[key].reshape(nn_model.get_parameter(key).shape)
    nn_model.load_state_dict(state)
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    torch.testing.assert_close(nn_model(x), conv(x), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("layer", ["conv2d", "convnn", "branching"])
def test_resnet_trains_one_step(layer):
    torch.manual_seed(0)
    model = _small(layer, **({"layer_options": {"k": 9}} if layer != "conv2d" else {}))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    loss = torch.nn.functional.cross_entropy(model(x), y)
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all()
               for p in model.parameters() if p.requires_grad)
    opt.step()
    assert torch.isfinite(model(x)).all()


def test_resnet_layer_plan_keeps_stride_two_layers_and_falls_back_on_small_maps():
    model = ResNet(50, 1000, layer="branching", device="meta",
                   layer_options={"sampling": "random", "candidates": 32,
                                  "candidate_layout": "count"})
    kinds = [p["kind"] for p in model.layer_plan]
    assert len(kinds) == 16 and kinds.count("conv2d") == 3
    assert all(p["stride"] == 2 for p in model.layer_plan if p["kind"] == "conv2d")
    assert all(p["sampling"] == "random" for p in model.layer_plan if p["kind"] != "conv2d")
    assert isinstance(model.layer4[0].conv2, torch.nn.Conv2d)
    small = _small("branching", layer_options={"sampling": "random", "candidates": 32,
                                                 "candidate_layout": "count"})
    fell_back = [p for p in small.layer_plan if p["fallback"]]
    assert fell_back and all(p["sampling"] == "all" for p in fell_back)
    assert all(p["map_size"][0] ** 2 < 32 for p in fell_back)
    assert "random: r=32 > H·W=" in small.format_plan()


def test_resnet_bad_arguments_name_the_problem():
    with pytest.raises(ValueError, match="depth"):
        ResNet(42)
    with pytest.raises(ValueError, match="ratio"):
        ResNet(50, layer="convnn", ratio=0.5, device="meta")
    with pytest.raises(ValueError, match="ratio must be in"):
        ResNet(50, layer="branching", ratio=1.0, device="meta")
    with pytest.raises(ValueError, match="need a ConvNN layer"):
        ResNet(50, layer_options={"k": 9}, device="meta")
    with pytest.raises(ValueError, match="unknown option"):
        ResNet(50, layer="convnn", layer_options={"kk": 9}, device="meta")
    with pytest.raises(ValueError, match="image_size"):
        ResNet(50, image_size=16, device="meta")
    with pytest.raises(ValueError, match=r"input must be \[B, C, 32, 32\]"):
        _small()(torch.randn(1, 3, 64, 64))
    with pytest.raises(ValueError, match="does not apply"):
        build_model(ModelConfig(name="resnet50", head="lean"), device="meta")
    with pytest.raises(ValueError, match="conv_bias"):
        build_model(ModelConfig(name="vgg11", conv_bias=True), device="meta")


def test_count_layout_draws_r_candidates():
    x = torch.randn(2, 4, 8, 8)
    layer = ConvNN2d.from_config(4, 4, k=5, sampling="random", candidates=7, candidate_layout="count")
    assert layer.candidate_positions(8, 8).numel() == 7
    assert layer(x).shape == (2, 4, 8, 8)
    grid = ConvNN2d.from_config(4, 4, k=9, sampling="spatial", candidates=25, candidate_layout="count")
    square = ConvNN2d(4, 4, k=9, sampling="spatial", candidates=5)
    assert torch.equal(grid.candidate_positions(8, 8), square.candidate_positions(8, 8))
    with pytest.raises(ValueError, match="square number"):
        ConvNN2d.from_config(4, 4, sampling="spatial", candidates=24, candidate_layout="count")
    with pytest.raises(ValueError, match="k=9 must be <= the number of candidates"):
        ConvNN2d.from_config(4, 4, k=9, sampling="random", candidates=8, candidate_layout="count")
    with pytest.raises(ValueError, match="candidate_layout"):
        ConvNN2d.from_config(4, 4, sampling="random", candidates=8, candidate_layout="grid")
    with pytest.raises(ValueError, match="random pixels"):
        ConvNN2d.from_config(4, 4, sampling="random", candidates=70, candidate_layout="count")(x)
