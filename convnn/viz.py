"""Figures and widgets for the book: which neighbours does a layer select, with what weights?

Everything here draws; nothing here computes what the layers compute. Neighbour indices come
from the layers themselves (:meth:`convnn.layers.ConvNN2d.neighbours`) or from
:mod:`convnn.ops`, so a figure shows what the package really does.

- :func:`sample_image`: a real image that exists offline (a CIFAR-10 test image when the data
  is available, else a photograph shipped with matplotlib), with a caption naming its source.
- :func:`make_layer`, :func:`selected_pixels`, :func:`candidate_pixels`: a small
  :class:`~convnn.layers.ConvNN2d` for pictures, and the pixels it selects and searches.
- :func:`neighbour_map`, :func:`neighbour_panels`, :func:`neighbour_grid`: the selected
  neighbours of one pixel on an image (one panel, several, or a grid over ``k`` and α).
  α is the feature/coordinate mix of ``selection="mixed"``; λ is kept for the branching ratio.
- :func:`explorer`: an ipywidgets explorer with sliders for ``k``, α, the candidate sampling and
  the inspected pixel, with a static twin for pages without a kernel.
- :func:`explorer_states`, :func:`k_sweep_states`, :func:`live_html`, :func:`k_sweep`: live
  figures for a static page: states precomputed over a grid of controls, drawn by a short
  script in the page (no kernel, no network).
- :func:`knn_points_figure`, :func:`scatter_panels`: k-NN on 2-D points (chapter 2).
- :func:`window_distances_figure`, :func:`image_panels`: the convolution limit (chapter 3).
- :func:`patchify`, :func:`token_panels`: tokens of an image and their weights (chapter 4).

Figures are :class:`BookFigure` objects (a :class:`matplotlib.figure.Figure` that renders itself
as PNG in Jupyter) made without pyplot, so a notebook shows each one exactly once, as the value of
its cell, with any matplotlib backend, and nothing piles up in pyplot's registry.
"""

from __future__ import annotations

import functools
import io
import math
import os
import textwrap
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np
import torch
from matplotlib import patheffects
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from torch import Tensor

from . import ops
from ._checks import check_bool, check_choice, check_int
from .layers import ConvNN2d, ConvNN2dOptions

__all__ = [
    "EXPLORER_KS",
    "EXPLORER_MIXES",
    "EXPLORER_SIDES",
    "NEIGHBOUR_COLOUR",
    "QUERY_COLOUR",
    "BookFigure",
    "LiveFigure",
    "SampleImage",
    "blocked_topk_drawing",
    "branching_drawing",
    "candidate_pixels",
    "candidates_drawing",
    "explorer",
    "explorer_states",
    "gather_conv1d_drawing",
    "image_panels",
    "k_sweep",
    "k_sweep_states",
    "knn_points_figure",
    "live_html",
    "make_layer",
    "neighbour_grid",
    "neighbour_map",
    "neighbour_panels",
    "patchify",
    "sample_image",
    "scatter_panels",
    "selected_pixels",
    "standardise",
    "token_panels",
    "vit_block_drawing",
    "window_distances_figure",
]

#: Outline colour of selected neighbours (the intro figure's orange).
NEIGHBOUR_COLOUR = "#ff7f0e"
#: Colour of the query position's star.
QUERY_COLOUR = "#d62728"
_DIM = 0.68  # how much unselected positions are darkened
_MAX_OUTLINES = 64  # outline each selected pixel up to this many; above, the shading says it
_IMAGE_SOURCES = ("auto", "cifar10", "matplotlib")
_PAGE_WIDTH = 8.2  # inches: wider figures are scaled down on a book page (small text)
#: The size of a figure's footer (its source line), in points: that of the panel titles, so
#: that at any display width (a figure is scaled as a whole) it reads as well as they do.
FOOTER_PT = 9.0


def _footer(fig: Figure, text: str) -> None:
    """Write ``text`` under ``fig`` at :data:`FOOTER_PT`, wrapped to the figure's width (a
    footer wider than its figure would widen the image, and shrink all its text on a page)."""
    per_line = max(24, int(fig.get_figwidth() * 72 / (0.6 * FOOTER_PT)))  # ~0.6 em a glyph
    fig.supxlabel(textwrap.fill(text, per_line), fontsize=FOOTER_PT)


class BookFigure(Figure):
    """A matplotlib figure that Jupyter displays as a PNG without pyplot (``_repr_png_``)."""

    def _repr_png_(self) -> bytes:
        return _figure_png(self, dpi=self.dpi)


def _figure_png(fig: Figure, dpi: float = 80) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight", facecolor="white")
    return buf.getvalue()


# --------------------------------------------------------------------------- sample images
class SampleImage(NamedTuple):
    """A real image for the figures.

    Attributes:
        image: ``[3, H, W]`` float32 in ``[0, 1]``.
        source: a caption naming where it came from, e.g. ``"CIFAR-10 test image 7000
            (horse)"``.
        kind: ``"cifar10"`` or ``"matplotlib"``.
    """

    image: Tensor
    source: str
    kind: str


@functools.lru_cache(maxsize=2)
def _cifar10_test(data_dir: str | None, env: tuple, download: bool = False
                  ) -> tuple[Tensor, Tensor, tuple]:
    """The CIFAR-10 test split (uint8 ``[N, 32, 32, 3]``, labels, classes), read once.

    ``env`` (the data and cache environment variables) is only part of the cache key.
    """
    from .data import load_dataset

    ds = load_dataset("cifar10", data_dir=data_dir, download=download, progress=False)
    return ds.test_images, ds.test_labels, ds.classes


def downloads_allowed() -> bool:
    """False when ``CONVNN_OFFLINE=1`` (tests and offline machines): never try the network."""
    return os.environ.get("CONVNN_OFFLINE", "") not in ("1", "true", "yes")


def _resize(image: Tensor, size: int) -> Tensor:
    """``[3, h, w]`` in [0, 1] -> ``[3, size, size]`` (antialiased bilinear)."""
    if image.shape[-2:] == (size, size):
        return image
    out = torch.nn.functional.interpolate(image[None], size=(size, size), mode="bilinear",
                                          antialias=True, align_corners=False)[0]
    return out.clamp(0.0, 1.0)


def _matplotlib_image(size: int) -> SampleImage:
    from matplotlib import cbook
    from PIL import Image

    with cbook.get_sample_data("grace_hopper.jpg") as f:
        img = Image.open(f).convert("RGB")
        w, h = img.size
        side = min(w, h)
        left, top = (w - side) // 2, (h - side) // 2
        img = img.crop((left, top, left + side, top + side)).resize(
            (size, size), Image.Resampling.LANCZOS)
        array = np.asarray(img, dtype=np.float32) / 255.0
    image = torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()  # (3, H, W)
    return SampleImage(image, f"grace_hopper.jpg (matplotlib sample data), {size}×{size}",
                       "matplotlib")


def sample_image(
    index: int = 0, size: int = 32, *, label: str | None = "horse", source: str = "auto",
    data_dir: str | os.PathLike | None = None, download: bool | None = None,
) -> SampleImage:
    """A real image for the figures, and where it came from.

    With ``source="auto"`` the image comes from CIFAR-10's test split: from a local copy
    (``data_dir``, ``$CONVNN_DATA_DIR`` or the data cache, see
    :func:`convnn.data.load_dataset`), else downloaded by torchvision into the data cache
    (about 170 MB, once). Only when neither works (offline) does it fall back to matplotlib's
    sample photograph ``grace_hopper.jpg``, and the caption says so. Text about the image
    should therefore not describe it beyond what the caption states.

    Args:
        index: which image: the ``index``-th test image of class ``label`` (0 = the first),
            or the ``index``-th of the whole split when ``label`` is None.
        size: side of the returned square image (CIFAR-10 is resized when not 32).
        label: a CIFAR-10 class name (``"horse"``, ``"cat"``...) or None.
        source: ``"auto"``, ``"cifar10"`` (raise if unavailable) or ``"matplotlib"``.
        data_dir: where to look for CIFAR-10 first.
        download: allow the torchvision download; default: yes, unless ``CONVNN_OFFLINE=1``.

    Returns:
        A :class:`SampleImage` ``(image [3, size, size] in [0, 1], source caption, kind)``.

    Example:
        >>> img = sample_image(size=32)
        >>> img.image.shape
        torch.Size([3, 32, 32])
    """
    from .data import CIFAR10_CLASSES, DatasetNotFoundError

    check_choice("source", source, _IMAGE_SOURCES)
    check_int("size", size, minimum=2)
    check_int("index", index, minimum=0)
    if label is not None:
        check_choice("label", label, CIFAR10_CLASSES)
    download = downloads_allowed() if download is None else download
    check_bool("download", download, allow_none=True)
    if source == "matplotlib":
        return _matplotlib_image(size)
    env = tuple(os.environ.get(v) for v in ("CONVNN_DATA_DIR", "CONVNN_CACHE_DIR"))
    folder = None if data_dir is None else str(data_dir)
    try:
        try:
            images, labels, _ = _cifar10_test(folder, env)
        except DatasetNotFoundError:
            if not download:
                raise
            images, labels, _ = _cifar10_test(folder, env, True)
    except DatasetNotFoundError:
        if source == "cifar10":
            raise
        fallback = _matplotlib_image(size)
        why = "not found locally" + (", and the download failed (offline?)" if download
                                     else ", and downloads are off")
        return fallback._replace(source=f"{fallback.source}: CIFAR-10 {why}, so this "
                                        "stand-in photograph is shown")
    positions = (torch.arange(len(labels)) if label is None
                 else torch.nonzero(labels == CIFAR10_CLASSES.index(label)).flatten())
    if index >= len(positions):
        what = "CIFAR-10 test images" if label is None else f"{label} images in the test split"
        raise ValueError(f"index must be < {len(positions)} ({what}), got {index}")
    position = int(positions[index])
    image = images[position].permute(2, 0, 1).float() / 255.0  # (3, 32, 32)
    caption = f"CIFAR-10 test image {position} ({CIFAR10_CLASSES[int(labels[position])]})"
    if size != image.shape[-1]:
        caption += f", resized to {size}×{size}"
    return SampleImage(_resize(image, size).contiguous(), caption, "cifar10")


def _as_image(image: SampleImage | Tensor) -> tuple[Tensor, str | None]:
    if isinstance(image, SampleImage):
        return image.image, image.source
    if not isinstance(image, Tensor) or image.dim() != 3 or image.shape[0] != 3:
        shape = tuple(image.shape) if isinstance(image, Tensor) else type(image).__name__
        raise ValueError(f"image must be a SampleImage or a tensor [3, H, W], got {shape}")
    return image, None


def standardise(image: SampleImage | Tensor) -> Tensor:
    """``[3, H, W]`` -> ``[1, 3, H, W]`` float32 with zero mean and unit std per channel.

    What the figures feed to a layer: a network's first layer sees normalised images, and
    feature similarity on raw ``[0, 1]`` colours is dominated by brightness.
    """
    x, _ = _as_image(image)
    x = x.float()
    mean = x.mean(dim=(1, 2), keepdim=True)
    std = x.std(dim=(1, 2), keepdim=True).clamp_min(1e-6)
    return ((x - mean) / std).unsqueeze(0)


def _to_rgb(image: Tensor) -> np.ndarray:
    return image.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy()


# --------------------------------------------------------------------------- layers for pictures
def make_layer(
    k: int = 9,
    mix: float = 1.0,
    sampling: str = "all",
    candidates: int | None = None,
    *,
    selection: str | None = None,
    similarity: str | None = "euclidean",
    padding: int = 0,
    seed: int = 0,
) -> ConvNN2d:
    """A ConvNN2d on RGB images (3 -> 1 channels) whose *selection* the figures draw.

    Args:
        k: neighbours per pixel.
        mix: α of mixed selection: ``0`` selects by position only (``selection="coords"``),
            ``1`` by colour only, in between by both (features scaled by ``α / std``,
            coordinates by ``1 - α``).
        sampling: ``"all"``, ``"random"`` or ``"spatial"`` candidates.
        candidates: ``r`` of a sampled candidate set (``r × r`` pixels; default 8).
        selection: override the selection that ``mix`` implies.
        similarity: ``"euclidean"`` by default (distance in colour, position or both);
            ``None`` uses the layer's default.
        padding: rings of zero positions around the image (0: only real pixels).
        seed: seed of the fixed candidate draw in evaluation mode.

    Returns:
        A :class:`~convnn.layers.ConvNN2d` in evaluation mode.
    """
    if selection is None:
        selection = "coords" if mix == 0 else "mixed"
    if selection == "coords":
        similarity = "euclidean"
    if sampling != "all" and candidates is None:
        candidates = 8
    return ConvNN2d(3, 1, k=k, padding=padding, selection=selection,
                    similarity=similarity, sampling=sampling,
                    candidates=candidates if sampling != "all" else None,
                    options=ConvNN2dOptions(mix=mix, seed=seed)).eval()


def _check_pixel(pixel: Sequence[int] | None, height: int, width: int) -> tuple[int, int]:
    if pixel is None:  # the centre
        return height // 2, width // 2
    if len(pixel) != 2:
        raise ValueError(f"pixel must be (row, col), got {pixel!r}")
    row, col = int(pixel[0]), int(pixel[1])
    if not (0 <= row < height and 0 <= col < width):
        raise ValueError(f"pixel must lie in the {height}x{width} image, got {pixel!r}")
    return row, col


def _padded_to_pixel(index: int, width: int, padding: int) -> tuple[int, int]:
    row, col = divmod(int(index), width + 2 * padding)
    return row - padding, col - padding


def selected_pixels(
    layer: ConvNN2d, image: SampleImage | Tensor, pixel: Sequence[int], *, normalise: bool = True,
) -> list[tuple[int, int]]:
    """The neighbours that ``layer`` selects for ``pixel`` on ``image``, in the layer's order.

    Args:
        layer: a ConvNN2d with 3 input channels (it is run in evaluation mode).
        image: ``[3, H, W]`` or a :class:`SampleImage`.
        pixel: ``(row, col)`` of the query.
        normalise: feed :func:`standardise` (image) rather than the raw ``[0, 1]`` image.

    Returns:
        ``k`` ``(row, col)`` pairs in image coordinates; padded positions lie outside
        ``0..H-1`` / ``0..W-1`` (row ``-1`` is the padding ring above the image).
    """
    x, _ = _as_image(image)
    height, width = x.shape[-2:]
    row, col = _check_pixel(pixel, height, width)
    inp = standardise(x) if normalise else x.float().unsqueeze(0)
    was_training = layer.training
    layer.eval()
    try:
        idx = layer.neighbours(inp.to(layer.weight.dtype))[0, row * width + col]  # (k,)
    finally:
        layer.train(was_training)
    return [_padded_to_pixel(i, width, layer.padding) for i in idx.tolist()]


def candidate_pixels(layer: ConvNN2d, height: int, width: int) -> list[tuple[int, int]] | None:
    """The candidate pixels ``layer`` searches in evaluation mode, or ``None`` for all.

    Spatial candidates are an evenly spaced ``r × r`` grid; random candidates are the layer's
    fixed evaluation draw (``eval_sampling="fixed"``). With ``eval_sampling="resample"`` every
    call draws new ones and ``None`` is returned. The draw is the layer's own (the same code
    its forward pass runs), so the picture cannot drift from the layer.
    """
    if layer.sampling == "all":
        return None
    if layer.sampling == "random" and layer.eval_sampling != "fixed":
        return None
    was_training = layer.training
    layer.eval()
    try:
        idx = layer.candidate_positions(height, width)  # [r²] padded raster indices
    finally:
        layer.train(was_training)
    return [_padded_to_pixel(i, width, layer.padding) for i in idx.tolist()]


def _describe(layer: ConvNN2d) -> str:
    if layer.selection == "coords":
        how = "by position"
    elif layer.selection == "features":
        how = "by colour"
    else:
        how = f"α = {layer.mix:g}"
    where = "all pixels" if layer.sampling == "all" else (
        f"{layer.sampling} {layer.candidates}×{layer.candidates}")
    return f"k = {layer.k}, {how}, {where}"


# --------------------------------------------------------------------------- neighbour maps
def neighbour_map(
    image: SampleImage | Tensor,
    layer: ConvNN2d | Mapping | None = None,
    pixel: Sequence[int] | None = None,
    *,
    ax: Axes | None = None,
    title: str | None = None,
    normalise: bool = True,
    show_candidates: bool = True,
    caption: bool = True,
) -> Figure:
    """Draw the neighbours one ConvNN2d selects for one pixel of a real image.

    Unselected positions are darkened, selected ones keep their colour (outlined in orange
    when there are at most 64), the query pixel carries a red star and sampled candidates
    are white dots. A zero-padding ring, when the layer has one, is drawn in grey around the
    image: those positions can be selected too.

    Args:
        image: ``[3, H, W]`` in ``[0, 1]`` or a :class:`SampleImage`.
        layer: a ConvNN2d with 3 input channels, or a dict of :func:`make_layer` options
            (``None``: ``make_layer()``, the 9 nearest pixels in colour).
        pixel: ``(row, col)`` of the query (default: the centre).
        ax: draw into this axes instead of a new figure.
        title: panel title (default: a description of the layer).
        normalise: select on :func:`standardise` (image) (default) or on raw ``[0, 1]`` colours.
        show_candidates: mark sampled candidates.
        caption: with a new figure, write the image's source under it.

    Returns:
        The figure. The axes holds the darkening mask as an image with gid ``"selection"``
        (transparent exactly at the selected positions) and one ``Rectangle`` with gid
        ``"neighbour"`` per outlined neighbour.
    """
    x, source = _as_image(image)
    if layer is None:
        layer = make_layer()
    elif isinstance(layer, Mapping):
        layer = make_layer(**layer)
    elif not isinstance(layer, ConvNN2d):
        raise ValueError(f"layer must be a ConvNN2d or a dict of make_layer options, "
                         f"got {type(layer).__name__}")
    height, width = x.shape[-2:]
    row, col = _check_pixel(pixel, height, width)
    chosen = selected_pixels(layer, x, (row, col), normalise=normalise)
    p = layer.padding

    fig = None
    if ax is None:
        fig = BookFigure(figsize=(4.0, 4.3 if caption and source else 4.0), dpi=90,
                     layout="constrained")
        ax = fig.add_subplot()
    # The padded map: a grey ring, then the image over it.
    lo_x, hi_x, lo_y, hi_y = -p - 0.5, width + p - 0.5, height + p - 0.5, -p - 0.5
    if p:
        ax.add_patch(Rectangle((lo_x, hi_y), width + 2 * p, height + 2 * p, facecolor="0.82",
                               edgecolor="0.5", hatch="//", linewidth=0.6, zorder=0))
    ax.imshow(_to_rgb(x), extent=(-0.5, width - 0.5, height - 0.5, -0.5),
              interpolation="nearest", zorder=1)
    mask = np.zeros((height + 2 * p, width + 2 * p, 4), dtype=np.float32)
    mask[..., 3] = _DIM
    for r, c in chosen:
        mask[r + p, c + p, 3] = 0.0
    ax.imshow(mask, extent=(lo_x, hi_x, lo_y, hi_y), interpolation="nearest", zorder=2,
              gid="selection")
    if len(chosen) <= _MAX_OUTLINES:
        for r, c in chosen:
            ax.add_patch(Rectangle((c - 0.5, r - 0.5), 1, 1, fill=False,
                                   edgecolor=NEIGHBOUR_COLOUR, linewidth=1.3, zorder=3,
                                   gid="neighbour"))
    cands = candidate_pixels(layer, height, width) if show_candidates else None
    if cands:
        cr, cc = zip(*cands)
        ax.scatter(cc, cr, s=9, c="white", edgecolors="black", linewidths=0.5, zorder=4,
                   gid="candidates")
    ax.plot([col], [row], marker="*", markersize=13, color=QUERY_COLOUR,
            markeredgecolor="white", markeredgewidth=0.8, zorder=5)
    ax.set_xlim(lo_x, hi_x)
    ax.set_ylim(lo_y, hi_y)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title if title is not None else _describe(layer), fontsize=9)
    if fig is not None and caption and source:
        _footer(fig, f"Image: {source}")
    return fig if fig is not None else ax.figure


def neighbour_panels(
    image: SampleImage | Tensor,
    panels: Mapping[str, ConvNN2d | Mapping | tuple],
    pixel: Sequence[int] | None = None,
    *,
    ncols: int | None = None,
    suptitle: str | None = None,
    panel_size: float = 2.6,
    normalise: bool = True,
) -> Figure:
    """One :func:`neighbour_map` panel per entry of ``panels``.

    Args:
        image: ``[3, H, W]`` in ``[0, 1]`` or a :class:`SampleImage`.
        panels: title -> a ConvNN2d, a dict of :func:`make_layer` options, or a
            ``(layer or options, pixel)`` pair to inspect another pixel in that panel.
        pixel: ``(row, col)`` inspected in the panels that name no pixel (default: the
            centre).
        ncols: panels per row (default: all in one row).
        suptitle: a title over all panels.
        panel_size: inches per panel.
        normalise: see :func:`neighbour_map`.

    Returns:
        A figure with ``len(panels)`` panels, captioned with the image's source.
    """
    if not panels:
        raise ValueError("panels must hold at least one (title -> layer) entry")
    _, source = _as_image(image)
    n = len(panels)
    ncols = n if ncols is None else max(1, min(ncols, n))
    nrows = math.ceil(n / ncols)
    panel_size = min(panel_size, _PAGE_WIDTH / ncols)
    fig = BookFigure(figsize=(panel_size * ncols, panel_size * nrows + 0.45), dpi=90,
                     layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    x, _ = _as_image(image)
    pixel = _check_pixel(pixel, *x.shape[-2:])
    pixels = []
    for ax, (name, entry) in zip(axes.flat, panels.items()):
        layer, where = entry if isinstance(entry, tuple) else (entry, pixel)
        pixels.append(tuple(where))
        neighbour_map(image, layer, where, ax=ax, title=name, normalise=normalise)
    for ax in list(axes.flat)[n:]:
        ax.set_visible(False)
    if suptitle:
        fig.suptitle(suptitle, fontsize=10.5)
    if source:
        where = f"pixel {pixels[0]}" if len(set(pixels)) == 1 else "pixel"
        _footer(fig, f"★ = inspected {where}; orange/undimmed = selected. Image: {source}")
    return fig


def neighbour_grid(
    image: SampleImage | Tensor,
    pixel: Sequence[int] | None = None,
    ks: Sequence[int] = (4, 16, 64),
    mixes: Sequence[float] = (0.0, 0.5, 0.9, 1.0),
    *,
    panel_size: float = 2.2,
    **options,
) -> Figure:
    """A grid of :func:`neighbour_map` panels: one row per α (``mixes``), one column per k.

    ``options`` go to :func:`make_layer` (e.g. ``sampling``, ``candidates``, ``padding``).
    """
    if not ks or not mixes:
        raise ValueError("ks and mixes must be non-empty")
    _, source = _as_image(image)
    panel_size = min(panel_size, (_PAGE_WIDTH - 0.5) / len(ks))
    fig = BookFigure(figsize=(panel_size * len(ks) + 0.5, panel_size * len(mixes) + 0.7),
                     dpi=90, layout="constrained")
    axes = fig.subplots(len(mixes), len(ks), squeeze=False)
    for i, mix in enumerate(mixes):
        for j, k in enumerate(ks):
            ax = axes[i, j]
            neighbour_map(image, make_layer(k=k, mix=mix, **options), pixel, ax=ax,
                          title=f"k = {k}" if i == 0 else "")
            if j == 0:
                label = {0.0: "α = 0\n(position)", 1.0: "α = 1\n(colour)"}.get(
                    float(mix), f"α = {mix:g}")
                ax.set_ylabel(label, fontsize=9)
    fig.suptitle("Neighbours of ★: k grows to the right, α moves selection\n"
                 "from position (top) to colour (bottom)", fontsize=10)
    if source:
        _footer(fig, f"Image: {source}")
    return fig


def explorer(
    image: SampleImage | Tensor,
    pixel: Sequence[int] | None = None,
    k: int = 9,
    mix: float = 1.0,
    sampling: str = "all",
    candidates: int = 8,
    *,
    max_k: int = 256,
    live: bool = True,
    live_pixels: Sequence[Sequence[int]] | None = None,
):
    """An ipywidgets explorer of the spectrum on a real image, with a static twin for the web.

    Sliders for ``k``, α (``mix``, 0 = position, 1 = colour), ``s`` (sampled candidates are
    ``s × s`` pixels) and the inspected pixel, and a dropdown for the candidate sampling; every
    change redraws :func:`neighbour_map` into an ``ipywidgets.Image``. Built with
    ``ipywidgets.interactive``, so it constructs and draws without a display. The controls
    wrap above the picture in a narrow output.

    With ``live=True`` the widget's display also carries a ``text/html`` twin,
    :func:`live_html` of :func:`explorer_states` over ``live_pixels`` (default: ``pixel`` and
    three others): a page without a kernel (the book's website) shows that one, and its
    controls redraw it in the browser. Jupyter and Colab show the widget.

    Returns:
        The ``ipywidgets.interactive`` box. Extra attributes: ``image`` (the Image widget),
        ``controls`` (name -> widget), ``live_html`` (the twin, or ``None``) and ``state`` (``state["selection"]``: the neighbours
        of the last drawing, as :func:`selected_pixels` returns them).
    """
    import ipywidgets as widgets

    x, source = _as_image(image)
    height, width = x.shape[-2:]
    row, col = _check_pixel(pixel, height, width)
    max_k = min(max_k, height * width)
    check_int("k", k, minimum=1, maximum=max_k)
    check_choice("sampling", sampling, ops.SAMPLINGS)
    check_int("candidates", candidates, minimum=1, maximum=min(height, width))
    slider = {"continuous_update": False, "style": {"description_width": "80px"},
              "layout": widgets.Layout(width="300px")}
    controls = {
        "k": widgets.IntSlider(value=k, min=1, max=max_k, description="k", **slider),
        "mix": widgets.FloatSlider(value=mix, min=0.0, max=1.0, step=0.05,
                                   description="α (colour)", **slider),
        "sampling": widgets.Dropdown(options=list(ops.SAMPLINGS), value=sampling,
                                     description="sampling",
                                     style={"description_width": "80px"},
                                     layout=widgets.Layout(width="300px")),
        "candidates": widgets.IntSlider(value=candidates, min=1, max=min(height, width),
                                        description="s (s×s)", **slider),
        "row": widgets.IntSlider(value=row, min=0, max=height - 1, description="pixel row",
                                 **slider),
        "col": widgets.IntSlider(value=col, min=0, max=width - 1, description="pixel col",
                                 **slider),
    }
    picture = widgets.Image(format="png", layout=widgets.Layout(width="380px"))
    state: dict = {}

    def draw(k, mix, sampling, candidates, row, col):
        note = ""
        if sampling != "all" and k > candidates * candidates:
            k, note = candidates * candidates, " (k capped at s²)"
        layer = make_layer(k=k, mix=mix, sampling=sampling, candidates=candidates)
        fig = neighbour_map(x if source is None else image, layer, (row, col),
                            title=_describe(layer) + note)
        picture.value = _figure_png(fig)
        state["selection"] = selected_pixels(layer, x, (row, col))

    twin = None
    if live:
        if live_pixels is None:
            live_pixels = [(row, col), (2, 2), (height - 3, width - 3), (height // 2, 2)]
        twin = live_html(explorer_states(
            x if source is None else image, live_pixels,
            start={"k": k, "mix": mix, "sampling": sampling, "side": candidates}))

    class Explorer(widgets.interactive):
        def _repr_mimebundle_(self, **kwargs):
            # ipywidgets 8; version 7 (Colab's) displays itself through _ipython_display_
            parent = getattr(super(), "_repr_mimebundle_", None)
            bundle = parent(**kwargs) if parent is not None else None
            if twin is not None and bundle is not None:
                bundle["text/html"] = twin
            return bundle

    ui = Explorer(draw, **controls)
    if "selection" not in state:  # interactive logs and swallows errors: raise them here
        draw(**{name: w.value for name, w in controls.items()})
    ui.image, ui.controls, ui.state, ui.live_html = picture, controls, state, twin
    *inputs, out = ui.children
    ui.children = (widgets.Box([widgets.VBox([*inputs, out]), picture],
                               layout=widgets.Layout(flex_flow="row wrap")),)
    return ui


# --------------------------------------------------------------------------- chapter 2: points
def _rank_labels(ax, pts: Tensor, q: Tensor, idx: list[int]) -> None:
    """Number the selected points by rank, each label pushed away from the query and turned
    until it keeps clear of the labels already placed (close neighbours would overlap)."""
    span = float((pts.max(0).values - pts.min(0).values).max())
    offset, clearance = 0.055 * span, 0.06 * span
    placed: list[np.ndarray] = []
    for j, i in enumerate(idx):
        p = pts[i].numpy()
        away = p - q.numpy()
        angle = math.atan2(away[1], away[0]) if np.hypot(*away) > 0 else 0.75 * math.pi
        for turn in (0, 1, -1, 2, -2, 3, -3, 4):
            a = angle + turn * math.pi / 4
            spot = p + offset * np.array([math.cos(a), math.sin(a)])
            if all(np.hypot(*(spot - other)) >= clearance for other in placed):
                break
        placed.append(spot)
        # no box: a white outline keeps the digit readable without hiding the points below
        ax.annotate(str(j + 1), tuple(p), xytext=tuple(spot), textcoords="data", fontsize=8,
                    fontweight="bold", zorder=4, ha="center", va="center",
                    path_effects=[patheffects.withStroke(linewidth=2.2, foreground="white")])


def knn_points_figure(
    points: Tensor,
    values: Tensor,
    query: int,
    indices: Sequence[int] | Tensor,
    rho: Mapping[str, Tensor | Sequence[float] | None] | None = None,
    *,
    candidates: Sequence[int] | Tensor | None = None,
    title: str | None = None,
) -> Figure:
    """k-NN on 2-D points: the query, its selected neighbours and (optionally) their weights ρ.

    Args:
        points: ``[n, 2]`` positions.
        values: ``[n]`` the value carried by each point (colour).
        query: index of the query point.
        indices: the ``k`` selected neighbours, rank order.
        rho: optional ``name -> [k] weights`` (``None`` meaning all ones); drawn as bars per
            rank in a second panel, and the first entry sets the line widths.
        candidates: optional indices of a sampled candidate set (drawn as black rings).
        title: title of the left panel.

    Returns:
        The figure.
    """
    pts = torch.as_tensor(points).detach().cpu().double()
    val = torch.as_tensor(values).detach().cpu().double().reshape(-1)
    idx = [int(i) for i in torch.as_tensor(indices).reshape(-1).tolist()]
    k = len(idx)
    weights = {}
    for name, w in (rho or {}).items():
        weights[name] = (np.ones(k) if w is None
                         else torch.as_tensor(w).detach().cpu().double().reshape(-1).numpy())
        if len(weights[name]) != k:
            raise ValueError(f"rho[{name!r}] must have k={k} weights, got {len(weights[name])}")
    fig = BookFigure(figsize=(8.6 if weights else 4.6, 4.3), dpi=90, layout="constrained")
    axes = fig.subplots(1, 2 if weights else 1, squeeze=False)[0]
    ax = axes[0]
    line_w = list(weights.values())[-1] if weights else np.ones(k)
    line_w = 0.8 + 4.0 * line_w / max(float(np.max(line_w)), 1e-12)
    q = pts[query]
    for j, i in enumerate(idx):
        ax.plot([q[0], pts[i, 0]], [q[1], pts[i, 1]], color=NEIGHBOUR_COLOUR,
                linewidth=line_w[j], alpha=0.8, zorder=1)
    sc = ax.scatter(pts[:, 0], pts[:, 1], c=val, cmap="viridis", s=46, edgecolors="0.3",
                    linewidths=0.5, zorder=2)
    if candidates is not None:
        cand = [int(i) for i in torch.as_tensor(candidates).reshape(-1).tolist()]
        ax.scatter(pts[cand, 0], pts[cand, 1], s=150, facecolors="none", edgecolors="black",
                   linewidths=1.0, zorder=2.5, label="candidates")
    ax.scatter(pts[idx, 0], pts[idx, 1], s=120, facecolors="none",
               edgecolors=NEIGHBOUR_COLOUR, linewidths=2.2, zorder=3,
               label=f"selected (k = {k})")
    _rank_labels(ax, pts, q, idx)
    ax.plot([q[0]], [q[1]], marker="*", markersize=16, color=QUERY_COLOUR,
            markeredgecolor="white", zorder=5, linestyle="none", label="query i")
    ax.set_aspect("equal")
    ax.set_xlabel("x")
    ax.set_ylabel("y")
    # above the map, outside it: inside, the legend covered points
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=3, fontsize=7.5,
              frameon=False, borderaxespad=0.2)
    # below the map, so that its label never meets the weight panel's axis label
    fig.colorbar(sc, ax=ax, location="bottom", shrink=0.7, aspect=30, label="value v")
    ax.set_title(title or f"k = {k} nearest neighbours of ★ (numbers: rank j)", fontsize=9.5,
                 pad=18)
    if weights:
        bx = axes[1]
        width = 0.8 / len(weights)
        ranks = np.arange(1, k + 1)
        colours = iter([NEIGHBOUR_COLOUR, "tab:blue", "tab:green", "tab:purple"] * 4)
        for m, (name, w) in enumerate(weights.items()):
            colour = "0.65" if (rho or {}).get(name) is None else next(colours)
            bx.bar(ranks + (m - (len(weights) - 1) / 2) * width, w, width=width, label=name,
                   color=colour)
        bx.set_xticks(ranks)
        bx.set_xlabel("neighbour rank j")
        bx.set_ylabel("weight ρ_ij")
        bx.set_title("weights ρ of the selected neighbours", fontsize=9.5)
        bx.set_ylim(0, 1.3 * max(float(np.max(w)) for w in weights.values()))
        bx.legend(fontsize=8, loc="upper center", ncol=min(len(weights), 2))
    return fig


def scatter_panels(
    points: Tensor,
    panels: Mapping[str, Tensor],
    *,
    query: int | None = None,
    suptitle: str | None = None,
    shared_scale: bool = False,
) -> Figure:
    """One scatter panel of ``points`` per entry of ``panels`` (title -> ``[n]`` values)."""
    if not panels:
        raise ValueError("panels must hold at least one (title -> values) entry")
    pts = torch.as_tensor(points).detach().cpu().double()
    n = len(panels)
    width = min(3.2, _PAGE_WIDTH / n)
    fig = BookFigure(figsize=(width * n, width + 0.3), dpi=90, layout="constrained")
    axes = fig.subplots(1, n, squeeze=False)[0]
    vals = {t: torch.as_tensor(v).detach().cpu().double().reshape(-1) for t, v in panels.items()}
    lo = min(float(v.min()) for v in vals.values())
    hi = max(float(v.max()) for v in vals.values())
    for ax, (name, v) in zip(axes, vals.items()):
        kw = {"vmin": lo, "vmax": hi} if shared_scale else {}
        sc = ax.scatter(pts[:, 0], pts[:, 1], c=v, cmap="viridis", s=34, edgecolors="0.3",
                        linewidths=0.4, **kw)
        if query is not None:
            ax.plot([pts[query, 0]], [pts[query, 1]], marker="*", markersize=13,
                    color=QUERY_COLOUR, markeredgecolor="white", linestyle="none")
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(name, fontsize=9)
        fig.colorbar(sc, ax=ax, shrink=0.75)
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    return fig


# --------------------------------------------------------------------------- chapter 3: windows
def window_distances_figure(kernels: Sequence[int] = (3, 5, 7)) -> Figure:
    """Why the k nearest pixels are a square window for 3×3 and 5×5 but not for 7×7.

    Each panel writes the squared distance ``d²`` of every offset from the centre pixel,
    shades the ``k = s²`` nearest (ties broken by raster order, as ConvNN2d's coordinate
    selection does) and outlines the ``s × s`` window. Selected cells outside the window are
    red, window cells left out are crossed.
    """
    width = min(3.3, _PAGE_WIDTH / len(kernels))
    fig = BookFigure(figsize=(width * len(kernels), width + 0.5), dpi=90, layout="constrained")
    axes = fig.subplots(1, len(kernels), squeeze=False)[0]
    for ax, s in zip(axes, kernels):
        check_int("kernel", s, minimum=1)
        half = s // 2
        radius = half + 2
        offs = torch.arange(-radius, radius + 1)
        dy, dx = torch.meshgrid(offs, offs, indexing="ij")
        d2 = (dx * dx + dy * dy).reshape(-1)
        order = torch.sort(d2, stable=True).indices[: s * s]
        chosen = torch.zeros_like(d2, dtype=torch.bool)
        chosen[order] = True
        side = 2 * radius + 1
        inside = ((dx.abs() <= half) & (dy.abs() <= half)).reshape(-1)
        shade = np.where(chosen.numpy(), 1.0, 0.0).reshape(side, side)
        ax.imshow(shade, cmap="Oranges", vmin=-0.2, vmax=2.2, extent=(
            -radius - 0.5, radius + 0.5, radius + 0.5, -radius - 0.5))
        for i in range(side * side):
            r, c = divmod(i, side)
            y, xx = r - radius, c - radius
            wrong = bool(chosen[i]) != bool(inside[i])
            ax.text(xx, y, str(int(d2[i])), ha="center", va="center", fontsize=7,
                    color="#b00000" if wrong else "black",
                    fontweight="bold" if wrong else "normal")
            if chosen[i] and not inside[i]:
                ax.add_patch(Rectangle((xx - 0.5, y - 0.5), 1, 1, fill=False,
                                       edgecolor="#d00000", linewidth=1.8))
            if inside[i] and not chosen[i]:
                ax.plot([xx - 0.4, xx + 0.4], [y - 0.4, y + 0.4], color="#d00000", lw=1)
                ax.plot([xx - 0.4, xx + 0.4], [y + 0.4, y - 0.4], color="#d00000", lw=1)
        ax.add_patch(Rectangle((-half - 0.5, -half - 0.5), s, s, fill=False,
                               edgecolor="black", linewidth=2.0))
        ok = bool((chosen == inside).all())
        max_in = int(d2[inside].max())
        min_out = int(d2[~inside].min())
        ax.set_title(f"{s}×{s}: k = {s * s} nearest {'=' if ok else '≠'} window\n"
                     f"window d² ≤ {max_in}, outside d² ≥ {min_out}", fontsize=9,
                     color="black" if ok else "#b00000")
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle("d² from the centre pixel · shaded: the k nearest · black: the kernel window",
                 fontsize=9)
    return fig


def image_panels(
    images: Mapping[str, Tensor],
    *,
    suptitle: str | None = None,
    caption: str | None = None,
    cmap: str = "gray",
    panel_size: float = 2.6,
) -> Figure:
    """Images side by side: ``[3, H, W]`` in [0, 1] as RGB, ``[H, W]`` with ``cmap``."""
    if not images:
        raise ValueError("images must hold at least one (title -> image) entry")
    n = len(images)
    panel_size = min(panel_size, _PAGE_WIDTH / n)
    fig = BookFigure(figsize=(panel_size * n, panel_size + 0.6), dpi=90, layout="constrained")
    axes = fig.subplots(1, n, squeeze=False)[0]
    for ax, (name, img) in zip(axes, images.items()):
        img = img.detach().cpu()
        if img.dim() == 3:
            ax.imshow(_to_rgb(img), interpolation="nearest")
        else:
            ax.imshow(img.float().numpy(), cmap=cmap, interpolation="nearest")
        ax.set_title(name, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    if caption:
        _footer(fig, caption)
    return fig


# --------------------------------------------------------------------------- chapter 4: tokens
def patchify(image: SampleImage | Tensor, patch: int) -> Tensor:
    """Cut ``[3, H, W]`` into non-overlapping ``patch × patch`` tokens, raster order.

    Returns:
        ``[T, 3·patch²]`` with ``T = (H / patch) · (W / patch)``; token ``t`` is the patch in
        row ``t // (W / patch)``, column ``t % (W / patch)``.
    """
    x, _ = _as_image(image)
    check_int("patch", patch, minimum=1)
    c, h, w = x.shape
    if h % patch or w % patch:
        raise ValueError(f"patch={patch} must divide the image size {h}x{w}")
    t = x.reshape(c, h // patch, patch, w // patch, patch)  # (C, h', p, w', p)
    t = t.permute(1, 3, 0, 2, 4)  # (h', w', C, p, p)
    return t.reshape((h // patch) * (w // patch), c * patch * patch)


def token_panels(
    image: SampleImage | Tensor,
    patch: int,
    query: int,
    panels: Mapping[str, Tensor],
    *,
    suptitle: str | None = None,
    panel_size: float = 2.9,
) -> Figure:
    """Token weights on the image: one panel per ``title -> [T] weights`` entry.

    A panel whose weights are non-zero on every token (dense attention) is drawn as a heat
    map of the weights over the token grid (logarithmic colour scale). A panel with some
    zero weights (top-k selection) shows the image with the unselected tokens darkened and
    the selected ones outlined in orange (gid ``"neighbour"``), labelled with their rank.
    The query token is outlined in red (dashed) in every panel.
    """
    from matplotlib.colors import LogNorm

    x, source = _as_image(image)
    _, h, w = x.shape
    rows, cols = h // patch, w // patch
    tokens = rows * cols
    check_int("query", query, minimum=0, maximum=tokens - 1)
    fig = BookFigure(figsize=(panel_size * len(panels) + 0.6, panel_size + 0.8), dpi=90,
                 layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    extent = (-0.5, w - 0.5, h - 0.5, -0.5)
    for ax, (name, weights) in zip(axes, panels.items()):
        wts = torch.as_tensor(weights).detach().cpu().double().reshape(-1)
        if wts.numel() != tokens:
            raise ValueError(f"panels[{name!r}] must hold T={tokens} weights, got {wts.numel()}")
        if bool((wts > 0).all()):
            grid = wts.reshape(rows, cols).numpy()
            ax.imshow(_to_rgb(x).mean(axis=-1), extent=extent, cmap="gray",
                      interpolation="nearest")
            im = ax.imshow(grid, extent=extent, cmap="magma", interpolation="nearest", alpha=0.8,
                           norm=LogNorm(vmin=max(grid.min(), grid.max() * 1e-12),
                                        vmax=grid.max()))
            fig.colorbar(im, ax=ax, shrink=0.8, label="weight (log scale)")
        else:
            ax.imshow(_to_rgb(x), extent=extent, interpolation="nearest")
            mask = np.zeros((rows, cols, 4), dtype=np.float32)
            mask[..., 3] = np.where(wts.reshape(rows, cols).numpy() > 0, 0.0, _DIM)
            ax.imshow(mask, extent=extent, interpolation="nearest")
            chosen = torch.nonzero(wts > 0).reshape(-1)
            chosen = chosen[wts[chosen].argsort(descending=True, stable=True)].tolist()
            if len(chosen) <= 16:
                for rank, t in enumerate(chosen, start=1):
                    r, c = divmod(t, cols)
                    ax.add_patch(Rectangle((c * patch - 0.5, r * patch - 0.5), patch, patch,
                                           fill=False, edgecolor=NEIGHBOUR_COLOUR,
                                           linewidth=1.6, gid="neighbour"))
                    ax.text(c * patch + 0.1, r * patch + 0.1, str(rank), color="black",
                            fontsize=6.5, fontweight="bold", va="top", ha="left",
                            bbox={"boxstyle": "square,pad=0.1", "facecolor": "white",
                                  "edgecolor": "none", "alpha": 0.85})
        r, c = divmod(query, cols)
        ax.add_patch(Rectangle((c * patch - 0.5, r * patch - 0.5), patch, patch, fill=False,
                               edgecolor=QUERY_COLOUR, linewidth=2.2, linestyle="--"))
        for g in range(1, cols):
            ax.axvline(g * patch - 0.5, color="white", linewidth=0.3, alpha=0.5)
        for g in range(1, rows):
            ax.axhline(g * patch - 0.5, color="white", linewidth=0.3, alpha=0.5)
        ax.set_title(name, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    if source:
        _footer(fig, f"{rows}×{cols} tokens of {patch}×{patch} pixels; red dashed = query "
                     f"token. Image: {source}")
    return fig


# --------------------------------------------------------------------------- live figures
# A live figure works on a static page: its states are computed here, over a grid of its
# controls, and a short script in the page draws the chosen one on a <canvas>. No kernel, no
# network: the data and the script travel inside the cell's text/html output.
EXPLORER_KS = (1, 2, 4, 9, 16, 32, 64, 128, 256)
EXPLORER_MIXES = (0.0, 0.25, 0.5, 0.75, 1.0)
EXPLORER_SIDES = (4, 8, 16)


def _b64_u16(values: Sequence[int]) -> str:
    import base64

    return base64.b64encode(np.asarray(values, dtype="<u2").tobytes()).decode("ascii")


def _how(mix: float) -> str:
    return "by position" if mix == 0 else "by colour" if mix == 1 else f"α = {mix:g}"


def _live_image(x: Tensor) -> dict:
    import base64

    rgb = (_to_rgb(x) * 255).round().astype(np.uint8)
    return {"height": int(x.shape[-2]), "width": int(x.shape[-1]),
            "rgb": base64.b64encode(rgb.tobytes()).decode("ascii")}


class _LiveTable:
    """Rankings and candidate sets, each stored once, and the states that point at them."""

    def __init__(self) -> None:
        self.rankings: list[str] = []
        self.states: dict[str, dict] = {}

    def _ref(self, values: Sequence[int] | None) -> int:
        if values is None:
            return -1
        code = _b64_u16(values)
        if code not in self.rankings:
            self.rankings.append(code)
        return self.rankings.index(code)

    def add(self, key: Sequence[int], ranking: Sequence[int], candidates: Sequence[int] | None,
            title: str) -> None:
        self.states[",".join(map(str, key))] = {
            "rank": self._ref(ranking), "cand": self._ref(candidates), "title": title}


def _rankings(layer: ConvNN2d, x: Tensor, queries: Sequence[int]) -> list[list[int]]:
    """Each query's neighbours under ``layer`` (raster indices), nearest first: the layer's
    selection with its output ordered by rank rather than by position (``coords``' default), so
    that the first ``k`` are the layer's selection with ``k`` neighbours."""
    layer.sort_by_position = False
    with torch.no_grad():
        idx = layer.neighbours(standardise(x).to(layer.weight.dtype))[0]  # [n, k]
    return [idx[q].tolist() for q in queries]


def explorer_states(
    image: SampleImage | Tensor,
    pixels: Sequence[Sequence[int]],
    *,
    ks: Sequence[int] = EXPLORER_KS,
    mixes: Sequence[float] = EXPLORER_MIXES,
    sides: Sequence[int] = EXPLORER_SIDES,
    seed: int = 0,
    start: Mapping[str, float | str] | None = None,
) -> dict:
    """The explorer's states over a grid of its controls, as data for :func:`live_html`.

    For every α in ``mixes``, sampling (all, random, spatial), side ``s`` of a sampled
    ``s × s`` candidate set in ``sides`` and query pixel in ``pixels``, one layer from
    :func:`make_layer` ranks the neighbours of the pixel; a value ``k`` of the ``k`` slider
    shows the first ``k`` of that ranking (the layer's top-``k`` is a prefix of its
    top-``max(ks)``; ``tests/test_viz.py`` checks it), capped at ``s²`` with sampled
    candidates as in :func:`explorer`.

    ``start`` gives the controls' first values (``k``, ``mix``, ``sampling``, ``side``; the
    nearest value of the grid is taken); the first pixel is shown first.

    Returns:
        A JSON-serialisable dict: the image, the controls, one panel, and the states keyed by
        the indices of (α, sampling, s, pixel) in the control values.
    """
    x, source = _as_image(image)
    height, width = x.shape[-2:]
    queries = [_check_pixel(p, height, width) for p in pixels]
    if not queries:
        raise ValueError("pixels must name at least one (row, col)")
    max_k = max(ks)
    check_int("max(ks)", max_k, minimum=1, maximum=height * width)
    table = _LiveTable()
    for m, mix in enumerate(mixes):
        for a, sampling in enumerate(ops.SAMPLINGS):
            for s, side in enumerate(sides):
                if sampling == "all" and s:  # s does not matter: the same state for every s
                    for p in range(len(queries)):
                        table.states[f"{m},{a},{s},{p}"] = table.states[f"{m},{a},0,{p}"]
                    continue
                k = max_k if sampling == "all" else min(max_k, side * side)
                layer = make_layer(k=k, mix=mix, sampling=sampling, candidates=side, seed=seed)
                cands = candidate_pixels(layer, height, width)
                cand_idx = None if cands is None else [r * width + c for r, c in cands]
                where = "all pixels" if sampling == "all" else f"{sampling} {side}×{side}"
                for p, ranking in enumerate(
                        _rankings(layer, x, [r * width + c for r, c in queries])):
                    table.add((m, a, s, p), ranking, cand_idx, f"{_how(mix)}, {where}")
    data = {
        "image": _live_image(x), "source": source, "rankings": table.rankings,
        "states": table.states, "keys": ["mix", "sampling", "side", "pixel"],
        "controls": [
            {"name": "k", "label": "k (neighbours)", "values": list(ks)},
            {"name": "mix", "label": "α (0 = position, 1 = colour)",
             "values": [float(v) for v in mixes]},
            {"name": "sampling", "label": "candidates", "values": list(ops.SAMPLINGS),
             "select": True},
            {"name": "side", "label": "s (sampled candidates: s×s)", "values": list(sides)},
            {"name": "pixel", "label": "query pixel (row, col)",
             "values": [f"({r}, {c})" for r, c in queries], "select": True},
        ],
        "panels": [{"fixed": {}}],
        "notes": [],
    }
    _set_start(data, start or {})
    return data


def _set_start(data: dict, start: Mapping[str, float | str]) -> None:
    for control in data["controls"]:
        if control["name"] in start:
            value, values = start[control["name"]], control["values"]
            control["start"] = (values.index(value) if isinstance(value, str) else
                                min(range(len(values)), key=lambda i: abs(values[i] - value)))


def k_sweep_states(image: SampleImage | Tensor, pixels: Sequence[Sequence[int]],
                   ks: Sequence[int] | None = None) -> dict:
    """States of the k-sweep, as data for :func:`live_html`: two panels, the ``k`` nearest
    pixels in position (α = 0) and in colour (α = 1), for ``k`` from 1 to ``n``.

    At ``k = 9`` the first panel is a 3×3 window (a convolution's), the second a ConvNN
    neighbourhood; at ``k = n`` both select every pixel, as attention does.
    """
    x, source = _as_image(image)
    height, width = x.shape[-2:]
    n = height * width
    queries = [_check_pixel(p, height, width) for p in pixels]
    if not queries:
        raise ValueError("pixels must name at least one (row, col)")
    if ks is None:
        ks = sorted({1, 2, 4, 9, 16, 25, 49, 100, 256, n // 2, n})
    check_int("max(ks)", max(ks), minimum=1, maximum=n)
    table = _LiveTable()
    for m, mix in enumerate((0.0, 1.0)):
        layer = make_layer(k=max(ks), mix=mix)
        for p, ranking in enumerate(_rankings(layer, x, [r * width + c for r, c in queries])):
            table.add((m, p), ranking, None, _how(mix))
    data = {
        "image": _live_image(x), "source": source, "rankings": table.rankings,
        "states": table.states, "keys": ["mix", "pixel"],
        "controls": [
            {"name": "k", "label": f"k (1 to n = {n})", "values": list(ks)},
            {"name": "pixel", "label": "query pixel (row, col)",
             "values": [f"({r}, {c})" for r, c in queries], "select": True},
        ],
        "panels": [{"fixed": {"mix": 0}}, {"fixed": {"mix": 1}}],
        "notes": [
            {"k": 1, "text": "k = 1: each pixel is its own only neighbour."},
            {"k": 9, "text": "k = 9: by position, the 3×3 window a convolution sees; by "
                             "colour, a ConvNN neighbourhood."},
            {"k": n, "text": f"k = n = {n}: both select every pixel, as attention does; "
                             "only the weights would differ."},
        ],
    }
    _set_start(data, {"k": 9})
    return data


_LIVE_CSS = """
.convnn-live{display:flex;flex-wrap:wrap;gap:10px 18px;align-items:flex-start;margin:.5em 0 1em}
.convnn-live-controls{flex:1 1 220px;max-width:300px;min-width:0}
.convnn-live-controls label{display:block;font-size:.85em;margin:.35em 0 .1em;
  overflow-wrap:anywhere}
.convnn-live-controls input,.convnn-live-controls select{width:100%;box-sizing:border-box}
.convnn-live-panels{display:flex;flex-wrap:wrap;gap:10px;flex:0 1 auto;min-width:0;max-width:100%}
.convnn-live-panel{flex:0 1 280px;min-width:0;max-width:100%;margin:0}
.convnn-live-panel canvas{width:100%;max-width:280px;height:auto;image-rendering:pixelated;
  display:block}
.convnn-live-panel figcaption{font-size:.8em;line-height:1.25;margin-top:.2em}
.convnn-live-note{flex:1 1 100%;font-size:.85em;margin:0}
"""

# Draws one state per panel: the image, darkened where not selected, neighbours outlined when
# there are at most 64, sampled candidates as white dots, the query as a red star (the look of
# neighbour_map).
_LIVE_JS = """
(function (root) {
  var data = JSON.parse(root.querySelector("script.convnn-live-data").textContent);
  var H = data.image.height, W = data.image.width, S = 9;
  var rgb = atob(data.image.rgb);
  var u16 = function (b64) {
    var s = atob(b64), out = [];
    for (var i = 0; i < s.length; i += 2) out.push(s.charCodeAt(i) | (s.charCodeAt(i + 1) << 8));
    return out;
  };
  var rankings = data.rankings.map(u16);
  var controls = {}, box = root.querySelector(".convnn-live-controls");
  data.controls.forEach(function (c) {
    var label = document.createElement("label"), input;
    if (c.select) {
      input = document.createElement("select");
      c.values.forEach(function (v, i) {
        var o = document.createElement("option"); o.value = i; o.textContent = v;
        input.appendChild(o);
      });
    } else {
      input = document.createElement("input");
      input.type = "range"; input.min = 0; input.max = c.values.length - 1; input.step = 1;
    }
    input.value = c.start || 0; input.name = c.name;
    label.textContent = c.label;
    var shown = document.createElement("output");
    label.appendChild(document.createTextNode(": ")); label.appendChild(shown);
    box.appendChild(label); box.appendChild(input);
    controls[c.name] = {input: input, values: c.values, shown: shown};
    input.addEventListener("input", draw); input.addEventListener("change", draw);
  });
  var index = function (name) { return +controls[name].input.value; };
  var panels = data.panels.map(function (p) {
    var fig = document.createElement("figure"), canvas = document.createElement("canvas");
    fig.className = "convnn-live-panel";
    canvas.width = W * S; canvas.height = H * S;
    var cap = document.createElement("figcaption");
    fig.appendChild(canvas); fig.appendChild(cap);
    root.querySelector(".convnn-live-panels").appendChild(fig);
    return {fixed: p.fixed, canvas: canvas, caption: cap};
  });
  var note = root.querySelector(".convnn-live-note");
  function star(ctx, x, y, r) {
    ctx.beginPath();
    for (var i = 0; i < 10; i++) {
      var a = -Math.PI / 2 + i * Math.PI / 5, d = i % 2 ? r * 0.45 : r;
      ctx.lineTo(x + d * Math.cos(a), y + d * Math.sin(a));
    }
    ctx.closePath(); ctx.fillStyle = "#d62728"; ctx.fill();
    ctx.lineWidth = 1.5; ctx.strokeStyle = "white"; ctx.stroke();
  }
  function draw() {
    var k = controls.k.values[index("k")];
    Object.keys(controls).forEach(function (name) {
      controls[name].shown.textContent = controls[name].values[index(name)];
    });
    var states = [];
    panels.forEach(function (panel) {
      var key = data.keys.map(function (name) {
        return name in panel.fixed ? panel.fixed[name] : index(name);
      }).join(",");
      var state = data.states[key], rank = rankings[state.rank];
      var shown = Math.min(k, rank.length), chosen = {};
      rank.slice(0, shown).forEach(function (i) { chosen[i] = true; });
      var ctx = panel.canvas.getContext("2d");
      for (var i = 0; i < H * W; i++) {
        var x = (i % W) * S, y = Math.floor(i / W) * S;
        ctx.fillStyle = "rgb(" + rgb.charCodeAt(3 * i) + "," + rgb.charCodeAt(3 * i + 1) + ","
          + rgb.charCodeAt(3 * i + 2) + ")";
        ctx.fillRect(x, y, S, S);
        if (!chosen[i]) { ctx.fillStyle = "rgba(0,0,0,0.68)"; ctx.fillRect(x, y, S, S); }
      }
      if (shown <= 64) {
        ctx.strokeStyle = "#ff7f0e"; ctx.lineWidth = 1.2;
        rank.slice(0, shown).forEach(function (i) {
          ctx.strokeRect((i % W) * S + 0.6, Math.floor(i / W) * S + 0.6, S - 1.2, S - 1.2);
        });
      }
      if (state.cand >= 0) {
        rankings[state.cand].forEach(function (i) {
          ctx.beginPath();
          ctx.arc((i % W + 0.5) * S, (Math.floor(i / W) + 0.5) * S, S * 0.22, 0, 2 * Math.PI);
          ctx.fillStyle = "white"; ctx.fill(); ctx.lineWidth = 1; ctx.strokeStyle = "black";
          ctx.stroke();
        });
      }
      var q = rank[0];  // each position is its own first neighbour
      star(ctx, (q % W + 0.5) * S, (Math.floor(q / W) + 0.5) * S, S * 0.95);
      panel.caption.textContent = "k = " + shown + ", " + state.title
        + (shown < k ? " (k capped at s² = " + rank.length + ")" : "");
      states.push(key + ":" + shown);
    });
    root.setAttribute("data-state", states.join(" "));
    var text = "";
    data.notes.forEach(function (n) { if (n.k === k) text = n.text; });
    if (note) note.textContent = text;
  }
  draw();
})(document.currentScript.parentElement);
"""


def live_html(data: dict) -> str:
    """A self-contained HTML fragment that draws ``data`` (from :func:`explorer_states` or
    :func:`k_sweep_states`) and redraws it when a control moves: no kernel, no network.

    The controls come first, so on a narrow page (below about 520 px) they stack above the
    figure. The root element's ``data-state`` attribute names the state shown.
    """
    import hashlib
    import html
    import json

    payload = json.dumps(data, separators=(",", ":")).replace("</", "<\\/")
    uid = "convnn-live-" + hashlib.sha1(payload.encode()).hexdigest()[:10]
    caption = '<p class="convnn-live-note"></p>'
    source = (f'<p class="convnn-live-note">Image: {html.escape(data["source"])}</p>'
              if data.get("source") else "")
    return (f'<div class="convnn-live" id="{uid}"><style>{_LIVE_CSS}</style>'
            f'<script type="application/json" class="convnn-live-data">{payload}</script>'
            '<div class="convnn-live-controls"></div><div class="convnn-live-panels"></div>'
            f"{caption}{source}<script>{_LIVE_JS}</script></div>")


class LiveFigure:
    """A figure that a page redraws on its own: shown as :func:`live_html` of ``data``."""

    def __init__(self, data: dict) -> None:
        self.data = data

    def _repr_html_(self) -> str:
        return live_html(self.data)


def k_sweep(image: SampleImage | Tensor, pixels: Sequence[Sequence[int]]) -> LiveFigure:
    """A live figure: one ``k`` slider from 1 to ``n`` over two panels, the neighbours of a
    pixel chosen by position (convolution at ``k = 9``) and by colour (ConvNN), meeting at
    ``k = n`` (attention). See :func:`k_sweep_states`."""
    return LiveFigure(k_sweep_states(image, pixels))


# --------------------------------------------------------------------------- mechanism drawings
# Schematic drawings of how the package computes, each next to the text that teaches it. The
# small numbers in them (neighbour indices, scores, candidate draws) come from the package.
_PALETTE = ("#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1",
            "#ff9da7", "#9c755f", "#bab0ac", "#86bcb6", "#d37295")


def _canvas(width: float, height: float) -> tuple[Figure, Axes]:
    fig = BookFigure(figsize=(width, height), dpi=100)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, width)
    ax.set_ylim(height, 0)
    ax.axis("off")
    return fig, ax


def _box(ax: Axes, x: float, y: float, w: float, h: float, text: str = "", *,
         colour: str = "white", edge: str = "0.25", size: float = 9, **kw) -> None:
    from matplotlib.patches import FancyBboxPatch

    ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.02,rounding_size=0.06",
                                facecolor=colour, edgecolor=edge, linewidth=1.0, **kw))
    if text:
        ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=size)


def _arrow(ax: Axes, start: tuple[float, float], end: tuple[float, float], text: str = "",
           *, size: float = 8, side: str = "right") -> None:
    ax.annotate("", xy=end, xytext=start,
                arrowprops={"arrowstyle": "-|>", "color": "0.3", "linewidth": 1.1,
                            "shrinkA": 2, "shrinkB": 2})
    if text:
        mx, my = (start[0] + end[0]) / 2, (start[1] + end[1]) / 2
        ax.text(mx + (0.08 if side == "right" else -0.08), my, text, fontsize=size,
                ha="left" if side == "right" else "right", va="center", color="0.2")


def _cells(ax: Axes, x: float, y: float, colours: Sequence[str], *, cell: float = 0.28,
           labels: Sequence[str] | None = None, rows: int = 1) -> None:
    """A row of ``len(colours)`` columns, ``rows`` cells high, optionally labelled."""
    for i, c in enumerate(colours):
        for r in range(rows):
            ax.add_patch(Rectangle((x + i * cell, y + r * cell), cell, cell, facecolor=c,
                                   edgecolor="white", linewidth=0.8))
        if labels is not None:
            ax.text(x + (i + 0.5) * cell, y + rows * cell / 2, labels[i], ha="center",
                    va="center", fontsize=7, color="white", fontweight="bold")


def gather_conv1d_drawing(n: int = 5, k: int = 3, seed: int = 0) -> Figure:
    """Expand → gather → ``Conv1d(kernel k, stride k)``: how the reference path aggregates.

    ``n`` positions with ``C`` channels each (one colour per position); the ``k`` neighbours
    of each (from :func:`convnn.ops.select_neighbours` on random 2-D features, each its own
    first) are gathered side by side into ``[C, n·k]``; a ``Conv1d`` with kernel and stride
    ``k`` then meets the ``j``-th neighbour of every query with the same tap ``W_j``.
    """
    check_int("n", n, minimum=2, maximum=len(_PALETTE))
    check_int("k", k, minimum=1, maximum=n)
    feats = torch.rand(1, n, 2, generator=torch.Generator().manual_seed(seed))
    idx, _ = ops.select_neighbours(feats, feats, k, "euclidean", self_first=True,
                                   with_scores=False)
    idx = idx[0].tolist()  # [n][k]
    cell, rows = 0.3, 3
    fig, ax = _canvas(8.2, 5.7)
    x0 = 0.3
    ax.text(x0, 0.3, r"1. values  $X \in \mathbb{R}^{C\times n}$: one column per position", fontsize=9,
            va="center")
    _cells(ax, x0, 0.55, _PALETTE[:n], cell=cell, rows=rows,
           labels=[str(i) for i in range(n)])
    ax.text(x0 + n * cell + 0.4, 0.55 + rows * cell / 2,
            "neighbours (rank 1 … k), from the selection:\n" + "\n".join(
                f"  query {q}: {', '.join(map(str, row))}" for q, row in enumerate(idx)),
            fontsize=8, va="center", family="monospace")
    y1 = 2.3
    ax.text(x0, y1 - 0.25, f"2. expand k = {k} times and gather:  [C, n·k], query by query",
            fontsize=9, va="center")
    gathered = [_PALETTE[j] for row in idx for j in row]
    _cells(ax, x0, y1, gathered, cell=cell, rows=rows,
           labels=[str(j) for row in idx for j in row])
    for q in range(n):  # brackets: one group of k columns per query
        left = x0 + q * k * cell
        ax.plot([left + 0.03, left + k * cell - 0.03], [y1 + rows * cell + 0.08] * 2,
                color="0.3", linewidth=1.2)
        ax.text(left + k * cell / 2, y1 + rows * cell + 0.22, f"query {q}", ha="center",
                fontsize=7.5)
    y2 = 4.15
    ax.text(x0, y2 - 0.4, f"3. Conv1d(C → O, kernel {k}, stride {k}): the taps "
            rf"$W_1 \dots W_{k} \in \mathbb{{R}}^{{O\times C}}$ meet rank 1 … {k} of every query",
            fontsize=9, va="center")
    for q in range(n):
        left = x0 + q * k * cell
        for j in range(k):
            ax.add_patch(Rectangle((left + j * cell, y2 - 0.12), cell, 0.2,
                                   facecolor=str(0.35 + 0.5 * j / max(k - 1, 1)),
                                   edgecolor="white", linewidth=0.6))
            if q == 0:
                ax.text(left + (j + 0.5) * cell, y2 - 0.02, f"W{j + 1}", ha="center",
                        va="center", fontsize=6.5, color="white")
        _arrow(ax, (left + k * cell / 2, y2 + 0.1), (x0 + n * k * cell + 0.9 + q * cell + cell / 2,
                                                     y2 + 0.75))
    out_x = x0 + n * k * cell + 0.9
    _cells(ax, out_x, y2 + 0.75, ["0.45"] * n, cell=cell, rows=2,
           labels=[str(q) for q in range(n)])
    ax.text(out_x + n * cell + 0.15, y2 + 0.75 + cell, "output  [O, n]:\n"
            r"$y_i = \sum_j W_j\, x_{\mathrm{nbr}(i, j)}$", fontsize=8.5, va="center")
    return fig


def branching_drawing(ratio: float = 0.5, out_channels: int = 8) -> Figure:
    """The branching layer: ``⌊λ·O⌋`` output channels from a ConvNN branch, the rest from a
    ``Conv2d``, both fed every input channel, concatenated and mixed by a 1×1 convolution."""
    check_int("out_channels", out_channels, minimum=2, maximum=16)
    convnn_channels = int(ratio * out_channels)
    conv_channels = out_channels - convnn_channels
    fig, ax = _canvas(8.2, 3.2)
    _box(ax, 0.2, 1.15, 1.3, 0.9, "input\n[C, H, W]", colour="#f0f0f0")
    _box(ax, 2.3, 0.3, 2.1, 0.9, f"Conv2d 3×3\n{conv_channels} = O − ⌊λO⌋ channels",
         colour="#cfe0f1", size=8.5)
    _box(ax, 2.3, 2.0, 2.1, 0.9, f"ConvNN2d, k = 9\n{convnn_channels} = ⌊λO⌋ channels",
         colour="#fbd9b5", size=8.5)
    _arrow(ax, (1.5, 1.45), (2.3, 0.75))
    _arrow(ax, (1.5, 1.75), (2.3, 2.45))
    colours = ["#4e79a7"] * conv_channels + ["#f28e2b"] * convnn_channels
    cell = 0.22
    x = 4.95
    top = 1.6 - out_channels * cell / 2
    for i, c in enumerate(colours):
        ax.add_patch(Rectangle((x, top + i * cell), 0.5, cell, facecolor=c, edgecolor="white"))
    ax.text(x + 0.25, top - 0.15, "concat", ha="center", fontsize=8)
    _arrow(ax, (4.4, 0.75), (x, top + conv_channels * cell / 2))
    _arrow(ax, (4.4, 2.45), (x, top + (conv_channels + convnn_channels / 2) * cell))
    _box(ax, 6.0, 1.15, 1.0, 0.9, "Conv2d\n1×1 (mix)", colour="#e6e6e6", size=8.5)
    _arrow(ax, (x + 0.5, 1.6), (6.0, 1.6))
    _arrow(ax, (7.0, 1.6), (7.6, 1.6))
    ax.text(7.65, 1.6, f"O = {out_channels}\nchannels", fontsize=8.5, va="center")
    ax.text(4.1, 3.12, f"λ = {ratio:g}: λ = 0 is a convolution (plus the 1×1 mix), "
            "λ = 1 pure ConvNN", ha="center", fontsize=8.5)
    return fig


def blocked_topk_drawing(n: int = 12, block: int = 4, k: int = 3, seed: int = 0) -> Figure:
    """Blocked top-k: the scores of one block of query rows at a time, each row's top ``k``
    kept, the block thrown away; the ``n × m`` score matrix never exists whole.

    The scores are dot products of random features and the kept entries are those of
    :func:`convnn.ops.select_neighbours` (checked in the drawing: they must be each row's
    largest ``k``).
    """
    check_int("block", block, minimum=1, maximum=n)
    feats = torch.randn(1, n, 4, generator=torch.Generator().manual_seed(seed))
    idx, _ = ops.select_neighbours(feats, feats, k, "dot", with_scores=False)
    scores = (feats[0] @ feats[0].T).numpy()
    kept = idx[0].numpy()
    if not all(set(kept[i]) == set(np.argsort(-scores[i])[:k]) for i in range(n)):
        raise AssertionError("select_neighbours did not keep each row's largest scores")
    current = 1  # the block being computed
    cell = 0.22
    fig, ax = _canvas(8.2, 3.9)
    x0, y0 = 0.9, 0.55
    ax.text(x0 + n * cell / 2, 0.3, f"scores  [n, m] = [{n}, {n}]", ha="center", fontsize=9)
    from matplotlib import colormaps

    cmap = colormaps["viridis"]
    lo, hi = scores.min(), scores.max()
    for i in range(n):
        b = i // block
        for j in range(n):
            if b == current:
                face, edge = cmap((scores[i, j] - lo) / (hi - lo)), "white"
            elif b < current:
                face, edge = "0.93", "white"
            else:
                face, edge = "white", "0.85"
            ax.add_patch(Rectangle((x0 + j * cell, y0 + i * cell), cell, cell, facecolor=face,
                                   edgecolor=edge, linewidth=0.6))
        if b == current:
            for j in kept[i]:
                ax.add_patch(Rectangle((x0 + j * cell, y0 + i * cell), cell, cell, fill=False,
                                       edgecolor=NEIGHBOUR_COLOUR, linewidth=1.8))
    for b, what in enumerate(("done: discarded", "this block", "not yet computed")):
        if b * block >= n:
            break
        ax.text(x0 - 0.1, y0 + (b * block + min(block, n - b * block) / 2) * cell, what,
                ha="right", va="center", fontsize=7.5)
    # The index table [n, k]: filled for the blocks done and the current one.
    tx = x0 + n * cell + 1.6
    ax.text(tx + k * cell / 2, 0.3, f"indices  [n, k] = [{n}, {k}]", ha="center", fontsize=9)
    for i in range(n):
        for j in range(k):
            filled = i // block <= current
            ax.add_patch(Rectangle((tx + j * cell, y0 + i * cell), cell * 1.4, cell,
                                   facecolor="#fbd9b5" if filled else "white",
                                   edgecolor="0.6", linewidth=0.5))
            if filled:
                ax.text(tx + (j + 0.7) * cell, y0 + (i + 0.5) * cell, str(kept[i][j]),
                        ha="center", va="center", fontsize=6.5)
        ax.text(tx + k * cell * 1.4 + 0.05, y0 + (i + 0.5) * cell, "", fontsize=6)
    mid = y0 + (current * block + block / 2) * cell
    _arrow(ax, (x0 + n * cell + 0.1, mid), (tx - 0.1, mid))
    ax.text((x0 + n * cell + tx) / 2, mid - 0.1, "top-k per row", ha="center", va="bottom",
            fontsize=8)
    ax.text(x0 + n * cell / 2 + 1.5, y0 + n * cell + 0.35,
            f"memory: one block of {block} rows × m scores at a time, plus n·k indices; "
            "never n·m scores at once", ha="center", fontsize=8.5)
    return fig


def vit_block_drawing() -> Figure:
    """One pre-norm ViT block with its pluggable token mixer (the keys of
    :data:`convnn.models.MIXERS`); only the mixer changes between the experiments."""
    from .models import MIXERS

    fig, ax = _canvas(8.2, 4.6)
    x, w = 0.8, 2.6
    c = x + w / 2
    _box(ax, x, 0.2, w, 0.4, "tokens  [n, d]", colour="#f0f0f0")
    _box(ax, x, 0.85, w, 0.4, "LayerNorm", colour="#e6e6e6")
    _box(ax, x, 1.5, w, 0.6, "token mixer", colour="#fbd9b5", size=10)
    _box(ax, x, 2.75, w, 0.4, "LayerNorm", colour="#e6e6e6")
    _box(ax, x, 3.4, w, 0.45, "MLP  d → 4d → d (GELU)", colour="#cfe0f1")
    plus = {"boxstyle": "circle,pad=0.1", "fc": "white", "ec": "0.4"}
    for y in (2.42, 4.15):
        ax.text(c, y, "+", ha="center", va="center", fontsize=11, color="0.2", bbox=plus)
    for a, b in ((0.6, 0.85), (1.25, 1.5), (2.1, 2.3), (2.54, 2.75), (3.15, 3.4), (3.85, 4.03)):
        _arrow(ax, (c, a), (c, b))
    line = {"color": "0.4", "linewidth": 1.0}
    ax.plot([x + w, x + w + 0.35, x + w + 0.35], [0.4, 0.4, 2.42], **line)  # residual 1
    _arrow(ax, (x + w + 0.35, 2.42), (c + 0.14, 2.42))
    ax.plot([c - 0.14, x - 0.35, x - 0.35], [2.42, 2.42, 4.15], **line)  # residual 2
    _arrow(ax, (x - 0.35, 4.15), (c - 0.14, 4.15))
    ax.text(x + w + 0.45, 1.4, "residual", fontsize=7.5, rotation=90, va="center")
    ax.text(x - 0.45, 3.3, "residual", fontsize=7.5, rotation=90, va="center", ha="right")
    ax.text(c + 0.25, 4.4, "to the next block", fontsize=7.5, va="center")
    names = list(MIXERS)
    ax.text(4.3, 0.35, "pluggable mixers (mixer=…):", fontsize=9, fontweight="bold")
    for i, name in enumerate(names):
        cls = MIXERS[name][0].__name__
        ax.text(4.4, 0.7 + i * 0.3, f"{name:<18} {cls}", fontsize=7.5, family="monospace")
    ax.annotate("", xy=(x + w, 1.8), xytext=(4.3, 0.7 + (len(names) - 1) * 0.15 + 0.05),
                arrowprops={"arrowstyle": "-|>", "color": NEIGHBOUR_COLOUR, "linewidth": 1.3,
                            "connectionstyle": "arc3,rad=0.2"})
    return fig


def candidates_drawing(size: int = 12, side: int = 4, seed: int = 0) -> Figure:
    """Where sampled candidates come from, on an ``size × size`` map: all positions; random
    ``s × s`` (a new draw at every training step, one fixed draw from ``seed`` in evaluation);
    an evenly spaced ``s × s`` grid. The draws are the layers' own
    (``ConvNN2d.candidate_positions``)."""
    check_int("side", side, minimum=1, maximum=size)
    random_layer = make_layer(sampling="random", candidates=side, seed=seed)
    spatial = make_layer(sampling="spatial", candidates=side).candidate_positions(size, size)
    fixed = random_layer.candidate_positions(size, size)
    torch.manual_seed(seed)
    random_layer.train()
    steps = [random_layer.candidate_positions(size, size) for _ in range(2)]
    random_layer.eval()
    panels = [(f"all: every position\nm = n = {size * size}", None),
              ("random, training step 1", steps[0]), ("random, training step 2", steps[1]),
              (f"random, evaluation:\none fixed draw (seed {seed})", fixed),
              (f"spatial: an evenly spaced\n{side}×{side} grid", spatial)]
    fig = BookFigure(figsize=(_PAGE_WIDTH, 2.2), dpi=100, layout="constrained")
    for i, (title, cand) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        grid = np.full((size, size), 0.35 if cand is not None else 0.8)
        ax.imshow(grid, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        if cand is not None:
            rows, cols = np.divmod(cand.numpy(), size)
            ax.scatter(cols, rows, s=16, c="white", edgecolors="black", linewidths=0.6)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(title, fontsize=8)
    _footer(fig, f"m = s² = {side * side} candidates per query instead of n = {size * size}: "
                 "every query searches the same m")
    return fig
