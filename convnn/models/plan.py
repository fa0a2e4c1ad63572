"""What the CNNs (:mod:`~convnn.models.vgg`, :mod:`~convnn.models.resnet`) share: the branch
ratio rule, the width multiplier, the input-size check and the per-layer candidate plan.

A model knows every layer's map size when it is built, so it decides then which candidate set
each ConvNN layer uses: a layer whose map cannot hold the sampled set uses all candidates
instead (:func:`candidates_fallback`, the one rule, which the ViT uses too), and the model records the decision in its ``layer_plan``.
The layers themselves never clamp.
"""

from __future__ import annotations

import math

from torch import Tensor

from .._checks import check_fraction, check_known
from ..layers import candidate_count

DEFAULT_BRANCH_RATIO = 0.5


def candidates_fallback(sampling: str, candidates: int | None, *, tokens: int | None = None,
                        height: int | None = None, width: int | None = None,
                        layout: str = "square", random_region: str = "image",
                        padding: int = 1) -> tuple[str, int | None, str | None]:
    """The fallback rule: the candidate set a ConvNN layer uses on its map or sequence.

    Returns ``(sampling, candidates, reason)``: the requested set when it fits, else
    ``("all", None, reason)``.

    On a sequence of ``tokens`` (:class:`~convnn.layers.ConvNNAttention`), both ``"random"``
    and ``"spatial"`` need ``r <= T``.

    On an ``H × W`` map (:class:`~convnn.layers.ConvNN2d`), ``"random"`` needs ``r² <= H·W``
    pixels (with ``random_region="padded"``, the authors' rule: ``r² <= (H+2p)(W+2p)``
    positions of the padded map), ``"spatial"`` needs its ``r × r`` grid to fit,
    ``r <= min(H, W)``. With ``layout="count"`` (see :class:`~convnn.layers.ConvNN2d`'s
    ``candidate_layout``) the set has ``r`` positions: ``r`` random pixels or a ``√r × √r``
    grid.
    """
    if sampling == "all":
        return sampling, candidates, None
    if tokens is not None:
        if isinstance(candidates, int) and candidates > tokens:
            return "all", None, f"{sampling}: candidates={candidates} > T={tokens}"
        return sampling, candidates, None
    if height is None or width is None:
        raise ValueError("candidates_fallback needs tokens, or height and width")
    total = candidate_count(candidates, layout)
    side = math.isqrt(total)
    shown = "r" if layout == "count" else "r²"
    if sampling == "random" and random_region == "padded":
        positions = (height + 2 * padding) * (width + 2 * padding)
        if total > positions:
            return "all", None, f"random: {shown}={total} > (H+2p)(W+2p)={positions}"
    elif sampling == "random" and total > height * width:
        return "all", None, f"random: {shown}={total} > H·W={height * width}"
    if sampling == "spatial" and side > min(height, width):
        grid = f"r={side}" if layout == "square" else f"grid side √r={side}"
        return "all", None, f"spatial: {grid} > min(H, W)={min(height, width)}"
    return sampling, candidates, None


def sampling_for_map(sampling: str, candidates: int | None, height: int, width: int,
                     layout: str = "square", random_region: str = "image",
                     padding: int = 1) -> tuple[str, int | None, str | None]:
    """:func:`candidates_fallback` on an ``H × W`` map."""
    return candidates_fallback(sampling, candidates, height=height, width=width, layout=layout,
                               random_region=random_region, padding=padding)


def plan_convnn_layer(options: dict, size: int, index: int, base_seed: int,
                      image_size: int) -> tuple[dict, dict]:
    """The ConvNN options of layer ``index`` on a ``size × size`` map, and its plan entry.

    The layer's fixed evaluation seed is ``base_seed + index``; sampled candidates that do not
    fit the map fall back to all candidates.

    Returns:
        ``(layer_options, plan)``: the options to build the layer with, and the dict of
        ``sampling`` / ``candidates`` used, ``requested_sampling`` / ``requested_candidates``,
        ``fallback`` (the reason, or ``None``) and ``seed``.

    Raises:
        ValueError: ``k`` larger than the positions of the padded map.
    """
    requested = (options.get("sampling", "all"), options.get("candidates"))
    layer_options = dict(options, seed=base_seed + index)
    sampling, candidates, reason = candidates_fallback(
        *requested, height=size, width=size,
        layout=options.get("candidate_layout", "square"),
        random_region=options.get("random_region", "image"), padding=options.get("padding", 1))
    if reason is not None:
        layer_options.update(sampling="all", candidates=None)
        layer_options.pop("candidate_layout", None)
    k, padding = layer_options.get("k", 9), layer_options.get("padding", 1)
    positions = (size + 2 * padding) ** 2
    if sampling == "all" and isinstance(k, int) and k > positions:
        raise ValueError(f"k={k} must be <= the {positions} positions of layer {index}'s "
                         f"{size}x{size} map with padding={padding} (image_size={image_size})")
    return layer_options, {
        "sampling": sampling, "candidates": candidates, "requested_sampling": requested[0],
        "requested_candidates": requested[1], "fallback": reason, "seed": base_seed + index}


def resolve_branch_ratio(layer: str, ratio: float | None) -> float:
    """λ of a ``"conv2d"`` (0), ``"convnn"`` (1) or ``"branching"`` (default 0.5, in (0, 1))
    layer; a ratio that contradicts the layer raises ``ValueError``."""
    fixed = {"conv2d": 0.0, "convnn": 1.0}
    if layer in fixed:
        if ratio is not None and float(ratio) != fixed[layer]:
            raise ValueError(f"ratio={ratio!r} conflicts with layer={layer!r} (which is "
                             f"ratio {fixed[layer]}); use layer='branching' for 0 < ratio < 1")
        return fixed[layer]
    ratio = DEFAULT_BRANCH_RATIO if ratio is None else check_fraction("ratio", ratio)
    if not 0.0 < ratio < 1.0:
        raise ValueError(f"ratio must be in (0, 1) for layer='branching', got {ratio}; "
                         "use layer='conv2d' (0) or layer='convnn' (1)")
    return ratio


def check_layer_options(options, allowed) -> dict:
    """A copy of the ``layer_options`` dict; unknown keys raise ``ValueError``."""
    if not isinstance(options, dict):
        raise ValueError(f"layer_options must be a dict, got {type(options).__name__}")
    check_known("option(s) in layer_options", options, sorted(allowed))
    return dict(options)


def check_width_multiplier(value) -> float:
    """A channel multiplier: a number > 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"width_multiplier must be a number > 0, got {value!r}")
    return float(value)


def check_input_size(x: Tensor, image_size: int) -> None:
    """``x`` must be ``[B, C, image_size, image_size]``, the size the layer plan was made for."""
    if x.dim() != 4 or x.shape[-2:] != (image_size, image_size):
        raise ValueError(f"input must be [B, C, {image_size}, {image_size}] (the image_size the "
                         f"layer plan was made for), got shape {tuple(x.shape)}")


__all__ = ["DEFAULT_BRANCH_RATIO", "candidates_fallback", "check_input_size", "check_layer_options",
           "check_width_multiplier",
           "plan_convnn_layer", "resolve_branch_ratio", "sampling_for_map"]
