"""ResNet (18/34/50/101/152) with a pluggable 3×3 layer: Conv2d, ConvNN or the branching hybrid.

The network is torchvision's ResNet "v1.5" (the stride of a stage's first bottleneck sits on its
3×3 convolution). Every *stride-1* 3×3 convolution of the residual blocks becomes the chosen
layer; BatchNorm and ReLU follow as before:

==============  ==================================================================================
``layer``       what each stride-1 3×3 convolution becomes
==============  ==================================================================================
``"conv2d"``    ``nn.Conv2d`` (the baseline)
``"convnn"``    :class:`~convnn.layers.ConvNN2d` (``k = 9`` has the 3×3 conv's weight count)
``"branching"`` :class:`~convnn.layers.BranchingConv2d`: ``⌊λ·C⌋`` ConvNN channels, the rest a
                3×3 Conv2d, concatenated and mixed by a 1×1 conv
==============  ==================================================================================

The three stride-2 3×3 convolutions (first block of stages 2-4 in ResNet-50), the 7×7 stem and
all 1×1 convolutions stay ``nn.Conv2d``: ConvNN is a stride-1 layer.

The paper's ImageNet rows (table "10", v3 of arXiv 2511.14137) give parameter counts but not the
code. This layout reproduces all three ResNet-50 counts (written truncated to 3 decimals):
the Conv2d baseline has a bias in every convolution (25,583,592 → 25.583M), the ConvNN model has
no bias anywhere (25,557,032 → 25.557M, torchvision's count) and the branching model (λ = 0.5,
biased ConvNN branch and 1×1 mix, bias-free Conv2d branch) has 26,474,760 (26.474M). Whether
the authors' code is built this way is not known; the counts are the only evidence. See
:data:`PAPER_RESNET50`.

Sampled candidates on small maps follow the VGG rule (:func:`~convnn.models.sampling_for_map`):
a layer whose map cannot hold the candidate set uses all candidates, recorded in
:attr:`ResNet.layer_plan`.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .._checks import check_bool, check_choice, check_int
from ..layers import BranchingConv2d, ConvNN2d
from .family import ModelFamily, register_model_family
from .plan import (
    check_input_size,
    check_layer_options,
    check_width_multiplier,
    plan_convnn_layer,
    resolve_branch_ratio,
)
from .vgg import LAYER_OPTIONS

RESNET_LAYERS = ("conv2d", "branching", "convnn")
RESNET_DEPTHS: dict[int, tuple[str, tuple[int, int, int, int]]] = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
}
"""Block type and blocks per stage of each depth."""

PAPER_RESNET50 = {
    "conv2d": {"conv_bias": True, "layer_options": {}},
    "convnn": {"conv_bias": False, "layer_options": {"bias": False}},
    "branching": {"conv_bias": False, "layer_options": {}},
}
"""Bias settings that give the paper's ResNet-50 parameter counts (table "10")."""

_STAGE_WIDTHS = (64, 128, 256, 512)
_CONVNN_OPTIONS = [o for o in LAYER_OPTIONS if o != "aggregate_coords"]


class _Block(nn.Module):
    """A residual block; ``conv3x3`` builds its (possibly replaced) 3×3 layers."""

    def __init__(self, kind: str, c_in: int, width: int, stride: int, conv3x3, bias: bool,
                 factory: dict) -> None:
        super().__init__()
        self.kind = kind
        expansion = 4 if kind == "bottleneck" else 1
        c_out = width * expansion
        if kind == "bottleneck":
            self.conv1 = nn.Conv2d(c_in, width, 1, bias=bias, **factory)
            self.bn1 = nn.BatchNorm2d(width, **factory)
            self.conv2 = conv3x3(width, width, stride, "conv2")
            self.bn2 = nn.BatchNorm2d(width, **factory)
            self.conv3 = nn.Conv2d(width, c_out, 1, bias=bias, **factory)
            self.bn3 = nn.BatchNorm2d(c_out, **factory)
        else:
            self.conv1 = conv3x3(c_in, width, stride, "conv1")
            self.bn1 = nn.BatchNorm2d(width, **factory)
            self.conv2 = conv3x3(width, width, 1, "conv2")
            self.bn2 = nn.BatchNorm2d(width, **factory)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride=stride, bias=bias, **factory),
                nn.BatchNorm2d(c_out, **factory))
        self.out_channels = c_out

    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn3 if self.kind == "bottleneck" else self.bn2

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.kind == "bottleneck":
            out = self.bn3(self.conv3(self.relu(out)))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """ResNet with its stride-1 3×3 convolutions replaced by Conv2d, ConvNN or branching.

    Args:
        depth: 18, 34, 50, 101 or 152.
        num_classes: classes of the linear classifier.
        layer: ``"conv2d"``, ``"convnn"`` or ``"branching"`` (see the module docstring).
        ratio: λ of ``"branching"`` (default 0.5, in (0, 1)); ``"conv2d"`` is 0 and
            ``"convnn"`` 1.
        layer_options: keyword arguments of :class:`~convnn.layers.ConvNN2d` (``k``,
            ``similarity``, ``sampling``, ``candidates``, ``candidate_layout``, ``bias``,
            ``seed``...). ``seed`` is the fixed evaluation seed of the first ConvNN layer;
            layer ``i`` uses ``seed + i``.
        conv_bias: give every ``nn.Conv2d`` (stem, 1×1, downsample, stride-2 3×3, the Conv2d
            branch of ``"branching"``) a bias. torchvision: False; the paper's Conv2d
            baseline: True (see :data:`PAPER_RESNET50`).
        image_size: side of the (square) input; fixes every layer's map size.
        in_channels: image channels.
        width_multiplier: scales every channel count, for small models in tests.
        zero_init_residual: start each block's last BatchNorm at zero (off, as torchvision).
        device, dtype: factory kwargs (``device="meta"`` for parameter counts).

    Attributes:
        layer_plan: one dict per replaceable 3×3 convolution: ``index``, ``module``,
            ``in_channels``, ``out_channels``, ``map_size``, ``stride``, ``kind``
            (``"conv2d"``, ``"convnn"`` or ``"branching"``; stride-2 layers are always
            ``"conv2d"``), ``sampling`` / ``candidates`` used, ``requested_sampling`` /
            ``requested_candidates``, ``fallback`` and ``seed``.

    Example:
        >>> model = ResNet(50, 10, layer="branching", image_size=32, width_multiplier=0.125)
        >>> model(torch.randn(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """

    def __init__(
        self,
        depth: int = 50,
        num_classes: int = 1000,
        *,
        layer: str = "conv2d",
        ratio: float | None = None,
        layer_options: dict | None = None,
        conv_bias: bool = False,
        image_size: int = 224,
        in_channels: int = 3,
        width_multiplier: float = 1.0,
        zero_init_residual: bool = False,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        check_choice("depth", depth, RESNET_DEPTHS)
        check_int("num_classes", num_classes, minimum=1)
        check_choice("layer", layer, RESNET_LAYERS)
        check_int("image_size", image_size, minimum=1)
        check_int("in_channels", in_channels, minimum=1)
        for name, value in (("conv_bias", conv_bias), ("zero_init_residual", zero_init_residual)):
            check_bool(name, value)
        width_multiplier = check_width_multiplier(width_multiplier)
        if image_size < 32:
            raise ValueError(f"image_size={image_size} is too small: ResNet downsamples by 32; "
                             "need image_size >= 32")
        ratio = resolve_branch_ratio(layer, ratio)
        options = check_layer_options(layer_options or {}, _CONVNN_OPTIONS)
        base_seed = options.pop("seed", 0)
        check_int("seed", base_seed)
        if layer == "conv2d" and options:
            raise ValueError(f"layer_options {sorted(options)} need a ConvNN layer; "
                             "layer='conv2d' has none")
        kind, blocks = RESNET_DEPTHS[depth]
        self.depth, self.num_classes, self.layer, self.ratio = depth, num_classes, layer, ratio
        self.conv_bias, self.image_size = conv_bias, image_size
        self.width_multiplier = width_multiplier
        self.layer_options = {**options, "seed": base_seed}
        self.layer_plan: list[dict] = []
        factory = {"device": device, "dtype": dtype}

        def scaled(c: int) -> int:
            return max(1, round(c * self.width_multiplier))

        stem = scaled(64)
        self.conv1 = nn.Conv2d(in_channels, stem, 7, stride=2, padding=3, bias=conv_bias,
                               **factory)
        self.bn1 = nn.BatchNorm2d(stem, **factory)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        size = _conv_out(_conv_out(image_size, 7, 2, 3), 3, 2, 1)
        channels = stem
        stages = []
        for stage, (width, count) in enumerate(zip(_STAGE_WIDTHS, blocks)):
            stage_blocks = []
            for b in range(count):
                stride = 2 if stage > 0 and b == 0 else 1
                name = f"layer{stage + 1}.{b}"

                def conv3x3(c_in, c_out, s, slot, _name=name, _size=size):
                    return self._make_3x3(c_in, c_out, s, _size, f"{_name}.{slot}", base_seed,
                                          options, factory)

                block = _Block(kind, channels, scaled(width), stride, conv3x3, conv_bias,
                               factory)
                stage_blocks.append(block)
                channels = block.out_channels
                size = _conv_out(size, 3, stride, 1)
            stages.append(nn.Sequential(*stage_blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(channels, num_classes, **factory)
        self.out_channels = channels
        self._init_weights(zero_init_residual)

    def _make_3x3(self, c_in, c_out, stride, size, module, base_seed, options,
                  factory) -> nn.Module:
        index = len(self.layer_plan)
        plan = {"index": index, "module": module, "in_channels": c_in,
                "out_channels": c_out, "map_size": (size, size), "stride": stride}
        self.layer_plan.append(plan)
        kind = self.layer if stride == 1 else "conv2d"
        plan.update(kind=kind, requested_sampling=None, requested_candidates=None,
                    sampling=None, candidates=None, fallback=None, seed=None)
        if kind == "conv2d":
            return nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=self.conv_bias,
                             **factory)
        layer_opts, layer_plan = plan_convnn_layer(options, size, index, base_seed,
                                                   self.image_size)
        plan.update(layer_plan)
        if kind == "convnn":
            return ConvNN2d.from_config(c_in, c_out, **layer_opts, **factory)
        return BranchingConv2d(c_in, c_out, ratio=self.ratio, kernel_size=3,
                               conv_bias=self.conv_bias, **layer_opts, **factory)

    def _init_weights(self, zero_init_residual: bool) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                if m.weight.device.type != "meta":
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                    if m.bias is not None:
                        nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d) and m.weight.device.type != "meta":
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, _Block) and m.last_bn().weight.device.type != "meta":
                    nn.init.zeros_(m.last_bn().weight)

    def extra_repr(self) -> str:
        return (f"depth={self.depth}, layer={self.layer!r}, ratio={self.ratio}, "
                f"conv_bias={self.conv_bias}, image_size={self.image_size}, "
                f"width_multiplier={self.width_multiplier}")

    def format_plan(self) -> str:
        """:attr:`layer_plan` as a small text table."""
        rows = ["idx  module            in->out    map      stride  kind       sampling  fallback"]
        for p in self.layer_plan:
            used = "-" if p["sampling"] is None else (
                p["sampling"] if p["candidates"] is None else f"{p['sampling']} r={p['candidates']}")
            rows.append(f"{p['index']:>3}  {p['module']:<16}  {p['in_channels']:>4}->"
                        f"{p['out_channels']:<4} {p['map_size'][0]:>3}x{p['map_size'][1]:<3}  "
                        f"{p['stride']:>6}  {p['kind']:<9}  {used}  {p['fallback'] or '-'}")
        return "\n".join(rows)

    def forward(self, x: Tensor) -> Tensor:
        """``[B, C, H, W] -> [B, num_classes]`` logits (``H = W = image_size``)."""
        check_input_size(x, self.image_size)
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))  # (B, 64, H/4, W/4)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))  # (B, C', H/32, W/32)
        return self.fc(torch.flatten(self.avgpool(x), 1))


def _conv_out(size: int, kernel: int, stride: int, padding: int) -> int:
    return math.floor((size + 2 * padding - kernel) / stride) + 1


def resnet50(num_classes: int = 1000, layer: str = "conv2d", **kwargs) -> ResNet:
    """ResNet-50; ``kwargs`` as :class:`ResNet`."""
    return ResNet(50, num_classes, layer=layer, **kwargs)


RESNET_NAMES = {f"resnet{d}": d for d in RESNET_DEPTHS}


def _build_resnet(config, factory: dict) -> ResNet:
    kwargs = {name: getattr(config, name) for name in ("width_multiplier", "conv_bias")
              if getattr(config, name) is not None}
    return ResNet(RESNET_NAMES[config.name], config.num_classes,
                  layer="conv2d" if config.layer is None else config.layer, ratio=config.ratio,
                  layer_options=dict(config.layer_options),
                  image_size=224 if config.image_size is None else config.image_size,
                  in_channels=config.in_channels, **kwargs, **factory)


register_model_family(ModelFamily(
    "resnet", "ResNet", ResNet, image_sizes=dict.fromkeys(RESNET_NAMES, 224),
    build=_build_resnet, fields=frozenset({"layer", "ratio", "width_multiplier", "conv_bias"}),
    # our ImageNet recipe (the paper states none): torchvision's SGD recipe, with cosine
    # decay and label smoothing
    protocol={"optimizer": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4,
              "schedule": "cosine", "warmup_epochs": 5, "epochs": 90, "batch_size": 256,
              "grad_clip": None, "label_smoothing": 0.1, "augment": True},
    reduced={"width_multiplier": 0.125, "image_size": 64}))


__all__ = ["PAPER_RESNET50", "RESNET_DEPTHS", "RESNET_LAYERS", "RESNET_NAMES", "ResNet",
           "resnet50"]
