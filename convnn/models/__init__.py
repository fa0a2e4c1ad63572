"""The paper's models: VGG and ResNet with a pluggable conv layer, ViT with a pluggable mixer.

One dataclass, :class:`ModelConfig`, names a model and its options; :func:`build_model` turns it
into an ``nn.Module`` through the model's family (:mod:`convnn.models.family`: each family's
file registers its names, builder and config fields, so a new family is one new file). The config round-trips through JSON (:meth:`ModelConfig.to_dict`,
:meth:`ModelConfig.from_dict`) so that it can be saved next to every run.

Example:
    >>> cfg = ModelConfig(name="vgg11", num_classes=10, layer="branching", ratio=0.5,
    ...                   layer_options={"k": 9, "sampling": "random", "candidates": 8})
    >>> model = build_model(cfg, device="meta")       # no memory: for counting parameters
    >>> count_parameters(model)
    130015690
    >>> [p["sampling"] for p in model.layer_plan][-2:]   # 2x2 maps cannot hold 8x8 candidates
    ['all', 'all']
"""

from __future__ import annotations

import dataclasses
from dataclasses import InitVar, dataclass, field

from torch import nn

from .._checks import check_known, renamed_argument
from .family import (
    COMMON_FIELDS,
    MODEL_FAMILIES,
    ModelFamily,
    default_image_size,
    family_of,
    model_names,
    optional_fields,
    register_model_family,
    unregister_model_family,
)
from .plan import candidates_fallback, sampling_for_map
from .resnet import PAPER_RESNET50, RESNET_DEPTHS, RESNET_LAYERS, RESNET_NAMES, ResNet, resnet50
from .vgg import (
    LAYER_OPTIONS,
    VGG,
    VGG_CONFIGS,
    VGG_HEADS,
    VGG_LAYERS,
    VGG_NAMES,
    CoordAggregationConvNN2d,
    paper_layer_options,
    vgg11,
    vgg13,
    vgg16,
    vgg19,
)
from .vit import (
    MIXERS,
    VIT_PRESETS,
    PatchEmbedding,
    TransformerBlock,
    ViT,
    mixer_option_names,
    sinusoidal_positions,
    vit_base_paper,
    vit_tiny_cifar,
    vit_tiny_paper,
)

RENAMED_FIELDS = {"heads": "num_heads"}
"""Old :class:`ModelConfig` field names (still in saved ``config.json`` files) → new ones."""


def upgrade_model_dict(data: dict) -> dict:
    """A saved :meth:`ModelConfig.to_dict` with old field names (:data:`RENAMED_FIELDS`) renamed,
    silently: for comparing saved configs with today's."""
    out = dict(data)
    for old, new in RENAMED_FIELDS.items():
        if old in out:
            value = out.pop(old)
            if out.get(new) is None:
                out[new] = value
    return out


@dataclass
class ModelConfig:
    """Which model to build and how; ``None`` means "the preset's default".

    Attributes:
        name: a model name of a registered family (:func:`model_names`): ``"vgg11"``, ``"vgg13"``, ``"vgg16"``, ``"vgg19"``,
            ``"resnet18"``, ``"resnet34"``, ``"resnet50"``, ``"resnet101"``, ``"resnet152"``,
            ``"vit_tiny"`` (the paper's: 224 input, patch 16), ``"vit_tiny_cifar"`` (32 input,
            patch 4), ``"vit_base"``, or one of a family added with
            :func:`register_model_family`.
        num_classes: classes of the classifier.
        image_size: input side (default 32 for VGG and ``vit_tiny_cifar``, 224 otherwise).
        in_channels: image channels.
        layer: VGG and ResNet: ``"conv2d"`` (default), ``"branching"`` or ``"convnn"``.
        mixer: ViT only: a key of :data:`MIXERS` (default ``"attention"``).
        ratio: λ: ConvNN share of the VGG / ResNet branching layer (default 0.5) or of a
            hybrid ViT mixer (the mixer's default, 0.5).
        kernel_size: VGG: kernel of the Conv2d branch (default 3). ViT: kernel of the
            ``"convnn_conv1d_hybrid"``, ``"conv1d"`` or ``"neighborhood"`` mixer.
        head: VGG only: ``"paper"`` (default, ≈130M parameters) or ``"lean"``.
        layer_options: options of the ConvNN layers: :class:`~convnn.layers.ConvNN2d`
            keywords (plus ``aggregate_coords`` for VGG, see :func:`paper_layer_options`), the
            mixer's keywords for ViT (see :func:`mixer_option_names`).
        num_heads: ViT only: attention heads (default 1; 12 for ``vit_base``).
        dropout: VGG head dropout (default 0.5) or ViT dropout (default 0.1).
        attn_dropout: ViT only: the mixer's attention dropout (default 0.1).
        width_multiplier: VGG and ResNet: scales every channel count (default 1.0).
        conv_bias: ResNet only: biases in its ``nn.Conv2d`` layers (default False; see
            :data:`PAPER_RESNET50`).
        depth, patch_size, dim, mlp_dim: ViT only: override the preset's architecture.
        heads: deprecated name of ``num_heads`` (a ``DeprecationWarning``; saved configs that
            use it still load).
    """

    name: str = "vgg11"
    num_classes: int = 10
    image_size: int | None = None
    in_channels: int = 3
    layer: str | None = None
    mixer: str | None = None
    ratio: float | None = None
    kernel_size: int | None = None
    head: str | None = None
    layer_options: dict = field(default_factory=dict)
    num_heads: int | None = None
    dropout: float | None = None
    attn_dropout: float | None = None
    width_multiplier: float | None = None
    depth: int | None = None
    patch_size: int | None = None
    dim: int | None = None
    mlp_dim: int | None = None
    conv_bias: bool | None = None
    heads: InitVar[int | None] = None

    def __post_init__(self, heads: int | None) -> None:
        if heads is not None:
            moved = renamed_argument({"heads": heads, "num_heads": self.num_heads}, "heads",
                                     "num_heads", "ModelConfig")
            self.num_heads = moved["num_heads"]

    @property
    def family(self) -> str:
        """The name of its :class:`ModelFamily` (``"vgg"``, ``"resnet"``, ``"vit"``...)."""
        return family_of(self.name).name

    def to_dict(self) -> dict:
        """A JSON-serialisable dict (``from_dict(to_dict())`` gives an equal config)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ModelConfig:
        """The inverse of :meth:`to_dict`; unknown keys raise ``ValueError``."""
        if not isinstance(data, dict):
            raise ValueError(f"ModelConfig.from_dict needs a dict, got {type(data).__name__}")
        data = dict(data)
        for old, new in RENAMED_FIELDS.items():
            data = renamed_argument(data, old, new, "ModelConfig.from_dict")
        check_known("ModelConfig field(s)", data, [f.name for f in dataclasses.fields(cls)])
        if data.get("layer_options") is None:
            data["layer_options"] = {}
        else:
            data["layer_options"] = dict(data["layer_options"])
        return cls(**data)


def _check_family_fields(config: ModelConfig, family: ModelFamily) -> None:
    for name in sorted(optional_fields() - family.fields):
        value = getattr(config, name)
        if value is not None:
            owners = [f.title for f in MODEL_FAMILIES.values() if name in f.fields]
            raise ValueError(f"{name}={value!r} does not apply to {config.name!r} (an option "
                             f"of {' and '.join(owners)} models)")


def build_model(config: ModelConfig | dict, *, device=None, dtype=None) -> nn.Module:
    """Build the model a :class:`ModelConfig` (or its dict) describes.

    Args:
        config: a :class:`ModelConfig` or a dict accepted by :meth:`ModelConfig.from_dict`.
        device, dtype: factory kwargs; ``device="meta"`` allocates nothing (parameter counts).

    Returns:
        The model its family (:data:`MODEL_FAMILIES`) builds: a :class:`VGG`, :class:`ResNet`,
        :class:`ViT`...

    Raises:
        ValueError: unknown name, layer, mixer or option, or an option of the other family.
    """
    if isinstance(config, dict):
        config = ModelConfig.from_dict(config)
    if not isinstance(config, ModelConfig):
        raise ValueError(f"config must be a ModelConfig or a dict, got {type(config).__name__}")
    family = family_of(config.name)
    unknown = sorted(optional_fields() - {f.name for f in dataclasses.fields(config)})
    if unknown:
        raise ValueError(f"a model family reads field(s) {unknown} that ModelConfig does not "
                         "have; use layer_options for a family's own options")
    _check_family_fields(config, family)
    return family.build(config, {"device": device, "dtype": dtype})


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    """Number of (trainable) parameters; works on ``meta``-device models."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


__all__ = [
    "COMMON_FIELDS",
    "LAYER_OPTIONS",
    "MIXERS",
    "MODEL_FAMILIES",
    "PAPER_RESNET50",
    "RENAMED_FIELDS",
    "RESNET_DEPTHS",
    "RESNET_LAYERS",
    "RESNET_NAMES",
    "VGG",
    "VGG_CONFIGS",
    "VGG_HEADS",
    "VGG_LAYERS",
    "VGG_NAMES",
    "VIT_PRESETS",
    "CoordAggregationConvNN2d",
    "ModelConfig",
    "ModelFamily",
    "PatchEmbedding",
    "ResNet",
    "TransformerBlock",
    "ViT",
    "build_model",
    "candidates_fallback",
    "count_parameters",
    "default_image_size",
    "family_of",
    "mixer_option_names",
    "model_names",
    "optional_fields",
    "paper_layer_options",
    "register_model_family",
    "resnet50",
    "sampling_for_map",
    "sinusoidal_positions",
    "unregister_model_family",
    "upgrade_model_dict",
    "vgg11",
    "vgg13",
    "vgg16",
    "vgg19",
    "vit_base_paper",
    "vit_tiny_cifar",
    "vit_tiny_paper",
]
