"""ConvNN layers: thin ``nn.Module`` wrappers over :mod:`convnn.ops` that own parameters.

- :class:`ConvNN2d` - a drop-in for ``nn.Conv2d`` at stride 1 (``[B, C, H, W]``).
- :class:`ConvNNAttention` - a drop-in for multi-head self-attention (``[B, T, D]``).
- :class:`BranchingConv2d` - the paper's VGG hybrid: Conv2d branch + ConvNN branch, 1×1 mix.
- :class:`HybridTokenMixer` - ConvNN attention beside attention or a 1-D conv over tokens.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import kernels_attention, kernels_conv2d, kernels_projection, ops
from ._checks import (
    check_bool,
    check_choice,
    check_divisible,
    check_fraction,
    check_int,
    check_k,
    check_layer_input,
    check_layer_options,
)
from .attention import (
    MultiHeadSelfAttention,
    TokenConv1d,
    _check_heads,
    _HeadProjections,
    register_mixer,
)
from .ops import EVAL_SAMPLINGS

RANDOM_REGIONS = ("image", "padded")
CANDIDATE_LAYOUTS = ("square", "count")
DROPOUT_TARGETS = ("weights", "output")


class _Options:
    """Shared helpers of the layers' option values."""

    def changes(self) -> dict:
        """The fields that differ from the defaults, as a flat dict (how model configs store
        them in ``layer_options``)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if getattr(self, f.name) != f.default}


@dataclass(frozen=True)
class ConvNN2dOptions(_Options):
    """The rarely changed options of :class:`ConvNN2d`, as one value: paper mode
    (:data:`PAPER_CONVNN2D`), the candidate conventions and the evaluation draw. Change one
    field with ``dataclasses.replace(PAPER_CONVNN2D, seed=3)``.

    Attributes:
        mix: α of ``selection="mixed"``: features scaled by ``mix / std``, coordinates by
            ``1 - mix`` (not the branching ratio λ).
        coord_grid: the coordinate channels of ``"coords"``/``"mixed"`` selection (and of
            aggregated coordinates): ``"image"`` (default: an isotropic grid, the image's
            longer side spans ``[-1, 1]``, the border extends it outwards, so coordinate
            distance is pixel distance on any image shape) or ``"padded"`` (the authors':
            ``linspace(-1, 1)`` over the padded map, one spacing per axis).
        candidate_layout: how ``candidates`` counts: ``"square"`` (default, ``r × r``
            positions, the paper's CIFAR convention) or ``"count"`` (``r`` positions: ``r``
            random pixels, or a ``√r × √r`` grid, so ``r`` must be a square; the paper's
            ImageNet ResNet-50 convention, e.g. random r = 32, spatial r = 25 = 5 × 5).
        random_region: where ``"random"`` candidates are drawn: ``"image"`` (default, the
            ``H × W`` pixels: no draw is spent on the zero border, whose features are all
            zero) or ``"padded"`` (the authors': all ``(H+2p)(W+2p)`` positions of the padded
            map, as with all candidates).
        spatial_rounding: how the ``"spatial"`` grid's ``linspace`` indices become pixels:
            ``"round"`` (default, a grid symmetric about the image centre) or ``"truncate"``
            (the authors': r = 4 on 32 gives [0, 10, 20, 31]). The grid always lies on the
            unpadded image.
        self_first: force each pixel to be its own first neighbour with all candidates
            (default ``None``: True for feature/mixed selection, False for coordinate
            selection; sampled candidates always put it first).
        sort_by_position: order the k neighbours by raster position rather than by rank
            (default ``None``: True for coordinate selection, which makes the layer a
            convolution).
        eval_sampling: ``"fixed"`` (reproducible random candidates in eval) or
            ``"resample"`` (the paper's behaviour).
        seed: seed of the fixed evaluation draw.
    """

    mix: float = 0.5
    coord_grid: str = "image"
    candidate_layout: str = "square"
    random_region: str = "image"
    spatial_rounding: str = "round"
    self_first: bool | None = None
    sort_by_position: bool | None = None
    eval_sampling: str = "fixed"
    seed: int = 0

    def __post_init__(self) -> None:
        check_fraction("mix", self.mix)
        check_choice("coord_grid", self.coord_grid, ops.COORD_GRIDS)
        check_choice("candidate_layout", self.candidate_layout, CANDIDATE_LAYOUTS)
        check_choice("random_region", self.random_region, RANDOM_REGIONS)
        check_choice("spatial_rounding", self.spatial_rounding, ops.SPATIAL_ROUNDINGS)
        check_choice("eval_sampling", self.eval_sampling, EVAL_SAMPLINGS)
        check_layer_options(seed=self.seed, optional_bools={
            "self_first": self.self_first, "sort_by_position": self.sort_by_position})


@dataclass(frozen=True)
class ConvNNAttentionOptions(_Options):
    """The rarely changed options of :class:`ConvNNAttention`, as one value: paper mode
    (:data:`PAPER_ATTENTION`), the coordinate encoding and the evaluation draw.

    Attributes:
        coord_scale: weight of the coordinate channel in ``"mixed"`` selection.
        self_first: force each token to be its own first neighbour with all candidates.
        self_score: the softmax logit of the token itself where it is put first (sampled
            candidates, or ``self_first``): ``"similarity"`` (default, its real score
            ``q·k/√d``, so the layer weighs itself like any other neighbour and stays top-k
            attention over the candidates and itself) or ``"constant"`` (the authors':
            :data:`convnn.ops.PAPER_SELF_LOGIT` = 1.0 whatever the scores' scale).
        attn_dropout_on: what ``attn_dropout`` drops: ``"weights"`` (default, ρ, as standard
            attention dropout does, so the dense layer stays softmax attention with dropout)
            or ``"output"`` (the authors': the aggregated output, before ``out_proj``).
        spatial_rounding: ``"round"`` (default) or ``"truncate"`` (the authors') for the
            ``"spatial"`` token indices ``linspace(0, T - 1, r)``, CLS at index 0.
        eval_sampling, seed: see :class:`ConvNN2dOptions`.
    """

    coord_scale: float = 1.0
    self_first: bool = False
    self_score: str = "similarity"
    attn_dropout_on: str = "weights"
    spatial_rounding: str = "round"
    eval_sampling: str = "fixed"
    seed: int = 0

    def __post_init__(self) -> None:
        check_choice("self_score", self.self_score, ops.SELF_SCORES)
        check_choice("attn_dropout_on", self.attn_dropout_on, DROPOUT_TARGETS)
        check_choice("spatial_rounding", self.spatial_rounding, ops.SPATIAL_ROUNDINGS)
        check_choice("eval_sampling", self.eval_sampling, EVAL_SAMPLINGS)
        check_layer_options(seed=self.seed, bools={"self_first": self.self_first},
                            floats={"coord_scale": self.coord_scale})


PAPER_CONVNN2D = ConvNN2dOptions(coord_grid="padded", random_region="padded",
                                 spatial_rounding="truncate")
"""Paper mode of :class:`ConvNN2d`: the options that reproduce the authors' 2-D layer
(method.md §7.3-§7.5) where our defaults differ. The defect fixes of §6 stay."""

PAPER_ATTENTION = ConvNNAttentionOptions(self_score="constant", attn_dropout_on="output",
                                         spatial_rounding="truncate")
"""Paper mode of :class:`ConvNNAttention` (method.md §7.1, §7.2, §7.5); masks stay ``-inf``."""


def _split_config(options_type: type, config: dict, context: str) -> dict:
    """A flat dict of options (a model config's ``layer_options``) as constructor keywords:
    the fields of ``options_type`` become one ``options`` value."""
    if "options" in config:
        raise ValueError(f"{context}: a flat config holds the option fields themselves, "
                         "not options=")
    names = {f.name for f in dataclasses.fields(options_type)}
    picked = {name: config[name] for name in names & config.keys()}
    direct = {name: value for name, value in config.items() if name not in names}
    return {**direct, "options": options_type(**picked)} if picked else direct


def _check_options(options, options_type: type, constant: str):
    if options is None:
        return options_type()
    if not isinstance(options, options_type):
        raise TypeError(f"options must be a {options_type.__name__} (e.g. {constant}), got "
                        f"{type(options).__name__}; build a layer from a flat dict of options "
                        "with from_config()")
    return options


def _empty_output(x: Tensor, shape: tuple, layer: nn.Module) -> Tensor:
    """The output of an empty batch, as ``nn.Conv2d`` gives it: empty, in the graph."""
    out = x.new_zeros(shape)
    return (out + sum(p.sum() * 0 for p in layer.parameters()) if torch.is_grad_enabled()
            else out)


def _init_aggregation(weight: Tensor, bias: Tensor | None, fan_in: int) -> None:
    """Conv1d's default initialisation for a ``[O, C, k]`` weight."""
    nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
    if bias is not None:
        bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
        nn.init.uniform_(bias, -bound, bound)



def _wrap_repr(text: str, width: int = 72) -> str:
    """Break an ``extra_repr`` after commas, so printed layers and models fit a page."""
    lines, line = [], ""
    for part in text.split(", "):
        joined = f"{line}, {part}" if line else part
        if line and len(joined) > width:
            lines.append(line + ",")
            line = part
        else:
            line = joined
    return "\n".join([*lines, line])

class _SampledCandidates(nn.Module):
    """Shared logic for drawing candidate sets.

    In training, random candidates are drawn afresh on every forward pass from the global
    RNG (seed it with ``torch.manual_seed`` before building the model). In evaluation,
    ``eval_sampling="fixed"`` uses the same deterministic draw on every call
    (:func:`convnn.ops.fixed_candidates` with ``seed``), so test accuracy is reproducible;
    ``"resample"`` keeps drawing at random, as the paper's code does.
    """

    sampling: str
    candidates: int | None
    eval_sampling: str
    seed: int
    backend: str | None

    def _random_draw(self, num_positions: int, count: int, device) -> Tensor:
        if not self.training and self.eval_sampling == "fixed":
            return ops.fixed_candidates(num_positions, count, self.seed, device=device)
        return ops.random_candidates(num_positions, count, device=device)


def candidate_count(candidates: int, layout: str = "square") -> int:
    """Positions in an image candidate set: ``r²`` for layout ``"square"``, ``r`` for
    ``"count"`` (see :class:`ConvNN2d`)."""
    check_choice("candidate_layout", layout, CANDIDATE_LAYOUTS)
    return candidates * candidates if layout == "square" else candidates


def _check_sampling(sampling: str, candidates, eval_sampling: str) -> None:
    check_choice("sampling", sampling, ops.SAMPLINGS)
    check_choice("eval_sampling", eval_sampling, EVAL_SAMPLINGS)
    if sampling == "all":
        if candidates is not None:
            raise ValueError(f"candidates must be None when sampling='all', got {candidates!r}")
    else:
        if candidates is None:
            raise ValueError(f"sampling={sampling!r} needs candidates (an integer r >= 1)")
        check_int("candidates", candidates, minimum=1)


def _resolve_similarity(selection: str, similarity: str | None, default: str) -> str:
    if similarity is None:
        return "euclidean" if selection == "coords" else default
    check_choice("similarity", similarity, ops.SIMILARITIES)
    if selection == "coords" and similarity != "euclidean":
        raise ValueError("selection='coords' ranks neighbours by distance and needs "
                         f"similarity='euclidean', got {similarity!r}")
    return similarity


def _option(name: str) -> property:
    """An attribute of a layer that is field ``name`` of its ``options`` value (setting it
    replaces the field: the options stay one frozen value)."""

    def get(self):
        return getattr(self.options, name)

    def set(self, value) -> None:
        self.options = dataclasses.replace(self.options, **{name: value})

    return property(get, set, doc=f"``options.{name}``")


class ConvNN2d(_SampledCandidates):
    """Convolutional Nearest Neighbours on images: a drop-in for ``nn.Conv2d`` (stride 1).

    For every pixel, select ``k`` neighbours among the (zero-padded) image's positions, then
    aggregate them with one weight matrix per neighbour rank. The defaults are the paper's
    CNN layer: cosine similarity on raw features, the zero-padded border counts as candidates
    (a zero vector has cosine 0 with everything), each pixel is its own first neighbour,
    ρ = ones, standard aggregation with bias, ``k = 9``, padding 1. Paper mode for sampled
    candidates and mixed selection is ``options=PAPER_CONVNN2D`` (:data:`PAPER_CONVNN2D`:
    ``coord_grid``, ``random_region``, ``spatial_rounding`` of :class:`ConvNN2dOptions`); our
    defaults for those are kept because each is better where it differs.

    Args:
        in_channels: ``C`` of the input ``[B, C, H, W]``.
        out_channels: ``O`` of the output ``[B, O, H, W]``.
        k: neighbours per pixel.
        padding: rings of zero positions added around the image as candidates.
        selection: ``"features"``, ``"coords"`` (x, y of each pixel) or ``"mixed"`` (both,
            mixed by ``options.mix``).
        similarity: ``"cosine"``, ``"dot"`` or ``"euclidean"`` (default: cosine, or Euclidean
            for coordinate selection, the only one that ranks by distance).
        sampling: ``"all"``, ``"random"`` or ``"spatial"`` candidates.
        candidates: ``r``: the candidate set has ``r × r`` positions: an evenly spaced
            ``r × r`` grid of the unpadded image (``"spatial"``) or ``r²`` random pixels
            (``"random"``); ``options.candidate_layout="count"`` counts ``r`` positions. With
            sampled candidates each pixel is its own first neighbour.
        weighting: ρ, ``"ones"``, ``"softmax"`` or ``"similarity"``.
        aggregation: ``"standard"`` (``W_j`` is O×C), ``"depthwise"`` (one weight per
            channel and rank; needs ``out_channels == in_channels``) or ``"separable"``
            (depthwise then 1×1).
        bias: add a learned bias.
        options: the rarely changed options, one :class:`ConvNN2dOptions` value (default:
            ours; :data:`PAPER_CONVNN2D`: the authors').
        backend: what runs the operator: ``None`` (the default backend, see
            :func:`convnn.ops.choose_backend`), ``"reference"``, ``"torch"`` or ``"triton"``.

    Example:
        >>> layer = ConvNN2d(16, 32, options=PAPER_CONVNN2D)  # the paper's layer, k = 9
        >>> layer(torch.randn(2, 16, 8, 8)).shape
        torch.Size([2, 32, 8, 8])

    Special case: ``ConvNN2d.from_conv2d(conv)`` (coordinate selection, Euclidean, ``k`` =
    kernel area, ρ = ones, neighbours in raster order) equals ``conv`` exactly for 3×3 and 5×5
    kernels with ``padding = kernel // 2``. :meth:`from_config` builds the layer from a flat
    dict of options (a model config's ``layer_options``).
    """

    mix, coord_grid, candidate_layout, random_region, spatial_rounding = (
        _option("mix"), _option("coord_grid"), _option("candidate_layout"),
        _option("random_region"), _option("spatial_rounding"))
    self_first, sort_by_position = _option("self_first"), _option("sort_by_position")
    eval_sampling, seed = _option("eval_sampling"), _option("seed")

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        k: int = 9,
        padding: int = 1,
        *,
        selection: str = "features",
        similarity: str | None = None,
        sampling: str = "all",
        candidates: int | None = None,
        weighting: str = "ones",
        aggregation: str = "standard",
        bias: bool = True,
        options: ConvNN2dOptions | None = None,
        backend: str | None = None,
        device=None,
        dtype=None,
    ) -> None:
        o = _check_options(options, ConvNN2dOptions, "PAPER_CONVNN2D")
        super().__init__()
        check_int("in_channels", in_channels, minimum=1)
        check_int("out_channels", out_channels, minimum=1)
        check_k(k)
        check_int("padding", padding, minimum=0)
        check_choice("selection", selection, ops.SELECTIONS)
        similarity = _resolve_similarity(selection, similarity, "cosine")
        check_choice("weighting", weighting, ops.WEIGHTINGS)
        check_choice("aggregation", aggregation, ops.AGGREGATIONS)
        ops.requested_backend(backend)  # checks the name
        check_layer_options(bools={"bias": bias})  # the options checked themselves
        _check_sampling(sampling, candidates, o.eval_sampling)
        if aggregation == "depthwise" and out_channels != in_channels:
            raise ValueError("aggregation='depthwise' needs out_channels == in_channels, got "
                             f"in_channels={in_channels}, out_channels={out_channels}")
        if sampling != "all":
            total = candidate_count(candidates, o.candidate_layout)
            if (sampling == "spatial" and o.candidate_layout == "count"
                    and math.isqrt(candidates) ** 2 != candidates):
                raise ValueError(f"sampling='spatial' with candidate_layout='count' needs a "
                                 f"square number of candidates (a grid), got {candidates}")
            if k > total:
                what = "candidates" if o.candidate_layout == "count" else "candidates**2"
                raise ValueError(f"k={k} must be <= the number of candidates {what}={total}")
        if sampling != "all" and o.self_first is False:
            raise ValueError("sampled candidates always put each pixel first; "
                             "self_first=False needs sampling='all'")
        self.in_channels, self.out_channels, self.k, self.padding = (
            in_channels, out_channels, k, padding)
        self.selection, self.similarity = selection, similarity
        self.sampling, self.candidates = sampling, candidates
        self.weighting, self.aggregation = weighting, aggregation
        # the options kept as one value, with the defaults that follow the selection resolved
        self.options = dataclasses.replace(
            o, self_first=True if sampling != "all" else (
                selection != "coords" if o.self_first is None else o.self_first),
            sort_by_position=(selection == "coords" if o.sort_by_position is None
                              else o.sort_by_position))
        self.backend = backend

        factory = {"device": device, "dtype": dtype}
        if aggregation == "standard":
            self.weight = nn.Parameter(torch.empty(out_channels, in_channels, k, **factory))
            fan_in = in_channels * k
        else:
            self.weight = nn.Parameter(torch.empty(in_channels, 1, k, **factory))
            fan_in = k
        if aggregation == "separable":
            self.pointwise = nn.Parameter(torch.empty(out_channels, in_channels, 1, **factory))
            nn.init.kaiming_uniform_(self.pointwise, a=math.sqrt(5))
        else:
            self.register_parameter("pointwise", None)
        self.bias = nn.Parameter(torch.empty(out_channels, **factory)) if bias else None
        _init_aggregation(self.weight, self.bias, fan_in)
        self._static_cache: dict = {}

    @classmethod
    def from_config(cls, in_channels: int, out_channels: int, **config) -> ConvNN2d:
        """Build the layer from a flat dict of options, as model configs store them
        (``layer_options``): the constructor's keywords and the fields of
        :class:`ConvNN2dOptions` side by side, e.g.
        ``ConvNN2d.from_config(16, 32, k=9, sampling="random", candidates=8, seed=3)``."""
        return cls(in_channels, out_channels,
                   **_split_config(ConvNN2dOptions, config, cls.__name__))

    @classmethod
    def from_conv2d(cls, conv: nn.Conv2d, *, backend: str | None = None) -> ConvNN2d:
        """The convolution limit: a ConvNN2d that computes exactly what ``conv`` computes.

        Supports square odd kernels 3 and 5 (where the k nearest pixels in Euclidean distance
        are exactly the kernel window), stride 1, dilation 1, ``padding = kernel // 2`` and
        ``groups`` 1 (standard aggregation) or ``groups = in_channels = out_channels``
        (depthwise aggregation).
        """
        kh, kw = conv.kernel_size
        if kh != kw or kh not in (1, 3, 5):
            raise ValueError(f"from_conv2d supports square kernels 1, 3 or 5, got {(kh, kw)}")
        if conv.stride != (1, 1) or conv.dilation != (1, 1):
            raise ValueError(f"from_conv2d needs stride 1 and dilation 1, got stride "
                             f"{conv.stride}, dilation {conv.dilation}")
        if conv.padding != (kh // 2, kw // 2):
            raise ValueError(f"from_conv2d needs padding={kh // 2}, got {conv.padding}")
        if conv.groups == 1:
            aggregation = "standard"
        elif conv.groups == conv.in_channels == conv.out_channels:
            aggregation = "depthwise"
        else:
            raise ValueError(f"from_conv2d supports groups=1 or depthwise, got {conv.groups}")
        layer = cls(conv.in_channels, conv.out_channels, k=kh * kw, padding=kh // 2,
                    selection="coords", aggregation=aggregation,
                    bias=conv.bias is not None, backend=backend, device=conv.weight.device,
                    dtype=conv.weight.dtype)
        with torch.no_grad():
            layer.weight.copy_(conv.weight.reshape(layer.weight.shape))
            if conv.bias is not None:
                layer.bias.copy_(conv.bias)
        return layer

    def extra_repr(self) -> str:
        s = (f"{self.in_channels}, {self.out_channels}, k={self.k}, padding={self.padding}, "
             f"selection={self.selection!r}, similarity={self.similarity!r}, "
             f"sampling={self.sampling!r}")
        if self.candidates is not None:
            s += f", candidates={self.candidates}, eval_sampling={self.eval_sampling!r}"
            if self.candidate_layout != "square":
                s += f", candidate_layout={self.candidate_layout!r}"
            if self.sampling == "random" and self.random_region != "image":
                s += f", random_region={self.random_region!r}"
            if self.sampling == "spatial" and self.spatial_rounding != "round":
                s += f", spatial_rounding={self.spatial_rounding!r}"
        if self.selection == "mixed":
            s += f", mix={self.mix}"
        if self.selection != "features" and self.coord_grid != "image":
            s += f", coord_grid={self.coord_grid!r}"
        s += (f", weighting={self.weighting!r}, aggregation={self.aggregation!r}, "
              f"self_first={self.self_first}, bias={self.bias is not None}")
        if self.backend is not None:
            s += f", backend={self.backend!r}"
        return _wrap_repr(s)

    def num_positions(self, height: int, width: int) -> int:
        """Positions the layer selects among on an ``H × W`` input (the padded map)."""
        return (height + 2 * self.padding) * (width + 2 * self.padding)

    def coordinates(self, height: int, width: int, *, device=None, dtype=None) -> Tensor:
        """The ``(x, y)`` coordinates of every position of the padded map: ``[N, 2]``."""
        return ops.grid_coordinates(height, width, self.padding, grid=self.coord_grid,
                                    device=device, dtype=dtype)

    def _geometry(self, height: int, width: int, device, dtype):
        key = (height, width, str(device), dtype)
        if key not in self._static_cache:
            qpos = ops.interior_positions(height, width, self.padding, device=device)
            coords = self.coordinates(height, width, device=device, dtype=dtype)
            self._static_cache[key] = {"query_positions": qpos, "coords": coords}
        return self._static_cache[key]

    def _candidates(self, height: int, width: int, qpos: Tensor, device) -> Tensor | None:
        if self.sampling == "all":
            return None
        count = candidate_count(self.candidates, self.candidate_layout)
        if self.sampling == "spatial":
            return ops.spatial_candidates_2d(height, width, math.isqrt(count), self.padding,
                                             rounding=self.spatial_rounding, device=device)
        if self.random_region == "padded":
            positions = self.num_positions(height, width)
            if count > positions:
                raise ValueError(
                    f"candidates={self.candidates} ({count} random positions) must be <= the "
                    f"{positions} positions of the padded {height}x{width} input")
            return self._random_draw(positions, count, device)
        if count > height * width:
            raise ValueError(f"candidates={self.candidates} ({count} random pixels) must be "
                             f"<= H*W={height * width} for input {height}x{width}")
        return qpos[self._random_draw(height * width, count, device)]

    def candidate_positions(self, height: int, width: int) -> Tensor | None:
        """The candidates this layer searches on an ``H × W`` input, as indices into the padded
        raster map (``[r²]``, or ``[r]`` with ``candidate_layout="count"``), or ``None`` when
        every position is a candidate. In evaluation mode with ``eval_sampling="fixed"`` this
        is the draw every forward pass uses; otherwise random candidates are a new draw."""
        check_int("height", height, minimum=1)
        check_int("width", width, minimum=1)
        qpos = ops.interior_positions(height, width, self.padding, device=self.weight.device)
        return self._candidates(height, width, qpos, self.weight.device)

    def neighbours(self, x: Tensor) -> Tensor:
        """Indices of the selected neighbours, ``[B, H·W, k]``, into the padded raster map."""
        with torch.no_grad():
            static, sel, _values, qpos, candidates = self._select(x)
            if static is not None:
                return static.unsqueeze(0).expand(x.shape[0], -1, -1)
            return ops.select_neighbours(
                sel[:, qpos], sel, self.k, self.similarity, query_positions=qpos,
                candidate_positions=candidates, self_first=self.self_first,
                sort_by_position=self.sort_by_position, with_scores=False,
                stable=self.selection == "coords", backend=self.backend)[0]

    def _select(self, x: Tensor):
        self._check_input(x)
        _batch, _, height, width = x.shape
        p = self.padding
        geo = self._geometry(height, width, x.device, x.dtype)
        qpos = geo["query_positions"]
        if self.k > self.num_positions(height, width) and self.sampling == "all":
            raise ValueError(f"k={self.k} must be <= the number of positions "
                             f"{self.num_positions(height, width)} of a {height}x{width} input "
                             f"with padding={p}")
        values = F.pad(x, (p, p, p, p)).flatten(2).transpose(1, 2)  # (B, N, C)
        static = self.selection == "coords" and self.sampling == "all"
        if static and self.weighting == "ones":
            key = ("neighbours", height, width, str(x.device),
                   ops.requested_backend(self.backend) == ops.REFERENCE)
            if key not in self._static_cache:
                coords = geo["coords"].unsqueeze(0)  # (1, N, 2)
                idx, _ = ops.select_neighbours(
                    coords[:, qpos], coords, self.k, self.similarity, query_positions=qpos,
                    self_first=self.self_first, sort_by_position=self.sort_by_position,
                    with_scores=False, stable=True, backend=self.backend)
                self._static_cache[key] = idx[0]  # (n, k), shared by the batch
            return self._static_cache[key], None, values, None, None
        sel = ops.selection_features(values, geo["coords"], self.selection, self.mix)
        return None, sel, values, qpos, self._candidates(height, width, qpos, x.device)

    def _check_input(self, x: Tensor) -> None:
        check_layer_input("input", x, 4, "[B, C, H, W]", self.weight)
        if x.shape[1] != self.in_channels:
            raise ValueError(f"input must have {self.in_channels} channels ([B, C, H, W]), "
                             f"got shape {tuple(x.shape)}")

    def _fused_unsupported(self, x: Tensor) -> str | None:
        """Why the fused 2-D kernels do not take this layer's options for ``x`` (``None``:
        they do), whatever the device."""
        return ops.kernel_refusal("conv2d_fused", **self._fused_problem(x))

    def _fused_problem(self, x: Tensor) -> dict:
        options = {name: getattr(self, name) for name in kernels_conv2d.FUSED_2D_OPTIONS}
        return {"k": self.k, "similarity": self.similarity, "options": options,
                "dtype": x.dtype}

    def backend_decision(self, x: Tensor) -> tuple[str, str]:
        """What :meth:`forward` runs for ``x``, and why (:func:`convnn.ops.backend_decision`,
        step ``"conv2d_fused"``): ``("triton", reason)`` for the fused 2-D kernels of
        :mod:`convnn.kernels_conv2d` (selection and standard aggregation read ``x`` in place,
        no padded copy; ``backend="triton"`` only: auto leaves them off until they are
        measured on a GPU), ``("torch" | "reference", reason)`` otherwise (the PyTorch path
        may still use the Triton row top-k under ``backend="triton"``)."""
        return ops.backend_decision(self.backend, x.device, step="conv2d_fused",
                                    **self._fused_problem(x))

    def _fused_forward(self, x: Tensor) -> Tensor:
        from .kernels_conv2d import gather_gemm, select_2d

        batch, _, height, width = x.shape
        p = self.padding
        if self.k > self.num_positions(height, width):
            raise ValueError(f"k={self.k} must be <= the number of positions "
                             f"{self.num_positions(height, width)} of a {height}x{width} input "
                             f"with padding={p}")
        qpos = self._geometry(height, width, x.device, x.dtype)["query_positions"]
        found = select_2d(x, self.k - 1, p, self.similarity)  # (B, HW, k-1), self excluded
        index = torch.cat((qpos.view(1, -1, 1).expand(batch, -1, 1), found), dim=-1)
        out = gather_gemm(x, index, self.weight, p)  # (B, HW, O)
        if self.bias is not None:
            out = out + self.bias.to(out.dtype)
        return out.transpose(1, 2).reshape(batch, self.out_channels, height, width)

    def forward(self, x: Tensor) -> Tensor:
        """``[B, C, H, W] -> [B, O, H, W]``; channels-last input gives channels-last output."""
        self._check_input(x)
        batch, _, height, width = x.shape
        if batch == 0:  # as nn.Conv2d: an empty batch gives an empty output
            self._select(x)  # the same checks of k and the candidates as a full batch
            return _empty_output(x, (0, self.out_channels, height, width), self)
        if self.backend_decision(x)[0] == ops.TRITON:
            return self._fused_forward(x)
        static, sel, values, qpos, candidates = self._select(x)
        if static is not None:
            out = ops.convnn(values, values, values, self.k, self.weight, self.bias,
                             aggregation=self.aggregation, pointwise=self.pointwise,
                             neighbours=static, backend=self.backend)
        elif ops.requested_backend(self.backend) == ops.REFERENCE:
            # The authors' algorithm: every position of the padded map is a query (the full
            # N x N similarity), outputs are cropped to the image afterwards.
            out = ops.convnn(
                values, sel, sel, self.k, self.weight, self.bias,
                similarity=self.similarity, weighting=self.weighting,
                aggregation=self.aggregation, pointwise=self.pointwise,
                candidate_positions=candidates, self_first=self.self_first,
                sort_by_position=self.sort_by_position, stable=self.selection == "coords",
                backend=ops.REFERENCE)[:, qpos]
        else:
            out = ops.convnn(
                values, sel[:, qpos], sel, self.k, self.weight, self.bias,
                similarity=self.similarity, weighting=self.weighting,
                aggregation=self.aggregation, pointwise=self.pointwise,
                query_positions=qpos, candidate_positions=candidates, self_first=self.self_first,
                sort_by_position=self.sort_by_position, stable=self.selection == "coords",
                backend=self.backend)
        return out.transpose(1, 2).reshape(batch, self.out_channels, height, width)


class ConvNNAttention(_HeadProjections, _SampledCandidates):
    """ConvNN attention: a drop-in for multi-head self-attention on ``[B, T, D]``.

    Learned bias-free projections ``q_proj``, ``k_proj``, ``v_proj``, ``out_proj`` (the names
    of :class:`convnn.attention.MultiHeadSelfAttention`, so weights copy across). Per head,
    each token selects its ``k`` most similar tokens (scaled dot product by default), weights
    them with a softmax over the k scores and aggregates them with one weight per channel and
    rank. The aggregation weights are shared by the heads and initialised so that the layer
    *is* top-k (KVT) attention at initialisation; with ``k = T`` it is softmax attention.
    Paper mode is ``options=PAPER_ATTENTION`` (:data:`PAPER_ATTENTION`).

    Args:
        dim: model width ``D``.
        num_heads: heads; must divide ``dim``.
        k: neighbours per token.
        sampling: ``"all"``, ``"random"`` or ``"spatial"`` candidates.
        candidates: ``r`` candidate tokens (random, or evenly spaced for ``"spatial"``);
            each token is then its own first neighbour and picks ``k - 1`` others.
        similarity: ``"dot"`` (scaled by ``1/√d``), ``"cosine"`` or ``"euclidean"`` (default:
            dot, or Euclidean for coordinate selection).
        weighting: ρ, ``"softmax"``, ``"ones"`` or ``"similarity"``.
        aggregation: ``"depthwise"``, ``"standard"`` or ``"separable"``.
        selection: ``"features"`` (queries and keys), ``"coords"`` (token index only: each
            token takes its k nearest tokens, a 1-D convolution window), or ``"mixed"`` (the
            paper's coordinate encoding: the token index in ``[-1, 1]`` times
            ``options.coord_scale`` is appended to queries and keys).
        attn_dropout: attention dropout probability during training (on what
            ``options.attn_dropout_on`` says).
        bias: bias in the four projections.
        options: the rarely changed options, one :class:`ConvNNAttentionOptions` value
            (default: ours; :data:`PAPER_ATTENTION`: the authors').
        backend: see :class:`ConvNN2d`.

    Example:
        >>> layer = ConvNNAttention(192, 3, options=PAPER_ATTENTION)  # the paper's, k = 9
        >>> layer(torch.randn(2, 197, 192)).shape
        torch.Size([2, 197, 192])
    """

    coord_scale, self_first, self_score = (_option("coord_scale"), _option("self_first"),
                                           _option("self_score"))
    attn_dropout_on, spatial_rounding = _option("attn_dropout_on"), _option("spatial_rounding")
    eval_sampling, seed = _option("eval_sampling"), _option("seed")

    def __init__(
        self,
        dim: int,
        num_heads: int = 1,
        k: int = 9,
        *,
        sampling: str = "all",
        candidates: int | None = None,
        similarity: str | None = None,
        weighting: str = "softmax",
        aggregation: str = "depthwise",
        selection: str = "features",
        attn_dropout: float = 0.0,
        bias: bool = False,
        options: ConvNNAttentionOptions | None = None,
        backend: str | None = None,
        device=None,
        dtype=None,
    ) -> None:
        o = _check_options(options, ConvNNAttentionOptions, "PAPER_ATTENTION")
        super().__init__()
        head_dim = _check_heads(dim, num_heads)
        check_k(k)
        check_choice("selection", selection, ops.SELECTIONS)
        similarity = _resolve_similarity(selection, similarity, "dot")
        check_choice("weighting", weighting, ops.WEIGHTINGS)
        check_choice("aggregation", aggregation, ops.AGGREGATIONS)
        ops.requested_backend(backend)  # checks the name
        check_fraction("attn_dropout", attn_dropout)
        check_layer_options(bools={"bias": bias})  # the options checked themselves
        _check_sampling(sampling, candidates, o.eval_sampling)
        if sampling != "all" and candidates is not None and k > candidates:
            raise ValueError(f"k={k} must be <= candidates={candidates}")
        self.k = k
        self.sampling, self.candidates = sampling, candidates
        self.similarity, self.weighting, self.aggregation = similarity, weighting, aggregation
        self.selection, self.attn_dropout, self.backend = selection, attn_dropout, backend
        # the options kept as one value; sampled candidates always put each token first
        self.options = dataclasses.replace(
            o, coord_scale=float(o.coord_scale),
            self_first=True if sampling != "all" else bool(o.self_first))
        factory = {"device": device, "dtype": dtype}
        self._init_projections(dim, num_heads, head_dim, bias, device, dtype)
        d = self.head_dim
        if aggregation == "standard":
            # W_j = identity for every rank: top-k attention at initialisation.
            eye = torch.eye(d, **factory).unsqueeze(-1).expand(d, d, k).clone()
            self.weight = nn.Parameter(eye)
        else:
            self.weight = nn.Parameter(torch.ones(d, 1, k, **factory))
        if aggregation == "separable":
            self.pointwise = nn.Parameter(torch.eye(d, **factory).unsqueeze(-1).clone())
        else:
            self.register_parameter("pointwise", None)

    @classmethod
    def from_config(cls, dim: int, num_heads: int = 1, **config) -> ConvNNAttention:
        """Build the layer from a flat dict of options, as model configs store them
        (``layer_options``): the constructor's keywords and the fields of
        :class:`ConvNNAttentionOptions` side by side."""
        return cls(dim, num_heads, **_split_config(ConvNNAttentionOptions, config,
                                                   cls.__name__))

    def extra_repr(self) -> str:
        s = (f"dim={self.dim}, num_heads={self.num_heads}, k={self.k}, "
             f"sampling={self.sampling!r}")
        if self.candidates is not None:
            s += f", candidates={self.candidates}, eval_sampling={self.eval_sampling!r}"
        s += (f", similarity={self.similarity!r}, weighting={self.weighting!r}, "
              f"aggregation={self.aggregation!r}, selection={self.selection!r}, "
              f"self_first={self.self_first}")
        if self.self_score != "similarity":
            s += f", self_score={self.self_score!r}"
        if self.attn_dropout:
            s += f", attn_dropout={self.attn_dropout}, attn_dropout_on={self.attn_dropout_on!r}"
        if self.sampling == "spatial" and self.spatial_rounding != "round":
            s += f", spatial_rounding={self.spatial_rounding!r}"
        if self.backend is not None:
            s += f", backend={self.backend!r}"
        return _wrap_repr(s)

    def _split(self, x: Tensor) -> Tensor:
        batch, tokens, _ = x.shape
        x = self._split_heads(x)  # (B, h, T, d)
        return x.reshape(batch * self.num_heads, tokens, self.head_dim)  # (B·h, T, d)

    def _candidates(self, tokens: int, device) -> Tensor | None:
        if self.sampling == "all":
            return None
        if self.candidates > tokens:
            raise ValueError(f"candidates={self.candidates} must be <= the number of tokens "
                             f"T={tokens}")
        if self.sampling == "spatial":
            return ops.spatial_candidates_1d(tokens, self.candidates,
                                             rounding=self.spatial_rounding, device=device)
        return self._random_draw(tokens, self.candidates, device)

    def _selection_features(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Queries and keys per head, ``[B·h, T, d(+1)]``, float32. They decide the ranking,
        which bf16 rounding changes, so under bf16 autocast on a card with bf16 tensor cores
        they are projected under the precision contract (:func:`convnn.ops.contract_linear`:
        three bf16 products in one GEMM), and in float32 elsewhere."""
        contract = ops.contract_projection_applies(x.device)
        with ops.ranking_precision(x.device):
            work = ops._upcast(x)

            def project(linear: nn.Linear) -> Tensor:
                bias = None if linear.bias is None else linear.bias.to(work.dtype)
                return self._split(F.linear(work, linear.weight.to(work.dtype), bias))

            if contract:  # q and k from one split of x and one GEMM
                q, key = self._contract_projection(x)
            else:
                q, key = project(self.q_proj), project(self.k_proj)
            if self.selection != "features":
                tokens = x.shape[1]
                pos = ops.sequence_coordinates(tokens, device=x.device, dtype=q.dtype)
                pos = (self.coord_scale * pos).unsqueeze(0).expand(q.shape[0], -1, -1)  # (B·h, T, 1)
                if self.selection == "coords":
                    return pos, pos
                q, key = torch.cat((q, pos), dim=-1), torch.cat((key, pos), dim=-1)
        return q, key

    def _contract_projection(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """q and k per head under the precision contract, from one GEMM over ``[W_q; W_k]``:
        the Triton kernel (:func:`convnn.kernels_projection.contract_projection`, opt-in:
        ``backend="triton"``) or :func:`convnn.ops.contract_linear`."""
        weight, bias = self._stacked_projections(self.q_proj, self.k_proj)
        if self.projection_backend(x)[0] == ops.TRITON:
            return kernels_projection.contract_projection(x, weight, bias, self.num_heads)
        both = ops.contract_linear(x, weight, bias)
        return self._split(both[..., :self.inner_dim]), self._split(both[..., self.inner_dim:])

    def _features(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Queries, keys and values per head, ``[B·h, T, d]``. Where the contract projection
        applies and the projection kernel runs (``backend="triton"``), all three come from
        its one kernel (q and k under the contract, v as bf16 autocast makes it); elsewhere
        :meth:`_selection_features` and ``v_proj``."""
        if (ops.contract_projection_applies(x.device) and self.selection == "features"
                and self.projection_backend(x)[0] == ops.TRITON):
            weight, bias = self._stacked_projections(self.q_proj, self.k_proj, self.v_proj)
            return kernels_projection.contract_projection(x, weight, bias, self.num_heads,
                                                          values=True)
        q, key = self._selection_features(x)
        return q, key, self._split(self.v_proj(x))

    def projection_backend(self, x: Tensor) -> tuple[str, str]:
        """What projects the selection features of ``x`` under the precision contract (where
        :func:`convnn.ops.contract_projection_applies`), with the reason: ``("triton", ...)``
        for :func:`convnn.kernels_projection.contract_projection` (opt-in: only under
        ``backend="triton"``), else ``("torch" | "reference", why)`` for
        :func:`convnn.ops.contract_linear`."""
        weights = (self.q_proj.weight.dtype,) + (
            () if self.q_proj.bias is None else (self.q_proj.bias.dtype,))
        return ops.backend_decision(self.backend, x.device, step="contract_projection",
                                    width=self.inner_dim, heads=self.num_heads, dtype=x.dtype,
                                    weight_dtypes=weights)

    def _check_input(self, x: Tensor) -> None:
        check_layer_input("input", x, 3, "[B, T, D]", self.weight)
        if x.shape[-1] != self.dim:
            raise ValueError(f"input must have D={self.dim} ([B, T, D]), got shape "
                             f"{tuple(x.shape)}")
        if self.sampling == "all" and self.k > x.shape[1]:
            raise ValueError(f"k={self.k} must be <= the number of tokens T={x.shape[1]}")

    def neighbours(self, x: Tensor) -> Tensor:
        """Indices of the tokens each token selects, ``[B, h, T, k]``."""
        self._check_input(x)
        batch, tokens, _ = x.shape
        with torch.no_grad():
            q, key = self._selection_features(x)
            idx, _ = ops.select_neighbours(
                q, key, self.k, self.similarity,
                candidate_positions=self._candidates(tokens, x.device),
                self_first=self.self_first, scale=1.0 / math.sqrt(self.head_dim),
                with_scores=False, stable=self.selection == "coords", backend=self.backend)
        return idx.view(batch, self.num_heads, tokens, self.k)

    def forward(self, x: Tensor) -> Tensor:
        """``[B, T, D] -> [B, T, D]``."""
        self._check_input(x)
        batch, tokens, _ = x.shape
        if batch == 0:  # as attention: an empty batch gives an empty output
            return _empty_output(x, (0, tokens, self.dim), self)
        q, key, v = self._features(x)
        dropout = self.attn_dropout if self.training else 0.0
        weight_dropout = dropout if self.attn_dropout_on == "weights" else 0.0
        candidates = self._candidates(tokens, x.device)
        if self.backend_decision(x, (q.dtype, key.dtype, v.dtype), weight_dropout)[0] == ops.TRITON:
            drop = None
            if weight_dropout > 0.0:  # the mask F.dropout(ρ) of the step-by-step path draws
                drop = F.dropout(q.new_ones(q.shape[0], tokens, self.k, dtype=torch.float32),
                                 weight_dropout, training=True)
            # the whole core in one Triton kernel (opt-in; see ops.KERNEL_STEPS)
            out = kernels_attention.fused_attention(
                q, key, v, self._rank_major_weight(), self.k, 1.0 / math.sqrt(self.head_dim),
                self_first=self.self_first,
                self_logit=ops.PAPER_SELF_LOGIT if self.self_score == "constant" else None,
                candidate_positions=candidates, weight_dropout=drop)
        else:
            out = self._core(q, key, v, candidates, weight_dropout)
        out = out.view(batch, self.num_heads, tokens, self.head_dim)  # (B, h, T, d)
        # contiguous: the dropout mask follows memory order, which differs between the paths
        out = self._combine_heads(out).contiguous()  # (B, T, D)
        if self.attn_dropout_on == "output":
            out = F.dropout(out, dropout, training=dropout > 0.0)
        return self.out_proj(out)

    def _rank_major_weight(self) -> Tensor:
        """The depthwise weights as the fused core reads them, ``[k, d]`` contiguous: one
        copy a step, which the kernel's forward and backward share."""
        return self.weight[:, 0, :].t().contiguous()

    def backend_decision(self, x: Tensor, dtypes: tuple | None = None,
                      weight_dropout: float | None = None) -> tuple[str, str]:
        """What runs the per-head core on input ``x``, with the reason: ``("triton", ...)``
        for the fused Triton core (:func:`convnn.kernels_attention.fused_attention`, opt-in: only under
        ``backend="triton"``, for softmax, dot, depthwise, feature selection, float32 or
        16-bit tensors), else ``("torch" | "reference", why)`` for the step-by-step path.
        ``dtypes``: of queries, keys and values (default: what forward would make of ``x``
        under the current autocast state); ``weight_dropout``: default from the layer's
        mode."""
        if dtypes is None:
            value = self.v_proj.weight.dtype
            if torch.is_autocast_enabled(x.device.type):
                value = torch.get_autocast_dtype(x.device.type)
            select = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
            dtypes = (select, select, value)
        if weight_dropout is None:
            on_weights = self.training and self.attn_dropout_on == "weights"
            weight_dropout = self.attn_dropout if on_weights else 0.0
        options = {"sampling": self.sampling, "selection": self.selection,
                   "weighting": self.weighting, "attn_dropout": weight_dropout,
                   "dtypes": (*dtypes, self.weight.dtype)}
        return ops.backend_decision(
            self.backend, x.device, step="fused_attention", k=self.k, width=x.shape[1],
            aggregation=self.aggregation, similarity=self.similarity, options=options)

    def _core(self, q: Tensor, key: Tensor, v: Tensor, candidates: Tensor | None,
              weight_dropout: float) -> Tensor:
        """The step-by-step core: :func:`convnn.ops.convnn`, ``[B·h, T, d]``."""
        return ops.convnn(
            v, q, key, self.k, self.weight, None, similarity=self.similarity,
            weighting=self.weighting, aggregation=self.aggregation, pointwise=self.pointwise,
            candidate_positions=candidates, self_first=self.self_first,
            scale=1.0 / math.sqrt(self.head_dim), stable=self.selection == "coords",
            attn_dropout=weight_dropout, self_score=self.self_score, backend=self.backend)


class BranchingConv2d(nn.Module):
    """The paper's VGG hybrid: a Conv2d branch and a ConvNN branch, concatenated, 1×1 mix.

    The ConvNN branch produces ``⌊ratio · out_channels⌋`` channels and the Conv2d branch the
    rest; both see all input channels. ``ratio = 0`` is the convolution baseline (conv + 1×1),
    ``ratio = 1`` pure ConvNN (+ 1×1).

    Args:
        in_channels, out_channels: as ``nn.Conv2d``.
        ratio: λ, the share of output channels from the ConvNN branch.
        kernel_size: kernel of the Conv2d branch (``padding="same"``).
        conv_bias: give the Conv2d branch a bias (the ConvNN branch's is ``bias``, the 1×1
            mix always has one).
        **convnn_kwargs: the ConvNN branch's options, flat (:meth:`ConvNN2d.from_config`:
            ``k``, ``similarity``, ``sampling``, ``seed``...).
    """

    def __init__(self, in_channels: int, out_channels: int, ratio: float = 0.5,
                 kernel_size: int = 3, *, conv_bias: bool = True, device=None, dtype=None,
                 **convnn_kwargs) -> None:
        super().__init__()
        check_int("in_channels", in_channels, minimum=1)
        check_int("out_channels", out_channels, minimum=1)
        self.ratio = check_fraction("ratio", ratio)
        check_int("kernel_size", kernel_size, minimum=1)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.convnn_channels = math.floor(ratio * out_channels)
        self.conv_channels = out_channels - self.convnn_channels
        factory = {"device": device, "dtype": dtype}
        check_bool("conv_bias", conv_bias)
        self.conv = (nn.Conv2d(in_channels, self.conv_channels, kernel_size, padding="same",
                               bias=conv_bias, **factory) if self.conv_channels else None)
        self.convnn = (ConvNN2d.from_config(in_channels, self.convnn_channels,
                                            **convnn_kwargs, **factory)
                       if self.convnn_channels else None)
        if not self.convnn_channels:  # still validate the ConvNN options
            ConvNN2d.from_config(in_channels, 1, **convnn_kwargs)
        self.mix = nn.Conv2d(out_channels, out_channels, 1, **factory)

    def extra_repr(self) -> str:
        return _wrap_repr(f"{self.in_channels}, {self.out_channels}, ratio={self.ratio}, "
                          f"conv_channels={self.conv_channels}, "
                          f"convnn_channels={self.convnn_channels}")

    def forward(self, x: Tensor) -> Tensor:
        """``[B, C, H, W] -> [B, O, H, W]``."""
        check_layer_input("input", x, 4, "[B, C, H, W]", self.mix.weight)
        if x.shape[1] != self.in_channels:
            raise ValueError(f"input must have {self.in_channels} channels ([B, C, H, W]), "
                             f"got shape {tuple(x.shape)}")
        parts = [branch(x) for branch in (self.conv, self.convnn) if branch is not None]
        return self.mix(torch.cat(parts, dim=1) if len(parts) > 1 else parts[0])


class HybridTokenMixer(nn.Module):
    """ConvNN attention on some channels, attention or a 1-D conv on the rest, linear mix.

    The input's first ``⌊ratio · D⌋`` channels go to :class:`ConvNNAttention`, the others to
    the partner (``"attention"``: multi-head self-attention; ``"conv1d"``: a 1-D convolution
    over tokens, grouped per head); outputs are concatenated and mixed by a linear layer.

    Args:
        dim: model width ``D``.
        num_heads: heads of both branches; must divide both branch widths.
        ratio: share of channels for ConvNN attention (0 < ratio < 1).
        partner: ``"attention"`` or ``"conv1d"``.
        kernel_size: kernel of the ``"conv1d"`` partner.
        attn_dropout: attention dropout of both branches.
        **convnn_kwargs: the ConvNN branch's options, flat
            (:meth:`ConvNNAttention.from_config`).
    """

    PARTNERS = ("attention", "conv1d")

    def __init__(self, dim: int, num_heads: int = 1, ratio: float = 0.5,
                 partner: str = "attention", kernel_size: int = 3, attn_dropout: float = 0.0,
                 *, device=None, dtype=None, **convnn_kwargs) -> None:
        super().__init__()
        check_int("dim", dim, minimum=2)
        check_choice("partner", partner, self.PARTNERS)
        self.ratio = check_fraction("ratio", ratio)
        self.convnn_dim = math.floor(ratio * dim)
        self.partner_dim = dim - self.convnn_dim
        if self.convnn_dim == 0 or self.partner_dim == 0:
            raise ValueError(f"ratio={ratio} leaves an empty branch for dim={dim}; "
                             "use ConvNNAttention or the partner alone")
        check_divisible("ConvNN branch width", self.convnn_dim, "num_heads", num_heads)
        check_divisible("partner branch width", self.partner_dim, "num_heads", num_heads)
        factory = {"device": device, "dtype": dtype}
        self.dim, self.partner_name = dim, partner
        self.convnn = ConvNNAttention.from_config(self.convnn_dim, num_heads,
                                                  attn_dropout=attn_dropout, **convnn_kwargs,
                                                  **factory)
        if partner == "attention":
            self.partner = MultiHeadSelfAttention(self.partner_dim, num_heads,
                                                  attn_dropout=attn_dropout, **factory)
        else:
            self.partner = TokenConv1d(self.partner_dim, num_heads, kernel_size=kernel_size,
                                       **factory)
        self.mix = nn.Linear(dim, dim, **factory)

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, ratio={self.ratio}, partner={self.partner_name!r}, "
                f"convnn_dim={self.convnn_dim}, partner_dim={self.partner_dim}")

    def forward(self, x: Tensor) -> Tensor:
        """``[B, T, D] -> [B, T, D]``."""
        check_layer_input("input", x, 3, "[B, T, D]", self.mix.weight)
        if x.shape[-1] != self.dim:
            raise ValueError(f"input must have D={self.dim} ([B, T, D]), got shape "
                             f"{tuple(x.shape)}")
        a = self.convnn(x[..., :self.convnn_dim])
        b = self.partner(x[..., self.convnn_dim:])
        return self.mix(torch.cat((a, b), dim=-1))


def _config_keys(cls: type, options_type: type, *given: str) -> frozenset[str]:
    """The keys of a flat config of ``cls``: its keywords and its option fields."""
    keywords = set(inspect.signature(cls.__init__).parameters) - {"self", "options", *given}
    return frozenset(keywords | {f.name for f in dataclasses.fields(options_type)})


CONVNN2D_CONFIG_KEYS = _config_keys(ConvNN2d, ConvNN2dOptions, "in_channels", "out_channels",
                                    "device", "dtype")
"""The keys of a flat :class:`ConvNN2d` config (:meth:`ConvNN2d.from_config`)."""
CONVNN_ATTENTION_CONFIG_KEYS = _config_keys(ConvNNAttention, ConvNNAttentionOptions, "dim",
                                            "num_heads", "device", "dtype")
"""The keys of a flat :class:`ConvNNAttention` config (:meth:`ConvNNAttention.from_config`)."""

_HYBRID_OPTIONS = CONVNN_ATTENTION_CONFIG_KEYS | {"ratio", "kernel_size"}

register_mixer("convnn_attention", ConvNNAttention, CONVNN_ATTENTION_CONFIG_KEYS,
               build=ConvNNAttention.from_config, candidate_sets=True)
register_mixer("convnn_attention_hybrid", HybridTokenMixer, _HYBRID_OPTIONS,
               fixed={"partner": "attention"}, candidate_sets=True)
register_mixer("convnn_conv1d_hybrid", HybridTokenMixer, _HYBRID_OPTIONS,
               fixed={"partner": "conv1d"}, candidate_sets=True)


__all__ = [
    "CANDIDATE_LAYOUTS",
    "CONVNN2D_CONFIG_KEYS",
    "CONVNN_ATTENTION_CONFIG_KEYS",
    "DROPOUT_TARGETS",
    "EVAL_SAMPLINGS",
    "PAPER_ATTENTION",
    "PAPER_CONVNN2D",
    "RANDOM_REGIONS",
    "BranchingConv2d",
    "ConvNN2d",
    "ConvNN2dOptions",
    "ConvNNAttention",
    "ConvNNAttentionOptions",
    "HybridTokenMixer",
    "candidate_count",
]
