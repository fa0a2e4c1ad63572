"""convnn.viz: the book's figures and widgets build, and draw what the layers select.

Figures are checked by what they contain (the darkening mask is transparent exactly at the
selected positions, one outline per neighbour), not by pixels. Nothing here needs a display,
the network or, except where marked, the CIFAR data.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from matplotlib.patches import Rectangle
from torch import nn

from convnn import ConvNN2d, ConvNN2dOptions, viz
from convnn.data import DatasetNotFoundError

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def image() -> torch.Tensor:
    """A random 16x16 RGB image in [0, 1] (no data needed)."""
    return torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(0))


@pytest.fixture()
def no_cifar(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Empty data and cache folders: CIFAR-10 cannot be found (and is never downloaded)."""
    (tmp_path / "data").mkdir()
    (tmp_path / "cache").mkdir()
    monkeypatch.setenv("CONVNN_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("CONVNN_CACHE_DIR", str(tmp_path / "cache"))
    viz._cifar10_test.cache_clear()
    yield
    viz._cifar10_test.cache_clear()


def mask_of(ax) -> np.ndarray:
    (mask,) = [im for im in ax.get_images() if im.get_gid() == "selection"]
    return np.asarray(mask.get_array())


def outlines(ax) -> list[Rectangle]:
    return [p for p in ax.patches if p.get_gid() == "neighbour"]


# --------------------------------------------------------------------------- sample images
def test_sample_image_from_matplotlib() -> None:
    sample = viz.sample_image(size=24, source="matplotlib")
    assert sample.kind == "matplotlib"
    assert "grace_hopper.jpg" in sample.source and "24×24" in sample.source
    assert sample.image.shape == (3, 24, 24) and sample.image.dtype == torch.float32
    assert 0.0 <= sample.image.min() and sample.image.max() <= 1.0
    assert sample.image.std() > 0.05  # a real photograph, not a blank


def test_sample_image_falls_back_without_cifar(no_cifar) -> None:
    sample = viz.sample_image(size=32)  # CONVNN_OFFLINE=1 (conftest): no download is tried
    assert sample.kind == "matplotlib"
    assert sample.image.shape == (3, 32, 32)
    assert "CIFAR-10 not found locally, and downloads are off" in sample.source
    assert "stand-in photograph" in sample.source


def test_sample_image_downloads_cifar_when_missing(no_cifar, monkeypatch) -> None:
    """Online (e.g. on Colab) a missing CIFAR-10 is downloaded, never replaced silently."""
    import convnn.data

    calls = []
    fake = convnn.data.synthetic_dataset(n_train=20, n_test=30, num_classes=10, image_size=32)

    def fake_load(name, *, download=False, **kwargs):
        calls.append(download)
        if not download:
            raise DatasetNotFoundError("not here")
        return fake

    monkeypatch.setattr(convnn.data, "load_dataset", fake_load)
    sample = viz.sample_image(label="cat", download=True)
    assert calls == [False, True]
    assert sample.kind == "cifar10" and sample.source.endswith("(cat)")
    position = int(sample.source.split()[3])
    assert fake.test_labels[position] == convnn.data.CIFAR10_CLASSES.index("cat")


def test_sample_image_says_when_the_download_failed(no_cifar, monkeypatch) -> None:
    import convnn.data

    def offline(name, **kwargs):
        raise DatasetNotFoundError("Downloading it with torchvision failed: URLError")

    monkeypatch.setattr(convnn.data, "load_dataset", offline)
    sample = viz.sample_image(download=True)
    assert sample.kind == "matplotlib"
    assert "the download failed (offline?)" in sample.source


def test_sample_image_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="label must be one of"):
        viz.sample_image(label="zebra", source="matplotlib")
    with pytest.raises(ValueError, match="download must be True, False or None"):
        viz.sample_image(download="yes", source="matplotlib")


def test_sample_image_cifar_only_raises_without_cifar(no_cifar) -> None:
    with pytest.raises(DatasetNotFoundError):
        viz.sample_image(source="cifar10")


@pytest.mark.dataset
@pytest.mark.skipif(not os.environ.get("CONVNN_DATA_DIR"), reason="needs CONVNN_DATA_DIR")
def test_sample_image_from_cifar() -> None:
    sample = viz.sample_image()  # the first horse of the test split
    if sample.kind != "cifar10":
        pytest.skip(f"CIFAR-10 is not readable here ({sample.source})")
    assert sample.source.endswith("(horse)")
    assert viz.sample_image(7000, label=None).source == "CIFAR-10 test image 7000 (horse)"
    assert sample.image.shape == (3, 32, 32)
    small = viz.sample_image(size=16)
    assert small.image.shape == (3, 16, 16) and "resized to 16×16" in small.source


@pytest.mark.parametrize("kwargs", [{"source": "web"}, {"size": 1}, {"index": -1}])
def test_sample_image_bad_arguments(kwargs: dict) -> None:
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        viz.sample_image(**kwargs)


# --------------------------------------------------------------------------- neighbour maps
@pytest.mark.parametrize(
    "options",
    [
        {"k": 1},
        {"k": 9},
        {"k": 9, "mix": 0.0},
        {"k": 30, "mix": 0.5},
        {"k": 100},
        {"k": 9, "sampling": "random", "candidates": 6},
        {"k": 12, "sampling": "spatial", "candidates": 4},
    ],
    ids=str,
)
def test_neighbour_map_highlights_k_pixels(image: torch.Tensor, options: dict) -> None:
    layer = viz.make_layer(**options)
    fig = viz.neighbour_map(image, layer, pixel=(5, 7))
    (ax,) = fig.axes
    chosen = viz.selected_pixels(layer, image, (5, 7))
    k = options["k"]
    assert len(chosen) == len(set(chosen)) == k
    mask = mask_of(ax)
    assert mask.shape == (16, 16, 4)  # make_layer has no padding
    selected = np.argwhere(mask[..., 3] == 0)
    assert len(selected) == k
    assert {tuple(rc) for rc in selected} == set(chosen)
    assert len(outlines(ax)) == (k if k <= 64 else 0)
    assert chosen[0] == (5, 7) or options.get("mix", 1.0) == 0.0  # each pixel comes first
    assert fig._repr_png_().startswith(PNG)


def test_neighbour_map_accepts_options_and_default(image: torch.Tensor) -> None:
    fig = viz.neighbour_map(image, {"k": 5, "mix": 0.3}, pixel=(0, 0))
    assert (mask_of(fig.axes[0])[..., 3] == 0).sum() == 5
    fig = viz.neighbour_map(image)  # make_layer(): 9 neighbours by colour
    assert (mask_of(fig.axes[0])[..., 3] == 0).sum() == 9


def test_convolution_limit_selects_the_window_and_padding(image: torch.Tensor) -> None:
    layer = ConvNN2d.from_conv2d(nn.Conv2d(3, 1, 3, padding=1))
    window = {(r, c) for r in (-1, 0, 1) for c in (-1, 0, 1)}
    assert set(viz.selected_pixels(layer, image, (0, 0))) == window
    fig = viz.neighbour_map(image, layer, pixel=(0, 0))
    mask = mask_of(fig.axes[0])
    assert mask.shape == (18, 18, 4)  # the padded map is drawn
    assert {(r - 1, c - 1) for r, c in np.argwhere(mask[..., 3] == 0)} == window
    layer5 = ConvNN2d.from_conv2d(nn.Conv2d(3, 1, 5, padding=2))
    chosen = viz.selected_pixels(layer5, image, (8, 8))
    assert set(chosen) == {(r, c) for r in range(6, 11) for c in range(6, 11)}


@pytest.mark.parametrize("sampling", ["random", "spatial"])
def test_candidates_are_what_the_layer_searches(image: torch.Tensor, sampling: str) -> None:
    layer = viz.make_layer(k=6, sampling=sampling, candidates=5)
    cands = viz.candidate_pixels(layer, 16, 16)
    assert len(cands) == len(set(cands)) == 25
    assert all(0 <= r < 16 and 0 <= c < 16 for r, c in cands)
    for pixel in [(0, 0), (5, 7), (15, 15)]:
        chosen = viz.selected_pixels(layer, image, pixel)
        assert chosen[0] == pixel
        assert set(chosen[1:]) <= set(cands)
    fig = viz.neighbour_map(image, layer, pixel=(5, 7))
    dots = [c for c in fig.axes[0].collections if c.get_gid() == "candidates"]
    assert len(dots) == 1 and len(dots[0].get_offsets()) == 25


def test_no_candidates_with_all_or_resampling() -> None:
    assert viz.candidate_pixels(viz.make_layer(k=4), 8, 8) is None
    layer = ConvNN2d(3, 1, k=4, sampling="random", candidates=3,
                     options=ConvNN2dOptions(eval_sampling="resample"))
    assert viz.candidate_pixels(layer, 8, 8) is None


def test_selected_pixels_restores_training_mode(image: torch.Tensor) -> None:
    layer = viz.make_layer(k=4).train()
    viz.selected_pixels(layer, image, (1, 1))
    assert layer.training


def test_neighbour_panels_and_grid(image: torch.Tensor) -> None:
    fig = viz.neighbour_panels(image, {"a": {"k": 3}, "b": ({"k": 4}, (0, 0)), "c": {"k": 5}},
                               pixel=(8, 8), ncols=2)
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert [int((mask_of(ax)[..., 3] == 0).sum()) for ax in visible] == [3, 4, 5]
    fig = viz.neighbour_grid(image, (8, 8), ks=(2, 7), mixes=(0.0, 0.5, 1.0))
    counts = [int((mask_of(ax)[..., 3] == 0).sum()) for ax in fig.axes]
    assert counts == [2, 7] * 3
    assert fig._repr_png_().startswith(PNG)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda img: viz.neighbour_map(img, {"k": 3}, pixel=(16, 0)), "pixel"),
        (lambda img: viz.neighbour_map(img[:2], {"k": 3}), "image"),
        (lambda img: viz.neighbour_map(img, nn.Conv2d(3, 1, 3)), "layer"),
        (lambda img: viz.neighbour_panels(img, {}), "panels"),
        (lambda img: viz.patchify(img, 5), "patch"),
    ],
)
def test_bad_arguments_raise(image: torch.Tensor, call, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        call(image)


# --------------------------------------------------------------------------- explorer
def test_explorer_builds_and_redraws_without_a_display(image: torch.Tensor) -> None:
    import ipywidgets as widgets

    ui = viz.explorer(image, pixel=(3, 4), k=9, mix=0.5, live=False)
    assert isinstance(ui, widgets.interactive)
    assert set(ui.controls) == {"k", "mix", "sampling", "candidates", "row", "col"}
    assert bytes(ui.image.value).startswith(PNG)
    assert len(ui.state["selection"]) == 9 and ui.state["selection"][0] == (3, 4)
    first = bytes(ui.image.value)
    ui.controls["k"].value = 20
    assert len(ui.state["selection"]) == 20 and bytes(ui.image.value) != first
    ui.controls["row"].value = 10
    assert ui.state["selection"][0] == (10, 4)
    ui.controls["candidates"].value = 3
    ui.controls["sampling"].value = "spatial"  # k = 20 > 3² is capped at 9
    assert len(ui.state["selection"]) == 9
    sliders = [w for w in ui.controls.values() if isinstance(w, widgets.IntSlider)]
    assert all(not s.continuous_update for s in sliders)


def _live_ranking(data: dict, key: str) -> list[int]:
    import base64

    import numpy as np

    code = data["rankings"][data["states"][key]["rank"]]
    return np.frombuffer(base64.b64decode(code), dtype="<u2").tolist()


def test_live_explorer_states_are_what_the_layers_select(image: torch.Tensor) -> None:
    """Each state of the static explorer, cut at any k of its slider, is what the layer with
    that k selects (top-k is a prefix of top-max(k)); sampled states carry their candidates."""
    pixels = [(3, 4), (10, 12)]
    data = viz.explorer_states(image, pixels, ks=(1, 4, 9, 30), mixes=(0.0, 0.5, 1.0),
                               sides=(3, 5))
    mixes, samplings, sides = (c["values"] for c in data["controls"][1:4])
    assert len(data["states"]) == len(mixes) * len(samplings) * len(sides) * len(pixels)
    checked = 0
    for (m, a, s, p) in [(0, 0, 0, 1), (1, 0, 1, 0), (2, 1, 0, 1), (1, 2, 1, 0), (2, 2, 0, 0)]:
        ranking = _live_ranking(data, f"{m},{a},{s},{p}")
        for k in (1, 4, 9, 30):
            if samplings[a] != "all" and k > sides[s] ** 2:
                continue
            layer = viz.make_layer(k=k, mix=mixes[m], sampling=samplings[a],
                                   candidates=sides[s])
            chosen = viz.selected_pixels(layer, image, pixels[p])
            assert sorted(r * 16 + c for r, c in chosen) == sorted(ranking[:k]), (m, a, s, p, k)
            assert ranking[0] == pixels[p][0] * 16 + pixels[p][1]
            checked += 1
        state = data["states"][f"{m},{a},{s},{p}"]
        assert (state["cand"] >= 0) == (samplings[a] != "all")
    assert checked >= 15
    html = viz.live_html(data)
    assert html.count("<script") == 2 and "http" not in html  # nothing fetched


def test_explorer_carries_its_live_twin(image: torch.Tensor,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    states = viz.explorer_states  # a small grid: the full one is checked above
    monkeypatch.setattr(viz, "explorer_states", lambda *args, **kw: states(
        *args, ks=(1, 9), mixes=(0.5,), sides=(3,), **kw))
    ui = viz.explorer(image, pixel=(3, 4), k=9, live_pixels=[(3, 4)])
    bundle = ui._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle
    assert bundle["text/html"] == ui.live_html and 'class="convnn-live"' in ui.live_html
    assert viz.explorer(image, live=False)._repr_mimebundle_().get("text/html") is None


def test_k_sweep_meets_at_attention(image: torch.Tensor) -> None:
    data = viz.k_sweep_states(image, [(5, 5)])
    assert data["controls"][0]["values"][-1] == 256
    by_position, by_colour = (_live_ranking(data, f"{m},0") for m in (0, 1))
    assert sorted(by_position) == sorted(by_colour) == list(range(256))  # k = n: all
    window = {(r, c) for r in (4, 5, 6) for c in (4, 5, 6)}
    assert {divmod(i, 16) for i in by_position[:9]} == window  # k = 9: a 3x3 window
    assert "convnn-live" in viz.k_sweep(image, [(5, 5)])._repr_html_()


def test_explorer_rejects_bad_settings(image: torch.Tensor) -> None:
    with pytest.raises(ValueError, match="sampling"):
        viz.explorer(image, sampling="grid")
    with pytest.raises(ValueError, match="pixel"):
        viz.explorer(image, pixel=(20, 0))


# --------------------------------------------------------------------------- other figures
def test_patchify_is_raster_order(image: torch.Tensor) -> None:
    tokens = viz.patchify(image, 4)
    assert tokens.shape == (16, 48)
    assert torch.equal(tokens[0], image[:, :4, :4].reshape(-1))
    assert torch.equal(tokens[1], image[:, :4, 4:8].reshape(-1))
    assert torch.equal(tokens[4], image[:, 4:8, :4].reshape(-1))


def test_token_panels(image: torch.Tensor) -> None:
    dense = torch.softmax(torch.randn(16), dim=0)
    top = torch.zeros(16)
    top[[1, 5, 6]] = torch.tensor([0.5, 0.3, 0.2])
    fig = viz.token_panels(image, 4, 5, {"dense": dense, "top-3": top})
    by_title = {ax.get_title(): ax for ax in fig.axes}  # the colour bar has no title
    dense_ax, top_ax = by_title["dense"], by_title["top-3"]
    assert not outlines(dense_ax)
    assert len(outlines(top_ax)) == 3
    assert fig._repr_png_().startswith(PNG)
    with pytest.raises(ValueError, match="T=16"):
        viz.token_panels(image, 4, 0, {"bad": torch.ones(15)})


def test_point_and_image_figures(image: torch.Tensor) -> None:
    points = torch.rand(20, 2, generator=torch.Generator().manual_seed(1))
    values = points.sum(dim=1)
    fig = viz.knn_points_figure(points, values, 0, [0, 3, 4], {"ones": None,
                                                                 "softmax": [0.5, 0.3, 0.2]},
                                candidates=[3, 4, 7, 9])
    assert len(fig.axes) == 3  # scatter, colour bar, bars
    with pytest.raises(ValueError, match="k=3"):
        viz.knn_points_figure(points, values, 0, [0, 3, 4], {"bad": [1.0, 2.0]})
    fig = viz.scatter_panels(points, {"a": values, "b": -values}, query=0, shared_scale=True)
    assert fig._repr_png_().startswith(PNG)
    fig = viz.window_distances_figure((3, 5, 7))
    titles = [ax.get_title() for ax in fig.axes]
    assert "= window" in titles[0] and "= window" in titles[1] and "≠ window" in titles[2]
    fig = viz.image_panels({"rgb": image, "gray": image[0]}, caption="test")
    assert fig._repr_png_().startswith(PNG)


# --------------------------------------------------------------------------- mechanism drawings
def test_mechanism_drawings_build_and_sit_next_to_their_text() -> None:
    """The five drawings build (each from the package's own selection and candidate draws),
    and each notebook that teaches a mechanism has the cell that draws it."""
    import json

    from matplotlib.figure import Figure

    where = {"gather_conv1d_drawing": "knn_aggregation", "branching_drawing": "spectrum",
             "blocked_topk_drawing": "performance", "vit_block_drawing": "vit_cifar",
             "candidates_drawing": "spectrum"}
    book = Path(__file__).resolve().parents[1] / "book"
    for name, chapter in where.items():
        fig = getattr(viz, name)()
        assert isinstance(fig, Figure) and fig.axes
        assert fig.axes[0].texts or fig.axes[0].get_title(), name
        cells = json.loads((book / f"{chapter}.ipynb").read_text(encoding="utf-8"))["cells"]
        drawn = [c for c in cells if f"viz.{name}()" in "".join(c["source"])]
        assert len(drawn) == 1, f"{chapter} has no cell drawing viz.{name}"
        assert any("image/png" in o.get("data", {}) for o in drawn[0]["outputs"]), name
    # The evaluation panel of the candidates drawing shows the layer's own fixed draw.
    fig = viz.candidates_drawing(size=12, side=4, seed=0)
    dots = fig.axes[3].collections[0].get_offsets()
    drawn = sorted(int(r) * 12 + int(c) for c, r in dots)
    layer = viz.make_layer(sampling="random", candidates=4, seed=0)
    assert drawn == sorted(layer.candidate_positions(12, 12).tolist())


# --------------------------------------------------------------------------- legibility
#: The width a figure is shown at in a 400 px window (the column, less its margins; an
#: assumption: the browser test measures the page, not the figure's text).
SHOWN_AT_400PX = 360


def _effective_pt(size_pt: float, png_width: int, dpi: float) -> float:
    """A text's size as read at 400 px: its size, scaled as the whole image is, to the width
    the image is shown at (never enlarged)."""
    return size_pt * min(png_width, SHOWN_AT_400PX) / png_width * (dpi / 72) / (96 / 72)


def test_figure_footers_read_as_well_as_the_axis_labels_at_400px() -> None:
    import struct

    sample = viz.sample_image(source="matplotlib", size=16)
    figures = {
        "neighbour_map": viz.neighbour_map(sample, viz.make_layer(k=4), (8, 8)),
        "neighbour_panels": viz.neighbour_panels(sample, {"a": viz.make_layer(k=4),
                                                          "b": viz.make_layer(k=9)}),
        "neighbour_grid": viz.neighbour_grid(sample, (8, 8), ks=(4, 9), mixes=(0.0, 1.0)),
        "image_panels": viz.image_panels({"a": sample.image, "b": sample.image[0]},
                                         caption="a caption as long as a source line " * 3),
        "token_panels": viz.token_panels(sample, 4, 5, {"dense": torch.ones(16) / 16}),
        "candidates_drawing": viz.candidates_drawing(size=12, side=4, seed=0),
    }
    for name, fig in figures.items():
        footer = fig._supxlabel
        assert footer is not None and footer.get_text(), f"{name}: no footer"
        png = fig._repr_png_()
        width = struct.unpack(">I", png[16:20])[0]
        labels = [t for ax in fig.axes if ax.get_visible()
                  for t in (ax.title, ax.xaxis.label, ax.yaxis.label) if t.get_text()]
        assert labels, name
        smallest = min(t.get_fontsize() for t in labels)
        shown = _effective_pt(footer.get_fontsize(), width, fig.dpi)
        assert shown >= _effective_pt(smallest, width, fig.dpi), (
            f"{name}: its footer reads at {shown:.1f} pt at 400 px, smaller than its axis "
            f"labels ({_effective_pt(smallest, width, fig.dpi):.1f} pt)")
        assert footer.get_window_extent().width <= fig.bbox.width + 1, (
            f"{name}: the footer is wider than the figure (it widens the image)")
