"""Speed and memory of the ConvNN layers, as ratios measured in one run on one device.

``python -m convnn bench [--quick] [--train] [--json FILE]``

Every row times forward + backward of one layer (or one training step of a model) and
measures its peak memory, then reports *ratios*: our fast path against a faithful
re-implementation of the reference algorithm (``backend="reference"``: the full similarity
matrix, the values expanded k times, gathered, then a Conv1d with kernel and stride k;
method.md §6.7), and against the standard layer at the same shapes (``nn.Conv2d``, or SDPA
attention). Absolute times depend on the machine and its load; ratios measured side by side
in one process are what the book and the issues quote.

Peak memory is the most memory allocated during the step above what was allocated before it
(CUDA: the caching allocator's peak; CPU: the profiler's allocation timeline of tensors, with
the profiler's own log lines silenced).
"""

from __future__ import annotations

import torch

from .._checks import resolve_device
from .._io import atomic_write_json
from .layers import BenchRow, format_rows, layer_benchmarks, measure_layers
from .loop import format_loop_rows, loop_benchmarks
from .timing import Measurement, WithKernel, environment, measure_steps, peak_memory
from .train import format_train_rows, training_benchmarks

__all__ = ["BenchRow", "Measurement", "WithKernel", "environment", "format_loop_rows",
           "format_rows", "format_train_rows", "layer_benchmarks", "loop_benchmarks",
           "measure_layers", "measure_steps", "peak_memory", "run", "training_benchmarks"]


def run(quick: bool = True, train: bool = False, json_path: str | None = None,
        device: str | None = None, dtype: str = "float32") -> dict:
    """Run the benchmarks, print the tables, optionally write JSON. Returns the report."""
    dev = resolve_device("device", device)
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
