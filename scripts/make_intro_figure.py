"""Draw book/figures/select_then_aggregate.png, the intro's picture of the idea.

Run once, by hand, and commit the PNG (the book build never runs code):

    .venv/bin/python scripts/make_intro_figure.py

Three panels show the same 7x7 feature map (one scalar feature per position, drawn as a colour)
and the same query position. Each layer *selects* neighbours of the query differently and then
*aggregates* them:

* convolution: the k = 9 positions nearest in space (the 3x3 window), weights rho = 1;
* ConvNN: the k = 9 positions nearest in feature space, anywhere in the map;
* attention: all n = 49 positions, weighted by softmax of the similarity (line width).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import Rectangle

OUT = Path(__file__).resolve().parents[1] / "book" / "figures" / "select_then_aggregate.png"
SIZE = 7
QUERY = (3, 2)  # (row, col)
K = 9


def feature_map() -> np.ndarray:
    """A smooth-ish random scalar feature per position, with a few far look-alikes of the query."""
    rng = np.random.default_rng(7)
    f = rng.uniform(0.0, 1.0, (SIZE, SIZE))
    f[QUERY] = 0.8
    for rc in [(0, 6), (1, 5), (5, 5), (6, 1), (4, 6), (2, 3)]:
        f[rc] = 0.8 + rng.uniform(-0.04, 0.04)
    return f


def draw_grid(ax: plt.Axes, f: np.ndarray) -> None:
    ax.imshow(f, cmap="viridis", vmin=0, vmax=1, extent=(-0.5, SIZE - 0.5, SIZE - 0.5, -0.5))
    for t in np.arange(-0.5, SIZE, 1.0):
        ax.axhline(t, color="white", lw=0.6)
        ax.axvline(t, color="white", lw=0.6)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_xlim(-0.5, SIZE - 0.5)
    ax.set_ylim(SIZE - 0.5, -0.5)


def outline(ax: plt.Axes, rc: tuple[int, int], color: str, lw: float = 2.4) -> None:
    r, c = rc
    ax.add_patch(Rectangle((c - 0.5, r - 0.5), 1, 1, fill=False, ec=color, lw=lw, zorder=3))


def mark_query(ax: plt.Axes) -> None:
    r, c = QUERY
    ax.plot(c, r, marker="*", ms=17, color="#d62728", mec="white", mew=1.2, zorder=5)


def main() -> None:
    f = feature_map()
    rows, cols = np.indices(f.shape)
    positions = np.stack([rows.ravel(), cols.ravel()], axis=1)  # (n, 2)
    qr, qc = QUERY
    spatial = np.abs(positions - np.array(QUERY)).max(axis=1)  # Chebyshev distance to the query
    feat_dist = np.abs(f.ravel() - f[QUERY])  # |f_i - f_query|

    # 7.2 in at 110 dpi: the image is about 800 px wide, so at 400 px (a phone) it is shown
    # at half size and the 14 pt titles still read as 10 px text. The formula is in the caption.
    fig, axes = plt.subplots(1, 3, figsize=(7.2, 3.1), dpi=110)
    titles = [
        "Convolution\nk = 9 nearest in space",
        "ConvNN\nk = 9 nearest in feature",
        "Attention\nall n = 49, softmax",
    ]
    for ax, title in zip(axes, titles):
        draw_grid(ax, f)
        ax.set_title(title, fontsize=14)

    # Convolution: the 3x3 window around the query.
    for idx in np.flatnonzero(spatial <= 1):
        outline(axes[0], tuple(positions[idx]), "#ff7f0e")

    # ConvNN: the 9 positions with the closest feature (the query itself is the closest).
    for idx in np.argsort(feat_dist, kind="stable")[:K]:
        outline(axes[1], tuple(positions[idx]), "#ff7f0e")

    # Attention: every position, line width ~ softmax weight.
    logits = -feat_dist / 0.03
    w = np.exp(logits - logits.max())
    w /= w.sum()
    for (r, c), wi in zip(positions, w):
        if (r, c) != QUERY:
            axes[2].plot([qc, c], [qr, r], color="#ff7f0e", lw=0.3 + 12 * wi, alpha=0.85, zorder=2)

    for ax in axes:
        mark_query(ax)

    fig.subplots_adjust(left=0.01, right=0.99, top=0.8, bottom=0.01, wspace=0.06)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(OUT, metadata={"Software": None})
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
