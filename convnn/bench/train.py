"""Training throughput of the paper's models with each layer, as ratios in one run.

One training step = forward, backward and an AdamW step on a batch of random images
(bf16 autocast on CUDA, float32 elsewhere). On CUDA every row runs with cuDNN autotuning, TF32
and fused AdamW, and the Conv2d baselines in channels-last, their fastest honest
configuration (the trainer's); the ``config`` column says which each row used. For ViT-Tiny (224 input, 197 tokens) the baseline
is SDPA attention; for VGG-11 and ResNet-50 (224 input on CUDA, 64 on a CPU) it is the Conv2d
model. "reference" rows use the reference algorithm for the ConvNN layers
(``backend="reference"``), the authors' way of computing the same thing.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from .. import kernels
from .._checks import check_known, resolve_device
from ..models import ModelConfig, build_model, count_parameters, default_image_size, family_of
from ..train import fused_options, to_fast_layout
from .timing import FastBackends, WithKernel, measure_steps

VIT_CASES = [
    ("attention (SDPA)", {"mixer": "attention"}),
    ("ConvNN attention, all, k=9", {"mixer": "convnn_attention", "layer_options": {"k": 9}}),
    ("ConvNN attention, random r=32, k=9",
     {"mixer": "convnn_attention",
      "layer_options": {"k": 9, "sampling": "random", "candidates": 32}}),
    ("KVT, k=9", {"mixer": "kvt", "layer_options": {"k": 9}}),
]
VGG_CASES = [
    ("Conv2d", {"layer": "conv2d"}),
    ("branching λ=0.5", {"layer": "branching", "ratio": 0.5, "layer_options": {"k": 9}}),
    ("ConvNN (λ=1)", {"layer": "convnn", "layer_options": {"k": 9}}),
]
RESNET_CASES = [
    ("Conv2d", {"layer": "conv2d"}),
    ("branching λ=0.5, all, k=9", {"layer": "branching", "ratio": 0.5,
                                   "layer_options": {"k": 9}}),
    ("branching λ=0.5, random r=32, k=9",
     {"layer": "branching", "ratio": 0.5,
      "layer_options": {"k": 9, "sampling": "random", "candidates": 32,
                        "candidate_layout": "count"}}),
]
BENCH_MODELS = {
    # model name: label, cases, (batch, input side) on a CPU, batch on CUDA (at the model's
    # default input side)
    "vit_tiny": ("ViT-Tiny", VIT_CASES, (2, 224), 256),
    "vgg11": ("VGG-11", VGG_CASES, (4, 32), 128),
    "resnet50": ("ResNet-50", RESNET_CASES, (2, 64), 64),
}
FAMILIES = tuple(family_of(name).name for name in BENCH_MODELS)
"""The families benchmarked, one model each (from the model registry)."""


def with_reference(options: dict) -> dict:
    out = dict(options)
    out["layer_options"] = {**options.get("layer_options", {}), "backend": "reference"}
    return out


def _train_step(model, images, labels, optimizer, device, bf16: bool = True):
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" and bf16
                else contextlib.nullcontext())

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            loss = F.cross_entropy(model(images), labels)
        loss.backward()
        optimizer.step()
    return step


def training_benchmarks(device: torch.device | str | None = None, quick: bool = True,
                        families: tuple[str, ...] = FAMILIES,
                        repeats: int | None = None) -> list[dict]:
    """Images per second and peak memory of a training step, per model, with ratios.

    ``families`` picks the models (:data:`BENCH_MODELS`): ``"vit"`` (ViT-Tiny), ``"vgg"``
    (VGG-11), ``"resnet"`` (ResNet-50)."""
    check_known("families", families, FAMILIES)
    device = resolve_device("device", device)
    on_cpu = device.type == "cpu"
    repeats = repeats or (2 if on_cpu else 10)
    rows: list[dict] = []
    plans = [(label, name, *(cpu if on_cpu else (cuda_batch, default_image_size(name))), cases)
             for name, (label, cases, cpu, cuda_batch) in BENCH_MODELS.items()
             if family_of(name).name in families]
    for model_name, config_name, batch, size, cases in plans:
        torch.manual_seed(0)
        images = torch.randn(batch, 3, size, size, device=device)
        labels = torch.randint(0, 10, (batch,), device=device)
        size_option = {"image_size": size} if size != default_image_size(config_name) else {}
        steps, params, configs = {}, {}, {}
        for label, options in cases:
            variants = [(label, options)]
            if (options.get("mixer", "").startswith("convnn") or
                    options.get("layer") in ("branching", "convnn")):
                variants.append((f"{label} [reference]", with_reference(options)))
            if ((options.get("mixer") == "convnn_attention"
                 or options.get("layer") in ("branching", "convnn"))
                    and device.type == "cuda" and kernels.available(device)):
                variants.append((f"{label} [Triton]", dict(options, kernel="triton")))
            if options.get("layer") in ("branching", "convnn") and device.type == "cuda":
                # bf16 convolutions in NCHW measured 3.3x slower than TF32 on an H200
                # (data/results/bench/2026-11-28-h200-abe79e6/loop.json): try both fixes
                variants.append((f"{label} [TF32]", dict(options, bf16=False)))
                variants.append((f"{label} [channels_last]", dict(options, layout=True)))
            for name, opts in variants:
                opts = dict(opts)
                kernel = opts.pop("kernel", None)
                bf16, force_layout = opts.pop("bf16", True), opts.pop("layout", False)
                model = build_model(ModelConfig(name=config_name, **size_option, **opts),
                                    device=device)
                layout = to_fast_layout(model, device)  # pure Conv2d networks on CUDA
                if force_layout and not layout:
                    model.to(memory_format=torch.channels_last)
                    layout = True
                if kernel:
                    model = WithKernel(model, kernel)
                fused = fused_options(list(model.parameters()), device)
                optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, **fused)
                configs[name] = ", ".join(
                    (["bf16 autocast"] if device.type == "cuda" and bf16 else ["fp32"])
                    + (["channels_last"] if layout else [])
                    + (["fused AdamW", "cudnn.benchmark", "TF32"] if fused else []))
                steps[name] = _train_step(model, images, labels, optimizer, device, bf16)
                params[name] = count_parameters(model)
        with FastBackends(device):
            measured = measure_steps(steps, device, repeats, warmup=2)
        baseline = measured[cases[0][0]]
        for name, m in measured.items():
            ours = name.split(" [")[0]
            rows.append({
                "model": model_name, "case": name, "batch": batch, "parameters": params[name],
                "config": configs[name],
                "images_per_second": batch / m.seconds, "peak_bytes": m.peak_bytes,
                "throughput_vs_baseline": baseline.seconds / m.seconds,
                "memory_vs_baseline": m.peak_bytes / baseline.peak_bytes
                if baseline.peak_bytes else None,
                "throughput_vs_reference": (measured[f"{ours} [reference]"].seconds / m.seconds
                                            if not name.endswith("[reference]")
                                            and f"{ours} [reference]" in measured else None),
            })
        del steps
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


def format_train_rows(rows: list[dict]) -> str:
    """A plain-text table: throughput and memory against the baseline model."""
    header = (f"{'model':<9} {'case':<44} {'batch':>5} {'thru vs base':>12} "
              f"{'mem vs base':>11} {'ours vs ref':>11}  config")
    lines = [header, "-" * len(header)]
    for r in rows:
        def fmt(v):
            return "n/a" if v is None else f"{v:.2f}x"
        lines.append(f"{r['model']:<9} {r['case']:<44} {r['batch']:>5} "
                     f"{fmt(r['throughput_vs_baseline']):>12} {fmt(r['memory_vs_baseline']):>11} "
                     f"{fmt(r['throughput_vs_reference']):>11}  {r.get('config', '')}")
    return "\n".join(lines)
