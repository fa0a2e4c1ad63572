"""A short demo: the special cases of ConvNN hold, numerically, on this machine."""

from __future__ import annotations

import torch
from torch import nn

from .attention import KVTAttention, MultiHeadSelfAttention
from .layers import ConvNN2d, ConvNNAttention


def equivalence_report(seed: int = 0) -> list[dict]:
    """Check each limit of method.md §3 in float64 and return one record per check."""
    torch.manual_seed(seed)
    checks = []
    image = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    for kernel in (3, 5):
        conv = nn.Conv2d(3, 8, kernel, padding=kernel // 2).double()
        layer = ConvNN2d.from_conv2d(conv)
        checks.append({"limit": f"convolution {kernel}x{kernel}",
                       "layer": f"ConvNN2d(selection='coords', k={kernel * kernel})",
                       "equals": f"nn.Conv2d({kernel}x{kernel})",
                       "max_abs_diff": (layer(image) - conv(image)).abs().max().item()})
    depthwise = nn.Conv2d(3, 3, 3, padding=1, groups=3).double()
    layer = ConvNN2d.from_conv2d(depthwise)
    checks.append({"limit": "depthwise convolution", "layer": "ConvNN2d(aggregation='depthwise')",
                   "equals": "nn.Conv2d(groups=C)",
                   "max_abs_diff": (layer(image) - depthwise(image)).abs().max().item()})
    tokens = torch.randn(2, 50, 48, dtype=torch.float64)
    attention = MultiHeadSelfAttention(48, 3).double()
    layer = ConvNNAttention(48, 3, k=50).double()
    layer.load_state_dict(attention.state_dict(), strict=False)
    checks.append({"limit": "self-attention", "layer": "ConvNNAttention(k=T, softmax)",
                   "equals": "SDPA multi-head attention",
                   "max_abs_diff": (layer(tokens) - attention(tokens)).abs().max().item()})
    kvt = KVTAttention(48, 3, k=9).double()
    layer = ConvNNAttention(48, 3, k=9).double()
    layer.load_state_dict(kvt.state_dict(), strict=False)
    checks.append({"limit": "k-NN attention", "layer": "ConvNNAttention(k=9)",
                   "equals": "KVT top-9 attention",
                   "max_abs_diff": (layer(tokens) - kvt(tokens)).abs().max().item()})
    return checks


def main(tolerance: float = 1e-9) -> int:
    """Print the equivalence table; return 0 when every limit holds within ``tolerance``."""
    print("ConvNN: select k neighbours, then aggregate. The special cases, in float64:\n")
    rows = equivalence_report()
    width = max(len(r["layer"]) for r in rows)
    ok = True
    for r in rows:
        holds = r["max_abs_diff"] <= tolerance
        ok &= holds
        print(f"  {'OK ' if holds else 'FAIL'} {r['limit']:<24} {r['layer']:<{width}}  ==  "
              f"{r['equals']:<28} max |diff| = {r['max_abs_diff']:.1e}")
    print("\nAll limits hold." if ok else "\nSome limits do NOT hold.")
    return 0 if ok else 1
