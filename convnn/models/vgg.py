"""VGG-11/13/16/19 with a pluggable convolution layer: Conv2d, ConvNN or the branching hybrid.

Every convolution of the VGG configuration is replaced by the chosen layer, followed by
BatchNorm and ReLU; max-pool positions are those of the configuration (method.md §5):

==============  =================================================================================
``layer``       what each "conv" of the configuration becomes
==============  =================================================================================
``"conv2d"``    :class:`~convnn.layers.BranchingConv2d` with ``ratio=0``: a ``KS × KS`` Conv2d and
                a 1×1 mix (the paper's "Conv2d (KS×KS + 1×1)" baseline)
``"branching"`` ``BranchingConv2d(ratio=λ)``: ``⌊λ·C_out⌋`` ConvNN channels, the rest Conv2d, 1×1 mix
``"convnn"``    ``BranchingConv2d(ratio=1)``: ConvNN and a 1×1 mix
==============  =================================================================================

A ConvNN layer with ``k = 9`` and standard aggregation has exactly the parameters of a 3×3 Conv2d
(``O·C·9 + O``), so all three layers give VGG-11 the same count: 130,015,690 with the paper head
on CIFAR-10 and 130,384,420 on CIFAR-100 (tables 6.1/6.2 of paper_results.json).

Sampled candidates on small maps. VGG-11 on 32×32 images runs its last two layers on 2×2 maps,
where a set of ``r × r`` candidates does not fit. The model knows every layer's map size, so it
decides *when it is built*: a layer whose map cannot hold the sampled set (``r² > H·W`` for
``"random"``, ``r > min(H, W)`` for ``"spatial"``: exactly the maps on which
:class:`~convnn.layers.ConvNN2d` would reject it) uses ``sampling="all"`` instead. The decision
is recorded per layer in :attr:`VGG.layer_plan`; the layers themselves never clamp.

The paper's "similarity" and "aggregation" settings map onto layer options with
:func:`convnn.paper_vocabulary.paper_layer_options` (re-exported here): selection on
``"features"`` or ``"mixed"`` (with ``mix=α``), and ``aggregate_coords=True`` (the two
coordinate channels are aggregated with the features, adding ``2·k`` weights per output
channel), implemented by :class:`CoordAggregationConvNN2d`.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .. import ops
from .._checks import check_choice, check_fraction, check_int
from ..layers import CONVNN2D_CONFIG_KEYS, BranchingConv2d, ConvNN2d
from ..paper_vocabulary import paper_layer_options  # re-exported (models' public API)
from .family import ModelFamily, register_model_family
from .plan import (
    check_input_size,
    check_layer_options,
    check_width_multiplier,
    plan_convnn_layer,
    resolve_branch_ratio,
)

VGG_CONFIGS: dict[str, list] = {
    "A": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "B": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "D": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
          512, 512, 512, "M"],
    "E": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
          512, 512, 512, 512, "M"],
}
"""Channel lists of the VGG configurations (``"M"`` = 2×2 max-pool, stride 2)."""

VGG_DEPTHS = {11: "A", 13: "B", 16: "D", 19: "E"}
VGG_LAYERS = ("conv2d", "branching", "convnn")
VGG_HEADS = ("paper", "lean")

LAYER_OPTIONS = (*sorted(CONVNN2D_CONFIG_KEYS), "aggregate_coords")
"""Keys accepted in ``layer_options``: a flat :class:`ConvNN2d` config
(:meth:`ConvNN2d.from_config`) plus ``aggregate_coords`` (the paper's coordinate aggregation,
see :mod:`convnn.paper_vocabulary`)."""

class CoordAggregationConvNN2d(ConvNN2d):
    """ConvNN2d whose aggregated values carry the two coordinate channels (``aggregate_coords``).

    Selection is that of :class:`ConvNN2d` (on features, coordinates or both, per
    ``selection``); the gathered neighbour vectors are ``[features, x, y]`` of the zero-padded
    map (coordinates from :meth:`ConvNN2d.coordinates`, the layer's ``coord_grid``, so padded
    positions keep their coordinates while their features are zero), aggregated by a weight
    ``[O, C + 2, k]``. The layer has ``2·k·O`` more parameters than ``ConvNN2d``: the paper's
    coordinate aggregation (:mod:`convnn.paper_vocabulary`); with ``coord_grid="padded"`` its coordinates are the authors'.

    Only hard selection (``weighting="ones"``, the paper's CNN layer) and standard aggregation
    are supported.

    Args:
        in_channels, out_channels, k, padding, **kwargs: as :class:`ConvNN2d`.
    """

    def __init__(self, in_channels: int, out_channels: int, k: int = 9, padding: int = 1,
                 *, device=None, dtype=None, **kwargs) -> None:
        super().__init__(in_channels, out_channels, k, padding, device=device, dtype=dtype,
                         **kwargs)
        if self.weighting != "ones":
            raise ValueError("aggregate_coords=True supports weighting='ones' only, got "
                             f"weighting={self.weighting!r}")
        if self.aggregation != "standard":
            raise ValueError("aggregate_coords=True supports aggregation='standard' only, got "
                             f"aggregation={self.aggregation!r}")
        factory = {"device": self.weight.device, "dtype": self.weight.dtype}
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels + 2, k, **factory))
        # Conv1d's default initialisation for the wider [O, C + 2, k] weight.
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1.0 / math.sqrt((in_channels + 2) * k)
            nn.init.uniform_(self.bias, -bound, bound)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, aggregate_coords=True"

    def forward(self, x: Tensor) -> Tensor:
        """``[B, C, H, W] -> [B, O, H, W]``."""
        indices = self.neighbours(x)  # (B, H·W, k) into the padded map
        batch, _, height, width = x.shape
        p = self.padding
        values = nn.functional.pad(x, (p, p, p, p)).flatten(2).transpose(1, 2)  # (B, N, C)
        coords = self.coordinates(height, width, device=x.device, dtype=x.dtype)  # (N, 2)
        values = torch.cat((values, coords.unsqueeze(0).expand(batch, -1, -1)), dim=-1)
        out = ops.aggregate(ops.gather_neighbours(values, indices), None, self.weight,
                            self.bias)  # (B, H·W, O)
        return out.transpose(1, 2).reshape(batch, self.out_channels, height, width)


class VGG(nn.Module):
    """VGG with every convolution replaced by Conv2d, ConvNN or the branching hybrid.

    Args:
        depth: 11, 13, 16 or 19 (configurations A, B, D, E).
        num_classes: classes of the linear classifier.
        layer: ``"conv2d"``, ``"branching"`` or ``"convnn"`` (see the module docstring).
        ratio: λ of ``"branching"`` (default 0.5; must be in (0, 1)); ``None`` for the others.
        kernel_size: kernel of the Conv2d branch (``padding="same"``; the paper uses 1, 2, 3).
        layer_options: keyword arguments of :class:`~convnn.layers.ConvNN2d` (``k``,
            ``similarity``, ``selection``, ``mix``, ``sampling``, ``candidates``,
            ``eval_sampling``, ``seed``...) plus ``aggregate_coords``. ``seed`` is the fixed
            evaluation seed of the first ConvNN layer; layer ``i`` uses ``seed + i``.
        image_size: side of the (square) input images; fixes every layer's map size.
        in_channels: image channels.
        head: ``"paper"`` (AdaptiveAvgPool 7×7 → 4096 → 4096 → classes, ReLU and dropout,
            ≈120M parameters) or ``"lean"`` (global average pool → linear).
        dropout: dropout of the paper head.
        width_multiplier: scales every channel count (``max(1, round(c · m))``), for small
            models in tests and notebooks.
        device, dtype: factory kwargs (``device="meta"`` builds without memory, for counting).

    Attributes:
        layer_plan: one dict per convolution: ``index``, ``module`` (its name in
            ``features``), ``in_channels``, ``out_channels``, ``map_size`` (H, W),
            ``conv_channels``, ``convnn_channels``, ``sampling`` and ``candidates`` actually
            used, the ``requested_sampling`` / ``requested_candidates``, ``fallback`` (why
            the layer uses all candidates, or ``None``) and ``seed``.

    Shape:
        ``[B, in_channels, image_size, image_size] -> [B, num_classes]``; other sizes raise
        ``ValueError`` (the layer plan was made for ``image_size``).

    Example:
        >>> model = VGG(11, layer="branching", head="lean", width_multiplier=0.125)
        >>> model(torch.randn(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """

    def __init__(
        self,
        depth: int = 11,
        num_classes: int = 10,
        *,
        layer: str = "conv2d",
        ratio: float | None = None,
        kernel_size: int = 3,
        layer_options: dict | None = None,
        image_size: int = 32,
        in_channels: int = 3,
        head: str = "paper",
        dropout: float = 0.5,
        width_multiplier: float = 1.0,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        check_choice("depth", depth, VGG_DEPTHS)
        check_int("num_classes", num_classes, minimum=1)
        check_choice("layer", layer, VGG_LAYERS)
        check_int("kernel_size", kernel_size, minimum=1)
        check_int("image_size", image_size, minimum=1)
        check_int("in_channels", in_channels, minimum=1)
        check_choice("head", head, VGG_HEADS)
        dropout = check_fraction("dropout", dropout)
        width_multiplier = check_width_multiplier(width_multiplier)
        ratio = resolve_branch_ratio(layer, ratio)
        options = check_layer_options(layer_options or {}, LAYER_OPTIONS)
        aggregate_coords = bool(options.pop("aggregate_coords", False))
        base_seed = options.pop("seed", 0)
        check_int("seed", base_seed)
        config = VGG_CONFIGS[VGG_DEPTHS[depth]]
        num_pools = config.count("M")
        if image_size < 2 ** num_pools:
            raise ValueError(f"image_size={image_size} is too small for {num_pools} 2x2 "
                             f"max-pools; need image_size >= {2 ** num_pools}")
        self.depth, self.num_classes, self.layer, self.ratio = depth, num_classes, layer, ratio
        self.kernel_size, self.image_size, self.head_type = kernel_size, image_size, head
        self.width_multiplier = width_multiplier
        self.layer_options = {**options, "seed": base_seed,
                              **({"aggregate_coords": True} if aggregate_coords else {})}
        self.layer_plan: list[dict] = []
        factory = {"device": device, "dtype": dtype}

        layers: list[nn.Module] = []
        channels, size = in_channels, image_size
        for item in config:
            if item == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
                size //= 2
                continue
            out = max(1, round(item * self.width_multiplier))
            index = len(self.layer_plan)
            plan = {"index": index, "module": f"features.{len(layers)}",
                    "in_channels": channels, "out_channels": out, "map_size": (size, size)}
            layers.append(self._make_layer(channels, out, size, index, base_seed, options,
                                           aggregate_coords, plan, factory))
            self.layer_plan.append(plan)
            layers.append(nn.BatchNorm2d(out, **factory))
            layers.append(nn.ReLU(inplace=True))
            channels = out
        self.features = nn.Sequential(*layers)
        self.out_channels = channels
        if head == "paper":
            self.pool = nn.AdaptiveAvgPool2d((7, 7))
            self.classifier = nn.Sequential(
                nn.Linear(channels * 7 * 7, 4096, **factory),
                nn.ReLU(inplace=True),
                nn.Dropout(dropout),
                nn.Linear(4096, 4096, **factory),
                nn.ReLU(inplace=True),
                nn.Dropout(dropout),
                nn.Linear(4096, num_classes, **factory),
            )
        else:
            self.pool = nn.AdaptiveAvgPool2d((1, 1))
            self.classifier = nn.Linear(channels, num_classes, **factory)

    def _make_layer(self, c_in, c_out, size, index, base_seed, options, aggregate_coords,
                    plan, factory) -> nn.Module:
        convnn_channels = math.floor(self.ratio * c_out)
        if convnn_channels:
            layer_opts, layer_plan = plan_convnn_layer(options, size, index, base_seed,
                                                       self.image_size)
        else:  # the options are still validated by BranchingConv2d
            layer_opts = dict(options, seed=base_seed + index)
            layer_plan = {"sampling": None, "candidates": None,
                          "requested_sampling": options.get("sampling", "all"),
                          "requested_candidates": options.get("candidates"), "fallback": None,
                          "seed": None}
        module = BranchingConv2d(c_in, c_out, ratio=self.ratio, kernel_size=self.kernel_size,
                                 **factory, **layer_opts)
        if aggregate_coords and module.convnn is not None:
            module.convnn = CoordAggregationConvNN2d.from_config(c_in, convnn_channels,
                                                                 **factory, **layer_opts)
        plan.update(conv_channels=module.conv_channels, convnn_channels=module.convnn_channels,
                    **layer_plan)
        return module

    def extra_repr(self) -> str:
        return (f"depth={self.depth}, layer={self.layer!r}, ratio={self.ratio}, "
                f"kernel_size={self.kernel_size}, image_size={self.image_size}, "
                f"head={self.head_type!r}, width_multiplier={self.width_multiplier}")

    def format_plan(self) -> str:
        """:attr:`layer_plan` as a small text table."""
        rows = ["idx  in->out    map    conv/convnn  sampling (requested)  fallback"]
        for p in self.layer_plan:
            used = (p["sampling"] if p["candidates"] is None else
                    f"{p['sampling']} r={p['candidates']}")
            req = (p["requested_sampling"] if p["requested_candidates"] is None else
                   f"{p['requested_sampling']} r={p['requested_candidates']}")
            rows.append(f"{p['index']:>3}  {p['in_channels']:>4}->{p['out_channels']:<4} "
                        f"{p['map_size'][0]:>3}x{p['map_size'][1]:<3} "
                        f"{p['conv_channels']:>4}/{p['convnn_channels']:<4}  "
                        f"{used or '-'} ({req})  {p['fallback'] or '-'}")
        return "\n".join(rows)

    def forward(self, x: Tensor) -> Tensor:
        """``[B, C, H, W] -> [B, num_classes]`` logits (``H = W = image_size``)."""
        check_input_size(x, self.image_size)
        x = self.features(x)  # (B, C', H / 32, W / 32)
        x = torch.flatten(self.pool(x), 1)  # (B, C'·7·7) or (B, C')
        return self.classifier(x)


def _vgg(depth: int, num_classes: int, layer: str, kwargs: dict) -> VGG:
    return VGG(depth, num_classes, layer=layer, **kwargs)


def vgg11(num_classes: int = 10, layer: str = "conv2d", **kwargs) -> VGG:
    """VGG-11 (configuration A); ``kwargs`` as :class:`VGG` (paper head by default)."""
    return _vgg(11, num_classes, layer, kwargs)


def vgg13(num_classes: int = 10, layer: str = "conv2d", **kwargs) -> VGG:
    """VGG-13 (configuration B); ``kwargs`` as :class:`VGG`."""
    return _vgg(13, num_classes, layer, kwargs)


def vgg16(num_classes: int = 10, layer: str = "conv2d", **kwargs) -> VGG:
    """VGG-16 (configuration D); ``kwargs`` as :class:`VGG`."""
    return _vgg(16, num_classes, layer, kwargs)


def vgg19(num_classes: int = 10, layer: str = "conv2d", **kwargs) -> VGG:
    """VGG-19 (configuration E); ``kwargs`` as :class:`VGG`."""
    return _vgg(19, num_classes, layer, kwargs)


VGG_NAMES = {"vgg11": 11, "vgg13": 13, "vgg16": 16, "vgg19": 19}


def _build_vgg(config, factory: dict) -> VGG:
    layer = "conv2d" if config.layer is None else config.layer
    check_choice("layer", layer, VGG_LAYERS)
    head = "paper" if config.head is None else config.head
    check_choice("head", head, VGG_HEADS)
    kwargs = {name: getattr(config, name) for name in ("dropout", "width_multiplier",
                                                        "kernel_size")
              if getattr(config, name) is not None}
    return VGG(VGG_NAMES[config.name], config.num_classes, layer=layer, ratio=config.ratio,
               layer_options=dict(config.layer_options),
               image_size=32 if config.image_size is None else config.image_size,
               in_channels=config.in_channels, head=head, **kwargs, **factory)


register_model_family(ModelFamily(
    "vgg", "VGG", VGG, image_sizes=dict.fromkeys(VGG_NAMES, 32), build=_build_vgg,
    fields=frozenset({"layer", "ratio", "kernel_size", "head", "dropout", "width_multiplier"}),
    reduced={"head": "lean", "width_multiplier": 0.125}))


__all__ = [
    "LAYER_OPTIONS",
    "VGG",
    "VGG_CONFIGS",
    "VGG_HEADS",
    "VGG_LAYERS",
    "VGG_NAMES",
    "CoordAggregationConvNN2d",
    "paper_layer_options",
    "vgg11",
    "vgg13",
    "vgg16",
    "vgg19",
]
