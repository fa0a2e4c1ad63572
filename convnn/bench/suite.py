"""Every speed measurement on one card in one run: ``python -m convnn bench --suite DIR``.

Stages, each written to ``DIR`` as JSON as soon as it finishes (a stage that would overrun the
budget is skipped and says so in ``suite.json``):

1. ``loop.json``: our trainer against the plain loop (fp32/TF32 and bf16) for VGG-11 Conv2d
   and ViT-Tiny SDPA (:mod:`convnn.bench.loop`);
2. ``training.json``: the training benchmark, strong baselines first (:mod:`convnn.bench.train`);
3. ``layers.json``: the layer benchmark (:mod:`convnn.bench`);
4. ``proxy.json``: the GPU-free proxy's estimates on the same commit (:mod:`convnn.bench.proxy`),
   to check how well it tracks stage 2;
5. ``profile.txt``: the top kernels of 3 training steps of the slowest ConvNN case.

``tiny=True`` runs the same stages at toy sizes (a CPU check that the suite works; its
numbers mean nothing).
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import time
from pathlib import Path

import torch

from .._checks import resolve_device
from .._io import atomic_write_json, atomic_write_text
from ..models import family_of
from .layers import layer_benchmarks
from .loop import format_loop_rows, loop_benchmarks
from .proxy import format_proxy_rows, proxy_benchmarks
from .timing import environment
from .train import BENCH_MODELS, format_train_rows, training_benchmarks

#: Seconds each stage is expected to take on an H100/H200 (used to skip what cannot finish).
#: The models of the paper-size stages (ViT-Tiny first), and their families.
SUITE_MODELS = ("vit_tiny", "vgg11")
SUITE_FAMILIES = tuple(family_of(name).name for name in SUITE_MODELS)
STAGE_SECONDS = {"loop": 150, "training": 150, "layers": 30, "proxy": 30, "profile": 30}


def run_suite(out_dir: str | os.PathLike, tiny: bool = False, budget_s: float = 480.0,
              device: str | None = None) -> dict:
    """Run the stages into ``out_dir``; returns the contents of ``suite.json``."""
    if not isinstance(budget_s, (int, float)) or budget_s <= 0:
        raise ValueError(f"budget_s must be a positive number, got {budget_s!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dev = resolve_device("device", device)
    t0 = time.perf_counter()
    suite: dict = {"environment": environment(dev), "tiny": tiny, "budget_s": budget_s,
                   "stages": {}}
    state: dict = {}

    def stage(name: str, fn, fmt) -> None:
        left = budget_s - (time.perf_counter() - t0)
        if not tiny and left < STAGE_SECONDS[name]:
            suite["stages"][name] = {"skipped": f"{left:.0f}s left of the budget"}
            return
        start = time.perf_counter()
        try:
            rows = fn()
        except Exception as err:  # noqa: BLE001 - one failing stage must not cost the others
            suite["stages"][name] = {"error": f"{type(err).__name__}: {err}"[:2000],
                                     "seconds": time.perf_counter() - start}
            print(f"\n== {name}: FAILED {type(err).__name__}: {err}", flush=True)
            atomic_write_json(out / "suite.json", suite)
            return
        state[name] = rows
        atomic_write_json(out / f"{name}.json", rows)
        suite["stages"][name] = {"seconds": time.perf_counter() - start}
        print(f"\n== {name}\n{fmt(rows)}", flush=True)
        atomic_write_json(out / "suite.json", suite)

    def loop():
        if tiny:
            return loop_benchmarks(dev, "small", epochs=2, rounds=1, n_train=64, batch_size=32)
        return (loop_benchmarks(dev, "vgg11", epochs=3, rounds=2)
                + loop_benchmarks(dev, "vit_tiny", epochs=3, rounds=1, n_train=5120))

    stage("loop", loop, format_loop_rows)
    if not tiny:  # the paper-size models do not fit a quick CPU check
        stage("training", lambda: training_benchmarks(dev, quick=False,
                                                      families=SUITE_FAMILIES),
              format_train_rows)
    stage("layers", lambda: [r.to_dict() for r in layer_benchmarks(
        dev, quick=tiny, repeats=2 if tiny else None)], lambda rows: format_rows_dicts(rows))
    stage("proxy", lambda: proxy_benchmarks(families=SUITE_FAMILIES[1:] if tiny
                                            else SUITE_FAMILIES),
          format_proxy_rows)
    left = budget_s - (time.perf_counter() - t0)
    if tiny or left >= STAGE_SECONDS["profile"]:
        start = time.perf_counter()
        text = profile_slowest(state.get("training"), dev, tiny)
        atomic_write_text(out / "profile.txt", text)
        suite["stages"]["profile"] = {"seconds": time.perf_counter() - start}
    else:
        suite["stages"]["profile"] = {"skipped": f"{left:.0f}s left of the budget"}
    suite["total_seconds"] = time.perf_counter() - t0
    atomic_write_json(out / "suite.json", suite)
    print(f"\nwrote {out}", flush=True)
    return suite


def format_rows_dicts(rows: list[dict]) -> str:
    return "\n".join(f"{r['case']:<40} time vs std {r['time_vs_baseline']:.2f}x" for r in rows)


def profile_slowest(training_rows: list[dict] | None, device: torch.device, tiny: bool) -> str:
    """Top kernels of 3 training steps of the slowest non-reference case (ConvNN VGG-11 at
    λ=1 in a tiny run)."""
    import torch.nn.functional as F

    from ..models import ModelConfig, build_model, default_image_size

    cases = {(BENCH_MODELS[name][0], label): (name, opts, default_image_size(name))
             for name in SUITE_MODELS for label, opts in BENCH_MODELS[name][1]}
    key = ("VGG-11", "ConvNN (λ=1)")
    if training_rows:
        ours = [r for r in training_rows if (r["model"], r["case"]) in cases]
        key = min(ours, key=lambda r: r["throughput_vs_baseline"])
        key = (key["model"], key["case"])
    name, opts, size = cases[key]
    extra = {"width_multiplier": 0.125, "head": "lean"} if tiny and name == "vgg11" else {}
    model = build_model(ModelConfig(name=name, **extra, **opts), device=device)
    batch = 4 if tiny else (256 if name == "vit_tiny" else 128)
    x = torch.randn(batch, 3, size, size, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    cuda = device.type == "cuda"

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
            loss = F.cross_entropy(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    sys.stderr.flush()
    saved = os.dup(2)
    try:  # the profiler's C++ log lines would go to stderr
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            with contextlib.redirect_stderr(io.StringIO()), profile(activities=acts) as prof:
                for _ in range(3):
                    step()
                if cuda:
                    torch.cuda.synchronize(device)
    finally:
        os.dup2(saved, 2)
        os.close(saved)
    sort = "self_cuda_time_total" if cuda else "self_cpu_time_total"
    return (f"== {key[0]} {key[1]}: 3 training steps, batch {batch}, "
            f"{'bf16 autocast' if cuda else 'fp32'}\n"
            + prof.key_averages().table(sort_by=sort, row_limit=25, max_name_column_width=60))
