"""Fused Triton kernels for the gather-aggregate step (depthwise aggregation).

``out[m, c] = Σ_j ρ[m, j] · w[j, c] · V[I[m, j], c]`` is computed tile by tile in registers:
the k neighbour rows are read once and never written out as a ``[M, k, C]`` tensor, in the
forward or the backward pass. The backward kernel produces the three gradients in one pass,
accumulating in float32 with atomic adds (values: scattered rows; ρ: a sum over channel tiles;
w: a sum over row tiles).

The kernels are selected with :func:`convnn.ops.set_kernel` (or ``CONVNN_KERNEL=triton``) and
only run on CUDA tensors, or anywhere under ``TRITON_INTERPRET=1`` (how the tests check them on
a CPU). They match the PyTorch fast path in tests; which one is faster on a given GPU is what
``python -m convnn bench`` measures (``kernel`` rows), so the default stays the PyTorch path
until a measurement says otherwise.
"""

from __future__ import annotations

import os

import torch
from torch import Tensor

try:  # Triton ships with CUDA builds of PyTorch; CPU-only installs may lack it.
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the installation
    triton = None
    tl = None


def available(device: torch.device | str | None = None) -> bool:
    """True when the Triton kernels can run on ``device`` (CUDA, or the interpreter)."""
    if triton is None:
        return False
    if os.environ.get("TRITON_INTERPRET") == "1":
        return True
    return device is not None and torch.device(device).type == "cuda"


if triton is not None:

    @triton.jit
    def _forward_kernel(v_ptr, idx_ptr, rho_ptr, w_ptr, out_ptr, M, C, K,
                        HAS_RHO: tl.constexpr, ACC: tl.constexpr, BLOCK_M: tl.constexpr,
                        BLOCK_C: tl.constexpr):
        rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
        cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
        row_ok = rows < M
        col_ok = cols < C
        tile_ok = row_ok[:, None] & col_ok[None, :]
        acc = tl.zeros((BLOCK_M, BLOCK_C), dtype=ACC)
        for j in range(K):
            src = tl.load(idx_ptr + rows * K + j, mask=row_ok, other=0)
            v = tl.load(v_ptr + src[:, None] * C + cols[None, :], mask=tile_ok, other=0.0)
            w = tl.load(w_ptr + j * C + cols, mask=col_ok, other=0.0)
            term = v.to(ACC) * w.to(ACC)[None, :]
            if HAS_RHO:
                r = tl.load(rho_ptr + rows * K + j, mask=row_ok, other=0.0)
                term = term * r.to(ACC)[:, None]
            acc += term
        tl.store(out_ptr + rows[:, None] * C + cols[None, :],
                 acc.to(out_ptr.dtype.element_ty), mask=tile_ok)

    @triton.jit
    def _backward_kernel(v_ptr, idx_ptr, rho_ptr, w_ptr, g_ptr, gv_ptr, grho_ptr, gw_ptr,
                         M, C, K, HAS_RHO: tl.constexpr, NEED_V: tl.constexpr,
                         NEED_RHO: tl.constexpr, NEED_W: tl.constexpr, ACC: tl.constexpr,
                         BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr):
        rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
        cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
        row_ok = rows < M
        col_ok = cols < C
        tile_ok = row_ok[:, None] & col_ok[None, :]
        g = tl.load(g_ptr + rows[:, None] * C + cols[None, :], mask=tile_ok,
                    other=0.0).to(ACC)
        for j in range(K):
            src = tl.load(idx_ptr + rows * K + j, mask=row_ok, other=0)
            w = tl.load(w_ptr + j * C + cols, mask=col_ok, other=0.0).to(ACC)
            gw = g * w[None, :]  # d out / d (ρ v) for this rank
            r = tl.full((BLOCK_M,), 1.0, ACC)
            if HAS_RHO:
                r = tl.load(rho_ptr + rows * K + j, mask=row_ok, other=0.0).to(ACC)
            if NEED_V:
                tl.atomic_add(gv_ptr + src[:, None] * C + cols[None, :], gw * r[:, None],
                              mask=tile_ok)
            if NEED_RHO or NEED_W:
                v = tl.load(v_ptr + src[:, None] * C + cols[None, :], mask=tile_ok,
                            other=0.0).to(ACC)
                if NEED_RHO:
                    tl.atomic_add(grho_ptr + rows * K + j, tl.sum(gw * v, axis=1),
                                  mask=row_ok)
                if NEED_W:
                    tl.atomic_add(gw_ptr + j * C + cols, tl.sum(v * g * r[:, None], axis=0),
                                  mask=col_ok)


def _accumulator(dtype: torch.dtype):
    """float64 stays float64; everything else accumulates in float32."""
    return (tl.float64, torch.float64) if dtype == torch.float64 else (tl.float32, torch.float32)


def _blocks(channels: int) -> tuple[int, int]:
    block_c = min(128, triton.next_power_of_2(channels))
    return 32, block_c


class DepthwiseGatherAggregate(torch.autograd.Function):
    """Autograd wrapper of the fused kernels: ``(values [R, C], index [M, k], ρ [M, k] or
    None, w [k, C]) -> [M, C]``."""

    @staticmethod
    def forward(ctx, values, index, rho, w):
        values, index = values.contiguous(), index.contiguous()
        rho = None if rho is None else rho.contiguous()
        w = w.contiguous()
        rows, k = index.shape
        channels = values.shape[1]
        out = torch.empty(rows, channels, dtype=values.dtype, device=values.device)
        block_m, block_c = _blocks(channels)
        grid = (triton.cdiv(rows, block_m), triton.cdiv(channels, block_c))
        _forward_kernel[grid](values, index, values if rho is None else rho, w, out,
                              rows, channels, k, HAS_RHO=rho is not None,
                              ACC=_accumulator(values.dtype)[0],
                              BLOCK_M=block_m, BLOCK_C=block_c)
        ctx.save_for_backward(values, index, rho, w)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        values, index, rho, w = ctx.saved_tensors
        need_v, _, need_rho, need_w = ctx.needs_input_grad
        need_rho = need_rho and rho is not None
        rows, k = index.shape
        channels = values.shape[1]
        acc_tl, acc_torch = _accumulator(values.dtype)
        f32 = {"dtype": acc_torch, "device": values.device}
        grad_v = torch.zeros(values.shape, **f32) if need_v else None
        grad_rho = torch.zeros(rows, k, **f32) if need_rho else None
        grad_w = torch.zeros(k, channels, **f32) if need_w else None
        block_m, block_c = _blocks(channels)
        grid = (triton.cdiv(rows, block_m), triton.cdiv(channels, block_c))
        dummy = values
        _backward_kernel[grid](values, index, dummy if rho is None else rho, w,
                               grad_out.contiguous(),
                               dummy if grad_v is None else grad_v,
                               dummy if grad_rho is None else grad_rho,
                               dummy if grad_w is None else grad_w,
                               rows, channels, k, HAS_RHO=rho is not None, NEED_V=need_v,
                               NEED_RHO=need_rho, NEED_W=need_w, ACC=acc_tl,
                               BLOCK_M=block_m, BLOCK_C=block_c)
        return (None if grad_v is None else grad_v.to(values.dtype), None,
                None if grad_rho is None else grad_rho.to(rho.dtype),
                None if grad_w is None else grad_w.to(w.dtype))


def depthwise_gather_aggregate(values: Tensor, index: Tensor, rho: Tensor | None,
                               w: Tensor) -> Tensor:
    """Fused ``Σ_j ρ[m, j] w[j, :] ⊙ values[index[m, j]]``: ``[R, C], [M, k] -> [M, C]``."""
    if not available(values.device):
        raise RuntimeError("the Triton kernels need a CUDA tensor (or TRITON_INTERPRET=1) "
                           f"and an installed triton; got a {values.device.type} tensor, "
                           f"triton {'missing' if triton is None else 'installed'}")
    return DepthwiseGatherAggregate.apply(values, index, rho, w)
