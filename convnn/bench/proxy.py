"""A GPU-free speed proxy: one full-size training step traced without memory or arithmetic.

``python -m convnn bench --proxy [--json FILE]``

The step (forward, cross-entropy, backward) of each benchmark model runs on meta-backed
tensors (``FakeTensorMode``: the tensors have shapes and dtypes but no storage, so a ViT-Tiny
step at batch 256 takes a fraction of a second on any CPU). The fake tensors stand for CPU
tensors so that autocast applies (bf16, as the trainer uses on CUDA); plain ``meta`` tensors
work too but autocast ignores them. Data-dependent ops are no problem: ``topk``, ``gather``,
``index_select`` and ``index_add`` have meta kernels and the models read no values on the
host. A :class:`~torch.utils._python_dispatch.TorchDispatchMode` sees every aten op and
records its FLOPs (``torch.utils.flop_counter``'s formulas), the bytes of its tensor inputs
and outputs, and one kernel launch (views, reshapes and ``detach`` are free). Fused attention
(``F.scaled_dot_product_attention``) is traced as one op per direction, as the CUDA flash /
cuDNN kernels run it; on meta tensors it would decompose into matmuls. Clipping and the
AdamW update are added analytically (bytes per parameter, a few fused kernels).

Each op's time on the target GPU is ``max(FLOPs / (peak · e_flop), bytes / (bandwidth ·
e_mem)) + launch``, with per-class efficiencies ``e`` (hand-set in :data:`EFFICIENCY` for
:func:`proxy_benchmarks` and :func:`kernel_estimates`). The proxy reports each model's
estimated step time as a throughput ratio against the family's baseline (SDPA ViT, Conv2d
VGG / ResNet), the number every speed change is judged by on a machine without a GPU.

**Calibration** (:func:`calibration`): the same roofline with 11 parameters
(:data:`PARAMETERS`), fitted by least squares on the log errors of every committed H200 row
under ``data/results/bench/`` (:func:`measured_rows`: the layer and training benchmarks'
ratios and baseline times, the profiler's step totals and per-op times), with the row-by-row
error and a leave-one-case-out error; rows the traced code cannot stand for say why. Each
row is traced as its commit ran it (16-bit ranking before 2026-11-28, float32 layers without
TF32, the attention baselines' q/k/v in three GEMMs before 2026-12-08). **Target estimates** (:func:`target_estimates`): the issue's targets with the
redesigned attention core, its tensor-core efficiency read from the compile report
(``python -m convnn bench --compile``), labelled as estimates with the calibration's error.
``python -m convnn bench --proxy`` prints both.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections import defaultdict
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from .._checks import check_choice, check_known
from .train import FAMILIES, RESNET_CASES, VGG_CASES, VIT_CASES, with_reference

#: Peak dense bf16 tensor-core FLOP/s and HBM bandwidth (B/s) of the target GPUs (vendor
#: figures, SXM). TF32 runs at half the bf16 rate; float32 without TF32 at ~1/15 of it.
GPUS = {
    "h200": {"bf16_flops": 989e12, "bandwidth": 4.8e12},
    "h100": {"bf16_flops": 989e12, "bandwidth": 3.35e12},
    "a100": {"bf16_flops": 312e12, "bandwidth": 2.0e12},
}

#: Fraction of peak FLOP/s and of peak bandwidth each op class reaches, and the launch cost
#: per kernel (s), set by hand from the committed H200 files (``data/results/bench/``); the
#: fitted model is :func:`calibration`'s:
#: - ``2026-11-26-h200-profile-vit-tiny.txt`` (3 steps of ViT-Tiny, batch 256, bf16): 194
#:   ``mm`` per step take 3.6 ms for ~0.9 TFLOP (e_flop ≈ 0.27); layer-norm forward runs at
#:   ~0.2 of bandwidth and its backward (the gamma/beta reduction) at ~0.1; ``gather`` /
#:   ``index_select`` take 275 µs per call (~0.2 of bandwidth), ``index_add_`` 733 µs
#:   (~0.06: atomics), ``topk`` over 197 bf16 scores per row 510 µs (~0.03); elementwise
#:   kernels (``mul``, casts) run near 0.5 of bandwidth.
#: - ``2026-11-26-h200-*.json`` (training throughput ratios): the convolution and
#:   attention-kernel efficiencies were then set so that the baselines' step times match the
#:   measured images/s of ViT-Tiny SDPA (batch 256: 33 ms per step). Convolutions use the
#:   issue's plain fp32/TF32 loop with cuDNN autotuning (VGG-11, H100, batch 256: 2.1 s per
#:   epoch, ~11 ms per step): e_flop 0.12.
#: :data:`COMMITTED_CONV` is the convolution efficiency of the committed trainer runs (bf16,
#: NCHW, no autotuning): their VGG-11 Conv2d step took 23 ms at batch 128, ~14x the tuned
#: estimate. ``calibration="committed"`` uses it, to compare with those files.
EFFICIENCY = {
    #          e_flop  e_mem
    "matmul": (0.27, 0.6),
    "conv": (0.12, 0.6),
    "conv1d": (0.12, 0.6),
    "conv1d_depthwise": (0.12, 0.6),
    "attention": (0.25, 0.6),
    "norm": (1.0, 0.12),
    "reduce": (1.0, 0.3),
    "index": (1.0, 0.15),
    "scatter": (1.0, 0.12),
    "topk": (1.0, 0.02),
    "elementwise": (1.0, 0.5),
    "optimizer": (1.0, 0.5),
}
LAUNCH_SECONDS = 5e-6
COMMITTED_CONV = (0.0086, 0.6)
CALIBRATIONS = ("tuned", "committed")

_FREE = {"view", "_unsafe_view", "t", "transpose", "permute", "expand", "detach", "alias",
         "as_strided", "slice", "select", "unsqueeze", "squeeze", "split", "split_with_sizes",
         "unbind", "lift_fresh", "_reshape_alias", "reshape", "unfold", "chunk", "narrow",
         "empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided", "sym_size",
         "sym_stride", "is_same_size", "_to_copy_noop", "expand_as", "view_as", "diagonal",
         "movedim", "flatten"}
_CLASSES = {
    "matmul": ("mm", "addmm", "bmm", "baddbmm", "linear", "matmul"),
    "conv": ("convolution", "convolution_backward", "_convolution", "cudnn_convolution"),
    "attention": ("sdpa_forward", "sdpa_backward"),
    "norm": ("native_layer_norm", "native_layer_norm_backward", "native_batch_norm",
             "native_batch_norm_backward", "_softmax", "_softmax_backward_data",
             "_log_softmax", "_log_softmax_backward_data", "cudnn_batch_norm",
             "cudnn_batch_norm_backward", "_native_batch_norm_legit",
             "_native_batch_norm_legit_functional", "_native_batch_norm_legit_no_training"),
    "reduce": ("sum", "mean", "amax", "amin", "max", "min", "norm", "linalg_vector_norm",
               "nll_loss_forward", "nll_loss_backward", "argmax", "var_mean", "std", "var",
               "max_pool2d_with_indices", "max_pool2d_with_indices_backward",
               "avg_pool2d", "avg_pool2d_backward", "_adaptive_avg_pool2d",
               "_adaptive_avg_pool2d_backward"),
    "index": ("gather", "index_select", "index", "embedding", "take_along_dim"),
    "scatter": ("index_add", "index_add_", "scatter", "scatter_", "scatter_add",
                "scatter_add_", "index_put", "index_put_", "_index_put_impl_",
                "embedding_dense_backward", "gather_backward", "index_select_backward"),
    "topk": ("topk", "sort", "argsort", "kthvalue"),
}
_CLASS_OF = {name: cls for cls, names in _CLASSES.items() for name in names}


@dataclass
class OpRecord:
    name: str
    op_class: str
    flops: float = 0.0
    bytes: float = 0.0
    bf16: bool = False
    count: int = 0


@dataclass
class StepTrace:
    """Everything the proxy knows about one training step."""

    ops: dict[str, OpRecord] = field(default_factory=dict)
    parameters: int = 0
    parameter_tensors: int = 0

    def add(self, name: str, op_class: str, flops: float, nbytes: float, bf16: bool,
            launches: int = 1) -> None:
        key = f"{name}:{'bf16' if bf16 else 'fp32'}"
        rec = self.ops.setdefault(key, OpRecord(name, op_class, bf16=bf16))
        rec.flops += flops
        rec.bytes += nbytes
        rec.count += launches

    @property
    def kernels(self) -> int:
        return sum(r.count for r in self.ops.values()) + _optimizer_kernels(self)

    @property
    def flops(self) -> float:
        return sum(r.flops for r in self.ops.values())

    @property
    def bytes(self) -> float:
        return sum(r.bytes for r in self.ops.values()) + _optimizer_bytes(self)


def _optimizer_bytes(trace: StepTrace) -> float:
    # clip: read grads for the norm, then scale them in place (read + write); fused AdamW:
    # read param, grad, exp_avg, exp_avg_sq, write param, exp_avg, exp_avg_sq (float32)
    return trace.parameters * 4.0 * (1 + 2 + 7)


def _optimizer_kernels(trace: StepTrace) -> int:
    return 3 + 2 * math.ceil(trace.parameter_tensors / 64)


def _tensors(tree) -> list[torch.Tensor]:
    out: list[torch.Tensor] = []

    def visit(x) -> None:
        if isinstance(x, torch.Tensor):
            out.append(x)
        elif isinstance(x, (list, tuple)):
            for y in x:
                visit(y)
        elif isinstance(x, dict):
            for y in x.values():
                visit(y)
    visit(tree)
    return out


def _nbytes(t: torch.Tensor) -> int:
    """Bytes an op moves for ``t``: its elements, but no more than its storage (an expanded
    tensor is read once)."""
    n = t.numel() * t.element_size()
    try:
        return min(n, t.untyped_storage().nbytes())
    except (RuntimeError, NotImplementedError):
        return n


class _Tracer(TorchDispatchMode):
    def __init__(self, trace: StepTrace) -> None:
        super().__init__()
        self.trace = trace

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        from torch.utils.flop_counter import flop_registry

        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = func.overloadpacket.__name__
        if func.namespace != "aten" or name in _FREE:  # prim.device etc. launch nothing
            return out
        ins, outs = _tensors((args, kwargs)), _tensors(out)
        if not ins and not outs:
            return out
        flops = 0.0
        counter = flop_registry.get(func.overloadpacket)
        if counter is not None:
            try:
                flops = float(counter(*args, **kwargs, out_val=out))
            except (TypeError, ValueError, IndexError, RuntimeError):  # bytes only
                flops = 0.0
        nbytes = sum(_nbytes(t) for t in ins + outs)
        bf16 = any(t.dtype in (torch.bfloat16, torch.float16) for t in ins)
        op_class = _CLASS_OF.get(name.rstrip("_") if name not in _CLASS_OF else name,
                                 "elementwise")
        if op_class == "conv" and _is_conv1d(name, args):  # the reference path's Conv1d
            op_class, name = "conv1d", name + "_1d"
            if _is_depthwise(name, args):  # one filter per channel: no tensor cores
                op_class, name = "conv1d_depthwise", name + "_depthwise"
        self.trace.add(name, op_class, flops, nbytes, bf16)
        return out


def _is_conv1d(name: str, args) -> bool:
    weight = args[2] if name == "convolution_backward" else args[1]
    return isinstance(weight, torch.Tensor) and weight.dim() == 3


def _is_depthwise(name: str, args) -> bool:
    weight = args[2] if name.startswith("convolution_backward") else args[1]
    groups = args[9] if name.startswith("convolution_backward") else args[8]
    return isinstance(groups, int) and groups > 1 and weight.shape[1] == 1


class _FusedAttention(torch.autograd.Function):
    """Stands for one fused attention kernel forward and one backward (flash / cuDNN)."""

    @staticmethod
    def forward(ctx, q, k, v, trace):
        from torch.utils.flop_counter import sdpa_flop_count

        out = q.new_empty(q.shape[:-1] + v.shape[-1:])
        shapes = (tuple(q.shape), tuple(k.shape), tuple(v.shape))
        ctx.shapes, ctx.trace = shapes, trace
        ctx.save_for_backward(q, k, v)
        lse = q.numel() // q.shape[-1] * 4  # float32 log-sum-exp per row
        trace.add("sdpa_forward", "attention", float(sdpa_flop_count(*shapes)),
                  sum(_nbytes(t) for t in (q, k, v, out)) + lse, q.dtype == torch.bfloat16)
        return out

    @staticmethod
    def backward(ctx, grad):
        from torch.utils.flop_counter import sdpa_backward_flop_count

        q, k, v = ctx.saved_tensors
        nbytes = 2 * sum(_nbytes(t) for t in (q, k, v)) + 2 * _nbytes(grad)
        ctx.trace.add("sdpa_backward", "attention",
                      float(sdpa_backward_flop_count(tuple(grad.shape), *ctx.shapes)), nbytes,
                      q.dtype == torch.bfloat16)
        return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v), None


@contextlib.contextmanager
def _fused_sdpa(trace: StepTrace, bf16: bool):
    original = F.scaled_dot_product_attention

    def sdpa(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, **kw):
        if attn_mask is not None:  # not the fused path: trace what really runs
            return original(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p,
                            is_causal=is_causal, scale=scale, **kw)
        if bf16:  # CUDA autocast runs attention in bf16
            q, k, v = (t.to(torch.bfloat16) for t in (q, k, v))
        return _FusedAttention.apply(q, k, v, trace)

    F.scaled_dot_product_attention = sdpa
    try:
        yield
    finally:
        F.scaled_dot_product_attention = original


@contextlib.contextmanager
def _gpu_blocks():
    """The blocked selection takes a GPU's block size: the traced tensors stand for CUDA ones
    (:data:`convnn.ops.GPU_BLOCK_ELEMENTS`), not the CPU's smaller blocks."""
    from .. import ops

    old = ops.CPU_BLOCK_ELEMENTS
    ops.CPU_BLOCK_ELEMENTS = ops.GPU_BLOCK_ELEMENTS
    try:
        yield
    finally:
        ops.CPU_BLOCK_ELEMENTS = old


def trace_step(model_config, batch: int, image_size: int, amp: str = "bf16") -> StepTrace:
    """Trace forward + loss + backward of one training step of the model a
    :class:`~convnn.models.ModelConfig` describes, at full size, without real tensors."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from ..models import build_model

    check_choice("amp", amp, ("bf16", "off"))
    trace = StepTrace()
    with FakeTensorMode(allow_non_fake_inputs=True):
        torch.manual_seed(0)
        model = build_model(model_config)
        params = [p for p in model.parameters() if p.requires_grad]
        trace.parameters = sum(p.numel() for p in params)
        trace.parameter_tensors = len(params)
        x = torch.randn(batch, 3, image_size, image_size)
        y = torch.randint(0, 10, (batch,))
        model.train()
        with _fused_sdpa(trace, amp == "bf16"), _gpu_blocks(), _Tracer(trace):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp == "bf16"):
                logits = model(x)
            loss = F.cross_entropy(logits.float(), y)
            loss.backward()
    return trace


def estimate_seconds(trace: StepTrace, gpu: str = "h200",
                     calibration: str = "tuned") -> dict:
    """Estimated step time on ``gpu`` and its split by op class (``calibration``: see
    :data:`COMMITTED_CONV`)."""
    check_choice("gpu", gpu, GPUS)
    check_choice("calibration", calibration, CALIBRATIONS)
    spec = GPUS[gpu]
    by_class: dict[str, float] = defaultdict(float)
    for rec in trace.ops.values():
        e_flop, e_mem = EFFICIENCY[rec.op_class]
        if rec.op_class.startswith("conv") and calibration == "committed":
            e_flop, e_mem = COMMITTED_CONV
        rate = spec["bf16_flops"] * (1.0 if rec.bf16 else 0.5)  # fp32 matmuls run as TF32
        compute = rec.flops / (rate * e_flop) if rec.flops else 0.0
        memory = rec.bytes / (spec["bandwidth"] * e_mem)
        by_class[rec.op_class] += max(compute, memory) + rec.count * LAUNCH_SECONDS
    by_class["optimizer"] += (_optimizer_bytes(trace)
                              / (spec["bandwidth"] * EFFICIENCY["optimizer"][1])
                              + _optimizer_kernels(trace) * LAUNCH_SECONDS)
    return {"seconds": sum(by_class.values()), "by_class": dict(by_class)}


def proxy_cases() -> list[tuple[str, str, int, int, list]]:
    """``(model, config name, batch, image size, cases)`` of the training benchmark."""
    return [("ViT-Tiny", "vit_tiny", 256, 224, VIT_CASES),
            ("VGG-11", "vgg11", 128, 32, VGG_CASES),
            ("ResNet-50", "resnet50", 64, 224, RESNET_CASES)]


def proxy_benchmarks(gpu: str = "h200", amp: str = "bf16",
                     families: tuple[str, ...] = ("vit", "vgg", "resnet")) -> list[dict]:
    """Estimated throughput of every benchmark model against its family's baseline."""
    from ..models import ModelConfig

    check_known("families", families, FAMILIES)
    check_choice("gpu", gpu, GPUS)
    rows = []
    for (model, name, batch, size, cases), family in zip(proxy_cases(), FAMILIES):
        if family not in families:
            continue
        base_seconds = None
        for label, options in cases:
            variants = [(label, options)]
            if (options.get("mixer", "").startswith("convnn")
                    or options.get("layer") in ("branching", "convnn")):
                variants.append((f"{label} [reference]", with_reference(options)))
            for case, opts in variants:
                extra = {"image_size": size} if name == "resnet50" else {}
                trace = trace_step(ModelConfig(name=name, **extra, **opts), batch, size, amp)
                est = estimate_seconds(trace, gpu)
                old = estimate_seconds(trace, gpu, "committed")
                if base_seconds is None:
                    base_seconds, base_old = est["seconds"], old["seconds"]
                rows.append({
                    "model": model, "case": case, "batch": batch, "gpu": gpu, "amp": amp,
                    "kernels": trace.kernels, "gflop": trace.flops / 1e9,
                    "gbytes": trace.bytes / 1e9, "est_step_seconds": est["seconds"],
                    "est_throughput_vs_baseline": base_seconds / est["seconds"],
                    "est_throughput_vs_baseline_committed_calibration":
                        base_old / old["seconds"],
                    "est_seconds_by_class": est["by_class"],
                })
    return rows


def measured_ratios() -> dict[tuple[str, str], float]:
    """The committed H200 training-throughput ratios (mean over the committed bench reports,
    :func:`convnn.results.load_bench`)."""
    from ..results import load_bench

    found: dict[tuple[str, str], list[float]] = defaultdict(list)
    for _, report in load_bench():
        for r in report.get("training", []):
            found[(r["model"], r["case"])].append(r["throughput_vs_baseline"])
    return {k: sum(v) / len(v) for k, v in found.items()}


def format_proxy_rows(rows: list[dict]) -> str:
    """A plain-text table: estimated ratio, and the committed H200 measurement where there."""
    measured = measured_ratios()
    header = (f"{'model':<9} {'case':<44} {'kernels':>7} {'GFLOP':>7} {'GB':>6} "
              f"{'est vs base':>11} {'est, as runs':>12} {'H200 measured':>13}")
    lines = [header, "-" * len(header)]
    for r in rows:
        m = measured.get((r["model"], r["case"]))
        lines.append(f"{r['model']:<9} {r['case']:<44} {r['kernels']:>7} {r['gflop']:>7.0f} "
                     f"{r['gbytes']:>6.1f} {r['est_throughput_vs_baseline']:>10.2f}x "
                     f"{r['est_throughput_vs_baseline_committed_calibration']:>11.2f}x "
                     f"{'' if m is None else f'{m:.2f}x':>13}")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# The fused kernels of the tensor-core work, estimated before any GPU time is spent
# --------------------------------------------------------------------------------------------

#: Float32 rate of the CUDA cores (no tensor cores; vendor figures, SXM): the top-k merges of
#: the fused kernels run there.
CUDA_CORE_FLOPS = {"h200": 67e12, "h100": 67e12, "a100": 19.5e12}
#: Efficiencies of the fused kernels' parts. UNCALIBRATED assumptions (no fused kernel has
#: run on a GPU yet): their tensor-core dots reach the calibrated cuBLAS efficiency
#: (``EFFICIENCY["matmul"]``), their merges half the CUDA-core rate (one lane op = one
#: "flop"), their loads and stores ``EFFICIENCY["index"]`` of bandwidth (gathered rows).
FUSED_EFFICIENCY = {"fused_dot": EFFICIENCY["matmul"], "fused_merge": (0.5, 1.0),
                    "fused_io": EFFICIENCY["index"]}
FUSED_BLOCK_N = 64  # positions per score tile of the 2-D selection
FUSED_BLOCK_Q = 32  # query rows per program (the merge's pass count is the block's largest)


def merge_passes(candidates: int, k: int, block_n: int = FUSED_BLOCK_N,
                 rows: int = FUSED_BLOCK_Q) -> float:
    """Estimated insertion passes per query block of the threshold-skipped running top-k
    (:func:`convnn.kernels_conv2d.select_2d`) over ``candidates`` in tiles of ``block_n``:
    tile ``t`` (1-based) holds on average ``k / t`` of a row's entries that beat its current
    k-th best when the scores arrive in random order; a block takes the largest of its
    ``rows`` rows, about ``mean + 3·√mean`` (Poisson), at most ``k``. The first tile always
    takes ``k``. A merge over every tile (the issue's estimate of the old kernels) takes
    ``k`` per tile."""
    tiles = math.ceil(candidates / block_n)
    total = float(k)
    for t in range(2, tiles + 1):
        mean = k / t
        total += min(float(k), mean + 3.0 * math.sqrt(mean) * (1 if rows > 1 else 0))
    return total


def _fused_add(trace: StepTrace, name: str, dot_flops: float, merge_ops: float,
               nbytes: float, bf16: bool) -> None:
    if dot_flops:
        trace.add(f"{name}:dot", "fused_dot", dot_flops, 0.0, bf16)
    if merge_ops:
        trace.add(f"{name}:merge", "fused_merge", merge_ops, 0.0, False)
    trace.add(f"{name}:io", "fused_io", 0.0, nbytes, bf16)


class _Fused2d(torch.autograd.Function):
    """Stands for the fused 2-D path of ConvNN2d: selection, gather-GEMM and their backward."""

    @staticmethod
    def forward(ctx, x, weight, k, padding, trace):
        batch, channels, height, width = x.shape
        out_channels = weight.shape[0]
        esize = x.element_size()
        positions = (height + 2 * padding) * (width + 2 * padding)
        m = batch * height * width
        bf16 = x.dtype in (torch.bfloat16, torch.float16)
        passes = merge_passes(positions, k - 1)
        # scale, mask, compare per score; passes; final sort
        merge = (m * (3.0 * positions + passes * (3.0 * FUSED_BLOCK_N + 4.0 * 16))
                 + m * (k - 1) * 16 * 2.0)
        _fused_add(trace, "select_2d", 2.0 * m * positions * channels, merge,
                   x.numel() * esize * 2 + m * k * 8, bf16)
        _fused_add(trace, "gather_gemm", 2.0 * m * k * channels * out_channels, 0.0,
                   x.numel() * esize * 2 + m * k * 8 + m * out_channels * esize, bf16)
        ctx.trace, ctx.shape = trace, (m, k, channels, out_channels, esize, bf16, x.numel())
        ctx.like = (x, weight)
        return x.new_empty(batch, out_channels, height, width)

    @staticmethod
    def backward(ctx, grad):
        m, k, channels, out_channels, esize, bf16, x_numel = ctx.shape
        trace = ctx.trace
        gemm = 2.0 * m * k * channels * out_channels
        # dW: the transposed gather-GEMM; dx: g @ W (dense), then the CSR row sums
        _fused_add(trace, "gather_gemm_dw", gemm, 0.0,
                   x_numel * esize * 2 + m * k * 8 + m * out_channels * esize, bf16)
        trace.add("grad_rows_mm", "matmul", gemm, m * out_channels * esize
                  + m * k * channels * esize, bf16)
        trace.add("inverse_index_sort", "index", 0.0, m * k * 8 * 2 * 4, False)
        _fused_add(trace, "scatter_rows", 0.0, 0.0,
                   m * k * channels * esize + x_numel * esize + m * k * 8, bf16)
        x, weight = ctx.like
        return torch.empty_like(x), torch.empty_like(weight), None, None, None


@contextlib.contextmanager
def _fused_layers(trace: StepTrace):
    """ConvNN2d (the paper's option set) runs as the fused 2-D kernels would: one stand-in
    op, with the estimated FLOPs, merge work and bytes. (The attention core's estimates are
    :func:`target_estimates`', with the kernels as built.)"""
    from ..kernels_conv2d import FUSED_2D_OPTIONS
    from ..layers import ConvNN2d

    forward_2d = ConvNN2d.forward

    def fused_2d(self, x):
        if self._fused_unsupported(x) is not None:
            return forward_2d(self, x)
        out = _Fused2d.apply(x, self.weight, self.k, self.padding, trace)
        return out if self.bias is None else out + self.bias.view(1, -1, 1, 1).to(out.dtype)

    assert FUSED_2D_OPTIONS  # the option set the stand-in follows
    ConvNN2d.forward = fused_2d
    try:
        yield
    finally:
        ConvNN2d.forward = forward_2d


def _estimate(trace: StepTrace, gpu: str, calibration: str = "tuned") -> float:
    """:func:`estimate_seconds` with the fused classes added."""
    spec = GPUS[gpu]
    plain = StepTrace(ops={key: rec for key, rec in trace.ops.items()
                           if rec.op_class in EFFICIENCY},
                      parameters=trace.parameters, parameter_tensors=trace.parameter_tensors)
    seconds = estimate_seconds(plain, gpu, calibration)["seconds"]
    for rec in trace.ops.values():
        if rec.op_class not in FUSED_EFFICIENCY:
            continue
        e_flop, e_mem = FUSED_EFFICIENCY[rec.op_class]
        if rec.op_class == "fused_merge":
            compute = rec.flops / (CUDA_CORE_FLOPS[gpu] * e_flop)
        else:
            rate = spec["bf16_flops"] * (1.0 if rec.bf16 else 0.5)
            compute = rec.flops / (rate * e_flop) if rec.flops else 0.0
        memory = rec.bytes / (spec["bandwidth"] * e_mem)
        seconds += max(compute, memory) + rec.count * LAUNCH_SECONDS
    return seconds


def _trace(build, make_input, batch: int, amp: str, fused: bool, loss: bool,
           stand_in=None) -> StepTrace:
    from torch._subclasses.fake_tensor import FakeTensorMode

    trace = StepTrace()
    with FakeTensorMode(allow_non_fake_inputs=True):
        torch.manual_seed(0)
        module = build()
        params = [p for p in module.parameters() if p.requires_grad]
        trace.parameters = sum(p.numel() for p in params)
        trace.parameter_tensors = len(params)
        x = make_input(batch)
        module.train()
        stand_in = (stand_in(trace) if stand_in is not None else
                    _fused_layers(trace) if fused else contextlib.nullcontext())
        with stand_in, _fused_sdpa(trace, amp == "bf16"), _gpu_blocks(), _Tracer(trace):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp == "bf16"):
                out = module(x)
            if loss:
                out = F.cross_entropy(out.float(), torch.randint(0, 10, (batch,)))
            else:
                out = out.float().sum()
            out.backward()
    return trace


KERNEL_TARGETS = ("vgg",)


def kernel_estimates(gpu: str = "h200", targets: tuple[str, ...] = KERNEL_TARGETS
                     ) -> list[dict]:
    """The proxy's estimates of the VGG-11 target with the fused 2-D kernels (ESTIMATES, not
    measurements; uncalibrated for the fused kernels, see :data:`FUSED_EFFICIENCY`): the
    VGG-11 branching λ = 0.5 CIFAR-10 epoch against the channels-last Conv2d VGG-11, today's
    NCHW path, channels-last and fused 2-D, each row a throughput ratio on ``gpu`` (bf16
    autocast) and the epoch's seconds. The attention layer and ViT-Tiny targets are
    :func:`target_estimates` (calibrated, the kernels as built)."""
    check_known("targets", targets, KERNEL_TARGETS)
    from ..models import ModelConfig, build_model

    check_choice("gpu", gpu, GPUS)
    rows: list[dict] = []
    if "vgg" not in targets:
        return rows

    def images(batch):
        return torch.randn(batch, 3, 32, 32)

    # the VGG-11 branching λ=0.5 CIFAR-10 epoch (196 steps of 256), against the strong
    # Conv2d VGG-11 (channels-last, autotuned: the "tuned" calibration)
    steps = math.ceil(50000 / 256)
    conv = _estimate(_trace(lambda: build_model(ModelConfig(name="vgg11")), images, 256,
                            "bf16", False, True), gpu)
    branching = ModelConfig(name="vgg11", layer="branching", ratio=0.5,
                            layer_options={"k": 9})
    target = "VGG-11 branching λ=0.5 epoch vs Conv2d VGG-11 (channels-last)"
    plain = _trace(lambda: build_model(branching), images, 256, "bf16", False, True)
    for case, trace, calibration in (
            ("PyTorch path, NCHW (today)", plain, "committed"),
            ("PyTorch path, channels-last", plain, "tuned"),
            ("fused 2-D selection + gather-GEMM, channels-last",
             _trace(lambda: build_model(branching), images, 256, "bf16", True, True),
             "tuned")):
        seconds = _estimate(trace, gpu, calibration)
        rows.append({"target": target, "case": case, "gpu": gpu, "est_seconds": seconds,
                     "est_ratio_vs_baseline": conv / seconds,
                     "est_epoch_seconds": seconds * steps,
                     "baseline_epoch_seconds": conv * steps})
    return rows


def format_kernel_estimates(rows: list[dict]) -> str:
    lines = [f"{'target':<62} {'case':<50} {'est vs base':>11}"]
    lines.append("-" * len(lines[0]))
    for r in rows:
        epoch = (f"  (est. epoch {r['est_epoch_seconds']:.1f} s)"
                 if "est_epoch_seconds" in r else "")
        lines.append(f"{r['target']:<62} {r['case']:<50} "
                     f"{r['est_ratio_vs_baseline']:>10.2f}x{epoch}")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Calibration: the model fitted on, and checked against, every committed H200 measurement
# --------------------------------------------------------------------------------------------

#: The model's fitted parameters. Each op's time is ``max(FLOPs / (rate · e_compute),
#: bytes / (bandwidth · e_memory)) + kernels · launch``: ``e_matmul`` / ``e_attention`` /
#: ``e_conv_*`` are the compute efficiencies of cuBLAS matmuls, the fused SDPA kernels and the
#: cuDNN convolutions (``conv_bf16``: bf16 NCHW without autotuning, as the committed training
#: rows ran; ``conv_tf32``: float32 convolutions with cuDNN's default TF32; ``conv1d``: the
#: reference path's dense 1-D aggregation; ``conv1d_depthwise``: its depthwise one, one filter
#: per channel, which has no tensor-core kernel, so it is rated at the CUDA cores' float32
#: rate in either precision); ``e_stream`` is
#: the bandwidth efficiency of streaming kernels (elementwise, norms, reductions, the
#: optimizer and the memory side of the compute classes), ``e_gather`` that of
#: gather / index / scatter kernels, ``e_topk`` that of ``topk`` / ``sort``; ``launch_us``
#: is the cost of one kernel launch including the host's dispatch (µs).
PARAMETERS = ("e_matmul", "e_attention", "e_attention_fp32", "e_conv_bf16", "e_conv_tf32",
              "e_conv1d", "e_conv1d_depthwise", "e_stream", "e_reduce", "e_gather", "e_topk",
              "launch_us")
#: Where the fit starts (the hand-set values above); the fit moves every one of them.
_START = {"e_matmul": 0.27, "e_attention": 0.25, "e_attention_fp32": 0.25,
          "e_conv_bf16": 0.0086, "e_conv_tf32": 0.12,
          "e_conv1d": 0.12, "e_conv1d_depthwise": 0.1,
          "e_stream": 0.5, "e_reduce": 0.2, "e_gather": 0.15, "e_topk": 0.02,
          "launch_us": 5.0}
_MEMORY_PARAMETER = {"norm": "e_reduce", "reduce": "e_reduce", "elementwise": "e_stream",
                     "optimizer": "e_stream", "index": "e_gather", "scatter": "e_gather",
                     "topk": "e_topk"}
_COMPUTE_PARAMETER = {"matmul": "e_matmul", "attention": "e_attention"}
#: Float32 rate of the CUDA cores where no TF32 runs (float32 matmuls with TF32 off, float32
#: SDPA: the memory-efficient kernel), FLOP/s, vendor figures.
FP32_FLOPS = CUDA_CORE_FLOPS
#: The bandwidth efficiency of the memory side of cuBLAS / cuDNN / SDPA kernels: an
#: assumption (tuned library kernels stream near peak), not fitted; their compute side is.
LIBRARY_BANDWIDTH = 0.8


@dataclass(frozen=True)
class TraceSpec:
    """What one measured row ran, to be traced: a training step (``kind="train"``) or a
    layer's forward + ``.float().sum()`` + backward (``kind="layer"``)."""

    kind: str  # "train" | "layer"
    name: str  # ModelConfig name, or "convnn_attention" / "sdpa" / "convnn2d" / "conv2d"
    options: tuple = ()  # sorted (key, value) pairs; nested dicts as sorted tuples
    batch: int = 1
    amp: str = "bf16"  # "bf16" autocast, or "off" (float32)
    tf32: bool = False  # float32 matmuls on TF32 tensor cores (else CUDA cores)
    ranking: str = "float32"  # "float32": today's ranking precision; "autocast": 16-bit
    qkv: str = "fused"  # the attention baselines' q/k/v: one GEMM, or "separate" (three)

    def option_dict(self) -> dict:
        return {k: dict(v) if isinstance(v, tuple) else v for k, v in self.options}


def _freeze(options: dict) -> tuple:
    return tuple(sorted((k, _freeze(v) if isinstance(v, dict) else v)
                        for k, v in options.items()))


_TRACES: dict[TraceSpec, StepTrace] = {}


def traced(spec: TraceSpec) -> StepTrace:
    """The trace of ``spec`` (cached for the process: traces are deterministic)."""
    if spec in _TRACES:
        return _TRACES[spec]
    opts = spec.option_dict()
    with _ranking(spec.ranking), _qkv_projections(spec.qkv):
        trace = _trace_spec(spec, opts)
    _TRACES[spec] = trace
    return trace


#: Until this date the selection's projections and scores ran in 16 bits under autocast
#: (commit 68167eb moved them to float32): committed rows measured before it are traced so.
AUTOCAST_RANKING_BEFORE = "2026-11-28"


#: From this date the attention baselines project q, k and v in one GEMM
#: (``convnn.attention._ProjectedAttention._qkv``); committed rows measured before it are
#: traced with three.
FUSED_QKV_FROM = "2026-12-08"


@contextlib.contextmanager
def _qkv_projections(kind: str):
    from ..attention import _ProjectedAttention

    check_choice("qkv", kind, ("fused", "separate"))
    fused = _ProjectedAttention._qkv

    def separate(self, x):
        return tuple(self._split_heads(p(x)) for p in (self.q_proj, self.k_proj, self.v_proj))

    if kind == "separate":
        _ProjectedAttention._qkv = separate
    try:
        yield
    finally:
        _ProjectedAttention._qkv = fused


@contextlib.contextmanager
def _ranking(precision: str):
    from .. import ops

    check_choice("ranking", precision, ("float32", "autocast"))
    old = ops.ranking_precision
    if precision == "autocast":
        ops.ranking_precision = lambda device: contextlib.nullcontext()
    try:
        yield
    finally:
        ops.ranking_precision = old


def _trace_spec(spec: TraceSpec, opts: dict) -> StepTrace:
    from ..attention import MultiHeadSelfAttention
    from ..layers import ConvNN2d, ConvNNAttention
    from ..models import ModelConfig

    if spec.kind == "train":
        size = 224 if spec.name in ("vit_tiny", "resnet50") else 32
        trace = trace_step(ModelConfig(name=spec.name, **opts), spec.batch, size, spec.amp)
    else:
        if spec.name in ("convnn_attention", "sdpa"):
            def make(batch):
                return torch.randn(batch, 197, 192, requires_grad=True)
            build = ((lambda: ConvNNAttention(192, 1, k=9, **opts)) if spec.name != "sdpa"
                     else (lambda: MultiHeadSelfAttention(192, 1)))
        else:
            def make(batch):
                return torch.randn(batch, 64, 32, 32, requires_grad=True)
            build = ((lambda: ConvNN2d(64, 64, k=9, **opts)) if spec.name == "convnn2d"
                     else (lambda: torch.nn.Conv2d(64, 64, 3, padding=1)))
        trace = _trace(build, make, spec.batch, spec.amp, False, False)
        trace.parameters = trace.parameter_tensors = 0  # a layer step has no optimizer
    return trace


def _record_terms(trace: StepTrace, spec: TraceSpec, gpu: str) -> list[tuple]:
    """``(op name, compute seconds at e = 1, compute parameter, memory seconds at e = 1,
    memory parameter, kernels)`` of each op record, and the optimizer's."""
    hw = GPUS[gpu]
    terms = []
    for rec in trace.ops.values():
        if rec.op_class not in EFFICIENCY:
            raise ValueError(f"the calibrated model has no term for {rec.op_class!r} ops")
        memory = rec.bytes / hw["bandwidth"]
        if rec.op_class == "conv1d_depthwise":  # CUDA cores in either precision
            terms.append((rec.name, rec.flops / FP32_FLOPS[gpu], "e_conv1d_depthwise",
                          memory / LIBRARY_BANDWIDTH, None, rec.count))
        elif rec.op_class in ("conv", "conv1d"):
            param = ("e_conv1d" if rec.op_class == "conv1d"
                     else "e_conv_bf16" if rec.bf16 else "e_conv_tf32")
            rate = hw["bf16_flops"] * (1.0 if rec.bf16 else 0.5)
            terms.append((rec.name, rec.flops / rate, param, memory / LIBRARY_BANDWIDTH, None,
                          rec.count))
        elif rec.op_class in _COMPUTE_PARAMETER:
            param = _COMPUTE_PARAMETER[rec.op_class]
            if rec.bf16:
                rate = hw["bf16_flops"]
            elif rec.op_class == "matmul" and spec.tf32:
                rate = hw["bf16_flops"] * 0.5
            else:  # float32 on the CUDA cores; float32 SDPA is the memory-efficient kernel
                rate = FP32_FLOPS[gpu]
                param = "e_attention_fp32" if rec.op_class == "attention" else param
            terms.append((rec.name, rec.flops / rate, param, memory / LIBRARY_BANDWIDTH, None,
                          rec.count))
        else:
            terms.append((rec.name, 0.0, None, memory, _MEMORY_PARAMETER[rec.op_class],
                          rec.count))
    if trace.parameters:
        terms.append(("optimizer", 0.0, None, _optimizer_bytes(trace) / hw["bandwidth"],
                      "e_stream", _optimizer_kernels(trace)))
    return terms


def _terms_seconds(terms, params: dict, ops: tuple | None = None) -> float:
    total = 0.0
    for name, compute, cp, memory, mp, kernels in terms:
        if ops is not None and name not in ops:
            continue
        t = memory / params[mp] if mp is not None else memory
        if cp is not None:
            t = max(t, compute / params[cp])
        total += t + kernels * params["launch_us"] * 1e-6
    return total


def model_seconds(spec: TraceSpec, params: dict, gpu: str = "h200",
                  ops: tuple | None = None) -> float:
    """The calibrated model's time for ``spec`` with ``params`` (see :data:`PARAMETERS`),
    or for its aten ops named in ``ops`` only."""
    return _terms_seconds(_record_terms(traced(spec), spec, gpu), params, ops)


@dataclass
class MeasuredRow:
    """One committed H200 measurement: a speed ratio (``baseline`` time / ``ours`` time) or
    an absolute time (``baseline is None``: the seconds of ``ours``)."""

    source: str
    label: str
    measured: float
    ours: TraceSpec | None
    baseline: TraceSpec | None = None
    group: str = ""  # rows of one case in several files; left out together
    unexplained: str | None = None  # why the model does not try this row
    ops: tuple | None = None  # a profiler row: the time of these aten ops only
    is_ratio: bool | None = None  # default: a ratio when there is a baseline
    calls_per_step: float | None = None  # a profiler row: how often the ops ran

    @property
    def quantity(self) -> str:
        ratio = self.baseline is not None if self.is_ratio is None else self.is_ratio
        return "speed vs baseline" if ratio else "seconds"


def _vit(opts: dict, tf32=False, amp="bf16") -> TraceSpec:
    return TraceSpec("train", "vit_tiny", _freeze(opts), 256, amp, tf32)


def measured_rows(root=None) -> list[MeasuredRow]:
    """Every committed H200 benchmark row under ``root`` (default: ``data/results/bench/``),
    with what the proxy traces to reproduce it, or the reason it does not."""
    from pathlib import Path

    from ..package_data import results_root
    from .train import VGG_CASES, VIT_CASES

    base_dir = Path(root) if root is not None else results_root() / "bench"
    rows: list[MeasuredRow] = []
    cases = {}
    for model, name, batch, family in (("ViT-Tiny", "vit_tiny", 256, VIT_CASES),
                                       ("VGG-11", "vgg11", 128, VGG_CASES)):
        for label, opts in family:
            cases[(model, label)] = (name, batch, opts)
            cases[(model, f"{label} [reference]")] = (name, batch, with_reference(opts))

    def spec_of(model, case, source):
        name, batch, opts = cases[(model, case)]
        return TraceSpec("train", name, _freeze(opts), batch, "bf16", False, ranking_of(source))

    def ranking_of(source: str) -> str:
        return "autocast" if source[:10] < AUTOCAST_RANKING_BEFORE else "float32"

    def layer_specs(case: str, source: str):
        opts = {} if "all" in case else {"sampling": "random", "candidates": 32}
        rank = ranking_of(source)
        if case.startswith("ConvNN2d"):
            return (TraceSpec("layer", "convnn2d", (), 64, "off", ranking=rank),
                    TraceSpec("layer", "convnn2d", _freeze({"backend": "reference"}), 64, "off",
                              ranking=rank),
                    TraceSpec("layer", "conv2d", (), 64, "off", ranking=rank))
        return (TraceSpec("layer", "convnn_attention", _freeze(opts), 128, "off", ranking=rank),
                TraceSpec("layer", "convnn_attention",
                          _freeze({**opts, "backend": "reference"}), 128, "off", ranking=rank),
                TraceSpec("layer", "sdpa", (), 128, "off", ranking=rank))

    for path, report in _bench_reports(base_dir):
        source = str(Path(path).relative_to(base_dir))
        env = report.get("environment", {})
        if "H200" not in env.get("device_name", ""):
            continue
        dtype = report.get("dtype", "float32")
        for r in report.get("layers", []) or []:
            case = r["case"]
            what = f"layer {case}, {r['shape']}, {dtype}"
            if dtype != "float32":
                continue
            if "[Triton]" in case:
                rows.append(MeasuredRow(source, f"{what}: Triton vs {r['baseline']['name']}",
                                        r["baseline"]["seconds"] / r["ours"]["seconds"], None,
                                        group=case, is_ratio=True, unexplained=(
                                            "measured the Triton kernels of that commit (row "
                                            "top-k + gather-aggregate), which the package no "
                                            "longer has; the proxy traces today's code")))
                continue
            ours, ref, base = layer_specs(case, source)
            bname = r["baseline"]["name"]
            rows.append(MeasuredRow(source, f"{what}: fast path vs {bname}",
                                    r["baseline"]["seconds"] / r["ours"]["seconds"], ours, base,
                                    group=case))
            rows.append(MeasuredRow(source, f"{what}: reference vs {bname}",
                                    r["baseline"]["seconds"] / r["reference"]["seconds"], ref,
                                    base, group=case + " [reference]"))
            rows.append(MeasuredRow(source, f"{what}: {bname}, seconds",
                                    r["baseline"]["seconds"], base, group=bname))
        training = report.get("training", []) or []
        for r in training:
            if (r["model"], r["case"]) not in cases:
                continue
            base_case = "attention (SDPA)" if r["model"] == "ViT-Tiny" else "Conv2d"
            what = f"{r['model']} training step, batch {r['batch']}, bf16 autocast"
            if r["case"] == base_case:
                rows.append(MeasuredRow(source, f"{what}: {base_case}, seconds",
                                        r["batch"] / r["images_per_second"],
                                        spec_of(r["model"], base_case, source),
                                        group=f"{r['model']} {base_case}"))
                continue
            rows.append(MeasuredRow(source, f"{what}: {r['case']} vs {base_case}",
                                    r["throughput_vs_baseline"],
                                    spec_of(r["model"], r["case"], source),
                                    spec_of(r["model"], base_case, source),
                                    group=f"{r['model']} {r['case']}"))
        for r in report.get("loop", []) or []:
            label = f"{r['model']} {r['case']} vs plain loop, fp32/TF32 (images/s)"
            if r["case"] == "plain loop, fp32/TF32":
                continue
            if r["model"] == "vit_tiny" and r["runner"] == "plain":
                rows.append(MeasuredRow(source, label, r["throughput_vs_plain_fp32"],
                                        _vit({"mixer": "attention"}, amp=r["amp"], tf32=True),
                                        _vit({"mixer": "attention"}, amp="off", tf32=True),
                                        group=label))
            else:
                rows.append(MeasuredRow(source, label, r["throughput_vs_plain_fp32"], None,
                                        group=label, is_ratio=True, unexplained=(
                                            "the trainer's host-side work (data pipeline, "
                                            "syncs) and cuDNN's algorithm choice for VGG-11 in "
                                            "each precision are not in a traced step")))
    for path in sorted(base_dir.rglob("*profile*.txt")):
        rows.extend(_profile_rows(path, str(path.relative_to(base_dir)), cases, spec_of))
    for row in rows:  # the attention baselines as their commit ran them
        if row.source[:10] < FUSED_QKV_FROM:
            row.ours, row.baseline = (
                None if spec is None else dataclasses.replace(spec, qkv="separate")
                for spec in (row.ours, row.baseline))
    return rows


#: Profiler rows (``aten::NAME``) and the traced ops that launch the same kernels.
_PROFILE_OPS = {"copy_": ("_to_copy", "copy_"), "_cudnn_attention_backward": ("sdpa_backward",),
                "_efficient_attention_backward": ("sdpa_backward",),
                "_flash_attention_backward": ("sdpa_backward",)}


def _parse_seconds(text: str) -> float:
    for unit, scale in (("ms", 1e-3), ("us", 1e-6), ("s", 1.0)):
        if text.endswith(unit):
            return float(text[:-len(unit)]) * scale
    raise ValueError(f"not a profiler time: {text!r}")


def parse_profile(text: str) -> list[dict]:
    """The sections of a committed profile (``bench --suite``'s ``profile.txt``): each
    ``{"case", "steps", "batch", "total_seconds", "ops": {aten name: (self CUDA seconds,
    calls)}}`` over the profiled steps."""
    import re

    sections: list[dict] = []
    for line in text.splitlines():
        head = re.match(r"== (.+): (\d+) training steps, batch (\d+)", line)
        if head:
            sections.append({"case": head.group(1), "steps": int(head.group(2)),
                             "batch": int(head.group(3)), "total_seconds": None, "ops": {}})
            continue
        if not sections:
            continue
        total = re.match(r"Self CUDA time total: (\S+)", line)
        if total:
            sections[-1]["total_seconds"] = _parse_seconds(total.group(1))
            continue
        cells = re.split(r"\s{2,}", line.strip())
        if len(cells) == 11 and cells[0].startswith("aten::"):
            self_cuda, calls = _parse_seconds(cells[6]), int(cells[10])
            if self_cuda > 0:
                sections[-1]["ops"][cells[0][len("aten::"):]] = (self_cuda, calls)
    return sections


def _normal(text: str) -> str:
    return "".join(ch for ch in text.lower() if ch.isalnum())


def _profile_rows(path, source: str, cases: dict, spec_of) -> list[MeasuredRow]:
    """A committed profile's step total and its aten ops whose call count per step matches
    the traced code's (the same kernels), as absolute rows."""
    rows = []
    for section in parse_profile(path.read_text(encoding="utf-8")):
        model = "VGG-11" if section["case"].startswith("VGG-11") else "ViT-Tiny"
        case = section["case"].removeprefix("VGG-11 ")
        found = [c for (m, c) in cases if m == model and _normal(c) == _normal(case)]
        if not found or section["total_seconds"] is None:
            continue
        spec, steps = spec_of(model, found[0], source), section["steps"]
        what = f"profile {model} {found[0]}, batch {section['batch']}"
        rows.append(MeasuredRow(source, f"{what}: GPU seconds per step",
                                section["total_seconds"] / steps, spec,
                                group=f"profile {model} {found[0]}"))
        for name, (seconds, calls) in section["ops"].items():
            label = f"{what}: aten::{name} per step ({calls / steps:.0f} calls)"
            rows.append(MeasuredRow(source, label, seconds / steps, spec, group=label,
                                    ops=_PROFILE_OPS.get(name, (name,)),
                                    calls_per_step=calls / steps))
    return rows


def _same_kernels(rows: list[MeasuredRow]) -> list[MeasuredRow]:
    """``rows`` with each profiler op row the traced code does not run as often as the
    profiled commit did (more than 10 % apart) marked unexplained: other kernels ran."""
    out = []
    for row in rows:
        if row.ops is not None and row.unexplained is None:
            traced_calls = sum(r.count for r in traced(row.ours).ops.values()
                               if r.name in row.ops)
            if not traced_calls or abs(traced_calls / row.calls_per_step - 1) > 0.1:
                row = dataclasses.replace(row, ours=None, unexplained=(
                    f"today's code runs it {traced_calls} times a step, the profiled commit "
                    f"{row.calls_per_step:.0f} times: not the same kernels"))
        out.append(row)
    return out


def _bench_reports(base_dir) -> list:
    """``(path, report)`` of the benchmark reports under ``base_dir``: each ``bench --json``
    file, and each ``bench --suite`` folder (``suite.json`` with its stages' rows)."""
    import json

    out = []
    for path in sorted(base_dir.rglob("*.json")):
        if path.name == "suite.json":
            report = json.loads(path.read_text(encoding="utf-8"))
            for stage in ("loop", "training", "layers"):
                if (path.parent / f"{stage}.json").is_file():
                    report[stage] = json.loads((path.parent / f"{stage}.json").read_text(
                        encoding="utf-8"))
            out.append((path.parent, report))
        elif path.parent.joinpath("suite.json").is_file():
            continue  # a stage of a suite
        else:
            report = json.loads(path.read_text(encoding="utf-8"))
            if isinstance(report, dict) and ("layers" in report or "training" in report):
                out.append((path, report))
    return out


def _row_model(row: MeasuredRow, params: dict, gpu: str) -> float:
    ours = model_seconds(row.ours, params, gpu, row.ops)
    return ours if row.baseline is None else model_seconds(row.baseline, params, gpu) / ours


def _nelder_mead(f, x0: list[float], step: float = 0.5, iterations: int = 2000,
                 tol: float = 1e-10) -> list[float]:
    """Minimise ``f`` from ``x0`` (the classic simplex method; no SciPy dependency)."""
    n = len(x0)
    simplex = [list(x0)] + [[x + (step if i == j else 0.0) for j, x in enumerate(x0)]
                            for i in range(n)]
    values = [f(x) for x in simplex]
    for _ in range(iterations):
        order = sorted(range(n + 1), key=values.__getitem__)
        simplex, values = [simplex[i] for i in order], [values[i] for i in order]
        if values[-1] - values[0] < tol:
            break
        centroid = [sum(p[j] for p in simplex[:-1]) / n for j in range(n)]

        def towards(coef, c=centroid, worst=simplex[-1]):
            return [c[j] + coef * (worst[j] - c[j]) for j in range(n)]

        reflected = towards(-1.0)
        fr = f(reflected)
        if fr < values[0]:
            expanded = towards(-2.0)
            fe = f(expanded)
            simplex[-1], values[-1] = (expanded, fe) if fe < fr else (reflected, fr)
        elif fr < values[-2]:
            simplex[-1], values[-1] = reflected, fr
        else:
            contracted = towards(0.5)
            fc = f(contracted)
            if fc < values[-1]:
                simplex[-1], values[-1] = contracted, fc
            else:  # shrink towards the best
                simplex = [simplex[0]] + [[simplex[0][j] + 0.5 * (p[j] - simplex[0][j])
                                           for j in range(n)] for p in simplex[1:]]
                values = [values[0]] + [f(p) for p in simplex[1:]]
    return simplex[min(range(n + 1), key=values.__getitem__)]


def _compiled_rows(rows: list[MeasuredRow], gpu: str):
    """Each modelled row as ``(measured, [(sign, terms)])``: the log of the model's value is
    ``Σ sign · log(seconds(terms))``, cheap to evaluate for many parameter sets."""
    out = []
    for row in rows:
        terms = _record_terms(traced(row.ours), row.ours, gpu)
        if row.ops is not None:
            terms = [t for t in terms if t[0] in row.ops]
        parts = [(1.0, terms)]
        if row.baseline is not None:
            parts = [(-1.0, terms),
                     (1.0, _record_terms(traced(row.baseline), row.baseline, gpu))]
        out.append((row.measured, parts))
    return out


def _log_model(parts, params: dict) -> float:
    return sum(sign * math.log(_terms_seconds(terms, params)) for sign, terms in parts)


def fit_parameters(rows: list[MeasuredRow], gpu: str = "h200",
                   start: dict | None = None) -> dict:
    """The :data:`PARAMETERS` that minimise the squared log error over ``rows`` (those the
    model explains), each efficiency kept in (0, 1]."""
    data = _compiled_rows([r for r in rows if r.unexplained is None], gpu)
    if not data:
        raise ValueError("rows: no measured row the model explains")
    start = start or _START

    def params_of(x):
        p = {name: math.exp(v) for name, v in zip(PARAMETERS, x)}
        return p

    def loss(x):
        p = params_of(x)
        penalty = sum(max(0.0, math.log(p[n])) ** 2 * 100 for n in PARAMETERS
                      if n.startswith("e_"))
        return sum((_log_model(parts, p) - math.log(m)) ** 2 for m, parts in data) + penalty

    x = [math.log(start[n]) for n in PARAMETERS]
    for _ in range(3):  # restarts: the simplex collapses on kinks of the max()
        x = _nelder_mead(loss, x, step=0.3)
    return {n: min(v, 1.0) if n.startswith("e_") else v for n, v in params_of(x).items()}


def calibration(gpu: str = "h200", leave_one_out: bool = True, root=None) -> dict:
    """Fit the model on every committed H200 row it explains and report, row by row, the
    measured value, the model's, the error, and (``leave_one_out``) the error when the row's
    case (in every file) was left out of the fit. Rows it does not explain say why."""
    check_choice("gpu", gpu, GPUS)
    rows = _same_kernels(measured_rows(root))
    params = fit_parameters(rows, gpu)
    table = []
    for row in rows:
        entry = {"source": row.source, "row": row.label, "quantity": row.quantity,
                 "measured": row.measured}
        if row.unexplained is not None:
            table.append({**entry, "model": None, "error": None, "loo_model": None,
                          "loo_error": None, "unexplained": row.unexplained})
            continue
        value = _row_model(row, params, gpu)
        entry.update(model=value, error=value / row.measured - 1.0, loo_model=None,
                     loo_error=None, unexplained=None)
        table.append(entry)
    if leave_one_out:
        groups = sorted({r.group for r in rows if r.unexplained is None})
        for group in groups:
            kept = [r for r in rows if r.group != group]
            p = fit_parameters(kept, gpu, start=params)
            for entry, row in zip(table, rows):
                if row.group == group and row.unexplained is None:
                    entry["loo_model"] = _row_model(row, p, gpu)
                    entry["loo_error"] = entry["loo_model"] / row.measured - 1.0
    explained = [e for e in table if e["unexplained"] is None]
    return {"gpu": gpu, "parameters": params, "rows": table,
            "max_abs_error": max(abs(e["error"]) for e in explained),
            "max_abs_loo_error": (max(abs(e["loo_error"]) for e in explained)
                                  if leave_one_out else None)}


# --------------------------------------------------------------------------------------------
# The compile report: what the kernel-efficiency terms read
# --------------------------------------------------------------------------------------------

COMPILE_FIELDS = ("kernel", "variant", "card", "arch", "compiled", "error", "registers",
                  "spill_bytes", "shared_bytes", "mma", "blocks_per_sm", "num_warps", "hot")
#: ASSUMPTIONS of the kernel-efficiency factor (no fused kernel of the new design has run on
#: a GPU): ``mma.sync`` reaches half of ``wgmma``'s tensor-core rate on sm_90 and a kernel
#: with no matrix instruction runs its dots on the CUDA cores (1/16 of the bf16 rate); a
#: kernel needs ``SATURATING_WARPS`` resident warps per SM to hide memory latency (fewer scale
#: it down in proportion); spilled registers halve it.
MMA_FACTOR = {"wgmma": 1.0, "mma.sync": 0.5, None: 1.0 / 16}
SATURATING_WARPS = 8
SPILL_FACTOR = 0.5


def read_compile_report(path=None) -> list[dict]:
    """The rows of a compile report (``python -m convnn bench --compile OUT`` writes
    ``OUT/compile.json``): ``path`` is the file or a folder holding it; default the newest
    ``compile.json`` under ``data/results/compile/``. ``[]`` when there is none."""
    import json
    from pathlib import Path

    from ..package_data import results_root

    if path is None:
        found = sorted((results_root() / "compile").rglob("compile.json"))
        if not found:
            return []
        path = found[-1]
    path = Path(path)
    if path.is_dir():
        path = path / "compile.json"
    if not path.is_file():
        raise ValueError(f"compile report: no file {path}")
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"compile report {path} is not JSON: {err}") from None
    if isinstance(rows, dict):
        rows = rows.get("rows", [])
    if not isinstance(rows, list):
        raise ValueError(f"compile report {path}: expected a list of rows")
    for i, row in enumerate(rows):
        missing = ([f for f in COMPILE_FIELDS if f not in row] if isinstance(row, dict)
                   else list(COMPILE_FIELDS))
        if missing:
            raise ValueError(f"compile report {path}: row {i} lacks {', '.join(missing)}")
    return rows


def kernel_factor(row: dict) -> dict:
    """The kernel-efficiency factor of one compile-report row (see :data:`MMA_FACTOR`):
    ``{"factor", "occupancy", "warps_per_sm", "mma", "spills"}``; factor 0 when it does
    not compile."""
    if not row["compiled"]:
        return {"factor": 0.0, "occupancy": 0.0, "warps_per_sm": 0, "mma": None,
                "spills": False}
    warps = (row["blocks_per_sm"] or 0) * (row["num_warps"] or 0)
    mma = next((m for m in ("wgmma", "mma.sync") if m in (row["mma"] or [])), None)
    spills = (row["spill_bytes"] or 0) > 0
    factor = (MMA_FACTOR[mma] * min(1.0, warps / SATURATING_WARPS)
              * (SPILL_FACTOR if spills else 1.0))
    from .compile import card

    return {"factor": factor, "occupancy": warps / card(row["card"]).max_warps_per_sm,
            "warps_per_sm": warps, "mma": mma, "spills": spills}


def worst_kernel_factor(rows: list[dict], card: str = "sm_90",
                        kernel_contains: str = "attention_forward",
                        variant_contains: str = "",
                        prefer: str = "autocast-bf16") -> dict | None:
    """The worst :func:`kernel_factor` among the report's rows for ``card`` whose kernel
    names ``kernel_contains`` (default: the attention core's forward kernel, which bounds the
    core's speed) and whose variant names ``variant_contains`` (``None`` when the report has
    none). Rows naming ``prefer`` (default: what bf16 training runs, float32 q/k and bf16
    values) are taken when there are any."""
    picked = [r for r in rows if r["card"] == card and kernel_contains in r["kernel"]
              and variant_contains in (r["variant"] or "")]
    preferred = [r for r in picked if prefer in (r["variant"] or "")]
    picked = preferred or picked
    if not picked:
        return None
    worst = min(picked, key=lambda r: kernel_factor(r)["factor"])
    return {**kernel_factor(worst), "kernel": worst["kernel"], "variant": worst["variant"]}


# --------------------------------------------------------------------------------------------
# The redesigned attention core (issue 31), estimated with the calibrated model
# --------------------------------------------------------------------------------------------

#: ASSUMPTIONS of the redesigned core's CUDA-core work (selection, rescoring, aggregation,
#: backward), as a fraction of the CUDA cores' float32 rate: central, low, high. No kernel of
#: this design has run on a GPU, so this is a range, not a fit.
CUDA_CORE_EFFICIENCY = (0.25, 0.1, 0.5)
#: The kernel-efficiency factor (:func:`kernel_factor`) assumed where no compile report
#: covers the new kernel: the design's own budget (``wgmma``, >= 8 warps per SM, no spills),
#: and the pessimistic end of the range: the forward kernel of today's core as the issue's
#: ahead-of-time compile found it (``mma.sync``, one 4-warp block per SM, spills).
DESIGN_FACTOR = 1.0
LOW_FACTOR = MMA_FACTOR["mma.sync"] * 4 / SATURATING_WARPS * SPILL_FACTOR
PACK_OPS = 10
"""CUDA-core operations per score of a tile to make its ranking key (scale, the non-finite
and self masks, the order-preserving bits, the column): :func:`_selection_ops`."""


def _selection_ops(config: dict) -> float:
    """CUDA-core operations per query row of the forward kernel's selection as built
    (``config``: its constexprs): per tile of ``BLOCK_N`` candidates, the keys made and one
    max-reduction, compare and select over the tile per searched rank (``KS`` passes), and
    from the second tile on a merge of two ``KP``-slot lists per rank."""
    ks = config["K"] - (1 if config["SELF_FIRST"] else 0)
    block, kp = config["BLOCK_N"], config["KP"]
    tiles = 1 if config["ONE_TILE"] else -(-config["_candidates"] // block)
    per_tile = PACK_OPS * block + ks * (3 * block + 2 * kp)
    return tiles * per_tile + (tiles - 1) * ks * 6 * kp


def _nbytes_of(*tensors) -> float:
    return float(sum(t.numel() * t.element_size() for t in tensors if t is not None))


def _attention_kernel_records(name: str, launch, args) -> list[tuple]:
    """``(record, op class, flops, bytes, bf16)`` of one launch of a kernel of
    :mod:`convnn.kernels_attention` as built, from its arguments and constexprs: tensor-core
    products, CUDA-core work and the bytes it reads and writes once (gathered rows count
    once: the k gathers of a row hit L2)."""
    c = launch.constexprs
    if name == "_attention_forward_kernel":
        q, key, v, _w, _cpos, drop, out, idx, p, tokens, width = args[:11]
        rows, dim, k = q.shape[0], c["D"], c["K"]
        products = 1 + int(c["SPLIT_Q"]) + int(c["SPLIT_K"])
        selection = _selection_ops({**c, "_candidates": width})
        return [("redesign_forward:dot", "kernel_dot",
                 products * 2.0 * rows * tokens * width * dim, 0.0, True),
                # the selection, the k logits recomputed in float32, the aggregation
                ("redesign_forward:cuda", "kernel_cuda",
                 rows * tokens * (selection + 4.0 * k * dim + 10.0 * k), 0.0, False),
                ("redesign_forward:io", "kernel_io", 0.0,
                 _nbytes_of(q, key, v, out, idx, p) + (_nbytes_of(drop) if c["DROP"] else 0.0),
                 True)]
    if name == "_attention_query_backward_kernel":
        q, key, v, _w, g, idx, p, drop, grad_q, dscore, partial_w = args[:11]
        rows, tokens, dim = q.shape
        k = c["K"]
        # per (t, j, c): g·v, dρ, the dw partial, dq: seven operations
        return [("redesign_backward:cuda", "kernel_cuda", 7.0 * rows * tokens * k * dim, 0.0,
                 False),
                ("redesign_backward:io", "kernel_io", 0.0,
                 _nbytes_of(key, v, g, idx, p, grad_q, dscore, partial_w)
                 + (_nbytes_of(drop) if c["DROP"] else 0.0), True)]
    if name == "_attention_candidate_backward_kernel":
        q, _w, g, p, drop, dscore, order, rowptr, grad_v, grad_key = args[:10]
        rows_tokens, dim = g.shape[0] * g.shape[1], c["D"]
        k = c["K"]
        # per (entry, c): dV and dkey sums, five operations
        return [("redesign_backward:cuda", "kernel_cuda", 5.0 * rows_tokens * k * dim, 0.0,
                 False),
                ("redesign_backward:io", "kernel_io", 0.0,
                 _nbytes_of(q, g, p, dscore, order, rowptr, grad_v, grad_key)
                 + (_nbytes_of(drop) if c["DROP"] else 0.0), True)]
    if name == "_attention_inverse_index_kernel":
        idx, order, rowptr = args[:3]
        # per entry: its rank among the block's entries of the same target, the gathered
        # running count, and the two histograms (a ballot per 32 bins)
        ops_per_entry = 2 * c["BLOCK_E"] + c["BLOCK_T"] / 8 + 10
        return [("redesign_backward:cuda", "kernel_cuda", ops_per_entry * idx.numel(), 0.0,
                 False),
                ("redesign_backward:io", "kernel_io", 0.0, _nbytes_of(idx, idx, order, rowptr),
                 True)]
    raise ValueError(f"the proxy has no cost for the kernel {name!r}")


@contextlib.contextmanager
def _recorded_launches(trace: StepTrace):
    """The attention core's launcher (:func:`convnn.kernels_attention._launch`) records each
    kernel in ``trace`` (one launch, :func:`_attention_kernel_records`) instead of running it,
    so the launchers' own PyTorch glue (allocations, the inverse index, the sums) is traced
    as it runs."""
    from .. import kernels_attention

    launch_kernel = kernels_attention._launch

    def record(kernel, grid, launch, *args):
        name = getattr(kernel, "fn", kernel).__name__
        for i, (label, cls, flops, nbytes, bf16) in enumerate(
                _attention_kernel_records(name, launch, args)):
            trace.add(label, cls, flops, nbytes, bf16, launches=int(i == 0))

    kernels_attention._launch = record
    try:
        yield
    finally:
        kernels_attention._launch = launch_kernel


class _RedesignedCore(torch.autograd.Function):
    """Runs :func:`convnn.kernels_attention.fused_attention`'s forward and backward launchers
    as built, their PyTorch glue traced and each Triton kernel recorded
    (:func:`_recorded_launches`): the forward kernel (bf16×3 products for float32 q/k in
    64-row query tiles, the top-k by packed keys, float32 softmax of the k selected logits,
    depthwise aggregation) and the O(T·k·d) backward (query side; candidate side through an
    inverse index)."""

    @staticmethod
    def forward(ctx, q, key, v, w, cand, drop, k, scale, self_first, self_logit, trace):
        from .. import kernels_attention

        with _recorded_launches(trace):
            out, idx, p = kernels_attention._forward_impl(q, key, v, w, cand, drop, k, scale,
                                                          self_first, self_logit)
        ctx.save_for_backward(q, key, v, w, idx, p, drop)
        ctx.scale, ctx.constant_self, ctx.trace = scale, self_logit is not None, trace
        return out

    @staticmethod
    def backward(ctx, grad):
        from .. import kernels_attention

        q, key, v, w, idx, p, drop = ctx.saved_tensors
        with _recorded_launches(ctx.trace):
            grads = kernels_attention._backward_impl(grad, q, key, v, w, idx, p, drop,
                                                     ctx.scale, ctx.constant_self)
        return (*grads, None, None, None, None, None, None, None)


@contextlib.contextmanager
def _on_a_bf16_card(trace: StepTrace):
    """ConvNNAttention's selection features are projected as on a card with bf16 tensor
    cores under autocast: :func:`convnn.ops.contract_linear`, one bf16 GEMM over ``3C``
    inputs with a float32 result (on the CPU's fake tensors the layer would take float32)."""
    from .. import ops

    applies, bf16_mm = ops.contract_projection_applies, ops._bf16_mm
    ops.contract_projection_applies = lambda device: True
    ops._bf16_mm = lambda a, b: torch.mm(a, b, out_dtype=torch.float32)
    try:
        yield
    finally:
        ops.contract_projection_applies, ops._bf16_mm = applies, bf16_mm


class _ProjectionKernel(torch.autograd.Function):
    """Stands for :func:`convnn.kernels_projection.contract_projection` as built: the forward
    kernel (x and W read in float32 and split in registers; three bf16 products for q and k,
    written per head in float32; with ``values``, one for v, written in bf16), and a backward
    of a dx kernel, the split-K dW / db kernel and the sum of its partials."""

    @staticmethod
    def forward(ctx, x, weight, heads, values, trace):
        from ..kernels_projection import ROWS_PER_SPLIT

        batch, tokens, channels = x.shape
        rows, parts = batch * tokens, 3 if values else 2
        width = weight.shape[0] // parts  # h·d
        out = 4.0 * rows * 2 * width + (2.0 * rows * width if values else 0.0)
        trace.add("projection_kernel_forward", "kernel_gemm",
                  2.0 * rows * channels * width * (6 + (1 if values else 0)),
                  4.0 * (rows * channels + weight.numel()) + out, True)
        ctx.trace, ctx.like, ctx.out = trace, (x, weight), out
        ctx.shape = (rows, channels, parts * width, -(-rows // ROWS_PER_SPLIT))
        q = x.new_empty(batch * heads, tokens, width // heads, dtype=torch.float32)
        if values:
            return q, torch.empty_like(q), torch.empty_like(q, dtype=torch.bfloat16)
        return q, torch.empty_like(q)

    @staticmethod
    def backward(ctx, *grads):
        rows, channels, stacked, splits = ctx.shape
        trace, gradients = ctx.trace, ctx.out  # the gradients' bytes are the outputs'
        flops = 2.0 * rows * stacked * channels
        trace.add("projection_kernel_dx", "kernel_gemm", flops,
                  gradients + 4.0 * (stacked * channels + rows * channels), True)
        partial = 4.0 * splits * stacked * (channels + 1)
        trace.add("projection_kernel_dw", "kernel_gemm", flops,
                  gradients + 4.0 * rows * channels + partial, True)
        trace.add("projection_kernel_sum", "kernel_io", 0.0, partial, True)
        x, weight = ctx.like
        return torch.empty_like(x), torch.empty_like(weight), None, None, None


@contextlib.contextmanager
def _redesigned_core(trace: StepTrace):
    """ConvNNAttention runs as ``backend="triton"`` on a bf16 card: its core through the
    fused core's launchers (:class:`_RedesignedCore`), its q, k and v from the projection
    kernel (:class:`_ProjectionKernel`)."""
    from .. import kernels_attention, kernels_projection
    from ..layers import ConvNNAttention

    decide, decide_projection = (ConvNNAttention.backend_decision,
                                 ConvNNAttention.projection_backend)
    core, project = kernels_attention.fused_attention, kernels_projection.contract_projection

    def fused_attention(q, key, v, w, k, scale, *, self_first=False, self_logit=None,
                        candidate_positions=None, weight_dropout=None):
        drop = None if weight_dropout is None else weight_dropout.detach().float().contiguous()
        return _RedesignedCore.apply(q, key, v, w, candidate_positions, drop, k, float(scale),
                                     bool(self_first), self_logit, trace)

    ConvNNAttention.backend_decision = lambda self, *args: ("triton", "the built kernels")
    ConvNNAttention.projection_backend = lambda self, x: ("triton", "the built kernel")
    kernels_attention.fused_attention = fused_attention
    kernels_projection.contract_projection = (
        lambda x, weight, bias, heads, values=False: _ProjectionKernel.apply(
            x, weight, heads, values, trace))
    try:
        with _on_a_bf16_card(trace):
            yield
    finally:
        ConvNNAttention.backend_decision = decide
        ConvNNAttention.projection_backend = decide_projection
        kernels_attention.fused_attention, kernels_projection.contract_projection = core, project


def _kernel_terms(rec: OpRecord, hw: dict, gpu: str) -> tuple:
    if rec.op_class == "kernel_gemm":  # software-pipelined: loads overlap the products, as
        # the model has it for cuBLAS (the roofline: the larger of compute and memory)
        return (rec.name, rec.flops / hw["bf16_flops"], "e_kernel_gemm",
                rec.bytes / hw["bandwidth"] / LIBRARY_BANDWIDTH, None, rec.count)
    if rec.op_class == "kernel_dot":
        return (rec.name, rec.flops / hw["bf16_flops"], "e_kernel_dot", 0.0, None, rec.count)
    if rec.op_class == "kernel_cuda":
        return (rec.name, rec.flops / FP32_FLOPS[gpu], "e_kernel_cuda", 0.0, None, rec.count)
    return (rec.name, 0.0, None, rec.bytes / hw["bandwidth"], "e_stream", rec.count)


TARGET_CASES = (("all", {}), ("random r=32", {"sampling": "random", "candidates": 32}))


def _target_traces(heads: int = 1, dim: int = 192, batch: int = 256) -> dict:
    """The traces of the issue's targets: the attention layer (fwd + bwd, bf16 autocast,
    B = 256, T = 197, k = 9) against bf16 SDPA, and the ViT-Tiny training step (batch 256)
    against the SDPA ViT-Tiny; today's code and the redesigned core."""
    from ..attention import MultiHeadSelfAttention
    from ..layers import ConvNNAttention
    from ..models import ModelConfig, build_model

    def tokens(n):
        return torch.randn(n, 197, dim, requires_grad=True)

    def images(n):
        return torch.randn(n, 3, 224, 224)

    out = {("layer", "SDPA"): _trace(lambda: MultiHeadSelfAttention(dim, heads), tokens, batch,
                                     "bf16", False, False),
           ("vit", "SDPA"): _trace(lambda: build_model(ModelConfig(name="vit_tiny",
                                                                   mixer="attention")),
                                   images, batch, "bf16", False, True)}
    out[("layer", "SDPA")].parameters = 0
    for cand, opts in TARGET_CASES:
        for core, stand_in in (("today", _on_a_bf16_card), ("redesign", _redesigned_core)):
            layer = _trace(lambda o=opts: ConvNNAttention(dim, heads, k=9, **o), tokens, batch,
                           "bf16", False, False, stand_in=stand_in)
            layer.parameters = 0  # a layer step has no optimizer
            out[("layer", cand, core)] = layer
            cfg = ModelConfig(name="vit_tiny", mixer="convnn_attention",
                              layer_options={"k": 9, **opts})
            out[("vit", cand, core)] = _trace(lambda c=cfg: build_model(c), images, batch,
                                              "bf16", False, True, stand_in=stand_in)
    return out


def _estimate_trace(trace: StepTrace, params: dict, gpu: str) -> float:
    hw = GPUS[gpu]
    spec = TraceSpec("layer", "", amp="bf16")
    plain = StepTrace(ops={key: rec for key, rec in trace.ops.items()
                           if not rec.op_class.startswith("kernel_")},
                      parameters=trace.parameters, parameter_tensors=trace.parameter_tensors)
    terms = _record_terms(plain, spec, gpu)
    terms += [_kernel_terms(rec, hw, gpu) for rec in trace.ops.values()
              if rec.op_class.startswith("kernel_")]
    return _terms_seconds(terms, params)


def target_estimates(device: str = "h200", calibrated: dict | None = None,
                     compile_report=None, heads: int = 1, dim: int = 192) -> list[dict]:
    """ESTIMATES (not measurements) of the issue's targets on ``device``: the attention
    layer (``heads`` × ``dim // heads``, B = 256, T = 197, k = 9, fwd + bwd, bf16 autocast)
    against bf16 SDPA, and the ViT-Tiny training step against the SDPA ViT-Tiny, for all
    candidates and r = 32, with today's code and the redesigned core.

    The model is the calibrated one (``calibrated``: :func:`calibration`'s result; fitted
    here when not given). The redesigned core's tensor-core dots run at the calibrated bf16
    SDPA efficiency times the kernel factor read from the compile report (``compile_report``:
    a path, rows, or ``None`` for the committed one under ``data/results/compile/``; without
    an attention-forward row for the card, :data:`DESIGN_FACTOR`). The q/k projection
    kernels (:class:`_ProjectionKernel`, software-pipelined GEMMs) run at the calibrated
    cuBLAS efficiency times the worst of their rows' factors, the larger of compute and
    memory as for cuBLAS. ``est_low`` / ``est_high`` span :data:`LOW_FACTOR` … the factors
    and :data:`CUDA_CORE_EFFICIENCY`; ``calibration_rms``
    / ``calibration_max`` are the calibrated model's relative errors on the committed ratio
    rows: read each estimate as ``est × (1 ± calibration_rms)`` at best."""
    check_choice("device", device, GPUS)
    if calibrated is None:
        calibrated = calibration(device, leave_one_out=False)
    params = calibrated["parameters"]
    ratio_rows = [e for e in calibrated["rows"]
                  if e["unexplained"] is None and e["quantity"] == "speed vs baseline"]
    errors = [math.log(e["model"] / e["measured"]) for e in ratio_rows]
    rms = math.exp(math.sqrt(sum(x * x for x in errors) / len(errors))) - 1.0
    worst = max(abs(e["error"]) for e in ratio_rows)
    rows = (compile_report if isinstance(compile_report, list)
            else read_compile_report(compile_report))
    card = {"h200": "sm_90", "h100": "sm_90", "a100": "sm_80"}[device]
    traces = _target_traces(heads, dim)

    def kernel(cand: str):
        """The kernel factor of case ``cand``, its mma-free part, and where it comes from."""
        found = (worst_kernel_factor(rows, card, variant_contains=cand.split()[-1])
                 if rows else None)
        if found is None:
            return (DESIGN_FACTOR, DESIGN_FACTOR / MMA_FACTOR["wgmma"],
                    ("no compile report row for the attention forward kernel: the design's "
                    "budget (wgmma, >= 8 warps/SM, no spills)"))
        return (found["factor"], found["factor"] / MMA_FACTOR[found["mma"]],
                (f"compile report: {found['kernel']} ({found['variant']}), {found['mma']}, "
                f"{found['warps_per_sm']} warps/SM, "
                f"{'spills' if found['spills'] else 'no spills'}"))

    projection = (worst_kernel_factor(rows, card, kernel_contains="_projection_", prefer="")
                  if rows else None)
    gemm_factor = DESIGN_FACTOR if projection is None else projection["factor"]

    def seconds(trace, f, e_cuda, occ, gemm=gemm_factor):
        if f <= 0 or occ <= 0 or gemm <= 0:  # a kernel does not compile for the card
            return math.inf
        return _estimate_trace(trace, {**params, "e_kernel_dot": params["e_attention"] * f,
                                       "e_kernel_cuda": e_cuda * occ,
                                       "e_kernel_gemm": params["e_matmul"] * gemm}, device)

    central_e, low_e, high_e = CUDA_CORE_EFFICIENCY
    out = []
    for target, label in (("layer", (f"attention layer {heads}x{dim // heads}, B=256, T=197, "
                                     "k=9, fwd+bwd, bf16 vs bf16 SDPA")),
                          ("vit", "ViT-Tiny training step, batch 256, bf16 vs SDPA ViT-Tiny")):
        base = seconds(traces[(target, "SDPA")], 1.0, central_e, 1.0)
        for cand, _ in TARGET_CASES:
            factor, occupancy_only, source = kernel(cand)
            for core in ("today", "redesign"):
                trace = traces[(target, cand, core)]
                est = seconds(trace, factor, central_e, occupancy_only)
                row = {"target": label, "case": f"ConvNN {cand}, "
                       + ("today's PyTorch path" if core == "today" else "redesigned core"),
                       "device": device, "estimate": True, "est_seconds": est,
                       "baseline_est_seconds": base, "est_ratio_vs_baseline": base / est,
                       "calibration_rms": rms, "calibration_max": worst}
                if core == "redesign":
                    slow = seconds(trace, LOW_FACTOR, low_e, min(occupancy_only, LOW_FACTOR
                                                                 / MMA_FACTOR["mma.sync"]),
                                   gemm=LOW_FACTOR)
                    fast = seconds(trace, max(factor, DESIGN_FACTOR), high_e, 1.0,
                                   gemm=max(gemm_factor, DESIGN_FACTOR))
                    row.update(est_low=base / slow, est_high=base / fast,
                               kernel_factor=factor, kernel_source=source,
                               projection_factor=gemm_factor,
                               projection_source=(
                                   "no compile report row for the projection kernels: the "
                                   "design's budget" if projection is None else
                                   f"compile report: {projection['kernel']} "
                                   f"({projection['variant']}), {projection['mma']}, "
                                   f"{projection['warps_per_sm']} warps/SM"))
                out.append(row)
    return out


def format_target_estimates(rows: list[dict]) -> str:
    """A plain-text table of :func:`target_estimates` (all estimates)."""
    lines = [f"{'target':<66} {'case':<36} {'est.':>6} {'range':>13} {'calib. rms':>10}"]
    lines.append("-" * len(lines[0]))
    for r in rows:
        rng = (f"{r['est_low']:.2f}-{r['est_high']:.2f}x" if "est_low" in r else "")
        lines.append(f"{r['target']:<66} {r['case']:<36} {r['est_ratio_vs_baseline']:>5.2f}x "
                     f"{rng:>13} {r['calibration_rms'] * 100:>9.0f}%")
    return "\n".join(lines)


def format_calibration(result: dict) -> str:
    """The calibration table: every committed row, measured, modelled, the error and the
    leave-one-out error, then the fitted parameters."""
    lines = [(f"{'source':<30} {'row':<112} {'measured':>10} {'model':>10} {'error':>7} "
             f"{'LOO':>7}")]
    lines.append("-" * len(lines[0]))

    def num(x, seconds):
        return f"{x * 1e3:.3f}ms" if seconds else f"{x:.3f}x"

    for e in result["rows"]:
        sec = e["quantity"] == "seconds"
        if e["unexplained"] is not None:
            lines.append(f"{e['source']:<30} {e['row']:<112} {num(e['measured'], sec):>10} "
                         f"  not modelled: {e['unexplained']}")
            continue
        loo = "" if e["loo_error"] is None else f"{e['loo_error'] * 100:+.0f}%"
        lines.append(f"{e['source']:<30} {e['row']:<112} {num(e['measured'], sec):>10} "
                     f"{num(e['model'], sec):>10} {e['error'] * 100:>+6.0f}% {loo:>7}")
    explained = [e for e in result["rows"] if e["unexplained"] is None]
    inside = sum(abs(e["error"]) <= 0.3 for e in explained)
    lines.append(f"{inside} of {len(explained)} modelled rows within ±30 %; max |error| "
                 f"{result['max_abs_error'] * 100:.0f} %"
                 + (f", max |leave-one-out error| {result['max_abs_loo_error'] * 100:.0f} %"
                    if result["max_abs_loo_error"] is not None else ""))
    lines.append("fitted: " + ", ".join(f"{k} = {v:.3g}" for k, v in
                                        result["parameters"].items())
                 + "  (an efficiency at 1.0 sits at its bound: the data do not pin it)")
    return "\n".join(lines)
