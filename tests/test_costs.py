"""The cost page (book/costs.md): every FLOP entry of its table is what torch's FLOP counter
counts on the package's layers, and its measured ratios are the committed benchmark's."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from convnn import ConvNN2d, attention
from convnn.layers import ConvNNAttention

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "book" / "costs.md"
BENCH = ROOT / "data" / "results" / "bench" / "2026-11-28-h200-abe79e6" / "layers.json"

# Small sizes, all different, so that a wrong factor cannot pass: an 8x8 map (n = 64).
H = W = 8
N, C, O, K, S, D = H * W, 8, 16, 9, 4, 32
M = S * S  # an s x s random candidate set of ConvNN2d
SIZES = {"n": N, "C": C, "O": O, "k": K, "d": D, "m": M}


def table() -> dict[str, tuple[str, str]]:
    """layer -> (score FLOPs, aggregation FLOPs) as written in the page's table."""
    rows = {}
    for line in PAGE.read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 6 and cells[1].startswith("$"):
            rows[cells[0]] = (cells[1], cells[2])
    return rows


def evaluate(formula: str) -> int:
    """``$2n^2d$`` -> its value at :data:`SIZES` (a product of a number and symbols)."""
    term = formula.strip("$")
    match = re.fullmatch(r"(\d+)((?:[a-zA-Z](?:\^\d)?)*)", term)
    assert match, f"not a monomial: {formula}"
    value = int(match[1])
    for symbol, power in re.findall(r"([a-zA-Z])(?:\^(\d))?", match[2]):
        value *= SIZES[symbol] ** int(power or 1)
    return value


def counts(module: nn.Module, x: torch.Tensor) -> dict[str, int]:
    """FLOPs per aten op of one forward pass (SDPA in its math form, which the counter sees
    as two batched matrix products)."""
    module.eval()
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter, \
            torch.no_grad():
        module(x)
    return {str(op).removeprefix("aten."): int(v)
            for op, v in counter.get_flop_counts()["Global"].items()}


def test_the_cost_table_matches_the_flop_counter() -> None:
    rows = table()
    assert set(rows) == {"convolution", "attention", "KVT", "ConvNN, all candidates",
                         "ConvNN, random candidates", "neighbourhood attention"}
    score = {name: evaluate(s) for name, (s, _) in rows.items()}
    aggregate = {name: evaluate(a) for name, (_, a) in rows.items()}
    image, tokens = torch.randn(1, C, H, W), torch.randn(1, N, D)
    projections = 8 * N * D * D  # q, k, v and output: left out of the table

    conv = counts(nn.Conv2d(C, O, 3, padding=1, bias=False), image)
    assert conv == {"convolution": aggregate["convolution"]} and score["convolution"] == 0
    for name, options in (("ConvNN, all candidates", {}),
                          ("ConvNN, random candidates", {"sampling": "random",
                                                         "candidates": S})):
        got = counts(ConvNN2d(C, O, k=K, padding=0, **options), image)
        assert got == {"bmm": score[name], "mm": aggregate[name]}, (name, got)

    got = counts(attention.MultiHeadSelfAttention(D, 1), tokens)
    assert got == {"mm": projections, "bmm": score["attention"] + aggregate["attention"]}
    got = counts(attention.NeighborhoodAttention1d(D, 1, kernel_size=K), tokens)
    name = "neighbourhood attention"
    assert got == {"mm": projections, "bmm": score[name] + aggregate[name]}
    # KVT: the package multiplies a dense masked n x n matrix, 2n^2d, not the table's 2nkd
    # (the page says so): the scores are the table's.
    got = counts(attention.KVTAttention(D, 1, k=K), tokens)
    assert aggregate["KVT"] == 2 * N * K * D
    assert got == {"mm": projections, "bmm": score["KVT"] + 2 * N * N * D}
    # The ViT's ConvNN attention (depthwise aggregation): 2nmd + 2nkd, the text's estimate.
    for m, options in ((N, {}), (32, {"sampling": "random", "candidates": 32})):
        got = counts(ConvNNAttention(D, 1, k=K, **options), tokens)
        assert got == {"mm": projections, "bmm": 2 * N * m * D + 2 * N * K * D}, (m, got)


def test_the_measured_ratios_are_the_committed_benchmarks() -> None:
    text = PAGE.read_text(encoding="utf-8")
    cases = {r["case"]: r["time_vs_baseline"] for r in json.loads(BENCH.read_text())}
    for case in ("ConvNN attention, all candidates [Triton]",
                 "ConvNN attention, random r=32 [Triton]", "ConvNN2d (paper mode)"):
        assert f"**{cases[case]:.2f}×**" in text, case
    assert "`layers.json`" in text and f"`{BENCH.parent.name}`" in text


@pytest.mark.parametrize("formula, value", [("$0$", 0), ("$2nkCO$", 2 * N * K * C * O),
                                            ("$2n^2d$", 2 * N * N * D)])
def test_the_formula_reader(formula: str, value: int) -> None:
    assert evaluate(formula) == value
