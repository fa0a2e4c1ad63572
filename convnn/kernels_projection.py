"""The selection's q/k projection of :class:`convnn.layers.ConvNNAttention` in Triton, under
the precision contract of :mod:`convnn.ops`: one GEMM that reads ``x`` once and writes q and
k per head.

Under bf16 autocast on a card with bf16 tensor cores the layer projects its selection features
with the arithmetic of :func:`convnn.ops.contract_linear`: ``x Wᵀ + b`` with bf16×3 products
(``x_hi·W_hi + x_hi·W_lo + x_lo·W_hi``, ``hi = bf16(v)``, ``lo = bf16(v - hi)``), float32
accumulation and a float32 result. That function builds it from PyTorch ops: it splits ``x``
(two passes over it), concatenates ``[x_hi | x_hi | x_lo]`` (a third), runs one bf16 GEMM over
``3C`` inputs, and the layer then copies q and k into heads. :func:`contract_projection` does
the same products in one kernel per pass:

- **Forward** (grid ``[⌈M / BLOCK_M⌉, 2N / BLOCK_N]``, ``M = B·T`` rows, ``N = h·d``): a
  program computes a ``BLOCK_M × BLOCK_N`` tile of q or k. ``x`` is loaded in its own dtype
  and split into bf16 hi / lo in registers, and so is ``W`` (``[2N, C]``, a parameter: tiny,
  read from L2). Three ``tl.dot`` a channel slice (``wgmma`` on sm_90), software-
  pipelined over :data:`NUM_STAGES` stages. The tile is written, with the bias, straight into
  q or k in the per-head layout ``[B·h, T, d]`` that the attention core reads.
- **Backward**, bf16 products with float32 accumulation, as a bf16 linear under autocast (the
  gradients decide no list, so they need no split; :func:`convnn.ops.contract_linear` does
  the same): ``dx = dq W_q + dk W_k`` in one kernel that rounds the float32 gradients to bf16
  as it loads them; ``dW`` and ``db`` in a split-K kernel (one partial sum per slice of
  :data:`ROWS_PER_SPLIT` rows, dW and db together, summed after: deterministic, no
  atomics). Three launches a backward, one a forward: nothing is cast or split outside the
  kernels.

Each output is within :func:`convnn.ops.selection_score_bound` of ``x`` and ``W`` of the
float32 projection, as :func:`convnn.ops.contract_linear`'s (the same products, summed in
another order). Unmeasured on a GPU: checked under ``TRITON_INTERPRET=1`` and compiled for
sm_80/89/90 by the compile gate (bf16 products: no sm_75 variant, and the backend decision
refuses a card below compute capability 8.0); opt-in (``backend="triton"``).
"""

from __future__ import annotations

import os

import torch
from torch import Tensor

from .kernels import KernelVariant, _require, card_refusal, pointer_type, triton

if triton is not None:
    import triton.language as tl

BLOCK_M = 128
"""Rows (``B·T`` positions) per forward / dx program: a ``wgmma`` row tile for each of two
warpgroups (:data:`NUM_WARPS`)."""
BLOCK_N = 64
"""Output columns per forward / dx program (at most: the largest power of two <= 64 that
divides ``N``, so a tile lies in q or in k)."""
BLOCK_K = 32
"""Reduction slice per ``tl.dot`` (channels in the forward, projected features in dx)."""
BLOCK_W = 64
"""Rows and columns of a dW tile; its reduction slice is :data:`BLOCK_W` positions."""
ROWS_PER_SPLIT = 2048
"""Positions per partial sum of the dW kernel (B = 256, T = 197: 25 slices, so 9 tiles × 25
programs a launch for the 132 SMs of an H100)."""
NUM_WARPS = 8
"""Two warpgroups: with one, the forward takes 255 registers a thread and spills on sm_80
(the compile gate)."""
NUM_STAGES = 3
"""Software-pipelining stages of the reduction loops (loads of the next slices in flight
while the tensor cores multiply this one)."""
VALUE_DTYPE = torch.bfloat16
"""The dtype of the values it writes (what bf16 autocast makes of ``v_proj(x)``)."""
DTYPES = (torch.float32,)
"""The dtypes of ``x``, ``W`` and the bias it takes: float32, what autocast gives the layer
(its LayerNorm runs in float32; parameters stay float32). A model cast to bf16 keeps
:func:`convnn.ops.contract_linear`."""

if triton is not None:
    # acc + a @ b of bf16 tiles, float32 accumulation (exact float32 products under the
    # interpreter, whose 16-bit tl.dot is wrong)
    from .kernels import _product as _bf16_dot

    @triton.jit
    def _head_offsets(m, n, T, HEADS: tl.constexpr, HD: tl.constexpr):
        # Offsets of element (m = b·T + t, n = head·HD + e) of a [B, T, HEADS·HD] projection
        # in the per-head layout [B·HEADS, T, HD]: a row part (of m) and a column part (of n).
        m = m.to(tl.int64)
        b = m // T
        row = b * (HEADS * HD) * T + (m - b * T) * HD
        head = n // HD
        col = head * T * HD + (n - head * HD)
        return row, col

    @triton.jit
    def _projection_forward_kernel(
            x_ptr, w_ptr, bias_ptr, q_ptr, k_ptr, v_ptr, M, T, C,
            HAS_BIAS: tl.constexpr, WITH_V: tl.constexpr, HEADS: tl.constexpr,
            HD: tl.constexpr, AS_F32: tl.constexpr, BLOCK_M: tl.constexpr,
            BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
        # A tile of the stacked q | k (| v) columns of x Wᵀ + b; BLOCK_N divides N, so a tile
        # lies in one of them. q and k: bf16×3 products, float32 out; v: a bf16 linear's one
        # product (bf16(x)·bf16(W)), written in v's dtype.
        N: tl.constexpr = HEADS * HD
        rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
        first = tl.program_id(1) * BLOCK_N
        cols = first + tl.arange(0, BLOCK_N)
        row_ok = rows < M
        x_rows = x_ptr + rows.to(tl.int64)[:, None] * C
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        values = False
        if WITH_V:
            values = first >= 2 * N
        if values:
            for c0 in range(0, C, BLOCK_K):
                ks = c0 + tl.arange(0, BLOCK_K)
                k_ok = ks < C
                x = tl.load(x_rows + ks[None, :], mask=row_ok[:, None] & k_ok[None, :],
                            other=0.0)
                w = tl.load(w_ptr + cols[None, :] * C + ks[:, None], mask=k_ok[:, None],
                            other=0.0)
                acc = _bf16_dot(x.to(tl.bfloat16), w.to(tl.bfloat16), acc, AS_F32)
        else:
            for c0 in range(0, C, BLOCK_K):
                ks = c0 + tl.arange(0, BLOCK_K)
                k_ok = ks < C
                x = tl.load(x_rows + ks[None, :], mask=row_ok[:, None] & k_ok[None, :],
                            other=0.0).to(tl.float32)
                x_hi = x.to(tl.bfloat16)
                x_lo = (x - x_hi.to(tl.float32)).to(tl.bfloat16)
                w = tl.load(w_ptr + cols[None, :] * C + ks[:, None], mask=k_ok[:, None],
                            other=0.0).to(tl.float32)  # [BLOCK_K, BLOCK_N] of W [2N | 3N, C]
                w_hi = w.to(tl.bfloat16)
                w_lo = (w - w_hi.to(tl.float32)).to(tl.bfloat16)
                acc = _bf16_dot(x_hi, w_hi, acc, AS_F32)
                acc = _bf16_dot(x_hi, w_lo, acc, AS_F32)
                acc = _bf16_dot(x_lo, w_hi, acc, AS_F32)
        if HAS_BIAS:
            acc += tl.load(bias_ptr + cols).to(tl.float32)[None, :]
        if first < N:  # a tile of q
            row, col = _head_offsets(rows, cols, T, HEADS, HD)
            tl.store(q_ptr + row[:, None] + col[None, :], acc, mask=row_ok[:, None])
        elif first < 2 * N:  # a tile of k
            row, col = _head_offsets(rows, cols - N, T, HEADS, HD)
            tl.store(k_ptr + row[:, None] + col[None, :], acc, mask=row_ok[:, None])
        else:  # a tile of v
            row, col = _head_offsets(rows, cols - 2 * N, T, HEADS, HD)
            tl.store(v_ptr + row[:, None] + col[None, :], acc.to(v_ptr.dtype.element_ty),
                     mask=row_ok[:, None])

    @triton.jit
    def _accumulate_dx(g_ptr, w_ptr, acc, rows, row_ok, cs, c_ok, T, C,
                       HEADS: tl.constexpr, HD: tl.constexpr, AS_F32: tl.constexpr,
                       BLOCK_K: tl.constexpr):
        # acc + g @ W of one of q / k / v: g [M, N] in the per-head layout, W [N, C]; bf16
        # products of both (rounded as they are loaded), float32 accumulation
        N: tl.constexpr = HEADS * HD
        for n0 in range(0, N, BLOCK_K):
            n = n0 + tl.arange(0, BLOCK_K)
            n_ok = n < N
            row, col = _head_offsets(rows, n, T, HEADS, HD)
            g = tl.load(g_ptr + row[:, None] + col[None, :],
                        mask=row_ok[:, None] & n_ok[None, :], other=0.0)
            w = tl.load(w_ptr + n[:, None] * C + cs[None, :], mask=n_ok[:, None] & c_ok[None, :],
                        other=0.0)
            acc = _bf16_dot(g.to(tl.bfloat16), w.to(tl.bfloat16), acc, AS_F32)
        return acc

    @triton.jit
    def _projection_dx_kernel(
            dq_ptr, dk_ptr, dv_ptr, w_ptr, dx_ptr, M, T, C, WITH_V: tl.constexpr,
            HEADS: tl.constexpr, HD: tl.constexpr, AS_F32: tl.constexpr,
            BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
        # dx = dq W_q + dk W_k (+ dv W_v), W = [W_q; W_k (; W_v)]
        N: tl.constexpr = HEADS * HD
        rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
        cs = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
        row_ok = rows < M
        c_ok = cs < C
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        acc = _accumulate_dx(dq_ptr, w_ptr, acc, rows, row_ok, cs, c_ok, T, C, HEADS, HD,
                             AS_F32, BLOCK_K)
        acc = _accumulate_dx(dk_ptr, w_ptr + N * C, acc, rows, row_ok, cs, c_ok, T, C,
                             HEADS, HD, AS_F32, BLOCK_K)
        if WITH_V:
            acc = _accumulate_dx(dv_ptr, w_ptr + 2 * N * C, acc, rows, row_ok, cs, c_ok, T, C,
                                 HEADS, HD, AS_F32, BLOCK_K)
        tl.store(dx_ptr + rows.to(tl.int64)[:, None] * C + cs[None, :],
                 acc.to(dx_ptr.dtype.element_ty), mask=row_ok[:, None] & c_ok[None, :])

    @triton.jit
    def _dw_slice(g_ptr, x_ptr, n, cs, c_ok, start, stop, T, C, HEADS: tl.constexpr,
                  HD: tl.constexpr, AS_F32: tl.constexpr, BLOCK_W: tl.constexpr):
        # Σ over positions m in [start, stop) of bf16(g[m, n]) bf16(x[m, c]), and of g[m, n]
        acc = tl.zeros((BLOCK_W, BLOCK_W), dtype=tl.float32)
        bias = tl.zeros((BLOCK_W,), dtype=tl.float32)
        for m0 in range(start, stop, BLOCK_W):
            m = m0 + tl.arange(0, BLOCK_W)
            m_ok = m < stop
            row, col = _head_offsets(m, n, T, HEADS, HD)
            g_t = tl.load(g_ptr + col[:, None] + row[None, :], mask=m_ok[None, :],
                          other=0.0).to(tl.float32)
            x = tl.load(x_ptr + m.to(tl.int64)[:, None] * C + cs[None, :],
                        mask=m_ok[:, None] & c_ok[None, :], other=0.0)
            acc = _bf16_dot(g_t.to(tl.bfloat16), x.to(tl.bfloat16), acc, AS_F32)
            bias += tl.sum(g_t, axis=1)
        return acc, bias

    @triton.jit
    def _projection_dw_kernel(
            dq_ptr, dk_ptr, dv_ptr, x_ptr, part_ptr, M, T, C, ROWS_PER_SPLIT,
            WITH_V: tl.constexpr, HEADS: tl.constexpr, HD: tl.constexpr,
            AS_F32: tl.constexpr, BLOCK_W: tl.constexpr):
        # This slice's dW[r, c] = Σ_m bf16(g[m, n]) bf16(x[m, c]) and db[r] = Σ_m g[m, n]
        # (float32) for the rows r of the stacked W: g = dq (r = n), dk (r = N + n) or dv
        # (r = 2N + n), in the per-head layout. BLOCK_W divides N, so a tile's rows come from
        # one of them. The partials of a slice: ROWS·C of dW, then ROWS of db (one sum).
        N: tl.constexpr = HEADS * HD
        ROWS: tl.constexpr = (3 if WITH_V else 2) * N
        first = tl.program_id(0) * BLOCK_W
        r = first + tl.arange(0, BLOCK_W)
        cs = tl.program_id(1) * BLOCK_W + tl.arange(0, BLOCK_W)
        split = tl.program_id(2)
        c_ok = cs < C
        start = split * ROWS_PER_SPLIT
        stop = tl.minimum(start + ROWS_PER_SPLIT, M)
        values = False
        if WITH_V:
            values = first >= 2 * N
        if values:  # dv: its own dtype
            acc, bias = _dw_slice(dv_ptr, x_ptr, r - 2 * N, cs, c_ok, start, stop, T, C, HEADS,
                                  HD, AS_F32, BLOCK_W)
        else:
            if first < N:
                g_ptr = dq_ptr
                n = r
            else:
                g_ptr = dk_ptr
                n = r - N
            acc, bias = _dw_slice(g_ptr, x_ptr, n, cs, c_ok, start, stop, T, C, HEADS, HD,
                                  AS_F32, BLOCK_W)
        part = part_ptr + split.to(tl.int64) * ROWS * (C + 1)
        tl.store(part + r[:, None] * C + cs[None, :], acc, mask=c_ok[None, :])
        tl.store(part + ROWS * C + r, bias, mask=(r >= 0) & (tl.program_id(1) == 0))


def _interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def column_block(width: int) -> int | None:
    """Output columns per program for ``width = h·d`` features: the largest of 64, 32, 16
    that divides it (a tile lies in q or in k), ``None`` where none does."""
    return next((b for b in (BLOCK_N, BLOCK_N // 2, BLOCK_N // 4) if width % b == 0), None)


def _forward_constexprs(width: int, heads: int, has_bias: bool, values: bool,
                        interpreted: bool) -> dict:
    return {"HAS_BIAS": bool(has_bias), "WITH_V": bool(values), "HEADS": heads,
            "HD": width // heads, "AS_F32": bool(interpreted), "BLOCK_M": BLOCK_M,
            "BLOCK_N": column_block(width), "BLOCK_K": BLOCK_K}


def _dx_constexprs(width: int, heads: int, values: bool, interpreted: bool) -> dict:
    return {"WITH_V": bool(values), "HEADS": heads, "HD": width // heads,
            "AS_F32": bool(interpreted), "BLOCK_M": BLOCK_M, "BLOCK_N": BLOCK_N,
            "BLOCK_K": BLOCK_K}


def _dw_constexprs(width: int, heads: int, values: bool, interpreted: bool) -> dict:
    return {"WITH_V": bool(values), "HEADS": heads, "HD": width // heads,
            "AS_F32": bool(interpreted), "BLOCK_W": column_block(width)}


def _forward_impl(x: Tensor, weight: Tensor, bias: Tensor | None, heads: int,
                  values: bool) -> tuple[Tensor, Tensor, Tensor]:
    batch, tokens, channels = x.shape
    parts = 3 if values else 2
    width = weight.shape[0] // parts
    x, weight = x.contiguous(), weight.contiguous()
    q = torch.empty(batch * heads, tokens, width // heads, dtype=torch.float32,
                    device=x.device)
    key = torch.empty_like(q)
    v = torch.empty(q.shape if values else (0,), dtype=VALUE_DTYPE, device=x.device)
    rows = batch * tokens
    if rows:
        config = _forward_constexprs(width, heads, bias is not None, values, _interpreted())
        grid = (triton.cdiv(rows, BLOCK_M), parts * width // config["BLOCK_N"])
        _projection_forward_kernel[grid](
            x, weight, weight if bias is None else bias.contiguous(), q, key, v if values else q,
            rows, tokens, channels, **config, num_warps=NUM_WARPS, num_stages=NUM_STAGES)
    return q, key, v


def _backward_impl(grad_q: Tensor, grad_key: Tensor, grad_v: Tensor | None, x: Tensor,
                   weight: Tensor, heads: int) -> tuple[Tensor, Tensor]:
    batch, tokens, channels = x.shape
    values = grad_v is not None
    parts = 3 if values else 2
    width = weight.shape[0] // parts
    rows = batch * tokens
    x, weight = x.contiguous(), weight.contiguous()
    grad_q, grad_key = grad_q.contiguous(), grad_key.contiguous()
    grad_v = grad_v.contiguous() if values else grad_q
    grad_x = torch.empty_like(x)
    if not rows:
        return grad_x.zero_(), weight.new_zeros(weight.shape[0] * (channels + 1),
                                                dtype=torch.float32)
    splits = max(1, triton.cdiv(rows, ROWS_PER_SPLIT))
    # each slice's dW then db, every element written by one program; summed below
    part = torch.empty(splits, parts * width * (channels + 1), dtype=torch.float32,
                       device=x.device)
    interpreted = _interpreted()
    _projection_dx_kernel[(triton.cdiv(rows, BLOCK_M), triton.cdiv(channels, BLOCK_N))](
        grad_q, grad_key, grad_v, weight, grad_x, rows, tokens, channels,
        **_dx_constexprs(width, heads, values, interpreted), num_warps=NUM_WARPS,
        num_stages=NUM_STAGES)
    config = _dw_constexprs(width, heads, values, interpreted)
    _projection_dw_kernel[(parts * width // config["BLOCK_W"],
                           triton.cdiv(channels, config["BLOCK_W"]), splits)](
        grad_q, grad_key, grad_v, x, part, rows, tokens, channels, ROWS_PER_SPLIT, **config,
        num_warps=NUM_WARPS, num_stages=NUM_STAGES)
    return grad_x, part.sum(0)


@torch.library.custom_op("convnn::contract_projection", mutates_args=())
def _contract_projection_op(x: Tensor, weight: Tensor, bias: Tensor | None, heads: int,
                            values: bool) -> tuple[Tensor, Tensor, Tensor]:
    """``(q, key, v)``: q and key ``[B·h, T, d]`` float32, v ``[B·h, T, d]`` bf16 (or
    empty without ``values``)."""
    return _forward_impl(x, weight, bias, heads, values)


@_contract_projection_op.register_fake
def _contract_projection_fake(x, weight, bias, heads, values):
    batch, tokens, _ = x.shape
    width = weight.shape[0] // (3 if values else 2)
    q = x.new_empty(batch * heads, tokens, width // heads, dtype=torch.float32)
    return q, torch.empty_like(q), x.new_empty(q.shape if values else (0,), dtype=VALUE_DTYPE)


@torch.library.custom_op("convnn::contract_projection_backward", mutates_args=())
def _contract_projection_backward_op(grad_q: Tensor, grad_key: Tensor, grad_v: Tensor | None,
                                     x: Tensor, weight: Tensor, heads: int
                                     ) -> tuple[Tensor, Tensor]:
    """``(dx, dW | db)``: ``dx`` in ``x``'s dtype; ``dW`` (``[rows, C]``) then ``db``
    (``[rows]``), flat, float32: one sum of the slices' partials, split by the caller."""
    return _backward_impl(grad_q, grad_key, grad_v, x, weight, heads)


@_contract_projection_backward_op.register_fake
def _contract_projection_backward_fake(grad_q, grad_key, grad_v, x, weight, heads):
    return (torch.empty_like(x),
            weight.new_empty(weight.shape[0] * (weight.shape[1] + 1), dtype=torch.float32))


def _setup_context(ctx, inputs, output):
    x, weight, bias, heads, values = inputs
    ctx.save_for_backward(x, weight)
    ctx.heads, ctx.values = heads, values
    ctx.bias_dtype = None if bias is None else bias.dtype


def _backward(ctx, grad_q, grad_key, grad_v):
    # autograd hands zeros for an output that took no gradient (v is empty without values)
    x, weight = ctx.saved_tensors
    grad_x, flat = _contract_projection_backward_op(
        grad_q, grad_key, grad_v if ctx.values else None, x, weight, ctx.heads)
    rows, channels = weight.shape
    grad_w = flat[:rows * channels].view(rows, channels).to(weight.dtype)
    grad_b = None if ctx.bias_dtype is None else flat[rows * channels:].to(ctx.bias_dtype)
    return grad_x, grad_w, grad_b, None, None


_contract_projection_op.register_autograd(_backward, setup_context=_setup_context)


def contract_projection(x: Tensor, weight: Tensor, bias: Tensor | None, heads: int, *,
                        values: bool = False) -> tuple[Tensor, ...]:
    """The projections of a ConvNN attention layer in one Triton kernel: ``x [B, T, C]``,
    ``weight [2·h·d, C]`` (``W_q`` stacked over ``W_k``; with ``values``, ``[3·h·d, C]``:
    ``W_v`` under them), ``bias`` stacked alike or ``None`` -> ``q, key`` (``, v``), each
    ``[B·h, T, d]`` (the heads split, as the attention core reads them). ``q`` and ``key`` are
    float32 under the precision contract: the products of :func:`convnn.ops.contract_linear`
    (bf16×3, float32 accumulation). ``v`` is what bf16 autocast makes of ``v_proj(x)``: one
    bf16 product, float32 accumulation, rounded to bf16. The backward is a bf16 linear's,
    ``dx`` summed over q, k and v in float32. Differentiable in ``x``, ``weight`` and ``bias``,
    without atomics; the custom op ``convnn::contract_projection`` (``torch.compile`` takes
    it). Needs ``h·d`` a multiple of 16 and float32 tensors
    (:func:`can_run_contract_projection`)."""
    from ._checks import check_int

    check_int("heads", heads, minimum=1)
    if not isinstance(values, bool):
        raise TypeError(f"values must be a bool, got {values!r}")
    parts = 3 if values else 2
    stacked = "W_q, W_k, W_v" if values else "W_q, W_k"
    if x.dim() != 3:
        raise ValueError(f"x must be [B, T, C], got shape {tuple(x.shape)}")
    if weight.dim() != 2 or weight.shape[1] != x.shape[2] or weight.shape[0] % parts:
        raise ValueError(f"weight must be [{parts}·h·d, C] with C={x.shape[2]} ({stacked} "
                         f"stacked), got shape {tuple(weight.shape)}")
    width = weight.shape[0] // parts
    reason = can_run_contract_projection(
        width=width, heads=heads, dtype=x.dtype,
        weight_dtypes=(weight.dtype,) + (() if bias is None else (bias.dtype,)))
    if reason is not None:
        raise ValueError(f"contract_projection cannot take this problem: {reason}")
    if bias is not None and bias.shape != (parts * width,):
        raise ValueError(f"bias must be [{parts}·h·d] = [{parts * width}], got "
                         f"{tuple(bias.shape)}")
    _require(x.device)
    q, key, v = _contract_projection_op(x, weight, bias, int(heads), values)
    return (q, key, v) if values else (q, key)


# ------------------------------------------------------------------ the compile gate
PAPER_TOKENS = 197
PAPER_WIDTH = 192
"""ViT-Tiny's embedding: C = h·d = 192."""
PAPER_HEADS = (1, 3)
"""1×192 (the paper's final runs) and 3×64."""


def compile_variants(card) -> list[KernelVariant]:
    """Every launch configuration of the projection kernels at the paper's shapes (C = 192,
    1×192 and 3×64 heads; q/k/v (training) and q/k (``neighbours``); with and without bias)
    on a card with bf16 tensor cores (none on sm_75: the backend decision refuses it there),
    float32 ``x`` (autocast). The forward kernel is hot."""
    if not card.bf16:
        return []
    variants = []
    i32, f32p = "i32", pointer_type(torch.float32)
    vp = pointer_type(VALUE_DTYPE)
    for heads in PAPER_HEADS:
        shape = f"{heads}x{PAPER_WIDTH // heads} C={PAPER_WIDTH}"
        for values in (True, False):
            what = "q/k/v" if values else "q/k"
            for has_bias in (True, False):
                variants.append(KernelVariant(
                    _projection_forward_kernel,
                    f"projection_forward {what} {shape}{'' if has_bias else ' no-bias'}",
                    {"x_ptr": f32p, "w_ptr": f32p, "bias_ptr": f32p, "q_ptr": f32p,
                     "k_ptr": f32p, "v_ptr": vp if values else f32p, "M": i32, "T": i32,
                     "C": i32},
                    _forward_constexprs(PAPER_WIDTH, heads, has_bias, values, False),
                    NUM_WARPS, NUM_STAGES, hot=True))
            variants.append(KernelVariant(
                _projection_dx_kernel, f"projection_dx {what} {shape}",
                {"dq_ptr": f32p, "dk_ptr": f32p, "dv_ptr": vp if values else f32p,
                 "w_ptr": f32p, "dx_ptr": f32p, "M": i32, "T": i32, "C": i32},
                _dx_constexprs(PAPER_WIDTH, heads, values, False), NUM_WARPS, NUM_STAGES))
            variants.append(KernelVariant(
                _projection_dw_kernel, f"projection_dw {what} {shape}",
                {"dq_ptr": f32p, "dk_ptr": f32p, "dv_ptr": vp if values else f32p,
                 "x_ptr": f32p, "part_ptr": f32p, "M": i32, "T": i32, "C": i32,
                 "ROWS_PER_SPLIT": i32},
                _dw_constexprs(PAPER_WIDTH, heads, values, False), NUM_WARPS, NUM_STAGES))
    return variants


# --- What the projection kernel can run: the predicate of convnn.ops.choose_backend ----------

def can_run_contract_projection(*, width: int | None = None, heads: int | None = None,
                                dtype: torch.dtype | None = None, weight_dtypes=(),
                                device: torch.device | str | None = None) -> str | None:
    """Step ``"contract_projection"`` (:func:`contract_projection`): the q/k projection of a
    ConvNN attention layer of ``width = h·d`` features in ``heads`` heads, from ``x`` of
    ``dtype`` with weights (and bias) of ``weight_dtypes``. Its products are bf16: no card
    below compute capability 8.0."""
    from ._checks import check_int

    check_int("width", width, minimum=1)
    check_int("heads", heads, minimum=1)
    if width % heads:
        raise ValueError(f"width={width} must be a multiple of heads={heads}")
    if column_block(width) is None:
        return (f"width={width} features (the projection kernel's column tiles need a "
                "multiple of 16)")
    for what, dtypes in (("input", (dtype,)), ("weight", tuple(weight_dtypes))):
        odd = sorted({str(d) for d in dtypes if d is not None and d not in DTYPES})
        if odd:
            return (f"{', '.join(odd)} {what} (the projection kernel takes "
                    f"{' and '.join(str(d) for d in DTYPES)})")
    return card_refusal(device, (torch.bfloat16,))
