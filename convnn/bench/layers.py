"""The operator at the paper's shapes: forward + backward of one ConvNN layer against the
reference algorithm and the standard layer (``nn.Conv2d`` or SDPA attention)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from .. import kernels
from .._checks import resolve_device
from ..attention import MultiHeadSelfAttention
from ..layers import ConvNN2d, ConvNNAttention
from .timing import Measurement, WithKernel, measure_steps


@dataclass
class BenchRow:
    """Our layer against the reference algorithm and the standard layer."""

    case: str
    shape: str
    ours: Measurement
    reference: Measurement | None
    baseline: Measurement
    extra: dict = field(default_factory=dict)

    @property
    def speedup_vs_reference(self) -> float | None:
        return None if self.reference is None else self.reference.seconds / self.ours.seconds

    @property
    def memory_vs_reference(self) -> float | None:
        if self.reference is None or not self.reference.peak_bytes:
            return None
        return self.ours.peak_bytes / self.reference.peak_bytes

    @property
    def time_vs_baseline(self) -> float:
        return self.ours.seconds / self.baseline.seconds

    @property
    def memory_vs_baseline(self) -> float | None:
        return (self.ours.peak_bytes / self.baseline.peak_bytes if self.baseline.peak_bytes
                else None)

    def to_dict(self) -> dict:
        d = {"case": self.case, "shape": self.shape, "ours": asdict(self.ours),
             "reference": None if self.reference is None else asdict(self.reference),
             "baseline": asdict(self.baseline),
             "speedup_vs_reference": self.speedup_vs_reference,
             "memory_vs_reference": self.memory_vs_reference,
             "time_vs_baseline": self.time_vs_baseline,
             "memory_vs_baseline": self.memory_vs_baseline}
        d.update(self.extra)
        return d


def _layer_step(layer: nn.Module, x: torch.Tensor) -> Callable[[], None]:
    def step() -> None:
        layer.zero_grad(set_to_none=True)
        x.grad = None
        layer(x).float().sum().backward()
    return step


def measure_layers(layers: dict[str, nn.Module], x: torch.Tensor,
                   repeats: int) -> dict[str, Measurement]:
    """Forward + backward time and peak memory of each layer on ``x``.

    The layers are timed round-robin (one run of each, ``repeats`` times), so that a change
    in the machine's load affects all of them alike.
    """
    x = x.detach().requires_grad_(True)
    steps = {name: _layer_step(layer, x) for name, layer in layers.items()}
    return measure_steps(steps, x.device, repeats)


def layer_benchmarks(device: torch.device | str | None = None, quick: bool = True,
                     dtype: torch.dtype | None = None, repeats: int | None = None,
                     verbose: bool = False) -> list[BenchRow]:
    """The operator at the paper's shapes: ConvNN attention and the ConvNN 2-D layer.

    ConvNN attention at T = 197, D = 192, k = 9 (all candidates and r = 32 random candidates)
    against SDPA attention; ConvNN2d on a 32×32 map with 64 channels, k = 9, against a 3×3
    ``nn.Conv2d``. ``quick`` (or a CPU) uses small batches.
    """
    device = resolve_device("device", device)
    dtype = dtype or torch.float32
    on_cpu = device.type == "cpu"
    batch_attn = 8 if (quick or on_cpu) else 128
    batch_conv = 4 if (quick or on_cpu) else 64
    repeats = repeats or (5 if on_cpu else 20)
    factory = {"device": device, "dtype": dtype}
    rows = []
    torch.manual_seed(0)
    tokens = torch.randn(batch_attn, 197, 192, **factory)
    for label, kwargs in (("ConvNN attention, all candidates", {}),
                          ("ConvNN attention, random r=32",
                           {"sampling": "random", "candidates": 32})):
        layers = {
            "fast path": ConvNNAttention(192, 1, k=9, **kwargs, **factory),
            "reference algorithm": ConvNNAttention(192, 1, k=9, backend="reference", **kwargs,
                                                   **factory),
            "SDPA attention": MultiHeadSelfAttention(192, 1, **factory)}
        triton_row = device.type == "cuda" and kernels.available(device)
        if triton_row:
            layers["fast path, Triton kernel"] = WithKernel(
                ConvNNAttention(192, 1, k=9, **kwargs, **factory), "triton")
        m = measure_layers(layers, tokens, repeats)
        rows.append(BenchRow(label, f"B={batch_attn}, T=197, D=192, k=9", m["fast path"],
                             m["reference algorithm"], m["SDPA attention"]))
        if triton_row:
            rows.append(BenchRow(f"{label} [Triton]", f"B={batch_attn}, T=197, D=192, k=9",
                                 m["fast path, Triton kernel"], m["reference algorithm"],
                                 m["SDPA attention"]))
        if verbose:
            print(format_rows(rows[-1:]))
    image = torch.randn(batch_conv, 64, 32, 32, **factory)
    layers = {
        "fast path": ConvNN2d(64, 64, k=9, **factory),
        "reference algorithm": ConvNN2d(64, 64, k=9, backend="reference", **factory),
        "nn.Conv2d 3x3": nn.Conv2d(64, 64, 3, padding=1, **factory)}
    triton_row = device.type == "cuda" and kernels.available(device)
    if triton_row:  # the row top-k; its aggregation ("standard") stays in PyTorch
        layers["fast path, Triton kernel"] = WithKernel(ConvNN2d(64, 64, k=9, **factory),
                                                        "triton")
    m = measure_layers(layers, image, repeats)
    rows.append(BenchRow("ConvNN2d (paper mode)", f"B={batch_conv}, 64x32x32, k=9",
                         m["fast path"], m["reference algorithm"], m["nn.Conv2d 3x3"]))
    if triton_row:
        rows.append(BenchRow("ConvNN2d (paper mode) [Triton]", f"B={batch_conv}, 64x32x32, k=9",
                             m["fast path, Triton kernel"], m["reference algorithm"],
                             m["nn.Conv2d 3x3"]))
    if verbose:
        print(format_rows(rows[-1 - triton_row:]))
    return rows


def _fmt(value: float | None, suffix: str = "x") -> str:
    return "n/a" if value is None else f"{value:.2f}{suffix}"


def format_rows(rows: list[BenchRow]) -> str:
    """A plain-text table of ratios."""
    header = (f"{'case':<36} {'shape':<30} {'speed vs ref':>12} {'mem vs ref':>10} "
              f"{'time vs std':>11} {'mem vs std':>10}")
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(f"{r.case:<36} {r.shape:<30} {_fmt(r.speedup_vs_reference):>12} "
                     f"{_fmt(r.memory_vs_reference):>10} {_fmt(r.time_vs_baseline):>11} "
                     f"{_fmt(r.memory_vs_baseline):>10}")
    return "\n".join(lines)
