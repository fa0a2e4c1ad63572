"""The ConvNN operator as pure tensor functions: select k neighbours, then aggregate.

Every step of the operator (method.md §2) is one function here:

1. selection features: :func:`grid_coordinates`, :func:`sequence_coordinates`,
   :func:`selection_features` (features, coordinates, or both mixed by α);
2. candidates: :func:`random_candidates`, :func:`spatial_candidates_2d`,
   :func:`spatial_candidates_1d` (``None`` means all positions);
3. similarity: :func:`pairwise_scores` (scaled dot product, cosine, Euclidean);
4. selection: :func:`select_neighbours` (fast, blocked) and
   :func:`select_neighbours_reference` (plain, full matrix);
5. weighting ρ: :func:`neighbour_weights` (ones, softmax, similarity);
6. + 7. gather and aggregate: :func:`gather_neighbours` + :func:`aggregate` (plain),
   :func:`gather_aggregate` (fast: one autograd node that keeps no gathered copy for
   backward) and :func:`aggregate_reference` (the authors' algorithm: expand the values k
   times, gather, then a Conv1d with kernel k and stride k).

What runs them is one choice, ``backend``: ``"reference"`` (plain, full matrix),
``"torch"`` (the blocked fast path), ``"triton"`` (the fast path with the kernels of
:mod:`convnn.kernels`) or ``None`` (the global default of :func:`default_backend`), decided
by :func:`choose_backend`. Similarities are table entries (:class:`Similarity` in
:data:`SIMILARITIES`) that both paths read.

:func:`convnn` composes them. Layouts: positions are rows, ``[B, N, C]``. ``N`` counts every
position the layer may select (a zero-padded image counts its border), and the layer produces
one output per *query* position (``query_positions``, all ``N`` by default).

Scores are always "larger is more similar": the Euclidean ranking score is ``-d²`` (no square
root needed to rank), and the score handed to the weighting is ``-d``, computed with a clamped
square root so that outputs and gradients stay finite at zero distance.

**Precision contract of selection.** The PyTorch paths rank in float32 (16-bit inputs are
upcast, autocast is off while ranking). The fused Triton kernels rank on tensor cores under
this contract ("bf16×3", split precision), emulated in PyTorch by :func:`contract_scores`:

- every score is a sum of bf16 products accumulated in float32;
- a float32 (or float16) operand ``x`` is split into ``hi = bf16(x)`` and
  ``lo = bf16(x - hi)``; the score is ``hi_q·hi_k + hi_q·lo_k + lo_q·hi_k`` (three
  tensor-core products; ``lo·lo`` is dropped). A bf16 operand is its own ``hi`` (``lo = 0``).

Error (bf16 keeps 8 significant bits, unit roundoff ``2^-8``): ``|lo| ≤ 2^-8 |x|`` and
``|x - hi - lo| ≤ 2^-16 |x|``, so each product is within ``3.03 · 2^-16 |q_i k_i|`` of the
exact one; float32 accumulation adds at most ``3 D · 2^-24 Σ|q_i k_i|`` to the three
products and ``D · 2^-24 Σ|q_i k_i|`` to the float32 score. Hence, per query/candidate pair,
``|score_contract - score_float32| ≤ τ = (2^-14 + 4 D 2^-24) · scale · Σ_i |q_i| |k_i|``
(:func:`selection_score_bound`; ``τ ≈ 1.1e-4 · scale · Σ|q_i||k_i|`` at D = 192).

Ranking keys: the attention kernel (:mod:`convnn.kernels_attention`) ranks one int32 key
per score, the score's order-preserving bits
with the low ``c`` bits replaced by the (reversed) candidate column, ``c`` the bits a column
needs (:func:`convnn.kernels_attention.column_bits`: 8 for up to 256 candidates). So two
scores closer than ``δ = 2^(c - 23) · |score|`` (``2^-15 |score|`` at T ≤ 256, under
``τ / 2`` since ``τ ≥ 2^-14 · scale · Σ|q_i||k_i| ≥ 2^-14 |score|``) may rank by column
instead. The softmax logits of the k selected keys are then recomputed in float32 from the
gathered rows, so ρ is the float32 softmax of the selected scores.

What is guaranteed: the neighbour list (in rank order) equals the float32 list except on
near-ties: wherever rank j differs, the float32 scores of the two candidates at rank j
differ by at most ``2 (τ + δ)``, maxima over the row (a perturbation of at most ε per score
moves each order statistic by at most ε). Tests check this on every differing list
(``tests/test_precision_contract.py``, also for the Triton kernel under the interpreter)
and measure how many lists differ from float32, on random and post-ReLU inputs (seeded,
CPU emulation): :class:`~convnn.layers.ConvNNAttention` at T = 197, k = 9, 1×192 and 3×64
(788 and 2,364 lists): bf16×3 0 lists, one bf16 product 13-15 %, TF32 1.3-2.2 %;
:class:`~convnn.layers.ConvNN2d`, 64 channels, cosine over a padded 34×34 map, k = 9 (2,048
lists): bf16×3 0 (random) and 1 list, a near-tie (post-ReLU, 0.05 %), one bf16 product
13 % and 21 %, TF32 1.3 % and 3.7 %. The attention kernel's packed keys (bf16×3, 8
column bits; 1×192, 788 lists): 0 lists, random and post-ReLU.

Rank on one bf16 product, then rescore the best k + m in float32 with a gap check (the
list is exact where the k-th rescored score beats the best unkept approximate score by the
bf16 bound): measured in float32 on the same attention features, with the bound taken from
norms (``τ_bf16 ≤ 2^-7 · scale · ‖q‖ · max‖k‖``; 1×192, 8 images), the check fails on
3.2 % (random) and 9.8 % (post-ReLU) of the rows at k + m = 16, so 92 % and 100 % of the
64-query tiles would need the bf16×3 pass as well; at k + m = 32 no row fails, but 32 gathered float32 rescores a query cost
about as much on an H100 as the two extra tensor-core products of bf16×3 (an estimate:
64·32·192 CUDA-core multiply-adds against 2·64·256·192 bf16 tensor-core ones, at about 15
times the rate). So the kernels keep bf16×3 for float32 features, and bf16 features (q and
key projected in bf16) take one product with no split, exact products, float32 lists of the
bf16 features.

Why this design: the scores are the only O(T²·d) work of selection; "bf16×3" runs it on
tensor cores at three bf16 products (cheaper than 3×TF32, which costs three TF32 products
at half the bf16 rate) with float32 lists up to near-ties; one bf16 or TF32 product would
change too many lists, and rank-then-rescore costs as much (above).

**The selection's q/k projections in training.** Under bf16 autocast on a card with bf16
tensor cores (:func:`contract_projection_applies`), :class:`~convnn.layers.ConvNNAttention`
projects its selection features with :func:`contract_linear`: the same bf16×3 split of ``x``
and ``W`` (q and k weights stacked), one bf16 GEMM over ``3C`` inputs with a float32 result.
Each feature is within ``(2^-14 + 4 C 2^-24) · Σ_c |x_c| |W_oc|`` of the float32 projection
(:func:`selection_score_bound` of ``x`` and ``W``), which moves a score by at most
``scale · Σ_i (ε_q,i |k_i| + (|q_i| + ε_q,i) ε_k,i)``. Measured on the same 788 lists (1×192,
T = 197, k = 9, random and post-ReLU, CPU emulation): contract projections then bf16×3
scores change 0 lists; bf16 projections (plain autocast) change 20 %. Elsewhere (CPU,
float32 training, float16 cards) the features are projected in float32. Its backward is a
bf16 linear's: the gradients decide no list. With ``backend="triton"`` the same products run
in one Triton kernel that reads ``x`` once and writes q, k (and v, as autocast makes it) per
head (:func:`convnn.kernels_projection.contract_projection`).
The softmax, the aggregation and all gradients accumulate in float32.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import math
import os
from collections.abc import Callable
from dataclasses import KW_ONLY, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from . import kernels, kernels_attention, kernels_conv2d, kernels_projection
from ._checks import check_choice, check_index, check_int

WEIGHTINGS = ("ones", "softmax", "similarity")
AGGREGATIONS = ("standard", "depthwise", "separable")
SAMPLINGS = ("all", "random", "spatial")
SELECTIONS = ("features", "coords", "mixed")
EVAL_SAMPLINGS = ("fixed", "resample")
"""How sampled candidates are drawn in evaluation: one fixed draw, or a new draw per call."""
COORD_GRIDS = ("image", "padded")
SPATIAL_ROUNDINGS = ("round", "truncate")
SELF_SCORES = ("similarity", "constant")
PAPER_SELF_LOGIT = 1.0
"""The logit of the query itself with ``self_score="constant"`` (the authors' sampled
ConvNN attention)."""
REFERENCE, TORCH, TRITON = BACKENDS = ("reference", "torch", "triton")
"""What runs the operator: ``"reference"`` (the plain full-matrix selection and the authors'
expand-gather-Conv1d aggregation), ``"torch"`` (the blocked PyTorch fast path) or
``"triton"`` (the fast path with the kernels of :mod:`convnn.kernels` wherever they support
the options); ``None`` picks one (see :func:`choose_backend`)."""


@dataclass(frozen=True)
class KernelStep:
    """A step of the operator with a Triton kernel: the predicate of its kernel module
    (``None`` where the kernel runs the problem, else the reason) and whether auto may take
    it."""

    can_run: Callable[..., str | None]
    """``can_run(device=..., **problem)``, e.g. :func:`convnn.kernels.can_run_topk`."""
    what: str
    """What the kernel is, for the reasons given."""
    opt_in: bool = False
    """Only an explicit ``backend="triton"`` takes it: auto leaves it off until it is
    measured on a GPU."""


KERNEL_STEPS = {
    "topk": KernelStep(kernels.can_run_topk, "row top-k"),
    "gather_aggregate": KernelStep(kernels.can_run_gather_aggregate, "gather-aggregate"),
    "fused_topk": KernelStep(kernels.can_run_fused_topk, "fused selection", opt_in=True),
    "fused_attention": KernelStep(kernels_attention.can_run_fused_attention,
                                  "fused attention core", opt_in=True),
    "conv2d_fused": KernelStep(kernels_conv2d.can_run_conv2d_fused, "fused 2-D kernels",
                               opt_in=True),
    "contract_projection": KernelStep(kernels_projection.can_run_contract_projection,
                                      "contract projection kernel", opt_in=True),
}
"""The steps with a Triton kernel, each with its module's predicate: ``"topk"`` (row top-k of
a score matrix), ``"gather_aggregate"`` (depthwise/separable aggregation), ``"fused_topk"``
(selection that never writes the score matrix), ``"fused_attention"`` (the whole ConvNN
attention core of :class:`convnn.layers.ConvNNAttention`, all or sampled candidates, float32
or 16-bit, in one kernel: selection under the precision contract, softmax, depthwise
aggregation) ``"conv2d_fused"`` (the paper's :class:`convnn.layers.ConvNN2d`: selection
and gather-GEMM read the image in place) and ``"contract_projection"`` (the attention layer's
q/k projection under the precision contract, in one GEMM that writes q and k per head:
:func:`convnn.kernels_projection.contract_projection`). The fused steps are opt-in: only
``backend="triton"`` takes them, not auto. A new kernel step is its module's ``can_run_*``
and one entry here."""
BACKEND_ENV = "CONVNN_BACKEND"
"""The environment variable that sets the initial global default backend: one of
:data:`BACKENDS`, or ``"auto"`` (``None``); unset is ``"torch"``."""


def _check_backend(name: str, backend) -> None:
    if backend is not None:
        check_choice(name, backend, BACKENDS)


# The global default backend: "torch" (the Triton kernels are opt-in), or what CONVNN_BACKEND
# says ("auto" is None); a bad value is reported by the first operator call.
_default_backend = os.environ.get(BACKEND_ENV, TORCH)
_default_backend = None if _default_backend == "auto" else _default_backend


def get_default_backend() -> str | None:
    """The global default backend (see :func:`default_backend`); ``None`` is auto."""
    return _default_backend


def set_default_backend(backend: str | None) -> None:
    """Set the global default backend: what runs where ``backend=None`` is passed.

    ``"reference"``, ``"torch"`` (the initial default), ``"triton"`` or ``None`` (auto: Triton
    on CUDA where it is installed and supports the options, PyTorch otherwise)."""
    global _default_backend
    _check_backend("backend", backend)
    _default_backend = backend


@contextlib.contextmanager
def default_backend(backend: str | None):
    """Use ``backend`` as the global default inside a ``with`` block
    (``with ops.default_backend("reference"): ...``)."""
    global _default_backend
    previous = _default_backend
    set_default_backend(backend)
    try:
        yield
    finally:
        _default_backend = previous


def requested_backend(backend: str | None = None) -> str | None:
    """The backend asked for: ``backend``, or the global default where it is ``None``;
    ``None`` when that is auto as well."""
    if backend is None:
        backend = _default_backend
        _check_backend(f"backend (the global default; {BACKEND_ENV} may also be 'auto')", backend)
    else:
        _check_backend("backend", backend)
    return backend


def _runs_anything(step, device, problem, forced) -> str | None:
    return None


def _resolved(problem: dict) -> dict:
    """The problem a predicate sees: names checked, a similarity name as its table entry."""
    if problem.get("aggregation") is not None:
        check_choice("aggregation", problem["aggregation"], AGGREGATIONS)
    if problem.get("similarity") is not None:
        problem = {**problem, "similarity": get_similarity(problem["similarity"])}
    return problem


def kernel_refusal(step: str, device=None, **problem) -> str | None:
    """Why the Triton kernel of ``step`` (a name of :data:`KERNEL_STEPS`) does not take
    ``problem`` (see :func:`choose_backend`) on ``device`` (``None``: on any card), or
    ``None`` where it does; the predicate of the kernel's module."""
    check_choice("step", step, KERNEL_STEPS)
    return KERNEL_STEPS[step].can_run(device=device, **_resolved(problem))


def _triton_refusal(step, device, problem, forced) -> str | None:
    """Why the Triton backend does not run ``step`` (``None``: it does); raises where
    ``backend="triton"`` is forced for a supported step on a device Triton cannot use."""
    if step is None:  # the operator as a whole; each step may still fall back
        if forced or (device.type == "cuda" and kernels.available(device)):
            return None
        return f"backend=None (auto) uses Triton on CUDA only, not {device.type}"
    kernel = KERNEL_STEPS[step]
    reason = kernel_refusal(step, device, **problem)
    if reason is not None:
        return f"unsupported by the Triton kernel: {reason}"
    if kernel.opt_in and not forced:
        return (f"backend=None (auto) leaves the {kernel.what} off until it is measured on "
                "a GPU; pass backend='triton'")
    if not kernels.available(device):
        if forced:
            raise RuntimeError("backend='triton' needs CUDA tensors (or TRITON_INTERPRET=1) "
                               f"and triton; got a {device.type} tensor. Use backend='torch' "
                               "or None (auto).")
        return f"Triton cannot run on {device.type}"
    if not forced and device.type != "cuda":
        return f"backend=None (auto) uses Triton on CUDA only, not {device.type}"
    return None


@dataclass(frozen=True)
class Backend:
    """An entry of :data:`BACKEND_ORDER`."""

    name: str
    refusal: Callable[..., str | None]
    """``refusal(step, device, problem, forced)``: ``None`` where it runs ``step`` (``None``:
    the operator as a whole) on ``problem``, else the reason."""
    auto: bool
    """Whether auto (``backend=None``) may pick it."""


BACKEND_ORDER = (
    Backend(TRITON, _triton_refusal, auto=True),
    Backend(TORCH, _runs_anything, auto=True),
    Backend(REFERENCE, _runs_anything, auto=False),
)
"""The one list that decides, in order of preference: auto takes the first entry with
``auto`` that runs the step; an explicit backend that refuses falls back to the next entry
that runs it (``"triton"`` to ``"torch"``). A new backend is its module and one entry here."""


def backend_decision(backend: str | None, device, *, step: str | None = None,
                     **problem) -> tuple[str, str]:
    """:func:`choose_backend` with its reason: ``("reference" | "torch" | "triton", why)``."""
    if step is not None:
        check_choice("step", step, KERNEL_STEPS)
    requested = requested_backend(backend)
    device = torch.device(device)
    names = [b.name for b in BACKEND_ORDER]
    start = names.index(requested) if requested is not None else 0
    refused = None
    for entry in BACKEND_ORDER[start:]:
        if requested is None and not entry.auto:
            continue
        reason = entry.refusal(step, device, problem, entry.name == requested)
        if reason is None:
            return entry.name, refused or f"backend={requested!r}"
        refused = refused or reason
    raise AssertionError(f"no backend runs step={step!r}")  # pragma: no cover - torch runs all


def choose_backend(backend: str | None, device, *, step: str | None = None,
                   **problem) -> str:
    """The one place that decides what runs: ``"reference"``, ``"torch"`` or ``"triton"``
    (:data:`BACKEND_ORDER`).

    Args:
        backend: ``"reference"``, ``"torch"``, ``"triton"`` or ``None``: the global default
            (:func:`default_backend`, initially ``"torch"``), and where that is ``None`` as
            well, auto: Triton on CUDA where it is installed and supports the options,
            PyTorch otherwise.
        device: where the tensors live.
        step: ``None`` (the operator as a whole) or a name of :data:`KERNEL_STEPS`; options
            the step's Triton kernel does not support, or a card that cannot run its variant
            (bfloat16 below compute capability 8.0), fall back to ``"torch"`` whatever the
            choice.
        problem: what the step's predicate takes: ``"topk"`` ``k`` and ``width``
            (neighbours and candidates per row); ``"gather_aggregate"`` ``aggregation`` and
            ``dtype`` (of the values); ``"fused_topk"`` ``k`` (neighbours searched),
            ``similarity`` and ``dtype`` (ranking, float32 by default);
            ``"fused_attention"`` ``k``, ``width`` (tokens), ``aggregation``,
            ``similarity`` and ``options`` (the layer's ``sampling``, ``selection``,
            ``weighting``, ``attn_dropout`` on the weights and ``dtypes`` of queries, keys,
            values, weights); ``"conv2d_fused"`` ``k``, ``similarity``, ``options`` and
            ``dtype`` (see :func:`convnn.kernels_conv2d.can_run_conv2d_fused`);
            ``"contract_projection"`` ``width`` (``h·d``), ``heads``, ``dtype`` (of ``x``) and
            ``weight_dtypes``.

    Raises:
        RuntimeError: ``"triton"`` is forced for a supported step on a device where Triton
            cannot run.
    """
    return backend_decision(backend, device, step=step, **problem)[0]


# Squared distances below this are treated as this when taking the square root, so that
# d(-d)/d(d²) stays finite at zero distance.
_MIN_SQUARED_DISTANCE = 1e-12
# Elements of the score matrix held at once by the blocked fast path (per call, all batches):
# 4 MiB of float32 scores on a CPU, 64 MiB on a GPU.
CPU_BLOCK_ELEMENTS = 1 << 20
GPU_BLOCK_ELEMENTS = 1 << 24


def _upcast(x: Tensor) -> Tensor:
    """16-bit floats are computed in float32; float32 and float64 stay as they are."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def ranking_precision(device: torch.device):
    """A context in which neighbours are ranked in float32 or better: autocast is switched off
    (ranking by bf16-rounded scores changes about a quarter of a 2-D layer's neighbour lists)."""
    if device.type in ("cpu", "cuda"):
        return torch.autocast(device.type, enabled=False)
    return contextlib.nullcontext()


def split_bf16(x: Tensor) -> tuple[Tensor, Tensor]:
    """``x`` as ``hi + lo`` of two bf16 tensors (``hi = bf16(x)``, ``lo = bf16(x - hi)``;
    ``lo = 0`` for bf16 ``x``): the operands of the precision contract (module docstring)."""
    hi = x.detach().to(torch.bfloat16)
    lo = torch.sub(x.detach().float(), hi).to(torch.bfloat16)  # one kernel: x - hi in float32
    return hi, lo


def contract_scores(query: Tensor, keys: Tensor, scale: float = 1.0) -> Tensor:
    """Dot-product scores ``(q · k) · scale`` under the precision contract of selection
    (bf16×3, float32 accumulation; see the module docstring), emulated in float32:
    ``[B, n, D] × [B, m, D] -> [B, n, m]`` float32, no gradient. A product of two bf16
    values is exact in float32, so this is the tensor-core arithmetic up to summation order."""
    q_hi, q_lo = split_bf16(query)
    k_hi, k_lo = split_bf16(keys)

    def product(a: Tensor, b: Tensor) -> Tensor:
        return torch.matmul(a.float(), b.float().transpose(-1, -2))

    with torch.no_grad(), ranking_precision(query.device):
        return (product(q_hi, k_hi) + product(q_hi, k_lo) + product(q_lo, k_hi)) * scale


def selection_score_bound(query: Tensor, keys: Tensor, scale: float = 1.0) -> Tensor:
    """``τ [B, n, m]``: the most a contract score may differ from the float32 score of the
    same pair, ``(2^-14 + 4 D 2^-24) · |scale| · Σ_i |q_i| |k_i|`` (module docstring). With
    ``x [..., C]`` and a weight ``[O, C]`` in place of query and keys, the bound of
    :func:`contract_linear`'s outputs ``[..., O]``."""
    dim = query.shape[-1]
    unit = 2.0 ** -14 + 4 * dim * 2.0 ** -24
    with torch.no_grad(), ranking_precision(query.device):
        mass = torch.matmul(query.detach().abs().double(),
                            keys.detach().abs().double().transpose(-1, -2))
    return (unit * abs(scale) * mass).float()


#: Whether this torch has ``torch.mm(..., out_dtype=torch.float32)`` for bf16 inputs (the
#: contract projection's one GEMM); without it the selection features stay float32.
_MM_TO_FLOAT32 = hasattr(torch.ops.aten.mm, "dtype")


def contract_projection_applies(device: torch.device | str | None) -> bool:
    """Whether :func:`contract_linear` projects the selection features on ``device`` now:
    on a CUDA card with bf16 tensor cores (compute capability 8.0 or newer), under bf16
    autocast, where the trainer runs. Elsewhere they are projected in float32 (CPU, float32
    training, float16 cards), which needs no tensor cores to be exact."""
    if device is None or torch.device(device).type != "cuda" or not _MM_TO_FLOAT32:
        return False
    if not (torch.is_autocast_enabled("cuda")
            and torch.get_autocast_dtype("cuda") == torch.bfloat16):
        return False
    capability = kernels.device_capability(device)
    return capability is not None and capability >= kernels.BF16_CAPABILITY


def _bf16_mm(a: Tensor, b: Tensor) -> Tensor:
    """``a @ b`` of bf16 matrices, float32 accumulation and a float32 result: one tensor-core
    GEMM on CUDA; elsewhere emulated in float32 (a product of two bf16 values is exact)."""
    if a.device.type == "cuda":
        return torch.mm(a, b, out_dtype=torch.float32)
    return torch.mm(a.float(), b.float())


class _ContractLinear(torch.autograd.Function):
    """``x Wᵀ + b`` with bf16×3 products (the precision contract) in one GEMM over ``3C``
    inputs: ``[x_hi | x_hi | x_lo] · [W_hi | W_lo | W_hi]ᵀ``. The backward is that of a bf16
    linear under autocast (bf16 products, float32 accumulation): the gradients decide no
    list, so they need no split."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        with torch.autocast(x.device.type, enabled=False):
            x_hi, x_lo = (part.reshape(-1, x.shape[-1]) for part in split_bf16(x))
            w_hi, w_lo = split_bf16(weight)
            out = _bf16_mm(torch.cat((x_hi, x_hi, x_lo), dim=1),
                           torch.cat((w_hi, w_lo, w_hi), dim=1).t())
            if bias is not None:
                out = out + bias.float()
        ctx.save_for_backward(x_hi, w_hi)
        ctx.x_dtype, ctx.has_bias = x.dtype, bias is not None
        return out.reshape(*x.shape[:-1], weight.shape[0])

    @staticmethod
    def backward(ctx, grad: Tensor):
        flat, w_hi = ctx.saved_tensors
        with torch.autocast(grad.device.type, enabled=False):
            g = grad.reshape(-1, grad.shape[-1])
            g16 = g.to(torch.bfloat16)
            grad_x = _bf16_mm(g16, w_hi).to(ctx.x_dtype).reshape(*grad.shape[:-1], -1)
            grad_w = _bf16_mm(g16.t(), flat)
            grad_b = g.float().sum(0) if ctx.has_bias else None
        return grad_x, grad_w, grad_b


def contract_linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``F.linear(x, weight, bias)`` under the precision contract of selection (bf16×3
    products, float32 accumulation, float32 result; module docstring): the selection's q/k
    projection on bf16 tensor cores, three bf16 products in one GEMM instead of a float32
    GEMM on the CUDA cores. Each output is within
    ``(2^-14 + 4 C 2^-24) · Σ_c |x_c| |W_oc|`` of the float32 one
    (:func:`selection_score_bound` of ``x`` and ``weight``: the same products). The backward
    is a bf16 linear's."""
    return _ContractLinear.apply(x, weight, bias)


def _exact_squared_distances(query: Tensor, keys: Tensor) -> Tensor:
    """``‖q - k‖²`` of every query/key pair, one coordinate at a time in float64: ``[B, n, m]``.

    Each pair's value depends only on that pair (no matrix product whose rounding depends on
    the block or candidate subset it is computed in), so equal distances are equal bit for bit
    in every path and on every machine, and ties break the same way everywhere.
    """
    q, kk = query.double(), keys.double()
    total = None
    for d in range(q.shape[-1]):
        diff = q[:, :, None, d] - kk[:, None, :, d]  # (B, n, m)
        total = diff * diff if total is None else total + diff * diff
    if total is None:
        return q.new_zeros(q.shape[0], q.shape[1], kk.shape[1])
    return total


# --------------------------------------------------------------------------- coordinates
def grid_coordinates(
    height: int, width: int, padding: int = 0, *, grid: str = "image", device=None, dtype=None
) -> Tensor:
    """Coordinates of every position of a (zero-padded) ``height × width`` image.

    Args:
        grid: ``"image"`` (default): an isotropic grid, both axes share one spacing and the
            longer side of the unpadded image spans ``[-1, 1]``, so Euclidean distance in
            these coordinates ranks neighbours exactly like pixel distance; padded border
            positions extend the grid outwards. ``"padded"`` (the authors' Loc_Col
            convention): ``x = linspace(-1, 1, W + 2p)`` and ``y = linspace(-1, 1, H + 2p)``
            over the padded map, one spacing per axis (anisotropic unless ``H = W``).

    Returns:
        ``[(H + 2p) · (W + 2p), 2]``, columns ``(x, y)``, rows in raster order.
    """
    check_choice("grid", grid, COORD_GRIDS)
    if grid == "padded":
        dtype = dtype or torch.get_default_dtype()
        xs = torch.linspace(-1.0, 1.0, width + 2 * padding, device=device, dtype=dtype)
        ys = torch.linspace(-1.0, 1.0, height + 2 * padding, device=device, dtype=dtype)
        grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
        return torch.stack((grid_x.reshape(-1), grid_y.reshape(-1)), dim=-1)  # (N, 2)
    step = 2.0 / max(max(height, width) - 1, 1)
    ys = (torch.arange(-padding, height + padding, device=device, dtype=torch.float64)
          - (height - 1) / 2) * step
    xs = (torch.arange(-padding, width + padding, device=device, dtype=torch.float64)
          - (width - 1) / 2) * step
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    coords = torch.stack((grid_x.reshape(-1), grid_y.reshape(-1)), dim=-1)  # (N, 2)
    return coords.to(dtype or torch.get_default_dtype())


def sequence_coordinates(length: int, *, device=None, dtype=None) -> Tensor:
    """Token-index coordinate in ``[-1, 1]`` for a sequence: ``[T, 1]``."""
    return torch.linspace(-1.0, 1.0, length, device=device,
                          dtype=dtype or torch.get_default_dtype()).unsqueeze(-1)


def selection_features(
    features: Tensor, coords: Tensor | None, selection: str, mix: float = 0.5
) -> Tensor:
    """What drives neighbour selection: features, coordinates, or both mixed by α.

    Args:
        features: ``[B, N, C]``.
        coords: ``[N, P]`` coordinates (needed for ``"coords"`` and ``"mixed"``).
        selection: ``"features"``, ``"coords"`` or ``"mixed"``.
        mix: α for ``"mixed"``: features scaled by ``α / std(features)`` (std over all
            positions and channels of each batch element), coordinates by ``1 - α``. (α is
            not the branching ratio λ of :class:`~convnn.layers.BranchingConv2d`.)

    Returns:
        ``[B, N, C]``, ``[B, N, P]`` or ``[B, N, C + P]``.
    """
    check_choice("selection", selection, SELECTIONS)
    if selection == "features":
        return features
    if coords is None:
        raise ValueError(f"selection={selection!r} needs coords, got None")
    batch = features.shape[0]
    coords = coords.to(features.dtype).unsqueeze(0).expand(batch, -1, -1)  # (B, N, P)
    if selection == "coords":
        return coords
    std = _upcast(features).std(dim=(1, 2), keepdim=True).to(features.dtype) + 1e-6
    return torch.cat((mix * features / std, (1.0 - mix) * coords), dim=-1)


def interior_positions(height: int, width: int, padding: int, *, device=None) -> Tensor:
    """Raster indices, in the padded ``(H+2p) × (W+2p)`` map, of the ``H × W`` image pixels."""
    rows = torch.arange(height, device=device) + padding
    cols = torch.arange(width, device=device) + padding
    return (rows[:, None] * (width + 2 * padding) + cols[None, :]).reshape(-1)


# --------------------------------------------------------------------------- candidates
def random_candidates(
    num_positions: int, count: int, *, generator: torch.Generator | None = None, device=None
) -> Tensor:
    """``count`` distinct positions drawn uniformly from ``num_positions``, ascending: ``[count]``."""
    check_int("candidates", count, minimum=1)
    if count > num_positions:
        raise ValueError(
            f"candidates={count} must be <= the number of positions ({num_positions})")
    if generator is not None and device is not None and torch.device(device).type != "cpu":
        # A CPU generator keeps the draw identical on every device.
        return torch.randperm(num_positions, generator=generator)[:count].sort().values.to(device)
    return torch.randperm(num_positions, generator=generator, device=device)[:count].sort().values


def fixed_candidates(num_positions: int, count: int, seed: int = 0, *, device=None) -> Tensor:
    """A deterministic "random" draw: ``count`` distinct positions, ascending: ``[count]``.

    Positions are ranked by an integer hash of ``(position, seed)`` (splitmix64 mixing), so the
    draw is the same on every device and inside ``torch.compile`` (no generator object).
    """
    check_int("candidates", count, minimum=1)
    if count > num_positions:
        raise ValueError(
            f"candidates={count} must be <= the number of positions ({num_positions})")
    x = torch.arange(num_positions, device=device, dtype=torch.int64)
    x = x * -7046029254386353131 + (seed * 0x632BE59BD9B4E019 + 0x9E3779B97F4A7C15 & (2**63 - 1))
    x = (x ^ ((x >> 30) & 0x3FFFFFFFF)) * -4658895280553007687
    x = (x ^ ((x >> 27) & 0x1FFFFFFFFF)) * -7723592293110705685
    x = x ^ ((x >> 31) & 0x1FFFFFFFF)
    return torch.argsort(x)[:count].sort().values


def _evenly_spaced(size: int, count: int, rounding: str = "round", device=None) -> Tensor:
    """``count`` indices of ``linspace(0, size - 1, count)``, rounded to the nearest index or
    truncated toward zero (the authors' ``.long()`` on a float32 linspace)."""
    check_choice("spatial_rounding", rounding, SPATIAL_ROUNDINGS)
    if rounding == "truncate":
        return torch.linspace(0, size - 1, count, device=device, dtype=torch.float32).long()
    return torch.linspace(0, size - 1, count, device=device, dtype=torch.float64).round().long()


def spatial_candidates_2d(
    height: int, width: int, per_side: int, padding: int = 0, *, rounding: str = "round",
    device=None,
) -> Tensor:
    """An evenly spaced ``per_side × per_side`` grid on the *unpadded* image.

    Rows and columns are ``linspace(0, size - 1, per_side)`` of the image, rounded to the
    nearest pixel (``rounding="round"``, a grid symmetric about the centre) or truncated
    (``"truncate"``, the authors' convention: r = 4 on 32 gives [0, 10, 20, 31]). The returned
    raster indices address the padded ``(H+2p) × (W+2p)`` map, so candidates never land on
    padding (the reference code's defect, method.md §6.3).

    Returns:
        ``[per_side²]`` indices.
    """
    check_int("candidates", per_side, minimum=1)
    if per_side > min(height, width):
        raise ValueError(
            f"candidates={per_side} (a {per_side}x{per_side} grid) must be <= the image side "
            f"min(H, W)={min(height, width)}")
    rows = _evenly_spaced(height, per_side, rounding, device) + padding
    cols = _evenly_spaced(width, per_side, rounding, device) + padding
    return (rows[:, None] * (width + 2 * padding) + cols[None, :]).reshape(-1)


def spatial_candidates_1d(
    length: int, count: int, *, rounding: str = "round", device=None
) -> Tensor:
    """``count`` evenly spaced token indices of ``linspace(0, T - 1, count)`` (the CLS token,
    if any, is index 0), rounded or truncated (see :func:`spatial_candidates_2d`): ``[count]``."""
    check_int("candidates", count, minimum=1)
    if count > length:
        raise ValueError(f"candidates={count} must be <= the sequence length T={length}")
    return _evenly_spaced(length, count, rounding, device)


# --------------------------------------------------------------------------- similarity
def _dot_scale(query: Tensor, scale: float | None) -> float:
    return 1.0 / math.sqrt(query.shape[-1]) if scale is None else scale


def _identity_weight_scores(scores: Tensor) -> Tensor:
    return scores


def _dot_prepare(query: Tensor, keys: Tensor):
    return query, keys, None


def _dot_block(query, keys, extra, scale, dtype) -> Tensor:
    return torch.matmul(query, keys.transpose(-1, -2)) * _dot_scale(query, scale)


def _dot_row(query: Tensor, keys: Tensor, scale: float | None) -> Tensor:
    return (query * keys).sum(-1) * _dot_scale(query, scale)


def _unit_scale(query: Tensor, scale: float | None) -> float:
    return 1.0


def _cosine_prepare(query: Tensor, keys: Tensor):
    return (F.normalize(_upcast(query), dim=-1).to(query.dtype),
            F.normalize(_upcast(keys), dim=-1).to(keys.dtype), None)


def _cosine_block(query, keys, extra, scale, dtype) -> Tensor:
    return torch.matmul(query, keys.transpose(-1, -2))


def _cosine_row(query: Tensor, keys: Tensor, scale: float | None) -> Tensor:
    return F.cosine_similarity(_upcast(query), _upcast(keys), dim=-1, eps=1e-12).to(query.dtype)


def _euclidean_prepare(query: Tensor, keys: Tensor):
    q, kk = _upcast(query), _upcast(keys)
    return q, kk, (kk * kk).sum(-1).unsqueeze(-2)  # key norms (B, 1, m)


def _euclidean_block(query, keys, key_norms, scale, dtype) -> Tensor:
    sq = ((query * query).sum(-1, keepdim=True) + key_norms
          - 2.0 * torch.matmul(query, keys.transpose(-1, -2)))  # (B, n, m)
    return (-sq.clamp_min(0.0)).to(dtype)


def _euclidean_row(query: Tensor, keys: Tensor, scale: float | None) -> Tensor:
    diff = _upcast(query) - _upcast(keys)
    return (-(diff * diff).sum(-1)).to(query.dtype)


def _euclidean_weight_scores(scores: Tensor) -> Tensor:
    return -torch.sqrt((-_upcast(scores)).clamp_min(_MIN_SQUARED_DISTANCE)).to(scores.dtype)


@dataclass(frozen=True)
class Similarity:
    """One similarity: everything the operator needs to know about it, in one table entry.

    Scores are "larger is more similar". Both paths use the same entry: the reference path
    calls ``score_block(*prepare(query, keys), scale, dtype)`` once on the whole matrix, the
    fast path calls ``prepare`` once and ``score_block`` per block of query rows.

    Attributes:
        name: the key in :data:`SIMILARITIES`.
        prepare: ``(query [B, n, D], keys [B, m, D]) -> (query', keys', extra)``, the per-key
            work done once (normalising, norms); ``extra`` is handed to ``score_block``.
        score_block: ``(query' [B, nb, D], keys', extra, scale, dtype) -> [B, nb, m]``
            ranking scores of a block of prepared queries against all prepared keys.
        score_row: ``(query [B, n, D], keys [B, n, D], scale) -> [B, n]``, the score of
            ``query[b, i]`` against ``keys[b, i]`` (the position itself), on raw inputs.
        to_weight_scores: ranking scores -> the scores the weighting ρ sees.
        exact_squared_distance: ``stable`` ranking computes ``-‖q - k‖²`` pair by pair in
            float64 (so that ties are equal in every path); only for Euclidean.
        fused_scale: ``(query, scale) -> float`` when ``score_block`` of prepared inputs is
            ``(query' @ keys'.T) · fused_scale``, which the fused Triton selection
            (:func:`convnn.kernels.fused_topk`) computes without writing the scores;
            ``None``: that kernel does not apply (Euclidean, custom entries).
    """

    name: str
    prepare: Callable
    score_block: Callable
    score_row: Callable
    to_weight_scores: Callable = _identity_weight_scores
    exact_squared_distance: bool = False
    fused_scale: Callable | None = None


SIMILARITIES: dict[str, Similarity] = {}
"""The registered similarities by name (``"dot"``, ``"cosine"``, ``"euclidean"``); add one
with :func:`register_similarity`."""


def register_similarity(similarity: Similarity) -> Similarity:
    """Add (or replace) a similarity in :data:`SIMILARITIES`; every path then accepts its name."""
    SIMILARITIES[similarity.name] = similarity
    return similarity


def get_similarity(name: str) -> Similarity:
    """The :class:`Similarity` entry called ``name`` (ValueError if there is none)."""
    check_choice("similarity", name, SIMILARITIES)
    return SIMILARITIES[name]


register_similarity(Similarity("dot", _dot_prepare, _dot_block, _dot_row,
                               fused_scale=_dot_scale))
register_similarity(Similarity("cosine", _cosine_prepare, _cosine_block, _cosine_row,
                               fused_scale=_unit_scale))
register_similarity(Similarity("euclidean", _euclidean_prepare, _euclidean_block,
                               _euclidean_row, _euclidean_weight_scores,
                               exact_squared_distance=True))


def pairwise_scores(
    query: Tensor, keys: Tensor, similarity: str, scale: float | None = None
) -> Tensor:
    """Ranking scores between queries and keys; larger means more similar.

    Args:
        query: ``[B, n, D]``.
        keys: ``[B, m, D]``.
        similarity: a name in :data:`SIMILARITIES`: ``"dot"`` (``q·k · scale``, scale
            defaults to ``1/√D``), ``"cosine"`` or ``"euclidean"`` (returns ``-‖q - k‖²``;
            computed in float32 for 16-bit inputs).

    Returns:
        ``[B, n, m]``.
    """
    entry = get_similarity(similarity)
    q, kk, extra = entry.prepare(query, keys)
    return entry.score_block(q, kk, extra, scale, query.dtype)


def _prepare(query: Tensor, keys: Tensor, similarity: str):
    """What the blocked search reuses for every block of queries."""
    return get_similarity(similarity).prepare(query, keys)


def _block_scores(query, keys, extra, similarity, scale, dtype, exact=False) -> Tensor:
    """:func:`pairwise_scores` of one block of queries, from :func:`_prepare`'s output
    (``exact``: Euclidean from :func:`_exact_squared_distances`, kept in float64)."""
    if exact:
        return -_exact_squared_distances(query, keys)
    return get_similarity(similarity).score_block(query, keys, extra, scale, dtype)


def _row_scores(query: Tensor, keys: Tensor, similarity: str, scale: float | None) -> Tensor:
    """Scores of matching rows: ``query[b, i]`` against ``keys[b, i]``: ``[B, n]``."""
    return get_similarity(similarity).score_row(query, keys, scale)


def weighting_scores(scores: Tensor, similarity: str) -> Tensor:
    """Turn ranking scores into the scores ρ sees: Euclidean ``-d²`` becomes ``-d``."""
    return get_similarity(similarity).to_weight_scores(scores)


# --------------------------------------------------------------------------- selection
@dataclass(frozen=True, eq=False)
class SelectionProblem:
    """One top-k selection: the parameters both selectors take, with their checks and set-up.

    :func:`select_neighbours` and :func:`select_neighbours_reference` are called with these
    parameters, ``(query, keys, k, similarity, *, query_positions=None, ...)``, then each
    selector's own keyword options; they receive them as one checked ``SelectionProblem``.

    Args:
        query: ``[B, n, D]`` selection features of the query positions.
        keys: ``[B, N, D]`` selection features of all positions.
        k: neighbours per query, including the position itself when ``self_first``.
        similarity: a name in :data:`SIMILARITIES` (``"dot"``, ``"cosine"``, ``"euclidean"``).
        query_positions: ``[n]`` index in ``0..N-1`` of each query (default ``arange(N)``,
            filled in here: never ``None`` after construction).
        candidate_positions: ``[m]`` positions to search, the sampled candidates (default: all
            ``N``). Sampled candidates always put the position itself first and exclude it
            from the other ``k - 1``.
        self_first: make each position its own first neighbour (the paper's CNN layer).
        sort_by_position: order the k neighbours by raster index (the convolution limit).
        scale: dot-product scale (default ``1/√D``).
        with_scores: also return the ``[B, n, k]`` weighting scores (with autograd).
        stable: break ties by the lower position (a stable sort instead of top-k; used for
            coordinate selection, where equal distances are the rule). Euclidean distances
            are then computed pair by pair in float64, so that ties are the same in every
            path, block size and candidate order.
        self_score: weighting score of the position itself when it comes first:
            ``"similarity"`` (its real score) or ``"constant"`` (the logit
            :data:`PAPER_SELF_LOGIT`, the authors' sampled ConvNN attention).
    """

    query: Tensor
    keys: Tensor
    k: int
    similarity: str
    _: KW_ONLY
    query_positions: Tensor | None = None
    candidate_positions: Tensor | None = None
    self_first: bool = False
    sort_by_position: bool = False
    scale: float | None = None
    with_scores: bool = True
    stable: bool = False
    self_score: str = "similarity"

    def __post_init__(self) -> None:
        check_choice("self_score", self.self_score, SELF_SCORES)
        check_int("k", self.k, minimum=1)
        n, num_positions = self.query.shape[1], self.keys.shape[1]
        for name in ("query_positions", "candidate_positions"):
            index = getattr(self, name)
            if index is not None:
                check_index(name, index, num_positions, "N, the number of keys")
        if self.query_positions is not None and self.query_positions.shape[0] != n:
            raise ValueError(
                f"query_positions must have one index per query ({n}), "
                f"got shape {tuple(self.query_positions.shape)}")
        if self.candidate_positions is not None and not self.self_first:
            raise ValueError("sampled candidates always put the position itself first; "
                             "self_first must be True when candidates are given")
        sampled = self.candidate_positions is not None
        available = self.candidate_positions.shape[0] if sampled else num_positions
        if self.k > available:
            raise ValueError(f"k={self.k} must be <= the number of "
                             f"{'candidates' if sampled else 'positions'} ({available})")
        if self.query_positions is None:
            if n != num_positions:
                raise ValueError(f"query has {n} positions but keys have {num_positions}; "
                                 "pass query_positions")
            object.__setattr__(self, "query_positions",
                               torch.arange(n, device=self.query.device))

    @property
    def k_search(self) -> int:
        """Neighbours to search for: ``k``, less the position itself when it comes first."""
        return self.k - 1 if self.self_first else self.k

    @property
    def exact(self) -> bool:
        """Rank by squared distances computed pair by pair in float64 (stable Euclidean)."""
        return self.stable and get_similarity(self.similarity).exact_squared_distance


def _selector(select: Callable) -> Callable:
    """Make ``select(problem, *, <own options>)`` a selector called with the parameters of
    ``SelectionProblem``, then its own keyword options: the shared parameter list is
    written once, on ``SelectionProblem``, and ``inspect.signature`` shows the whole list.
    (No ``Signature.bind`` per call: it would break the graph under ``torch.compile``.)"""
    own = list(inspect.signature(select).parameters.values())[1:]  # after `problem`
    shared = list(inspect.signature(SelectionProblem).parameters.values())
    signature = inspect.Signature(shared + own, return_annotation=select.__annotations__.get(
        "return", inspect.Signature.empty))
    positional = [p.name for p in shared if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD]
    keywords = [p.name for p in signature.parameters.values() if p.name not in positional]
    own_names = [parameter.name for parameter in own]

    @functools.wraps(select)
    def selector(*args, **kwargs):
        if len(args) > len(positional):
            raise TypeError(f"{select.__name__}() takes {len(positional)} positional arguments "
                            f"({', '.join(positional)}), got {len(args)}")
        for name in kwargs:
            if name not in signature.parameters:
                raise TypeError(f"{select.__name__}() got an unexpected keyword argument "
                                f"{name!r}; its keyword options: {', '.join(keywords)}")
        own_options = {name: kwargs.pop(name) for name in own_names if name in kwargs}
        return select(SelectionProblem(*args, **kwargs), **own_options)

    selector.__signature__ = signature
    return selector


def _top(scores: Tensor, k: int, stable: bool, fused: bool = False) -> tuple[Tensor, Tensor]:
    """Largest k along the last dim; ``stable`` breaks ties by the lower column. ``fused``: use
    the Triton row top-k (always stable; :func:`choose_backend` decides).

    Non-finite scores (NaN, +inf: a candidate with a NaN or infinite feature) rank last, as
    ``-inf``: torch would rank NaN first, and one NaN pixel would then be every pixel's
    neighbour. Such a candidate is selected only where fewer than ``k`` are finite."""
    scores = torch.nan_to_num(scores, nan=float("-inf"), posinf=float("-inf"),
                              neginf=float("-inf"))
    if fused:
        order = kernels.row_topk(scores, k)
        return scores.gather(-1, order), order
    if not stable:
        return torch.topk(scores, k, dim=-1)
    values, order = torch.sort(scores, dim=-1, descending=True, stable=True)
    return values[..., :k], order[..., :k]


def _self_mask(query_positions: Tensor, candidate_positions: Tensor) -> Tensor:
    """``[n, m]`` True where candidate j is query i itself."""
    return candidate_positions[None, :] == query_positions[:, None]


def _finish_selection(
    values: Tensor | None, indices: Tensor, self_index: Tensor | None,
    self_value: Tensor | None, sort_by_position: bool,
) -> tuple[Tensor, Tensor | None]:
    """Prepend the position itself (self-first) and optionally sort by raster index."""
    if self_index is not None:
        indices = torch.cat((self_index, indices), dim=-1)
        if values is not None:
            values = torch.cat((self_value.to(values.dtype), values), dim=-1)
    if sort_by_position:
        indices, order = indices.sort(dim=-1)
        if values is not None:
            values = values.gather(-1, order)
    return indices, values


def _self_weighting_score(real: Tensor | None, like: Tensor, self_score: str,
                          similarity: str) -> Tensor:
    """The weighting score of the position itself, ``[B, n, 1]``: its real score, or the
    constant logit of the authors' sampled ConvNN attention."""
    if self_score == "constant":
        return like.new_full((*like.shape[:2], 1), PAPER_SELF_LOGIT)
    return weighting_scores(real, similarity)


def _fused_selection(query, keys, extra, k_search, similarity, scale, query_positions,
                     candidate_positions, with_scores) -> tuple[Tensor, Tensor | None]:
    """The fused Triton selection on prepared ``query [B, n, D]`` and ``keys [B, m, D]``:
    indices ``[B, n, k']`` into the ``m`` keys and, with ``with_scores``, their ranking scores
    recomputed (with autograd) from the gathered keys by the similarity's own ``score_block``.
    ``query_positions``: mask the key at each query's position (``candidate_positions``, or
    ``arange(m)`` when ``None``)."""
    entry = get_similarity(similarity)
    batch, n, dim = query.shape
    cand = None
    if query_positions is not None:
        cand = (torch.arange(keys.shape[1], device=keys.device) if candidate_positions is None
                else candidate_positions)
    top = kernels.fused_topk(query, keys, k_search, entry.fused_scale(query, scale),
                     query_positions=query_positions, candidate_positions=cand)
    if not with_scores:
        return top, None
    rows = torch.arange(batch, device=keys.device).view(batch, 1, 1)
    picked = keys[rows, top]  # (B, n, k', D): B·n·k'·D, not B·n·m
    scores = entry.score_block(query.reshape(batch * n, 1, dim),
                               picked.reshape(batch * n, k_search, dim), extra, scale,
                               query.dtype)
    return top, scores.view(batch, n, k_search)


@_selector
def select_neighbours(
    problem: SelectionProblem,
    *,
    block_elements: int | None = None,
    backend: str | None = None,
) -> tuple[Tensor, Tensor | None]:
    """Top-k neighbours of every query (fast path):
    ``select_neighbours(query, keys, k, similarity, *, query_positions=None, ...,
    block_elements=None, backend=None)``.

    The score matrix is built in blocks of query rows so that at most ``block_elements``
    scores exist at once (a 32×32 map has ``n = 1024`` and ``n² = 1M`` scores per image), and
    only against the ``m`` candidates when candidates are sampled. The scores of the selected
    neighbours are differentiable (top-k values), so softmax weighting trains the projections.
    Ranking runs in float32 or better, also under autocast: 16-bit inputs are upcast.
    Non-finite scores (a key with a NaN or infinite feature) rank last, so one bad pixel or
    token is nobody's neighbour while ``k`` finite candidates remain; a query's own
    non-finite features still make its own output non-finite where it is its own neighbour.

    Args:
        query, keys, k, similarity: the problem, with the keyword options query_positions,
            candidate_positions, self_first, sort_by_position, scale, with_scores, stable
            and self_score: see ``SelectionProblem``, which checks them.
        block_elements: most scores held at once (default: 2^20 on a CPU, 2^24 on a GPU).
        backend: see :func:`choose_backend`; ``"reference"`` runs
            :func:`select_neighbours_reference`; ``"triton"`` the fused Triton selection
            (:func:`convnn.kernels.fused_topk`: no score matrix; dot and cosine, at most 16
            neighbours searched, float32 ranking), else the blocked scores and the Triton row
            top-k.

    Returns:
        ``(indices [B, n, k] into 0..N-1, scores [B, n, k] or None)``; scores are float32
        for 16-bit inputs.
    """
    if requested_backend(backend) == REFERENCE:
        return _reference_selection(problem)
    query, keys, similarity, scale = problem.query, problem.keys, problem.similarity, problem.scale
    query_positions, candidate_positions = problem.query_positions, problem.candidate_positions
    self_first, with_scores, k_search = problem.self_first, problem.with_scores, problem.k_search
    batch, n, _ = query.shape
    device = query.device
    if block_elements is None:
        block_elements = CPU_BLOCK_ELEMENTS if device.type == "cpu" else GPU_BLOCK_ELEMENTS
    if problem.stable and candidate_positions is not None:  # ties go to the lower position
        candidate_positions = candidate_positions.sort().values

    grad = with_scores and torch.is_grad_enabled()
    block_indices, block_scores = [], []
    with torch.set_grad_enabled(grad), ranking_precision(device):
        query, keys = _upcast(query), _upcast(keys)
        cand_keys = (keys if candidate_positions is None
                     else keys[:, candidate_positions])  # (B, m, D)
        rows_per_block = max(1, block_elements // max(1, batch * cand_keys.shape[1]))
        fused_select = k_search > 0 and choose_backend(
            backend, device, step="fused_topk", k=k_search, similarity=similarity,
            dtype=query.dtype) == TRITON
        fused = not fused_select and k_search > 0 and choose_backend(
            backend, device, step="topk", k=k_search, width=cand_keys.shape[1]) == TRITON
        # Per-key work once, not per block: normalise for cosine, squared norms for Euclidean.
        prepared_query, prepared_keys, key_norms = _prepare(query, cand_keys, similarity)

        def positions(top: Tensor) -> Tensor:  # candidate columns -> positions 0..N-1
            return top if candidate_positions is None else candidate_positions[top]

        if fused_select:  # no score matrix: the kernel's indices, then the k scores recomputed
            top, top_scores = _fused_selection(
                prepared_query, prepared_keys, key_norms, k_search, similarity, scale,
                query_positions if self_first else None,
                candidate_positions if self_first else None, with_scores)
            block_indices.append(positions(top))
            block_scores.append(top_scores)
        else:
            for start in range(0, n, rows_per_block):
                stop = min(n, start + rows_per_block)
                scores = _block_scores(prepared_query[:, start:stop], prepared_keys, key_norms,
                                       similarity, scale, query.dtype,
                                       problem.exact)  # (B, nb, m)
                if self_first and candidate_positions is None:  # the position's own column
                    own = query_positions[start:stop].view(1, -1, 1).expand(batch, -1, 1)
                    scores = scores.scatter(-1, own, float("-inf"))
                elif self_first:
                    mask = _self_mask(query_positions[start:stop], candidate_positions)  # (nb, m)
                    scores = scores.masked_fill(mask, float("-inf"))
                if k_search > 0:
                    top_scores, top = _top(scores, k_search, problem.stable,
                                           fused=fused)  # (B, nb, k')
                else:
                    top_scores = scores[..., :0]
                    top = torch.zeros(batch, stop - start, 0, dtype=torch.long, device=device)
                block_indices.append(positions(top))
                block_scores.append(top_scores.to(query.dtype) if with_scores else None)
        indices = torch.cat(block_indices, dim=1) if len(block_indices) > 1 else block_indices[0]
        scores = None
        if with_scores:
            scores = torch.cat(block_scores, dim=1) if len(block_scores) > 1 else block_scores[0]
            scores = weighting_scores(scores, similarity)
        self_index = self_value = None
        if self_first:
            self_index = query_positions.view(1, n, 1).expand(batch, n, 1)
            if with_scores:
                real = None
                if problem.self_score == "similarity":
                    own = keys[:, query_positions]  # (B, n, D)
                    real = _row_scores(query, own, similarity, scale).unsqueeze(-1)
                self_value = _self_weighting_score(real, scores, problem.self_score, similarity)
        return _finish_selection(scores, indices, self_index, self_value,
                                 problem.sort_by_position)


@_selector
def select_neighbours_reference(problem: SelectionProblem) -> tuple[Tensor, Tensor | None]:
    """Top-k neighbours, written to be read: the full ``[B, n, N]`` matrix, then top-k.

    Same parameters (``query, keys, k, similarity, *, query_positions=None, ...``: see
    ``SelectionProblem``) and results as :func:`select_neighbours`. Candidates outside
    the sampled set and the position itself (when it comes first) are masked with ``-inf``.
    """
    return _reference_selection(problem)


def _reference_selection(problem: SelectionProblem) -> tuple[Tensor, Tensor | None]:
    """The body of :func:`select_neighbours_reference`, on a checked problem."""
    query, keys, similarity = problem.query, problem.keys, problem.similarity
    query_positions, candidate_positions = problem.query_positions, problem.candidate_positions
    batch, n, _ = query.shape
    num_positions = keys.shape[1]
    with ranking_precision(query.device):
        query, keys = _upcast(query), _upcast(keys)
        if problem.exact:
            scores = -_exact_squared_distances(query, keys)  # (B, n, N), float64
        else:
            scores = pairwise_scores(query, keys, similarity, problem.scale)  # (B, n, N)
        allowed = torch.ones(n, num_positions, dtype=torch.bool, device=query.device)
        if candidate_positions is not None:
            allowed = torch.zeros_like(allowed)
            allowed[:, candidate_positions] = True
        self_scores = scores.gather(-1, query_positions.view(1, n, 1).expand(batch, n, 1))
        if problem.self_first:
            allowed[torch.arange(n, device=query.device), query_positions] = False
        scores = scores.masked_fill(~allowed, float("-inf"))
        top_scores, indices = _top(scores, problem.k_search, problem.stable)
        top_scores = weighting_scores(top_scores.to(query.dtype), similarity)
        self_index = self_value = None
        if problem.self_first:
            self_index = query_positions.view(1, n, 1).expand(batch, n, 1)
            self_value = _self_weighting_score(self_scores.to(query.dtype), top_scores,
                                               problem.self_score, similarity)
        indices, top_scores = _finish_selection(top_scores, indices, self_index, self_value,
                                                problem.sort_by_position)
    return indices, (top_scores if problem.with_scores else None)


# --------------------------------------------------------------------------- weighting ρ
def neighbour_weights(scores: Tensor | None, weighting: str) -> Tensor | None:
    """ρ for the k selected neighbours: ``[B, n, k] -> [B, n, k]``.

    ``"ones"`` returns ``None`` (hard selection, nothing to multiply); ``"softmax"`` is a
    softmax over the k scores (computed in float32, infinities clamped so nothing is NaN);
    ``"similarity"`` uses the scores themselves (``-d`` for Euclidean).
    """
    check_choice("weighting", weighting, WEIGHTINGS)
    if weighting == "ones":
        return None
    if scores is None:
        raise ValueError(f"weighting={weighting!r} needs the neighbour scores, got None")
    if weighting == "similarity":
        return scores
    work = _upcast(scores)
    finfo = torch.finfo(work.dtype)
    work = torch.nan_to_num(work, nan=0.0, posinf=finfo.max, neginf=finfo.min)
    return torch.softmax(work, dim=-1).to(scores.dtype)


# --------------------------------------------------------------------------- aggregation
def _check_indices(indices, values) -> None:
    """Neighbour indices into ``values [B, N, C]``: ``[n, k]`` or ``[B, n, k]`` in ``[0, N)``."""
    if not isinstance(values, Tensor) or values.dim() != 3:
        raise ValueError(f"values must be a tensor [B, N, C], got "
                         f"{tuple(values.shape) if isinstance(values, Tensor) else values!r}")
    check_index("indices", indices, values.shape[1], "N", dims=(2, 3), layout="[n, k] or [B, n, k]")
    if indices.dim() == 3 and indices.shape[0] != values.shape[0]:
        raise ValueError(f"indices [B, n, k] must have B={values.shape[0]} like values, got "
                         f"shape {tuple(indices.shape)}")


def gather_neighbours(values: Tensor, indices: Tensor) -> Tensor:
    """Rows of ``values`` for every selected neighbour, with no k-fold copy of ``values``.

    Args:
        values: ``[B, N, C]``.
        indices: ``[B, n, k]`` (per batch element) or ``[n, k]`` (shared by the batch).

    Returns:
        ``[B, n, k, C]``.
    """
    batch, num_positions, channels = values.shape
    _check_indices(indices, values)
    if indices.dim() == 2:
        return values[:, indices]  # (B, n, k, C)
    _, n, k = indices.shape
    offsets = torch.arange(batch, device=values.device).view(batch, 1, 1) * num_positions
    flat = (indices + offsets).reshape(-1)  # (B·n·k,)
    return values.reshape(batch * num_positions, channels).index_select(0, flat).view(
        batch, n, k, channels)


def _check_aggregation(aggregation, weight, pointwise, channels, k):
    check_choice("aggregation", aggregation, AGGREGATIONS)
    if aggregation == "standard":
        if weight.dim() != 3 or weight.shape[1:] != (channels, k):
            raise ValueError(f"standard aggregation needs weight [out, {channels}, {k}], "
                             f"got {tuple(weight.shape)}")
    else:
        if weight.shape != (channels, 1, k):
            raise ValueError(f"{aggregation} aggregation needs weight [{channels}, 1, {k}], "
                             f"got {tuple(weight.shape)}")
        if aggregation == "separable" and (pointwise is None or pointwise.dim() != 3
                                           or pointwise.shape[1:] != (channels, 1)):
            raise ValueError("separable aggregation needs pointwise weight "
                             f"[out, {channels}, 1], got "
                             f"{None if pointwise is None else tuple(pointwise.shape)}")


def aggregate(
    neighbours: Tensor,
    rho: Tensor | None,
    weight: Tensor,
    bias: Tensor | None = None,
    aggregation: str = "standard",
    pointwise: Tensor | None = None,
) -> Tensor:
    """``out_i = Σ_j W_j · ρ_ij · v_{I_ij} (+ b)`` with one weight per neighbour rank j.

    Args:
        neighbours: ``[B, n, k, C]`` from :func:`gather_neighbours`.
        rho: ``[B, n, k]`` or ``None`` (all ones).
        weight: Conv1d layout: ``[O, C, k]`` (standard) or ``[C, 1, k]`` (depthwise and the
            depthwise half of separable).
        bias: ``[O]`` or ``None``.
        pointwise: ``[O, C, 1]``, the 1×1 half of ``"separable"``.

    Returns:
        ``[B, n, O]``.
    """
    batch, n, k, channels = neighbours.shape
    _check_aggregation(aggregation, weight, pointwise, channels, k)
    if rho is not None:
        neighbours = neighbours * rho.unsqueeze(-1).to(neighbours.dtype)  # (B, n, k, C)
    if aggregation == "standard":
        # One matmul: (B·n, k·C) @ (k·C, O), rank-major like the gathered rows.
        w = weight.permute(0, 2, 1).reshape(weight.shape[0], k * channels)  # (O, k·C)
        out = torch.matmul(neighbours.reshape(batch, n, k * channels), w.t())
    else:
        # Elementwise, not einsum: einsum turns this into B·n tiny matmuls.
        out = (neighbours * weight[:, 0, :].t()).sum(dim=2)  # (B, n, C)
        if aggregation == "separable":
            out = torch.matmul(out, pointwise[:, :, 0].t())  # (B, n, O)
    if bias is not None:
        out = out + bias
    return out


class _GatherAggregate(torch.autograd.Function):
    """Gather + weight + aggregate in one autograd node that saves no ``[B, n, k, C]`` tensor.

    Forward gathers the neighbour rows once (a transient), backward gathers them again, so
    the memory kept for backward is the values (already alive), the indices and ρ: O(B·n·k)
    instead of the O(B·n·k·C) copies the reference keeps.
    """

    @staticmethod
    def forward(ctx, values, flat_index, rho, weight, k, standard):
        # values (B·N, C); flat_index (M·k,) with M = B·n; rho (M, k) or None
        channels = values.shape[1]
        rows = values.index_select(0, flat_index).view(-1, k, channels)  # (M, k, C)
        if standard:  # weight (O, C, k) -> (O, k·C), rank-major like the rows
            if rho is not None:
                rows = rows * rho.unsqueeze(-1)
            w = weight.permute(0, 2, 1).reshape(weight.shape[0], k * channels).to(values.dtype)
            out = torch.matmul(rows.view(-1, k * channels), w.t())  # (M, O)
        else:  # weight (C, 1, k) -> (k, C); the sum over ranks is a batched (1×k)(k×C) product
            rows = rows * weight[:, 0, :].t().to(values.dtype)
            out = (rows.sum(dim=1) if rho is None else
                   torch.bmm(rho.unsqueeze(1), rows).squeeze(1))  # (M, C)
        ctx.save_for_backward(values, flat_index, rho, weight)
        ctx.k, ctx.standard = k, standard
        return out

    @staticmethod
    def backward(ctx, grad_out):
        values, flat_index, rho, weight = ctx.saved_tensors
        k, standard = ctx.k, ctx.standard
        channels = values.shape[1]
        grad_out = grad_out.to(values.dtype)
        raw = values.index_select(0, flat_index).view(-1, k, channels)  # (M, k, C)
        grad_weight = grad_rho = grad_values = None
        if standard:
            w = weight.permute(0, 2, 1).reshape(weight.shape[0], k * channels).to(values.dtype)
            grad_rows = torch.matmul(grad_out, w).view(-1, k, channels)  # (M, k, C)
            if ctx.needs_input_grad[3]:
                weighted = raw if rho is None else raw * rho.unsqueeze(-1)
                gw = torch.matmul(grad_out.t(), weighted.view(-1, k * channels))  # (O, k·C)
                grad_weight = gw.view(-1, k, channels).permute(0, 2, 1).to(weight.dtype)
            if rho is not None and ctx.needs_input_grad[2]:
                grad_rho = (grad_rows * raw).sum(dim=-1).to(rho.dtype)  # (M, k)
            if rho is not None:
                grad_rows = grad_rows * rho.unsqueeze(-1)
        else:
            w_t = weight[:, 0, :].t().to(values.dtype)  # (k, C)
            if ctx.needs_input_grad[3]:
                prod = raw * grad_out.unsqueeze(1)  # (M, k, C)
                gw = (prod.sum(dim=0) if rho is None else
                      torch.einsum("mk,mkc->kc", rho, prod))
                grad_weight = gw.t().unsqueeze(1).to(weight.dtype)
            if rho is not None and ctx.needs_input_grad[2]:
                grad_rho = torch.bmm(raw * w_t, grad_out.unsqueeze(-1)).squeeze(-1)  # (M, k)
                grad_rho = grad_rho.to(rho.dtype)
            if rho is None:
                grad_rows = grad_out.unsqueeze(1) * w_t
            else:  # ρ_mj · w_jc · g_mc as an outer product per row, then the rank weights
                grad_rows = torch.bmm(rho.unsqueeze(-1), grad_out.unsqueeze(1)) * w_t
        if ctx.needs_input_grad[0]:
            # Accumulate in float32: 16-bit atomic adds are slow on GPUs and lose precision.
            accumulate = (torch.float32 if values.dtype in (torch.float16, torch.bfloat16)
                          else values.dtype)
            grad_values = torch.zeros(values.shape, dtype=accumulate, device=values.device)
            grad_values.index_add_(0, flat_index, grad_rows.reshape(-1, channels).to(accumulate))
            grad_values = grad_values.to(values.dtype)
        return grad_values, None, grad_rho, grad_weight, None, None


def gather_aggregate(
    values: Tensor,
    indices: Tensor,
    rho: Tensor | None,
    weight: Tensor,
    bias: Tensor | None = None,
    aggregation: str = "standard",
    pointwise: Tensor | None = None,
    *,
    backend: str | None = None,
) -> Tensor:
    """Fast ``aggregate(gather_neighbours(values, indices), rho, ...)``: same result, and no
    ``[B, n, k, C]`` tensor is kept for backward.

    Args:
        values: ``[B, N, C]``.
        indices: ``[B, n, k]`` or ``[n, k]`` (shared by the batch).
        rho, weight, bias, aggregation, pointwise: see :func:`aggregate`.
        backend: see :func:`choose_backend`; ``"reference"`` runs :func:`aggregate_reference`,
            ``"triton"`` the fused depthwise/separable kernel.

    Returns:
        ``[B, n, O]``.
    """
    if requested_backend(backend) == REFERENCE:
        return aggregate_reference(values, indices, rho, weight, bias, aggregation, pointwise)
    batch, num_positions, channels = values.shape
    _check_indices(indices, values)
    if indices.dim() == 2:
        indices = indices.unsqueeze(0).expand(batch, -1, -1)
    _, n, k = indices.shape
    _check_aggregation(aggregation, weight, pointwise, channels, k)
    offsets = torch.arange(batch, device=values.device).view(batch, 1, 1) * num_positions
    flat_index = (indices + offsets).reshape(-1)  # (B·n·k,)
    flat_rho = None if rho is None else rho.reshape(batch * n, k).to(values.dtype)
    flat_values = values.reshape(batch * num_positions, channels)
    if choose_backend(backend, values.device, step="gather_aggregate",
                      aggregation=aggregation, dtype=values.dtype) == TRITON:
        out = kernels.depthwise_gather_aggregate(flat_values, flat_index.view(batch * n, k), flat_rho,
                                         weight[:, 0, :].t().to(values.dtype))
    else:
        out = _GatherAggregate.apply(flat_values, flat_index, flat_rho, weight, k,
                                     aggregation == "standard")
    out = out.view(batch, n, -1)
    if aggregation == "separable":
        out = torch.matmul(out, pointwise[:, :, 0].t().to(out.dtype))  # (B, n, O)
    if bias is not None:
        out = out + bias.to(out.dtype)
    return out


def aggregate_reference(
    values: Tensor,
    indices: Tensor,
    rho: Tensor | None,
    weight: Tensor,
    bias: Tensor | None = None,
    aggregation: str = "standard",
    pointwise: Tensor | None = None,
) -> Tensor:
    """The authors' gather-aggregate: expand the values k times, gather, Conv1d(k, stride k).

    Same result as ``aggregate(gather_neighbours(values, indices), ...)``; it is the
    faithful re-implementation the benchmark measures against (method.md §6.7).

    Args:
        values: ``[B, N, C]``.
        indices: ``[B, n, k]`` or ``[n, k]``.

    Returns:
        ``[B, n, O]``.
    """
    batch, num_positions, channels = values.shape
    _check_indices(indices, values)
    if indices.dim() == 2:
        indices = indices.unsqueeze(0).expand(batch, -1, -1)
    _, n, k = indices.shape
    _check_aggregation(aggregation, weight, pointwise, channels, k)
    v = values.transpose(1, 2)  # (B, C, N)
    expanded = v.unsqueeze(-1).expand(batch, channels, num_positions, k).contiguous()
    index = indices.unsqueeze(1).expand(batch, channels, n, k)  # (B, C, n, k)
    prime = torch.gather(expanded, 2, index)  # (B, C, n, k)
    if rho is not None:
        prime = prime * rho.unsqueeze(1).to(prime.dtype)
    prime = prime.reshape(batch, channels, n * k)  # neighbour matrices side by side
    if aggregation == "standard":
        out = F.conv1d(prime, weight, bias, stride=k)  # (B, O, n)
    else:
        out = F.conv1d(prime, weight, None if aggregation == "separable" else bias,
                       stride=k, groups=channels)
        if aggregation == "separable":
            out = F.conv1d(out, pointwise, bias)
    return out.transpose(1, 2)


# --------------------------------------------------------------------------- the operator
def convnn(
    values: Tensor,
    query: Tensor,
    keys: Tensor,
    k: int,
    weight: Tensor,
    bias: Tensor | None = None,
    *,
    similarity: str = "cosine",
    weighting: str = "ones",
    aggregation: str = "standard",
    pointwise: Tensor | None = None,
    query_positions: Tensor | None = None,
    candidate_positions: Tensor | None = None,
    self_first: bool = False,
    sort_by_position: bool = False,
    scale: float | None = None,
    stable: bool = False,
    neighbours: Tensor | None = None,
    attn_dropout: float = 0.0,
    self_score: str = "similarity",
    backend: str | None = None,
) -> Tensor:
    """The whole operator: select k neighbours per query, weight them, aggregate.

    Args:
        values: ``[B, N, C]``, what is aggregated.
        query: ``[B, n, D]``, selection features of the query positions.
        keys: ``[B, N, D]``, selection features of every position.
        k: neighbours per query.
        weight, bias, pointwise: aggregation parameters, see :func:`aggregate`.
        similarity, weighting, aggregation: see :data:`SIMILARITIES`, :data:`WEIGHTINGS`,
            :data:`AGGREGATIONS`.
        query_positions, candidate_positions, self_first, sort_by_position, scale, stable: see
            :func:`select_neighbours`.
        neighbours: precomputed ``[n, k]`` or ``[B, n, k]`` indices (skips the search; used
            for static coordinate selection). Requires ``weighting="ones"``.
        attn_dropout: dropout probability on ρ (attention dropout), applied when > 0.
        self_score: see :func:`select_neighbours`.
        backend: ``None`` (the default backend), ``"reference"``, ``"torch"`` or
            ``"triton"``, see :func:`choose_backend`; all give the same result.

    Returns:
        ``[B, n, O]``.

    Special cases (method.md §3): coordinate selection with ``k = 9``, one padded ring,
    ``sort_by_position=True``, ρ = ones and standard aggregation is a 3×3 convolution;
    ``k = N``, dot similarity, softmax and depthwise weights of one is softmax attention.
    """
    _check_backend("backend", backend)
    check_choice("weighting", weighting, WEIGHTINGS)
    if neighbours is not None:
        if weighting != "ones":
            raise ValueError("precomputed neighbours carry no scores; weighting must be 'ones', "
                             f"got {weighting!r}")
        indices, scores = neighbours, None
    else:
        indices, scores = select_neighbours(
            query, keys, k, similarity, query_positions=query_positions,
            candidate_positions=candidate_positions, self_first=self_first,
            sort_by_position=sort_by_position,
            scale=scale, with_scores=weighting != "ones", stable=stable, self_score=self_score,
            backend=backend)
    rho = neighbour_weights(scores, weighting)
    if rho is not None and attn_dropout > 0.0:
        rho = F.dropout(rho, attn_dropout, training=True)
    return gather_aggregate(values, indices, rho, weight, bias, aggregation, pointwise,
                            backend=backend)


__all__ = [
    "AGGREGATIONS",
    "BACKENDS",
    "BACKEND_ENV",
    "BACKEND_ORDER",
    "COORD_GRIDS",
    "EVAL_SAMPLINGS",
    "KERNEL_STEPS",
    "PAPER_SELF_LOGIT",
    "REFERENCE",
    "SAMPLINGS",
    "SELECTIONS",
    "SELF_SCORES",
    "SIMILARITIES",
    "SPATIAL_ROUNDINGS",
    "TORCH",
    "TRITON",
    "WEIGHTINGS",
    "Backend",
    "KernelStep",
    "Similarity",
    "aggregate",
    "aggregate_reference",
    "backend_decision",
    "choose_backend",
    "contract_linear",
    "contract_projection_applies",
    "contract_scores",
    "convnn",
    "default_backend",
    "fixed_candidates",
    "gather_aggregate",
    "gather_neighbours",
    "get_default_backend",
    "get_similarity",
    "grid_coordinates",
    "interior_positions",
    "kernel_refusal",
    "neighbour_weights",
    "pairwise_scores",
    "random_candidates",
    "ranking_precision",
    "register_similarity",
    "requested_backend",
    "select_neighbours",
    "select_neighbours_reference",
    "selection_features",
    "selection_score_bound",
    "sequence_coordinates",
    "set_default_backend",
    "spatial_candidates_1d",
    "spatial_candidates_2d",
    "split_bf16",
    "weighting_scores",
]
