"""Speed and memory of the ConvNN layers, as ratios measured in one run on one device.

``python -m convnn bench [--quick] [--train] [--json FILE]``

Every row times forward + backward of one layer (or one training step of a model) and
measures its peak memory, then reports *ratios*: our fast path against a faithful
re-implementation of the reference algorithm (``path="reference"``: the full similarity
matrix, the values expanded k times, gathered, then a Conv1d with kernel and stride k;
method.md §6.7), and against the standard layer at the same shapes (``nn.Conv2d``, or SDPA
attention). Absolute times depend on the machine and its load; ratios measured side by side
in one process are what the book and the issues quote.

Peak memory is the most memory allocated during the step above what was allocated before it
(CUDA: the caching allocator's peak; CPU: the profiler's allocation timeline of tensors, with
the profiler's own log lines silenced).
"""

from __future__ import annotations

import contextlib
import io
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from . import kernels, ops
from ._checks import check_device
from ._io import atomic_write_json, git_commit
from .attention import MultiHeadSelfAttention
from .layers import ConvNN2d, ConvNNAttention


class WithKernel(nn.Module):
    """Run ``inner`` with a given gather-aggregate kernel (:func:`convnn.ops.use_kernel`)."""

    def __init__(self, inner: nn.Module, kernel: str) -> None:
        super().__init__()
        self.inner, self.kernel = inner, kernel

    def forward(self, *args, **kwargs):
        with ops.use_kernel(self.kernel):
            return self.inner(*args, **kwargs)


@dataclass
class Measurement:
    """One implementation at one shape."""

    name: str
    seconds: float  # median forward+backward (or training step) time
    peak_bytes: int


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
        return self.ours.peak_bytes / self.baseline.peak_bytes if self.baseline.peak_bytes \
            else None

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


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory(step: Callable[[], None], device: torch.device) -> int:
    """Peak bytes allocated by tensors while ``step`` runs, above what existed before."""
    step()  # warm caches (cuDNN plans, lazy buffers) so that they are not counted
    _sync(device)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        step()
        _sync(device)
        return max(0, torch.cuda.max_memory_allocated(device) - base)
    return _profiler_peak(step)


def _profiler_peak(step: Callable[[], None]) -> int:
    """CPU: peak tensor bytes from the profiler's allocation timeline (tensor memory, as CUDA's
    allocator counts it; the process's resident size would add the allocator's slack). The
    profiler's log lines, written by C++ to file descriptor 2, go to /dev/null."""
    import os
    import sys

    from torch.profiler import ProfilerActivity, profile

    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            with contextlib.redirect_stderr(io.StringIO()), \
                    profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
                step()
    finally:
        os.dup2(saved, 2)
        os.close(saved)
    changes = sorted((e.time_range.start, e.self_cpu_memory_usage) for e in prof.events()
                     if e.self_cpu_memory_usage)
    current = peak = 0
    for _, delta in changes:
        current += delta
        peak = max(peak, current)
    return peak


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


def measure_steps(steps: dict[str, Callable[[], None]], device: torch.device,
                  repeats: int, warmup: int = 2) -> dict[str, Measurement]:
    """Round-robin median time, then peak memory, of each step."""
    for step in steps.values():
        for _ in range(warmup):
            step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            _sync(device)
            start = time.perf_counter()
            step()
            _sync(device)
            times[name].append(time.perf_counter() - start)
    return {name: Measurement(name, statistics.median(times[name]), peak_memory(step, device))
            for name, step in steps.items()}


def layer_benchmarks(device: torch.device | str | None = None, quick: bool = True,
                     dtype: torch.dtype | None = None, repeats: int | None = None,
                     verbose: bool = False) -> list[BenchRow]:
    """The operator at the paper's shapes: ConvNN attention and the ConvNN 2-D layer.

    ConvNN attention at T = 197, D = 192, k = 9 (all candidates and r = 32 random candidates)
    against SDPA attention; ConvNN2d on a 32×32 map with 64 channels, k = 9, against a 3×3
    ``nn.Conv2d``. ``quick`` (or a CPU) uses small batches.
    """
    device = check_device("device", device or ("cuda" if torch.cuda.is_available() else "cpu"))
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
            "reference algorithm": ConvNNAttention(192, 1, k=9, path="reference", **kwargs,
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
    m = measure_layers({
        "fast path": ConvNN2d(64, 64, k=9, **factory),
        "reference algorithm": ConvNN2d(64, 64, k=9, path="reference", **factory),
        "nn.Conv2d 3x3": nn.Conv2d(64, 64, 3, padding=1, **factory)}, image, repeats)
    rows.append(BenchRow("ConvNN2d (paper mode)", f"B={batch_conv}, 64x32x32, k=9",
                         m["fast path"], m["reference algorithm"], m["nn.Conv2d 3x3"]))
    if verbose:
        print(format_rows(rows[-1:]))
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


def environment(device: torch.device) -> dict:
    """Where the numbers come from."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() \
        or platform.machine()
    return {"device": str(device), "device_name": name, "torch": torch.__version__,
            "threads": torch.get_num_threads(), "commit": git_commit(),
            "date": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def run(quick: bool = True, train: bool = False, json_path: str | None = None,
        device: str | None = None, dtype: str = "float32") -> dict:
    """Run the benchmarks, print the tables, optionally write JSON. Returns the report."""
    dev = check_device("device", device or ("cuda" if torch.cuda.is_available() else "cpu"))
    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16,
                   "float16": torch.float16}[dtype]
    report: dict = {"environment": environment(dev), "dtype": dtype, "quick": quick}
    print(f"convnn bench on {report['environment']['device_name']} ({dev}), {dtype}; "
          "ratios: speed vs ref = reference time / ours (higher is better); mem vs ref = our "
          "peak / reference peak; time/mem vs std = ours / nn.Conv2d or SDPA attention.")
    rows = layer_benchmarks(dev, quick=quick, dtype=torch_dtype)
    print(format_rows(rows))
    report["layers"] = [r.to_dict() for r in rows]
    if train:
        from .bench_loop import format_loop_rows, loop_benchmarks
        from .bench_train import format_train_rows, training_benchmarks

        train_rows = training_benchmarks(dev, quick=quick)
        print()
        print(format_train_rows(train_rows))
        report["training"] = train_rows
        loop_rows = (loop_benchmarks(dev, "small") if dev.type == "cpu"
                     else loop_benchmarks(dev, "vgg11") + loop_benchmarks(dev, "vit_tiny",
                                                                          n_train=5120))
        print()
        print(format_loop_rows(loop_rows))
        report["trainer_vs_plain_loop"] = loop_rows
    if json_path:
        atomic_write_json(json_path, report)
        print(f"wrote {json_path}")
    return report
