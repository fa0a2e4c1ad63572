"""The tensor-core benchmark: every target of the ConvNN-on-tensor-cores work, measured in one
run on one card: ``python -m convnn bench --tensorcore DIR`` (``--quick``: the same stages at
toy sizes on a CPU under ``TRITON_INTERPRET=1``, a check that the script runs; its numbers
mean nothing).

Stages, each written to ``DIR/<stage>.json`` as soon as it finishes, each with the device,
commit, command and date; a stage that fails is recorded in ``DIR/session.json`` and the
others still run:

1. ``checks``: the compiled-kernel checks (``pytest tests/test_gpu.py``, the CUDA tests and
   the interpreter checks of the Triton kernels), against the PyTorch path;
2. ``attention``: ConvNN attention forward + backward against bf16 SDPA (flash / cuDNN) and
   float32 SDPA, at 1×192 and 3×64 heads, B = 256, T = 197, k = 9, all candidates and random
   r = 32, with peak memory; the fused rows (``backend="triton"``) record what the layer
   decided (a fallback still gives a row, labelled);
3. ``training``: ViT-Tiny and VGG-11 (CIFAR size) training steps: baseline (SDPA, Conv2d),
   the PyTorch path and the fused path (``backend="triton"``), in bf16 autocast and TF32,
   all channels-last with cuDNN autotuning and fused AdamW;
4. ``sweep``: random-candidate ConvNN attention (r = 32) against bf16 SDPA from T = 65 to
   4,097 tokens at a fixed token count per batch; the crossover T is stated;
5. ``profile``: the top kernels of the slowest ConvNN training row.
"""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path

import torch
import torch.nn.functional as F

from .._checks import resolve_device
from .._io import atomic_write_json, atomic_write_text
from ..attention import MultiHeadSelfAttention
from ..layers import ConvNN2d, ConvNNAttention
from ..models import ModelConfig, build_model
from ..train import fused_options, to_fast_layout
from .timing import FastBackends, environment, measure_steps

STAGES = ("checks", "attention", "training", "sweep", "profile")
#: Seconds each stage may take on an H100/H200; the budget skips what cannot finish.
STAGE_SECONDS = {"checks": 150, "attention": 60, "training": 150, "sweep": 60, "profile": 30}
SWEEP_T = (65, 129, 257, 513, 1025, 2049, 4097)
SWEEP_TOKENS = 256 * 197  # tokens per batch, fixed across the sweep
CHECK_TESTS = ("tests/test_gpu.py", "tests/test_conv2d_kernels.py", "tests/test_kernels.py")


def _decision(layer, x) -> str:
    """What a layer reports it runs for ``x`` (its ``backend_decision`` where it has one), else
    the backend it was asked for."""
    decide = getattr(layer, "backend_decision", None)
    if callable(decide):
        try:
            return " / ".join(decide(x))
        except Exception as err:  # noqa: BLE001 - the row records why
            return f"{type(err).__name__}: {err}"
    return f"backend={getattr(layer, 'backend', None)!r} (the layer reports no decision)"


def _autocast(device: torch.device, bf16: bool):
    if device.type == "cuda" and bf16:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _layer_step(layer, x, bf16: bool, device):
    def step():
        x.grad = None
        with _autocast(device, bf16):
            out = layer(x)
        out.float().sum().backward()
    return step


def attention_rows(device: torch.device, tiny: bool) -> list[dict]:
    """Layer forward + backward against bf16 and float32 SDPA (stage 2)."""
    batch, tokens = (1, 9) if tiny else (256, 197)
    repeats = 1 if tiny else 20
    rows = []
    shapes = ((1, 192), (3, 64)) if not tiny else ((1, 16),)
    for heads, head_dim in shapes:
        dim = heads * head_dim
        torch.manual_seed(0)
        x = torch.randn(batch, tokens, dim, device=device, requires_grad=True)
        layers = {
            ("SDPA", "bf16"): MultiHeadSelfAttention(dim, heads),
            ("SDPA", "fp32"): MultiHeadSelfAttention(dim, heads),
        }
        for cand, opts in (("all", {}), ("random r=32", {"sampling": "random",
                                                         "candidates": 8 if tiny else 32})):
            for backend in ("torch", "triton"):
                layers[(f"ConvNN {cand}, {backend}", "bf16")] = ConvNNAttention(
                    dim, heads, k=3 if tiny else 9, backend=backend, **opts)
        steps = {key: _layer_step(m.to(device), x, key[1] == "bf16", device)
                 for key, m in layers.items()}
        results, errors = {}, {}
        for key, step in steps.items():
            try:
                results[key] = measure_steps({key: step}, device, repeats,
                                             warmup=1 if tiny else 2)[key]
            except Exception as err:  # noqa: BLE001 - a failing kernel is a row, not a crash
                errors[key] = f"{type(err).__name__}: {err}"[:500]
        base = results.get(("SDPA", "bf16"))
        fp32 = results.get(("SDPA", "fp32"))
        for key, m in layers.items():
            row = {"heads": heads, "head_dim": head_dim, "batch": batch, "tokens": tokens,
                   "case": key[0], "precision": key[1], "decision": _decision(m, x)}
            if key in errors:
                row["error"] = errors[key]
            else:
                r = results[key]
                row.update(seconds=r.seconds, peak_bytes=r.peak_bytes,
                           throughput_vs_sdpa_bf16=base.seconds / r.seconds if base else None,
                           throughput_vs_sdpa_fp32=fp32.seconds / r.seconds if fp32 else None,
                           memory_vs_sdpa_bf16=(r.peak_bytes / base.peak_bytes
                                                if base and base.peak_bytes else None))
            rows.append(row)
    return rows


def _model_cases(tiny: bool) -> list[tuple[str, str, dict, int, int]]:
    vit = {"name": "vit_tiny"} if not tiny else {"name": "vit_tiny_cifar", "dim": 32,
                                                   "depth": 1, "mlp_dim": 32}
    vgg = {"name": "vgg11"} if not tiny else {"name": "vgg11", "width_multiplier": 0.125,
                                               "head": "lean"}
    k = 3 if tiny else 9
    r = 8 if tiny else 32
    cases = [("ViT-Tiny", "SDPA (baseline)", {**vit, "mixer": "attention"})]
    # the tiny CPU check leaves the fused training rows out (the interpreter is slow; the
    # kernel checks cover those paths)
    backends = (("torch", "PyTorch"),) if tiny else (("torch", "PyTorch"), ("triton", "fused"))
    for backend, what in backends:
        cases += [("ViT-Tiny", f"ConvNN all k={k}, {what}",
                   {**vit, "mixer": "convnn_attention",
                    "layer_options": {"k": k, "backend": backend}}),
                  ("ViT-Tiny", f"ConvNN random r={r} k={k}, {what}",
                   {**vit, "mixer": "convnn_attention",
                    "layer_options": {"k": k, "sampling": "random", "candidates": r,
                                      "backend": backend}})]
    cases.append(("VGG-11", "Conv2d (baseline)", {**vgg, "layer": "conv2d"}))
    for backend, what in backends:
        cases.append(("VGG-11", f"branching λ=0.5, {what}",
                      {**vgg, "layer": "branching", "ratio": 0.5,
                       "layer_options": {"k": k, "backend": backend}}))
    return [(model, case, cfg, 2 if tiny else 256,
             (32 if tiny else 224) if model == "ViT-Tiny" else 32) for model, case, cfg in cases]


def _decisions(model, x) -> list[str]:
    """The distinct decisions the ConvNN layers of ``model`` report for a forward pass."""
    found = set()
    hooks = []
    for m in model.modules():
        decide = getattr(m, "backend_decision", None)
        if callable(decide) and isinstance(m, ConvNN2d):
            hooks.append(m.register_forward_pre_hook(
                lambda mod, args: found.add(" / ".join(mod.backend_decision(args[0])))))
        elif isinstance(m, ConvNNAttention):
            hooks.append(m.register_forward_pre_hook(
                lambda mod, args: found.add(_decision(mod, args[0]))))
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return sorted(found)


def training_rows(device: torch.device, tiny: bool) -> list[dict]:
    """Training steps of ViT-Tiny and VGG-11 (stage 3), bf16 and TF32."""
    repeats = 1 if tiny else 10
    rows = []
    for model_name, case, cfg, batch, size in _model_cases(tiny):
        for precision in ("bf16",) if tiny else ("bf16", "tf32"):
            row = {"model": model_name, "case": case, "precision": precision, "batch": batch}
            try:
                torch.manual_seed(0)
                model = build_model(ModelConfig(**cfg), device=device)
                to_fast_layout(model, device)
                params = list(model.parameters())
                opt = torch.optim.AdamW(params, lr=1e-4, **fused_options(params, device))
                x = torch.randn(batch, 3, size, size, device=device)
                y = torch.randint(0, 10, (batch,), device=device)
                row["decisions"] = _decisions(model, x)

                def step(model=model, opt=opt, x=x, y=y, bf16=precision == "bf16"):
                    opt.zero_grad(set_to_none=True)
                    with _autocast(device, bf16):
                        loss = F.cross_entropy(model(x).float(), y)
                    loss.backward()
                    opt.step()

                m = measure_steps({case: step}, device, repeats, warmup=1 if tiny else 2)[case]
                row.update(seconds=m.seconds, images_per_second=batch / m.seconds,
                           peak_bytes=m.peak_bytes)
            except Exception as err:  # noqa: BLE001 - a failing case is a row, not a crash
                row["error"] = f"{type(err).__name__}: {err}"[:500]
            rows.append(row)
            if device.type == "cuda":
                torch.cuda.empty_cache()
    for r in rows:
        base = next((b for b in rows if b["model"] == r["model"] and "baseline" in b["case"]
                     and b["precision"] == r["precision"] and "seconds" in b), None)
        best = [b["seconds"] for b in rows if b["model"] == r["model"]
                and "baseline" in b["case"] and "seconds" in b]
        if "seconds" in r and base:
            r["throughput_vs_baseline_same_precision"] = base["seconds"] / r["seconds"]
            r["throughput_vs_best_baseline"] = min(best) / r["seconds"]
    return rows


def sweep_rows(device: torch.device, tiny: bool) -> dict:
    """Random-candidate ConvNN attention vs bf16 SDPA over T (stage 4)."""
    dim, heads = (32, 1) if tiny else (192, 1)
    lengths = (9, 17) if tiny else SWEEP_T
    total = 34 if tiny else SWEEP_TOKENS
    repeats = 1 if tiny else 10
    rows = []
    for tokens in lengths:
        batch = max(1, total // tokens)
        x = torch.randn(batch, tokens, dim, device=device, requires_grad=True)
        sdpa = MultiHeadSelfAttention(dim, heads).to(device)
        convnn = ConvNNAttention(dim, heads, k=3 if tiny else 9, sampling="random",
                                 candidates=6 if tiny else 32, backend="triton").to(device)
        m = measure_steps({"sdpa": _layer_step(sdpa, x, True, device),
                           "convnn": _layer_step(convnn, x, True, device)}, device, repeats,
                          warmup=1 if tiny else 2)
        rows.append({"tokens": tokens, "batch": batch, "sdpa_seconds": m["sdpa"].seconds,
                     "convnn_seconds": m["convnn"].seconds,
                     "throughput_vs_sdpa": m["sdpa"].seconds / m["convnn"].seconds,
                     "memory_vs_sdpa": (m["convnn"].peak_bytes / m["sdpa"].peak_bytes
                                        if m["sdpa"].peak_bytes else None)})
        if device.type == "cuda":
            torch.cuda.empty_cache()
    faster = [r["tokens"] for r in rows if r["throughput_vs_sdpa"] > 1.0]
    return {"rows": rows, "crossover_tokens": min(faster) if faster else None,
            "statement": (f"ConvNN attention (random r) is faster than bf16 SDPA from T = "
                          f"{min(faster)} on" if faster else
                          f"bf16 SDPA is faster at every T up to {max(lengths)}")}


def profile_text(device: torch.device, tiny: bool, training: list[dict] | None) -> str:
    """Top kernels of 3 steps of the slowest ConvNN training row (stage 5)."""
    from torch.profiler import ProfilerActivity, profile

    cases = {(m, c): (cfg, b, s) for m, c, cfg, b, s in _model_cases(tiny)}
    ours = [r for r in training or [] if "baseline" not in r["case"] and "seconds" in r]
    key = (("VGG-11", "branching λ=0.5, PyTorch") if not ours else
           min(((r["model"], r["case"]) for r in ours),
               key=lambda k: next(r["images_per_second"] for r in ours
                                  if (r["model"], r["case"]) == k)))
    cfg, batch, size = cases[key]
    model = build_model(ModelConfig(**cfg), device=device)
    to_fast_layout(model, device)
    x = torch.randn(batch, 3, size, size, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    cuda = device.type == "cuda"

    def step():
        with _autocast(device, True):
            loss = F.cross_entropy(model(x).float(), y)
        loss.backward()

    step()
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with contextlib.redirect_stderr(io.StringIO()), profile(activities=acts) as prof:
        for _ in range(3):
            step()
        if cuda:
            torch.cuda.synchronize(device)
    sort = "self_cuda_time_total" if cuda else "self_cpu_time_total"
    return (f"== {key[0]} {key[1]}: 3 training steps (forward + backward), batch {batch}, "
            f"{'bf16 autocast' if cuda else 'float32'}\n"
            + prof.key_averages().table(sort_by=sort, row_limit=20, max_name_column_width=60))


def check_rows(device: torch.device, tiny: bool) -> dict:
    """The compiled-kernel checks (stage 1): pytest, its exit code and tail."""
    root = Path(__file__).resolve().parents[2]
    tests = [t for t in CHECK_TESTS if (root / t).exists()]
    if not tests:
        return {"skipped": "no tests folder next to the package (an installed wheel)"}
    if tiny:  # the CPU check of the script: the quick dispatch tests only
        tests = ["tests/test_conv2d_kernels.py::test_backend_decision_of_convnn2d"]
    cmd = [sys.executable, "-m", "pytest", "-q", "-o", "addopts=", "-p", "no:cacheprovider",
           *tests]
    if not tiny:
        cmd += ["-k", "cuda or gpu or interpreter or triton"]
    proc = subprocess.run(cmd, cwd=root, capture_output=True, text=True, check=False,
                          env={**os.environ, "PYTHONPATH": str(root)})
    tail = (proc.stdout + proc.stderr)[-4000:]
    return {"command": " ".join(cmd[1:]), "exit_code": proc.returncode, "output_tail": tail,
            "passed": proc.returncode == 0}


def run_tensorcore(out_dir: str | os.PathLike, tiny: bool = False, budget_s: float = 480.0,
                   device: str | None = None, stages: tuple[str, ...] = STAGES,
                   command: str | None = None) -> dict:
    """Run the stages into ``out_dir``; returns the contents of ``session.json``."""
    if not isinstance(budget_s, (int, float)) or budget_s <= 0:
        raise ValueError(f"budget_s must be a positive number, got {budget_s!r}")
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise ValueError(f"unknown stages {unknown}; choose from {list(STAGES)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dev = resolve_device("device", device)
    t0 = time.perf_counter()
    provenance = {**environment(dev), "command": command or " ".join(sys.argv),
                  "tiny": tiny}
    session: dict = {"provenance": provenance, "budget_s": budget_s, "stages": {}}
    results: dict = {}
    work = {"checks": lambda: check_rows(dev, tiny),
            "attention": lambda: attention_rows(dev, tiny),
            "training": lambda: training_rows(dev, tiny),
            "sweep": lambda: sweep_rows(dev, tiny),
            "profile": lambda: profile_text(dev, tiny, results.get("training"))}
    with FastBackends(dev):
        for name in STAGES:
            if name not in stages:
                continue
            left = budget_s - (time.perf_counter() - t0)
            if not tiny and left < STAGE_SECONDS[name]:
                session["stages"][name] = {"skipped": f"{left:.0f}s left of the budget"}
                atomic_write_json(out / "session.json", session)
                continue
            start = time.perf_counter()
            try:
                results[name] = work[name]()
            except Exception as err:  # noqa: BLE001 - one failing stage must not cost the others
                session["stages"][name] = {"error": f"{type(err).__name__}: {err}"[:2000],
                                           "traceback": traceback.format_exc()[-3000:],
                                           "seconds": time.perf_counter() - start}
                print(f"== {name}: FAILED {type(err).__name__}: {err}", flush=True)
                atomic_write_json(out / "session.json", session)
                continue
            if name == "profile":
                atomic_write_text(out / "profile.txt", results[name])
            else:
                atomic_write_json(out / f"{name}.json",
                                  {"provenance": provenance, "results": results[name]})
            session["stages"][name] = {"seconds": time.perf_counter() - start}
            print(f"== {name}: done in {time.perf_counter() - start:.1f}s", flush=True)
            atomic_write_json(out / "session.json", session)
    session["total_seconds"] = time.perf_counter() - t0
    atomic_write_json(out / "session.json", session)
    return session
