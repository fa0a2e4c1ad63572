"""The tensor-core benchmark: every target of the ConvNN-on-tensor-cores work, measured in one
run on one card: ``python -m convnn bench --tensorcore DIR`` (``--quick``: the same stages at
toy sizes on a CPU under ``TRITON_INTERPRET=1``, a check that the script runs; its numbers
mean nothing).

Each stage runs in its own subprocess (``python -m convnn.bench.tensorcore STAGE DIR``) with
its own time cap (:data:`STAGE_SECONDS`, and no more than what is left of the budget), so a
fault or a hang costs only that stage: a stage over its cap is killed with its children, and
the next one starts. Each writes ``DIR/<stage>.json`` (with the device, commit, command and
date) and its output to ``DIR/<stage>.log``; ``DIR/session.json`` records every stage's exit
code, seconds and cap.

1. ``checks``: the compiled-kernel tests only (``pytest tests/test_gpu.py``: the CUDA
   checks of every Triton kernel against the PyTorch path);
2. ``attention``: ConvNN attention forward + backward against bf16 SDPA, at 1×192 and 3×64
   heads, B = 256, T = 197, k = 9, all candidates and random r = 32, in bf16 autocast, with
   peak memory; every layer timed interleaved, and the SDPA kernel that ran (flash,
   memory-efficient, cuDNN) recorded; the fused rows (``backend="triton"``) record what the
   layer decided (a fallback still gives a row, labelled);
3. ``training``: ViT-Tiny and VGG-11 (CIFAR size, batch 256) training steps in the trainer's
   real precision (:func:`convnn.train.resolve_amp` with ``amp="auto"``: bf16 autocast for
   ViT, TF32 for VGG on an H100/H200; TF32 is on only where the trainer turns it on):
   baseline (SDPA, Conv2d), the PyTorch path and the fused path (``backend="triton"``),
   channels-last with cuDNN autotuning and fused AdamW, as the trainer runs them;
4. ``sweep``: random-candidate ConvNN attention (r = 32) against bf16 SDPA from T = 65 to
   4,097 tokens at a fixed token count per batch; the crossover T is stated;
5. ``profile``: the top kernels of the slowest ConvNN training row;
6. ``estimates``: the proxy's estimates of the same targets (the calibrated
   :func:`convnn.bench.proxy.target_estimates` of the built kernels, the VGG epoch by
   :func:`convnn.bench.proxy.kernel_estimates`; CPU only, so it runs alongside the others).

It ends with one table of the targets (``DIR/targets.json``, ``DIR/targets.md``): measured,
the proxy's estimate, and the gap between them.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from .. import ops
from .._checks import resolve_device
from .._io import atomic_write_json, atomic_write_text
from ..attention import MultiHeadSelfAttention
from ..layers import ConvNN2d, ConvNNAttention
from ..models import ModelConfig, build_model
from ..train import fused_options, resolve_amp, to_fast_layout
from .timing import TrainerBackends, environment, measure_steps, sdpa_backends

STAGES = ("checks", "attention", "training", "sweep", "profile", "estimates")
STAGE_SECONDS = {"checks": 120, "attention": 75, "training": 120, "sweep": 60, "profile": 30,
                 "estimates": 420}
"""Each stage's cap on an H100/H200, in seconds (Python and CUDA start-up included): the GPU
stages add up to 405 s of the 480 s budget; ``estimates`` runs alongside them from the start,
within the same budget."""
TINY_STAGE_SECONDS = 600
"""Each stage's cap in the tiny CPU mode (the interpreter is slow)."""
BACKGROUND = ("estimates",)
"""Stages that use no GPU: they run alongside the others."""
SWEEP_T = (65, 129, 257, 513, 1025, 2049, 4097)
SWEEP_TOKENS = 256 * 197  # tokens per batch, fixed across the sweep
CHECK_TESTS = ("tests/test_gpu.py",)
TARGET_ATTENTION, TARGET_VIT, TARGET_VGG_EPOCH = 1.5, 1.0, 3.0
"""The GPU targets of issue 31: the attention layer at >= 1.5x bf16 SDPA, the ViT-Tiny step at
>= 1.0x SDPA, a VGG-11 branching epoch <= 3 s on an H100/H200."""
CIFAR_TRAIN_IMAGES = 50000
ROOT = Path(__file__).resolve().parents[2]


# ----------------------------------------------------------------------------- the stages
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


def _autocast(device: torch.device, amp: str):
    if device.type != "cuda" or amp not in ("bf16", "fp16"):
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


def _layer_step(layer, x, device, amp: str = "bf16"):
    def step():
        x.grad = None
        with _autocast(device, amp):
            out = layer(x)
        out.float().sum().backward()
    return step


def _measure(steps: dict, device, repeats: int, warmup: int) -> tuple[dict, dict]:
    """Each step warmed up alone (a failing one becomes an error, not a crash), then the
    working ones timed interleaved."""
    errors, working = {}, {}
    for key, step in steps.items():
        try:
            for _ in range(warmup):
                step()
            working[key] = step
        except Exception as err:  # noqa: BLE001 - a failing kernel is a row, not a crash
            errors[key] = f"{type(err).__name__}: {err}"[:500]
    results = measure_steps(working, device, repeats, warmup=0) if working else {}
    return results, errors


def attention_rows(device: torch.device, tiny: bool) -> list[dict]:
    """Layer forward + backward in bf16 autocast against bf16 SDPA (stage 2)."""
    batch, tokens = (1, 9) if tiny else (256, 197)
    repeats = 1 if tiny else 20
    rows = []
    shapes = ((1, 192), (3, 64)) if not tiny else ((1, 16),)
    for heads, head_dim in shapes:
        dim = heads * head_dim
        torch.manual_seed(0)
        x = torch.randn(batch, tokens, dim, device=device, requires_grad=True)
        layers = {("SDPA", None, None): MultiHeadSelfAttention(dim, heads)}
        for cand, opts in (("all", {}), ("random", {"sampling": "random",
                                                    "candidates": 8 if tiny else 32})):
            for backend in (ops.TORCH, ops.TRITON):
                layers[("ConvNN", cand, backend)] = ConvNNAttention(
                    dim, heads, k=3 if tiny else 9, backend=backend, **opts)
        steps = {key: _layer_step(m.to(device), x, device) for key, m in layers.items()}
        results, errors = _measure(steps, device, repeats, 1 if tiny else 2)
        base = results.get(("SDPA", None, None))
        for key, m in layers.items():
            kind, cand, backend = key
            case = "SDPA" if kind == "SDPA" else (
                f"ConvNN {'all' if cand == 'all' else f'random r={m.candidates}'}, {backend}")
            row = {"heads": heads, "head_dim": head_dim, "batch": batch, "tokens": tokens,
                   "case": case, "candidates": cand, "backend": backend,
                   "precision": "bf16 autocast", "decision": _decision(m, x)}
            if kind == "SDPA":
                row["sdpa_kernels"] = sdpa_backends(steps[key])
            if key in errors:
                row["error"] = errors[key]
            else:
                r = results[key]
                row.update(seconds=r.seconds, peak_bytes=r.peak_bytes,
                           throughput_vs_sdpa_bf16=base.seconds / r.seconds if base else None,
                           memory_vs_sdpa_bf16=(r.peak_bytes / base.peak_bytes
                                                if base and base.peak_bytes else None))
            rows.append(row)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


def _model_cases(tiny: bool) -> list[dict]:
    vit = {"name": "vit_tiny"} if not tiny else {"name": "vit_tiny_cifar", "dim": 32,
                                                   "depth": 1, "mlp_dim": 32}
    vgg = {"name": "vgg11"} if not tiny else {"name": "vgg11", "width_multiplier": 0.125,
                                               "head": "lean"}
    k = 3 if tiny else 9
    r = 8 if tiny else 32
    cases = [("ViT-Tiny", "SDPA (baseline)", None, None, {**vit, "mixer": "attention"})]
    # the tiny CPU check leaves the fused training rows out (the interpreter is slow; the
    # kernel checks cover those paths)
    backends = ((ops.TORCH, "PyTorch"),) if tiny else ((ops.TORCH, "PyTorch"),
                                                        (ops.TRITON, "fused"))
    for backend, what in backends:
        cases += [("ViT-Tiny", f"ConvNN all k={k}, {what}", "all", backend,
                   {**vit, "mixer": "convnn_attention",
                    "layer_options": {"k": k, "backend": backend}}),
                  ("ViT-Tiny", f"ConvNN random r={r} k={k}, {what}", "random", backend,
                   {**vit, "mixer": "convnn_attention",
                    "layer_options": {"k": k, "sampling": "random", "candidates": r,
                                      "backend": backend}})]
    cases.append(("VGG-11", "Conv2d (baseline)", None, None, {**vgg, "layer": "conv2d"}))
    for backend, what in backends:
        cases.append(("VGG-11", f"branching λ=0.5, {what}", "all", backend,
                      {**vgg, "layer": "branching", "ratio": 0.5,
                       "layer_options": {"k": k, "backend": backend}}))
    return [{"model": model, "case": case, "candidates": cand, "backend": backend, "config": cfg,
             "batch": 2 if tiny else 256,
             "image_size": (32 if tiny else 224) if model == "ViT-Tiny" else 32}
            for model, case, cand, backend, cfg in cases]


def _decisions(model, x) -> list[str]:
    """The distinct decisions the ConvNN layers of ``model`` report for a forward pass."""
    found = set()
    hooks = [m.register_forward_pre_hook(lambda mod, args: found.add(_decision(mod, args[0])))
             for m in model.modules() if isinstance(m, (ConvNN2d, ConvNNAttention))]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return sorted(found)


def _training_step(case: dict, device: torch.device):
    """A training step of ``case`` as the trainer runs it, with its precision."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(**case["config"]), device=device)
    amp = resolve_amp("auto", device, model)
    to_fast_layout(model, device)
    params = list(model.parameters())
    opt = torch.optim.AdamW(params, lr=1e-4, **fused_options(params, device))
    size = case["image_size"]
    x = torch.randn(case["batch"], 3, size, size, device=device)
    y = torch.randint(0, 10, (case["batch"],), device=device)

    def step():
        opt.zero_grad(set_to_none=True)
        with _autocast(device, amp):
            loss = F.cross_entropy(model(x).float(), y)
        loss.backward()
        opt.step()

    return model, x, amp, step


def training_rows(device: torch.device, tiny: bool) -> list[dict]:
    """Training steps of ViT-Tiny and VGG-11 in the trainer's precision (stage 3); the rows of
    one model are timed interleaved."""
    repeats = 1 if tiny else 10
    rows = []
    for model_name in ("ViT-Tiny", "VGG-11"):
        cases = [c for c in _model_cases(tiny) if c["model"] == model_name]
        steps, group = {}, []
        amps = set()
        for case in cases:
            row = {key: case[key] for key in ("model", "case", "candidates", "backend", "batch")}
            try:
                model, x, amp, step = _training_step(case, device)
                row.update(precision=amp, decisions=_decisions(model, x))
                steps[case["case"]] = step
                amps.add(amp)
            except Exception as err:  # noqa: BLE001 - a failing case is a row, not a crash
                row["error"] = f"{type(err).__name__}: {err}"[:500]
            group.append(row)
        amp = amps.pop() if len(amps) == 1 else "off"
        with TrainerBackends(device, amp):
            results, errors = _measure(steps, device, repeats, 1 if tiny else 2)
        for row in group:
            if row["case"] in errors:
                row["error"] = errors[row["case"]]
            elif row["case"] in results:
                m = results[row["case"]]
                row.update(seconds=m.seconds, images_per_second=row["batch"] / m.seconds,
                           peak_bytes=m.peak_bytes)
                if model_name == "VGG-11":  # the training steps of one CIFAR-10 epoch
                    row["epoch_seconds_from_steps"] = (
                        m.seconds * math.ceil(CIFAR_TRAIN_IMAGES / row["batch"]))
        base = next((r for r in group if r["backend"] is None and "seconds" in r), None)
        for row in group:
            if "seconds" in row and base:
                row["throughput_vs_baseline"] = base["seconds"] / row["seconds"]
        rows += group
        if device.type == "cuda":
            torch.cuda.empty_cache()
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
                                 candidates=6 if tiny else 32, backend=ops.TRITON).to(device)
        steps = {"sdpa": _layer_step(sdpa, x, device), "convnn": _layer_step(convnn, x, device)}
        m = measure_steps(steps, device, repeats, warmup=1 if tiny else 2)
        rows.append({"tokens": tokens, "batch": batch, "sdpa_seconds": m["sdpa"].seconds,
                     "convnn_seconds": m["convnn"].seconds,
                     "throughput_vs_sdpa": m["sdpa"].seconds / m["convnn"].seconds,
                     "memory_vs_sdpa": (m["convnn"].peak_bytes / m["sdpa"].peak_bytes
                                        if m["sdpa"].peak_bytes else None),
                     "decision": _decision(convnn, x),
                     "sdpa_kernels": sdpa_backends(steps["sdpa"])})
        if device.type == "cuda":
            torch.cuda.empty_cache()
    faster = [r["tokens"] for r in rows if r["throughput_vs_sdpa"] > 1.0]
    return {"rows": rows, "crossover_tokens": min(faster) if faster else None,
            "statement": (f"ConvNN attention (random r) is faster than bf16 SDPA from T = "
                          f"{min(faster)} on" if faster else
                          f"bf16 SDPA is faster at every T up to {max(lengths)}")}


def profile_text(device: torch.device, tiny: bool, training: list[dict] | None) -> str:
    """Top kernels of 3 steps of the slowest ConvNN training row (stage 5), in the trainer's
    precision."""
    from torch.profiler import ProfilerActivity, profile

    cases = {(c["model"], c["case"]): c for c in _model_cases(tiny)}
    ours = [r for r in training or [] if r["backend"] is not None and "seconds" in r]
    key = (("VGG-11", "branching λ=0.5, PyTorch") if not ours else
           max(((r["model"], r["case"]) for r in ours),
               key=lambda k: next(r["seconds"] for r in ours if (r["model"], r["case"]) == k)))
    _model, _x, amp, step = _training_step(cases[key], device)
    cuda = device.type == "cuda"
    with TrainerBackends(device, amp):
        step()
        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
        with contextlib.redirect_stderr(io.StringIO()), profile(activities=acts) as prof:
            for _ in range(3):
                step()
            if cuda:
                torch.cuda.synchronize(device)
    sort = "self_cuda_time_total" if cuda else "self_cpu_time_total"
    return (f"== {key[0]} {key[1]}: 3 training steps, batch {cases[key]['batch']}, "
            f"precision {amp}\n"
            + prof.key_averages().table(sort_by=sort, row_limit=20, max_name_column_width=60))


def check_rows(device: torch.device, tiny: bool) -> dict:
    """The compiled-kernel checks (stage 1): pytest of :data:`CHECK_TESTS` only (they skip
    without CUDA), its exit code and tail."""
    tests = [t for t in CHECK_TESTS if (ROOT / t).exists()]
    if not tests:
        return {"skipped": "no tests folder next to the package (an installed wheel)"}
    cmd = [sys.executable, "-m", "pytest", "-q", "-o", "addopts=", "-p", "no:cacheprovider",
           *tests]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    tail = (proc.stdout + proc.stderr)[-4000:]
    return {"command": " ".join(cmd[1:]), "exit_code": proc.returncode, "output_tail": tail,
            "passed": proc.returncode == 0}


def estimate_rows(device: torch.device, tiny: bool) -> dict:
    """The proxy's estimates of the targets (stage 6; estimates, not measurements): the
    attention layers and the ViT-Tiny step by the calibrated model of the built kernels
    (:func:`convnn.bench.proxy.target_estimates`, as ``bench --proxy`` prints them), the
    VGG-11 epoch by :func:`convnn.bench.proxy.kernel_estimates`. The tiny CPU check runs
    the latter only (the calibration's fit takes minutes)."""
    from .proxy import calibration, kernel_estimates, target_estimates

    name = torch.cuda.get_device_name(device).lower() if device.type == "cuda" else ""
    gpu = "h100" if "h100" in name else "a100" if "a100" in name else "h200"
    if tiny:
        rows = kernel_estimates(gpu)
    else:
        calibrated = calibration(gpu, leave_one_out=False)
        rows = [row for heads in (1, 3)
                for row in target_estimates(gpu, calibrated, heads=heads, dim=192)
                if heads == 1 or row["target"].startswith("attention")]
        rows += kernel_estimates(gpu, targets=("vgg",))
    return {"gpu": gpu, "rows": rows}


STAGE_WORK = {"checks": check_rows, "attention": attention_rows, "training": training_rows,
              "sweep": sweep_rows, "estimates": estimate_rows}


def run_stage_in_process(name: str, out: Path, tiny: bool, device: str | None,
                         command: str) -> None:
    """One stage in this process (the subprocess's side): its JSON, or ``profile.txt``."""
    dev = resolve_device("device", device)
    provenance = {**environment(dev), "command": command, "tiny": tiny, "stage": name}
    if name == "profile":
        training = out / "training.json"
        rows = json.loads(training.read_text())["results"] if training.exists() else None
        atomic_write_text(out / "profile.txt", profile_text(dev, tiny, rows))
        return
    results = STAGE_WORK[name](dev, tiny)
    atomic_write_json(out / f"{name}.json", {"provenance": provenance, "results": results})


# ----------------------------------------------------------------------------- the runner
class Stage:
    """A started stage subprocess: its own process group, so that a stage over its cap is
    killed with every process it started."""

    def __init__(self, name: str, argv: list[str], log_path: Path, env: dict | None = None):
        self.name, self.log_path = name, log_path
        self.start = time.perf_counter()
        with open(log_path, "w", encoding="utf-8") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
                                         env=env, start_new_session=True)

    def finish(self, cap_s: float) -> dict:
        """Wait until the stage ends or has run ``cap_s`` seconds in all (then kill it)."""
        left = max(0.0, cap_s - (time.perf_counter() - self.start))
        timed_out = False
        try:
            code = self.proc.wait(timeout=left)
        except subprocess.TimeoutExpired:
            timed_out = True
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            code = self.proc.wait()
        record = {"seconds": round(time.perf_counter() - self.start, 2), "cap_s": cap_s,
                  "exit_code": code, "timed_out": timed_out}
        if timed_out:
            record["error"] = f"killed at its cap of {cap_s:.0f} s"
        elif code != 0:
            record["error"] = f"exit code {code}"
        if "error" in record:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
            record["log_tail"] = text[-3000:]
        return record


def run_stages(stages: list[tuple[str, list[str], float, bool]], out: Path,
               budget_s: float | None = None, log=print) -> dict:
    """Run ``(name, argv, cap_s, background)`` stages, each in its own subprocess with its
    output in ``out/<name>.log``: the foreground ones one after another, the background ones
    alongside from the start. A stage gets its cap or what is left of ``budget_s``, whichever
    is less; one with under 5 s left is skipped. Returns ``{name: record}``."""
    t0 = time.perf_counter()
    records: dict = {}
    env = {**os.environ, "PYTHONPATH": str(ROOT)}

    def left() -> float:
        return math.inf if budget_s is None else budget_s - (time.perf_counter() - t0)

    background = {name: (Stage(name, argv, out / f"{name}.log", env), cap)
                  for name, argv, cap, behind in stages if behind}
    for name, argv, cap, behind in stages:
        if behind:
            continue
        if left() < 5:
            records[name] = {"skipped": f"{max(0.0, left()):.0f} s left of the budget"}
            log(f"== {name}: skipped ({records[name]['skipped']})")
            continue
        records[name] = Stage(name, argv, out / f"{name}.log", env).finish(min(cap, left()))
        log(f"== {name}: {records[name].get('error', 'done')} in {records[name]['seconds']} s")
    for name, (stage, cap) in background.items():  # capped from its start, within the budget
        records[name] = stage.finish(cap if budget_s is None else min(cap, budget_s))
        log(f"== {name}: {records[name].get('error', 'done')} in {records[name]['seconds']} s")
    return records


def run_tensorcore(out_dir: str | os.PathLike, tiny: bool = False, budget_s: float = 480.0,
                   device: str | None = None, stages: tuple[str, ...] = STAGES,
                   command: str | None = None) -> dict:
    """Run the stages into ``out_dir``, each in its own capped subprocess, then the table of
    the targets; returns the contents of ``session.json``."""
    if not isinstance(budget_s, (int, float)) or budget_s <= 0:
        raise ValueError(f"budget_s must be a positive number, got {budget_s!r}")
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise ValueError(f"unknown stages {unknown}; choose from {list(STAGES)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dev = resolve_device("device", device)
    command = command or " ".join(sys.argv)
    t0 = time.perf_counter()
    provenance = {**environment(dev), "command": command, "tiny": tiny}
    plan = []
    for name in STAGES:
        if name in stages:
            argv = [sys.executable, "-m", "convnn.bench.tensorcore", name, str(out),
                    "--device", str(dev), "--command", command] + (["--tiny"] if tiny else [])
            cap = TINY_STAGE_SECONDS if tiny else STAGE_SECONDS[name]
            plan.append((name, argv, cap, name in BACKGROUND))
    records = run_stages(plan, out, None if tiny else budget_s)
    session = {"provenance": provenance, "budget_s": budget_s, "stages": records}
    table = target_rows(out)
    atomic_write_json(out / "targets.json", {"provenance": provenance, "rows": table})
    text = format_targets(table)
    atomic_write_text(out / "targets.md", text + "\n")
    print(text, flush=True)
    session["total_seconds"] = round(time.perf_counter() - t0, 2)
    atomic_write_json(out / "session.json", session)
    return session


# ----------------------------------------------------------------------------- the targets
def _results(out: Path, name: str):
    path = out / f"{name}.json"
    return json.loads(path.read_text())["results"] if path.exists() else None


def target_rows(out: Path) -> list[dict]:
    """One row per target: the threshold, what was measured, the proxy's estimate and the gap
    (measured / estimate); ``None`` where a stage gave nothing."""
    attention = _results(out, "attention") or []
    training = _results(out, "training") or []
    sweep = _results(out, "sweep") or {}
    estimates = (_results(out, "estimates") or {}).get("rows", [])

    def estimate(target_words, case_words, field="est_ratio_vs_baseline"):
        for r in estimates:
            if (all(w in r["target"] for w in target_words)
                    and all(w in r["case"] for w in case_words)):
                return r.get(field)
        return None

    rows = []
    for heads, head_dim in sorted({(r["heads"], r["head_dim"]) for r in attention}):
        for cand in ("all", "random"):
            got = next((r for r in attention if (r["heads"], r["head_dim"]) == (heads, head_dim)
                        and r["candidates"] == cand and r["backend"] == ops.TRITON), None)
            label = "all candidates" if cand == "all" else "random r=32"
            if got:
                label = got["case"].split(",")[0].removeprefix("ConvNN ")
            rows.append({"target": f"attention layer {heads}x{head_dim} {label}, fwd+bwd vs "
                                   "bf16 SDPA", "goal": f">= {TARGET_ATTENTION}x",
                         "threshold": TARGET_ATTENTION, "higher_is_better": True,
                         "measured": got and got.get("throughput_vs_sdpa_bf16"),
                         "sdpa_kernels": next((r.get("sdpa_kernels") for r in attention
                                               if r["case"] == "SDPA"
                                               and r["heads"] == heads), None),
                         "estimate": estimate([f"{heads}x{head_dim},"],
                                              [f"ConvNN {'all' if cand == 'all' else 'random'}",
                                               "redesigned core"])})
    for cand in ("all", "random"):
        got = next((r for r in training if r["model"] == "ViT-Tiny" and r["candidates"] == cand
                    and r["backend"] == ops.TRITON), None)
        rows.append({"target": f"ViT-Tiny training step, ConvNN {cand}, vs SDPA ViT-Tiny",
                     "goal": f">= {TARGET_VIT}x", "threshold": TARGET_VIT,
                     "higher_is_better": True,
                     "measured": got and got.get("throughput_vs_baseline"),
                     "precision": got and got.get("precision"),
                     "estimate": estimate(["ViT-Tiny"], [f"ConvNN {cand}", "redesigned core"])})
    got = next((r for r in training if r["model"] == "VGG-11" and r["backend"] == ops.TRITON),
               None)
    rows.append({"target": "VGG-11 branching λ=0.5 epoch (training steps), seconds",
                 "goal": f"<= {TARGET_VGG_EPOCH} s", "threshold": TARGET_VGG_EPOCH,
                 "higher_is_better": False,
                 "measured": got and got.get("epoch_seconds_from_steps"),
                 "precision": got and got.get("precision"),
                 "estimate": estimate(["VGG-11"], ["fused 2-D"], "est_epoch_seconds")})
    rows.append({"target": "T sweep: crossover T of random r=32 vs bf16 SDPA",
                 "goal": "stated", "threshold": None, "higher_is_better": None,
                 "measured": sweep.get("crossover_tokens"), "estimate": None,
                 "statement": sweep.get("statement")})
    for r in rows:
        m, e, t = r["measured"], r["estimate"], r["threshold"]
        r["gap_measured_over_estimate"] = m / e if m is not None and e else None
        r["met"] = (None if m is None or t is None else
                    (m >= t) if r["higher_is_better"] else (m <= t))
    return rows


def format_targets(rows: list[dict]) -> str:
    """The table of the targets (Markdown)."""
    def num(v):
        return "—" if v is None else f"{v:.3g}"

    lines = ["| target | goal | measured | estimate (proxy) | gap (measured / estimate) | met |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        met = "—" if r["met"] is None else "yes" if r["met"] else "no"
        measured = (r.get("statement") or "—") if r["threshold"] is None else num(r["measured"])
        lines.append(f"| {r['target']} | {r['goal']} | {measured} | {num(r['estimate'])} | "
                     f"{num(r['gap_measured_over_estimate'])} | {met} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``python -m convnn.bench.tensorcore STAGE DIR``: one stage, in this process."""
    parser = argparse.ArgumentParser(prog="python -m convnn.bench.tensorcore")
    parser.add_argument("stage", choices=STAGES)
    parser.add_argument("out", type=Path)
    parser.add_argument("--device")
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--command", default="")
    args = parser.parse_args(argv)
    run_stage_in_process(args.stage, args.out, args.tiny, args.device, args.command)
    return 0


if __name__ == "__main__":
    sys.exit(main())
