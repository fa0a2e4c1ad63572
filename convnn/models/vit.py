"""Vision Transformer with a pluggable token mixer (the paper's ViT-Tiny, method.md §5).

Patch embedding (a ``patch × patch`` Conv2d with stride ``patch``, then LayerNorm), a learnable
CLS token, *fixed* sinusoidal positions (a buffer, not a parameter) added to CLS + patches, then
``depth`` pre-norm blocks::

    x = x + Dropout(Mixer(LayerNorm(x)))
    x = x + Dropout(Linear(Dropout(GELU(Linear(LayerNorm(x))))))

and a linear classifier on the CLS token. There is no final LayerNorm (the paper's model has
none; with it the parameter counts of tables 6.6/6.9/6.10 would be 384 too high).

==============================  ==================================================================
``mixer``                       module (``num_heads`` and ``attn_dropout`` come from the model)
==============================  ==================================================================
``"attention"``                 :class:`~convnn.attention.MultiHeadSelfAttention`
``"convnn_attention"``          :class:`~convnn.layers.ConvNNAttention` (``k=9``, all candidates)
``"kvt"``                       :class:`~convnn.attention.KVTAttention` (top-``k`` keys, ``k=9``)
``"local"``                     :class:`~convnn.attention.LocalAttention` (window 128, heads of 64)
``"sparse_local"``              :class:`~convnn.attention.SparseAttention` ``'local'``, context 49
``"sparse_strided"``            :class:`~convnn.attention.SparseAttention` ``'strided'``, stride 14
``"convnn_attention_hybrid"``   :class:`~convnn.layers.HybridTokenMixer`, partner attention
``"convnn_conv1d_hybrid"``      :class:`~convnn.layers.HybridTokenMixer`, partner 1-D conv
``"neighborhood"``              :class:`~convnn.attention.NeighborhoodAttention1d`
``"conv1d"``                    :class:`~convnn.attention.TokenConv1d`
==============================  ==================================================================

The mixers are those of the registry in :mod:`convnn.attention` (:data:`MIXERS` is a read-only
view of it): a mixer added with :func:`~convnn.attention.register_mixer` is at once a ``mixer``
of :class:`ViT` and of :class:`~convnn.models.ModelConfig`, and blocks are built with
:func:`~convnn.attention.create_mixer`. Mixer options (``layer_options``) are the registered
options of the mixer; unknown ones raise ``ValueError``. For the ConvNN mixers the model applies the same explicit rule as
:class:`~convnn.models.VGG`: a sampled candidate set larger than the sequence
(``candidates > T``, :func:`~convnn.models.plan.candidates_fallback`) is replaced by all
candidates when the model is built, and recorded in
:attr:`ViT.layer_plan`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import Tensor, nn

from .. import layers as _layers  # noqa: F401  (registers the ConvNN mixers)
from .._checks import check_choice, check_fraction, check_int, check_known, renamed_argument
from ..attention import _RegistryView, create_mixer, mixer_names, mixer_spec
from .family import ModelFamily, register_model_family
from .plan import candidates_fallback

MIXERS: Mapping[str, tuple[type[nn.Module], dict]] = _RegistryView(
    lambda spec: spec.vit, lambda spec: (spec.cls, dict(spec.fixed)),
    "Mixer name -> (class, fixed keyword arguments): a read-only view of the ViT mixers of "
    "the registry (:func:`convnn.attention.register_mixer`).")
"""Mixer name -> (class, fixed keyword arguments): a read-only view of the ViT mixers of the
registry; add one with :func:`convnn.attention.register_mixer`."""

_MODEL_OPTIONS = ("attn_dropout",)  # given by the model, not by layer_options


def _check_vit_mixer(mixer: str) -> None:
    check_choice("mixer", mixer, mixer_names(vit=True))


def mixer_option_names(mixer: str) -> list[str]:
    """Options a mixer accepts in ``layer_options`` (those of its registry entry, less
    ``attn_dropout``, which the model gives)."""
    _check_vit_mixer(mixer)
    return sorted(mixer_spec(mixer).options - set(_MODEL_OPTIONS))


def sinusoidal_positions(length: int, dim: int) -> Tensor:
    """Fixed sine/cosine position table ``[length, dim]`` (Vaswani et al., 2017).

    Row ``t``: ``sin(t · ω_i)`` in even columns and ``cos(t · ω_i)`` in odd columns, with
    ``ω_i = 10000^(-2i / dim)``.
    """
    check_int("length", length, minimum=1)
    check_int("dim", dim, minimum=2)
    if dim % 2:
        raise ValueError(f"dim must be even for sinusoidal positions, got {dim}")
    position = torch.arange(length, dtype=torch.float64).unsqueeze(1)  # (T, 1)
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float64) * (-math.log(10000.0) / dim))
    table = torch.zeros(length, dim, dtype=torch.float64)
    table[:, 0::2] = torch.sin(position * freq)  # (T, dim/2)
    table[:, 1::2] = torch.cos(position * freq)
    return table.float()


class PatchEmbedding(nn.Module):
    """``[B, C, H, W] -> [B, N, D]``: a stride-``patch`` Conv2d, flattened, then LayerNorm."""

    def __init__(self, in_channels: int, dim: int, patch_size: int, *, device=None,
                 dtype=None) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.proj = nn.Conv2d(in_channels, dim, patch_size, stride=patch_size, **factory)
        self.norm = nn.LayerNorm(dim, **factory)

    def forward(self, x: Tensor) -> Tensor:
        x = self.proj(x)  # (B, D, H/p, W/p)
        return self.norm(x.flatten(2).transpose(1, 2))  # (B, N, D)


class TransformerBlock(nn.Module):
    """Pre-norm block: ``x + drop(mixer(LN(x)))``, then ``x + drop(MLP(LN(x)))``."""

    def __init__(self, dim: int, mlp_dim: int, mixer: nn.Module, dropout: float, *,
                 device=None, dtype=None) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.norm1 = nn.LayerNorm(dim, **factory)
        self.mixer = mixer
        self.drop1 = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(dim, **factory)
        self.mlp = nn.Sequential(
            nn.Linear(dim, mlp_dim, **factory),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(mlp_dim, dim, **factory),
        )
        self.drop2 = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.drop1(self.mixer(self.norm1(x)))  # (B, T, D)
        return x + self.drop2(self.mlp(self.norm2(x)))


class ViT(nn.Module):
    """Vision Transformer with a pluggable token mixer.

    Args:
        num_classes: classes of the linear head on the CLS token.
        image_size: side of the square input images.
        patch_size: side of the square patches; must divide ``image_size``.
        in_channels: image channels.
        dim: token width ``D`` (even: sinusoidal positions).
        depth: number of blocks.
        mlp_dim: hidden width of the MLP.
        num_heads: heads of the mixer.
        mixer: a key of :data:`MIXERS`.
        layer_options: keyword arguments of the mixer (``k``, ``sampling``, ``candidates``,
            ``similarity``, ``aggregation``, ``ratio``, ``kernel_size``, ``window``,
            ``context``...); see :func:`mixer_option_names`.
        dropout: dropout after the mixer, inside and after the MLP.
        attn_dropout: the mixer's attention dropout (not used by ``"conv1d"``).
        device, dtype: factory kwargs (``device="meta"`` builds without memory).

    The CLS token is initialised from a standard normal, as in the paper's code.

    Attributes:
        num_tokens: ``(image_size / patch_size)² + 1``.
        layer_plan: one dict per block: ``index``, ``tokens``, ``mixer``, ``sampling`` and
            ``candidates`` actually used, ``requested_sampling`` / ``requested_candidates``,
            ``fallback`` (why all candidates are used, or ``None``) and, for the ConvNN
            mixers, ``seed`` (the fixed evaluation seed: ``layer_options["seed"]`` (default 0)
            plus the block index). Sampling entries are ``None`` for mixers without
            candidate sets.

    Shape:
        ``[B, in_channels, image_size, image_size] -> [B, num_classes]``.
    """

    def __init__(
        self,
        num_classes: int = 10,
        *,
        image_size: int = 224,
        patch_size: int = 16,
        in_channels: int = 3,
        dim: int = 192,
        depth: int = 12,
        mlp_dim: int = 768,
        num_heads: int = 1,
        mixer: str = "attention",
        layer_options: dict | None = None,
        dropout: float = 0.1,
        attn_dropout: float = 0.1,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        check_int("num_classes", num_classes, minimum=1)
        check_int("image_size", image_size, minimum=1)
        check_int("patch_size", patch_size, minimum=1)
        if image_size % patch_size:
            raise ValueError(f"patch_size={patch_size} must divide image_size={image_size}")
        check_int("in_channels", in_channels, minimum=1)
        check_int("dim", dim, minimum=2)
        if dim % 2:
            raise ValueError(f"dim must be even (sinusoidal positions), got {dim}")
        check_int("depth", depth, minimum=1)
        check_int("mlp_dim", mlp_dim, minimum=1)
        check_int("num_heads", num_heads, minimum=1)
        _check_vit_mixer(mixer)
        dropout = check_fraction("dropout", dropout)
        attn_dropout = check_fraction("attn_dropout", attn_dropout)
        if not isinstance(layer_options, (dict, type(None))):
            raise ValueError(f"layer_options must be a dict, got {type(layer_options).__name__}")
        options = dict(layer_options or {})
        check_known("option(s) in layer_options", options, mixer_option_names(mixer),
                    f" for mixer={mixer!r}")

        self.num_classes, self.image_size, self.patch_size = num_classes, image_size, patch_size
        self.dim, self.depth, self.mlp_dim, self.num_heads = dim, depth, mlp_dim, num_heads
        self.mixer_name, self.layer_options = mixer, dict(options)
        self.num_tokens = (image_size // patch_size) ** 2 + 1
        factory = {"device": device, "dtype": dtype}

        self.patch_embed = PatchEmbedding(in_channels, dim, patch_size, **factory)
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim, **factory))
        pos = sinusoidal_positions(self.num_tokens, dim).to(
            device=device, dtype=dtype or torch.get_default_dtype())
        self.register_buffer("pos_embed", pos.unsqueeze(0), persistent=False)  # (1, T, D)
        self.layer_plan: list[dict] = []
        blocks = []
        for index in range(depth):
            block_options, plan = self._plan_block(index, options)
            mixer_module = self._make_mixer(block_options, attn_dropout, factory)
            blocks.append(TransformerBlock(dim, mlp_dim, mixer_module, dropout, **factory))
            self.layer_plan.append(plan)
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(dim, num_classes, **factory)

    def _plan_block(self, index: int, options: dict) -> tuple[dict, dict]:
        tokens, name = self.num_tokens, self.mixer_name
        plan = {"index": index, "tokens": tokens, "mixer": name, "sampling": None,
                "candidates": None, "requested_sampling": None, "requested_candidates": None,
                "fallback": None, "seed": None}
        options = dict(options)
        spec = mixer_spec(name)
        if spec.candidate_sets:
            sampling, candidates = options.get("sampling", "all"), options.get("candidates")
            plan.update(requested_sampling=sampling, requested_candidates=candidates,
                        sampling=sampling, candidates=candidates)
            base_seed = check_int("seed", options.get("seed", 0))
            options["seed"] = base_seed + index  # distinct fixed evaluation draws per block
            plan["seed"] = options["seed"]
            sampling, candidates, reason = candidates_fallback(sampling, candidates,
                                                               tokens=tokens)
            if reason is not None:
                options["sampling"], options["candidates"] = "all", None
                plan.update(sampling="all", candidates=None, fallback=reason)
            k = options.get("k", 9)
            if plan["sampling"] == "all" and isinstance(k, int) and k > tokens:
                raise ValueError(f"k={k} must be <= the number of tokens T={tokens} "
                                 f"(image_size={self.image_size}, patch_size={self.patch_size})")
        for option, default in spec.token_limits.items():
            value = options.get(option, default)
            if isinstance(value, int) and value > tokens:
                raise ValueError(f"{option}={value} must be <= the number of tokens T={tokens} "
                                 f"(image_size={self.image_size}, patch_size={self.patch_size})")
        return options, plan

    def _make_mixer(self, options: dict, attn_dropout: float, factory: dict) -> nn.Module:
        if mixer_spec(self.mixer_name).takes_attn_dropout:
            options = {**options, "attn_dropout": attn_dropout}
        return create_mixer(self.mixer_name, self.dim, self.num_heads, **options, **factory)

    def extra_repr(self) -> str:
        return (f"image_size={self.image_size}, patch_size={self.patch_size}, "
                f"tokens={self.num_tokens}, dim={self.dim}, depth={self.depth}, "
                f"mlp_dim={self.mlp_dim}, num_heads={self.num_heads}, mixer={self.mixer_name!r}")

    def forward(self, x: Tensor) -> Tensor:
        """``[B, C, H, W] -> [B, num_classes]`` logits."""
        x = self.patch_embed(x)  # (B, N, D)
        if x.shape[1] + 1 != self.num_tokens:
            raise ValueError(f"input must be {self.image_size}x{self.image_size} "
                             f"({self.num_tokens - 1} patches), got {x.shape[1]} patches")
        cls = self.cls_token.expand(x.shape[0], -1, -1)  # (B, 1, D)
        x = torch.cat((cls, x), dim=1) + self.pos_embed  # (B, T, D)
        x = self.blocks(x)
        return self.head(x[:, 0])  # (B, num_classes)


def _vit_preset(num_classes, mixer, mixer_kwargs, image_size, patch_size) -> ViT:
    model_args = {}
    for name in ("dropout", "attn_dropout", "device", "dtype", "depth", "dim", "mlp_dim",
                 "in_channels"):
        if name in mixer_kwargs:
            model_args[name] = mixer_kwargs.pop(name)
    mixer_kwargs = renamed_argument(mixer_kwargs, "heads", "num_heads", "ViT presets")
    num_heads = mixer_kwargs.pop("num_heads", 1)
    return ViT(num_classes, image_size=image_size, patch_size=patch_size, num_heads=num_heads,
               mixer=mixer, layer_options=mixer_kwargs, **model_args)


def vit_tiny_paper(num_classes: int = 10, mixer: str = "attention", **mixer_kwargs) -> ViT:
    """The paper's ViT-Tiny: 224×224 input, patch 16 (197 tokens), width 192, 12 blocks, MLP 768.

    ``mixer_kwargs`` go to the mixer (``k``, ``sampling``, ``candidates``, ``similarity``,
    ``aggregation``, ``ratio``...), except ``num_heads`` (default 1, the paper's final runs),
    ``dropout``, ``attn_dropout``, ``depth``, ``dim``, ``mlp_dim``, ``in_channels``,
    ``device`` and ``dtype``, which go to :class:`ViT`.

    Example:
        >>> model = vit_tiny_paper(10, "convnn_attention", k=9, sampling="random",
        ...                        candidates=32, device="meta")
        >>> model.num_tokens
        197
    """
    return _vit_preset(num_classes, mixer, dict(mixer_kwargs), 224, 16)


def vit_tiny_cifar(num_classes: int = 10, mixer: str = "attention", **mixer_kwargs) -> ViT:
    """A fast CIFAR-native ViT-Tiny: 32×32 input, patch 4 (64 patches + CLS = 65 tokens).

    Same width, depth and MLP as :func:`vit_tiny_paper`; ``mixer_kwargs`` as there.
    """
    return _vit_preset(num_classes, mixer, dict(mixer_kwargs), 32, 4)


def vit_base_paper(num_classes: int = 1000, mixer: str = "attention", **mixer_kwargs) -> ViT:
    """ViT-Base/16 (224 input, width 768, 12 blocks, MLP 3072, 12 heads) as in the ImageNet
    rows (table "10") of paper_results.json; ``mixer_kwargs`` as :func:`vit_tiny_paper`."""
    kwargs = {"dim": 768, "mlp_dim": 3072, **mixer_kwargs}
    if "heads" not in kwargs:
        kwargs.setdefault("num_heads", 12)
    return _vit_preset(num_classes, mixer, kwargs, 224, 16)


VIT_PRESETS = {
    # name: image_size, patch_size, dim, depth, mlp_dim, heads
    "vit_tiny": (224, 16, 192, 12, 768, 1),
    "vit_tiny_cifar": (32, 4, 192, 12, 768, 1),
    "vit_base": (224, 16, 768, 12, 3072, 12),
}


def _build_vit(config, factory: dict) -> ViT:
    image, patch, dim, depth, mlp_dim, heads = VIT_PRESETS[config.name]
    mixer = "attention" if config.mixer is None else config.mixer
    check_choice("mixer", mixer, MIXERS)
    options = dict(config.layer_options)
    allowed = mixer_option_names(mixer)
    for name in ("ratio", "kernel_size"):
        value = getattr(config, name)
        if value is None:
            continue
        if name not in allowed:
            raise ValueError(f"{name}={value!r} does not apply to mixer={mixer!r}")
        if name in options and options[name] != value:
            raise ValueError(f"{name} given twice: {name}={value!r} and "
                             f"layer_options[{name!r}]={options[name]!r}")
        options[name] = value
    kwargs = {name: getattr(config, name) for name in ("dropout", "attn_dropout")
              if getattr(config, name) is not None}

    def pick(value, default):
        return default if value is None else value

    return ViT(config.num_classes, image_size=pick(config.image_size, image),
               patch_size=pick(config.patch_size, patch), in_channels=config.in_channels,
               dim=pick(config.dim, dim), depth=pick(config.depth, depth),
               mlp_dim=pick(config.mlp_dim, mlp_dim), num_heads=pick(config.num_heads, heads),
               mixer=mixer, layer_options=options, **kwargs, **factory)


register_model_family(ModelFamily(
    "vit", "ViT", ViT, image_sizes={name: p[0] for name, p in VIT_PRESETS.items()},
    build=_build_vit,
    fields=frozenset({"mixer", "ratio", "kernel_size", "num_heads", "dropout", "attn_dropout",
                      "depth", "patch_size", "dim", "mlp_dim"}),
    # our ImageNet recipe (the paper states none): DeiT's optimiser settings (lr 5e-4 per 512
    # images), without its RandAugment, mixup, cutmix, random erasing and stochastic depth
    protocol={"optimizer": "adamw", "lr": 2.5e-4, "weight_decay": 0.05, "schedule": "cosine",
              "warmup_epochs": 5, "epochs": 300, "batch_size": 256, "grad_clip": 1.0,
              "label_smoothing": 0.1, "augment": True},
    reduced={"image_size": 32, "patch_size": 2, "depth": 2, "dim": 48, "mlp_dim": 96}))


__all__ = [
    "MIXERS",
    "VIT_PRESETS",
    "PatchEmbedding",
    "TransformerBlock",
    "ViT",
    "mixer_option_names",
    "sinusoidal_positions",
    "vit_base_paper",
    "vit_tiny_cifar",
    "vit_tiny_paper",
]
