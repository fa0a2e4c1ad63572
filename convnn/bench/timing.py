"""Timing and memory primitives shared by the benchmarks: round-robin medians, peak
memory above a baseline, the environment a number comes from, and the fast CUDA backends."""

from __future__ import annotations

import contextlib
import io
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from .. import ops
from .._io import git_commit


class WithKernel(nn.Module):
    """Run ``inner`` under a given global default backend (:func:`convnn.ops.default_backend`)."""

    def __init__(self, inner: nn.Module, kernel: str) -> None:
        super().__init__()
        self.inner, self.kernel = inner, kernel

    def forward(self, *args, **kwargs):
        with ops.default_backend(self.kernel):
            return self.inner(*args, **kwargs)


@dataclass
class Measurement:
    """One implementation at one shape."""

    name: str
    seconds: float  # median forward+backward (or training step) time
    peak_bytes: int


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory(step: Callable[[], None], device: torch.device) -> int:
    """Peak bytes allocated by tensors while ``step`` runs, above what existed before."""
    step()  # warm caches (cuDNN plans, lazy buffers) so that they are not counted
    sync(device)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        step()
        sync(device)
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
            with (contextlib.redirect_stderr(io.StringIO()),
                    profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof):
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


def measure_steps(steps: dict[str, Callable[[], None]], device: torch.device,
                  repeats: int, warmup: int = 2) -> dict[str, Measurement]:
    """Round-robin median time, then peak memory, of each step: the steps interleaved (one
    of each per round), timed by CUDA events on a GPU (the stream's time from the start of a
    step to its end, no host sync inside the timed span), by the wall clock elsewhere."""
    for step in steps.values():
        for _ in range(warmup):
            step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    if device.type == "cuda":
        events = {name: [] for name in steps}
        sync(device)
        for _ in range(repeats):
            for name, step in steps.items():
                start, end = (torch.cuda.Event(enable_timing=True) for _ in range(2))
                start.record()
                step()
                end.record()
                events[name].append((start, end))
        sync(device)
        times = {name: [a.elapsed_time(b) / 1000.0 for a, b in pairs]
                 for name, pairs in events.items()}
    else:
        for _ in range(repeats):
            for name, step in steps.items():
                start = time.perf_counter()
                step()
                times[name].append(time.perf_counter() - start)
    return {name: Measurement(name, statistics.median(times[name]), peak_memory(step, device))
            for name, step in steps.items()}


SDPA_KERNELS = {"flash": "flash", "efficient": "memory-efficient", "cudnn": "cuDNN",
                "math": "math"}
"""The fused kernels behind ``F.scaled_dot_product_attention``, by a word of their ATen op
(``aten::_scaled_dot_product_flash_attention`` ...)."""


def sdpa_backends(step: Callable[[], None]) -> list[str]:
    """Which SDPA kernels one call of ``step`` ran (``"flash"``, ``"memory-efficient"``,
    ``"cuDNN"``, ``"math"``), read from the ATen ops the profiler records; ``[]`` where it
    called none."""
    from torch.profiler import ProfilerActivity, profile

    with contextlib.ExitStack() as stack:
        stack.enter_context(contextlib.redirect_stderr(io.StringIO()))
        prof = stack.enter_context(profile(activities=[ProfilerActivity.CPU]))
        step()
    found = set()
    for event in prof.events():
        if event.name.startswith("aten::_scaled_dot_product_"):
            found |= {label for word, label in SDPA_KERNELS.items() if word in event.name}
    return sorted(found)


def environment(device: torch.device) -> dict:
    """Where the numbers come from."""
    name = (torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
            or platform.machine())
    return {"device": str(device), "device_name": name, "torch": torch.__version__,
            "threads": torch.get_num_threads(), "commit": git_commit(),
            "date": time.strftime("%Y-%m-%dT%H:%M:%S%z")}



class TrainerBackends:
    """The CUDA switches the trainer (:func:`convnn.train.train`) runs with for precision
    ``amp`` (:func:`convnn.train.resolve_amp`): cuDNN autotuning, and TF32 matmuls and
    convolutions turned on only where ``amp == "tf32"`` (otherwise PyTorch's defaults stay,
    as in the trainer); the previous settings come back."""

    def __init__(self, device: torch.device, amp: str) -> None:
        self.cuda, self.tf32 = device.type == "cuda", amp == "tf32"

    def __enter__(self):
        if self.cuda:
            self.old = (torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32,
                        torch.backends.cudnn.allow_tf32)
            torch.backends.cudnn.benchmark = True
            if self.tf32:
                torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        return self

    def __exit__(self, *exc) -> None:
        if self.cuda:
            (torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32,
             torch.backends.cudnn.allow_tf32) = self.old


class FastBackends(TrainerBackends):
    """cuDNN autotuning and TF32 matmuls/convolutions for the duration (CUDA only): the
    fastest float32 settings of a baseline, whatever the trainer would use."""

    def __init__(self, device: torch.device) -> None:
        super().__init__(device, "tf32")
