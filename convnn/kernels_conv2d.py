"""Triton kernels of :class:`convnn.layers.ConvNN2d` on images: a fused 2-D selection and the
standard aggregation as a gather-GEMM, both reading the input in place (NHWC or NCHW strides,
the zero border implicit: no padded copy, no ``[B, H·W, k, C]`` gathered tensor, no score
matrix).

**Fused 2-D selection** (:func:`select_2d`): one program per tile of :data:`BLOCK_Q` query
pixels of one image scores them against every position of the zero-padded map (1,156 at
32×32 with padding 1), :data:`BLOCK_N` positions at a time, with ``tl.dot`` on tensor cores
(bf16 inputs: bf16 products; float32 inputs: TF32, or IEEE float32 with
``precision="ieee"``; float32 accumulation). A border position is a zero vector: its score
is exactly 0 (cosine and dot), as in the padded PyTorch path. The query's own position is
masked (self-first). The running top-k of every row is an unsorted list in registers; a tile
is merged only where one of its scores beats a row's current k-th best, and then by as many
insertion passes as the most such scores in one row (at most k): after the first tiles most
tiles cost no merge at all. The list is sorted once at the end. Ties go to the lower
position, as a stable sort.

**Gather-GEMM** (:func:`gather_gemm`): ``out[m, o] = Σ_j Σ_c x[I[m, j], c] · W[o, c, j]``,
a ``[BLOCK_M, BLOCK_C] × [BLOCK_C, BLOCK_O]`` ``tl.dot`` per rank and channel tile, the rows
gathered straight from the input (border positions load zeros). Backward, without atomics:

- ``dW``: the same gather-GEMM transposed, one partial sum per slice of rows, then summed;
- ``dx``: ``g @ W`` gives the gradient of every gathered row (``[M, k·C]``, a dense GEMM),
  and one program per tile of pixels sums the rows that gathered each pixel through the
  inverse index (CSR, built once per selection by a stable sort), so every sum has a fixed
  order: the gradients are bitwise reproducible.

Step ``"conv2d_fused"`` of :func:`convnn.ops.choose_backend`: ``backend="triton"`` only, auto
leaves it off until it is measured on a GPU. Checked against the PyTorch path under
``TRITON_INTERPRET=1`` (``tests/test_conv2d_kernels.py``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .kernels import available

try:  # Triton ships with CUDA builds of PyTorch; CPU-only installs may lack it.
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the installation
    triton = None
    tl = None

MAX_SELECT_K = 16
"""Largest number of neighbours searched (k - 1 with self-first) the fused selection takes."""
BLOCK_Q = 32  # query pixels per selection program
BLOCK_N = 64  # padded positions per score tile
BLOCK_M = 32  # output rows per gather-GEMM program
BLOCK_P = 16  # pixels per dx program
SELECT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _require(device: torch.device) -> None:
    if not available(device):
        raise RuntimeError("the Triton kernels need a CUDA tensor (or TRITON_INTERPRET=1) "
                           f"and an installed triton; got a {device.type} tensor")


def _block(n: int, low: int = 16, high: int = 64) -> int:
    return max(low, min(high, triton.next_power_of_2(n)))


if triton is not None:

    @triton.jit
    def _pixel_offsets(pos, H, W, P, stride_h, stride_w):
        # padded raster position -> (offset of the pixel, inside the image?)
        Wp = W + 2 * P
        r = pos // Wp - P
        c = pos % Wp - P
        inside = (r >= 0) & (r < H) & (c >= 0) & (c < W)
        off = tl.where(inside, r.to(tl.int64) * stride_h + c.to(tl.int64) * stride_w, 0)
        return off, inside

    @triton.jit
    def _select_2d_kernel(x_ptr, inv_ptr, idx_ptr, H, W, P, C, K, scale,
                          stride_b, stride_c, stride_h, stride_w,
                          COSINE: tl.constexpr, KP: tl.constexpr, BLOCK_Q: tl.constexpr,
                          BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr,
                          PRECISION: tl.constexpr, UPCAST: tl.constexpr):
        b = tl.program_id(1).to(tl.int64)
        HW = H * W
        Wp = W + 2 * P
        NP = (H + 2 * P) * Wp
        rows = tl.program_id(0) * BLOCK_Q + tl.arange(0, BLOCK_Q)
        row_ok = rows < HW
        qr = rows // W
        qc = rows % W
        q_off = qr.to(tl.int64) * stride_h + qc.to(tl.int64) * stride_w
        q_pos = (qr + P) * Wp + qc + P  # the query's own padded position
        x_b = x_ptr + b * stride_b
        inv_q = tl.full((BLOCK_Q,), 1.0, tl.float32)
        if COSINE:
            inv_q = tl.load(inv_ptr + b * HW + rows, mask=row_ok, other=0.0)
        slots = tl.arange(0, KP)
        NONE: tl.constexpr = 2147483647
        # unsorted running top-K; slots >= K are padding (+inf: never the worst)
        top_v = tl.where(slots[None, :] < K, float("-inf"), float("inf")) + \
            tl.zeros((BLOCK_Q, KP), tl.float32)
        top_i = tl.full((BLOCK_Q, KP), NONE, tl.int32)
        worst_v = tl.full((BLOCK_Q,), float("-inf"), tl.float32)
        worst_s = tl.zeros((BLOCK_Q,), tl.int32)  # slot 0 (all NONE: the highest column)
        for n0 in range(0, NP, BLOCK_N):
            cols = n0 + tl.arange(0, BLOCK_N)
            col_ok = cols < NP
            k_off, inside = _pixel_offsets(cols, H, W, P, stride_h, stride_w)
            acc = tl.zeros((BLOCK_Q, BLOCK_N), dtype=tl.float32)
            for c0 in range(0, C, BLOCK_C):
                ch = c0 + tl.arange(0, BLOCK_C)
                ch_ok = ch < C
                ch_off = ch.to(tl.int64) * stride_c
                q = tl.load(x_b + q_off[:, None] + ch_off[None, :],
                            mask=row_ok[:, None] & ch_ok[None, :], other=0.0)
                kt = tl.load(x_b + k_off[None, :] + ch_off[:, None],
                             mask=(col_ok & inside)[None, :] & ch_ok[:, None], other=0.0)
                if UPCAST:  # the interpreter's 16-bit dot is wrong; bf16 products are exact
                    q, kt = q.to(tl.float32), kt.to(tl.float32)  # in float32 anyway
                acc = tl.dot(q, kt, acc, input_precision=PRECISION)
            if COSINE:
                k_pix = (cols // Wp - P) * W + (cols % Wp - P)
                inv_k = tl.load(inv_ptr + b * HW + k_pix, mask=col_ok & inside, other=0.0)
                s = acc * inv_q[:, None] * inv_k[None, :]
            else:
                s = acc * scale
            s = tl.where(cols[None, :] == q_pos[:, None], float("-inf"), s)
            s = tl.where(col_ok[None, :], s, float("-inf"))
            # columns rise tile by tile, so an equal score never displaces an earlier one
            s_free = col_ok[None, :] & (s > worst_v[:, None])
            need = tl.max(tl.minimum(tl.sum(s_free.to(tl.int32), axis=1), K), axis=0)
            for _ in range(need):
                best = tl.max(tl.where(s_free, s, float("-inf")), axis=1)
                pos = tl.min(tl.where(s_free & (s == best[:, None]), cols[None, :], NONE),
                             axis=1)
                take = (best > worst_v) & (pos < NONE)
                here = take[:, None] & (slots[None, :] == worst_s[:, None])
                top_v = tl.where(here, best[:, None], top_v)
                top_i = tl.where(here, pos[:, None], top_i)
                s_free = s_free & (cols[None, :] != pos[:, None])
                # the new worst: lowest score, and of equal scores the highest position
                worst_v = tl.min(top_v, axis=1)
                is_worst = top_v == worst_v[:, None]
                worst_i = tl.max(tl.where(is_worst, top_i, -1), axis=1)
                worst_s = tl.min(tl.where(is_worst & (top_i == worst_i[:, None]),
                                          slots[None, :], KP), axis=1)
        # sort the K entries: best first, ties to the lower position
        free = (slots[None, :] < K) & (rows >= 0)[:, None]  # full shape: loop-carried
        out = idx_ptr + (b * HW + rows.to(tl.int64)) * K
        for j in range(K):
            best = tl.max(tl.where(free, top_v, float("-inf")), axis=1)
            pos = tl.min(tl.where(free & (top_v == best[:, None]), top_i, NONE), axis=1)
            tl.store(out + j, pos.to(tl.int64), mask=row_ok)
            free = free & (top_i != pos[:, None])

    @triton.jit
    def _gather_gemm_kernel(x_ptr, idx_ptr, w_ptr, out_ptr, M, HW, H, W, P, C, O, K,
                            stride_b, stride_c, stride_h, stride_w,
                            BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
                            BLOCK_O: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr):
        # out[m, o] = sum_j sum_c x[b(m), I[m, j], c] * w[j, c, o]
        rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
        outs = tl.program_id(1) * BLOCK_O + tl.arange(0, BLOCK_O)
        row_ok = rows < M
        o_ok = outs < O
        rows64 = rows.to(tl.int64)
        base = (rows64 // HW) * stride_b
        acc = tl.zeros((BLOCK_M, BLOCK_O), dtype=tl.float32)
        for j in range(K):
            pos = tl.load(idx_ptr + rows64 * K + j, mask=row_ok, other=0).to(tl.int32)
            off, inside = _pixel_offsets(pos, H, W, P, stride_h, stride_w)
            ok = row_ok & inside
            for c0 in range(0, C, BLOCK_C):
                ch = c0 + tl.arange(0, BLOCK_C)
                ch_ok = ch < C
                a = tl.load(x_ptr + (base + off)[:, None] + ch.to(tl.int64)[None, :] * stride_c,
                            mask=ok[:, None] & ch_ok[None, :], other=0.0)
                w = tl.load(w_ptr + (j * C + ch.to(tl.int64))[:, None] * O + outs[None, :],
                            mask=ch_ok[:, None] & o_ok[None, :], other=0.0)
                if UPCAST:
                    a, w = a.to(tl.float32), w.to(tl.float32)
                acc = tl.dot(a, w, acc, input_precision=PRECISION)
        tl.store(out_ptr + rows64[:, None] * O + outs[None, :],
                 acc.to(out_ptr.dtype.element_ty), mask=row_ok[:, None] & o_ok[None, :])

    @triton.jit
    def _gather_gemm_dw_kernel(x_ptr, idx_ptr, g_ptr, part_ptr, M, HW, H, W, P, C, O, K,
                               rows_per_split, stride_b, stride_c, stride_h, stride_w,
                               BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
                               BLOCK_O: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr):
        # part[s, j, c, o] = sum over rows m of slice s of x[b(m), I[m, j], c] * g[m, o]
        jc = tl.program_id(0)
        c_tiles = tl.cdiv(C, BLOCK_C)
        j = jc // c_tiles
        ch = (jc % c_tiles) * BLOCK_C + tl.arange(0, BLOCK_C)
        outs = tl.program_id(1) * BLOCK_O + tl.arange(0, BLOCK_O)
        split = tl.program_id(2)
        ch_ok = ch < C
        o_ok = outs < O
        acc = tl.zeros((BLOCK_C, BLOCK_O), dtype=tl.float32)
        start = split * rows_per_split
        for m0 in range(start, tl.minimum(start + rows_per_split, M), BLOCK_M):
            rows = m0 + tl.arange(0, BLOCK_M)
            row_ok = (rows < M) & (rows < start + rows_per_split)
            rows64 = rows.to(tl.int64)
            pos = tl.load(idx_ptr + rows64 * K + j, mask=row_ok, other=0).to(tl.int32)
            off, inside = _pixel_offsets(pos, H, W, P, stride_h, stride_w)
            a = tl.load(x_ptr + ((rows64 // HW) * stride_b + off)[None, :]
                        + ch.to(tl.int64)[:, None] * stride_c,
                        mask=(row_ok & inside)[None, :] & ch_ok[:, None], other=0.0)
            g = tl.load(g_ptr + rows64[:, None] * O + outs[None, :],
                        mask=row_ok[:, None] & o_ok[None, :], other=0.0)
            g = g.to(a.dtype)
            if UPCAST:
                a, g = a.to(tl.float32), g.to(tl.float32)
            acc = tl.dot(a, g, acc, input_precision=PRECISION)
        out = part_ptr + ((split * K + j).to(tl.int64) * C + ch[:, None]) * O + outs[None, :]
        tl.store(out, acc, mask=ch_ok[:, None] & o_ok[None, :])

    @triton.jit
    def _scatter_rows_kernel(order_ptr, rowptr_ptr, rows_ptr, dx_ptr, total, HW, H, W, P, C,
                             stride_b, stride_c, stride_h, stride_w,
                             BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
        # dx[b, pixel, c] = sum over entries e of the pixel's padded position of rows[order[e]]
        pix = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)  # flat b·HW + pixel
        ch = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
        p_ok = pix < total
        ch_ok = ch < C
        b = pix // HW
        q = pix % HW
        r = q // W
        c = q % W
        Wp = W + 2 * P
        key = b.to(tl.int64) * ((H + 2 * P) * Wp) + (r + P) * Wp + c + P
        start = tl.load(rowptr_ptr + key, mask=p_ok, other=0)
        stop = tl.load(rowptr_ptr + key + 1, mask=p_ok, other=0)
        most = tl.max(stop - start, axis=0)
        acc = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)
        for e in range(most):
            e_ok = p_ok & (start + e < stop)
            flat = tl.load(order_ptr + start + e, mask=e_ok, other=0)  # m·K + j
            acc += tl.load(rows_ptr + flat[:, None] * C + ch[None, :],
                           mask=e_ok[:, None] & ch_ok[None, :], other=0.0).to(tl.float32)
        dst = dx_ptr + (b.to(tl.int64) * stride_b + r.to(tl.int64) * stride_h
                        + c.to(tl.int64) * stride_w)[:, None] + ch.to(tl.int64)[None, :] * stride_c
        tl.store(dst, acc.to(dx_ptr.dtype.element_ty), mask=p_ok[:, None] & ch_ok[None, :])


def _precision(dtype: torch.dtype, precision: str | None) -> str:
    # Triton's input_precision applies to float32 operands; 16-bit ones take the default
    if precision not in (None, "tf32", "ieee"):
        raise ValueError(f"precision must be 'tf32', 'ieee' or None, got {precision!r}")
    return precision or "tf32" if dtype == torch.float32 else "tf32"


def _interpreted() -> bool:
    import os

    return os.environ.get("TRITON_INTERPRET") == "1"


def _dot_precision(dtype: torch.dtype, precision: str | None) -> str:
    # the interpreter computes every dot in float32 whatever it is told
    chosen = _precision(dtype, precision)
    return "ieee" if _interpreted() else chosen


def _check_image(name: str, x: Tensor) -> None:
    if not isinstance(x, Tensor) or x.dim() != 4:
        raise ValueError(f"{name} must be a [B, C, H, W] tensor, got "
                         f"{type(x).__name__ if not isinstance(x, Tensor) else tuple(x.shape)}")
    if x.dtype not in SELECT_DTYPES:
        raise ValueError(f"{name} must be float32, bfloat16 or float16, got {x.dtype}")


def inverse_norms(x: Tensor) -> Tensor:
    """``1 / max(‖x[b, :, h, w]‖, 1e-12)`` as ``[B, H·W]`` float32 (``F.normalize``'s eps)."""
    norms = torch.linalg.vector_norm(x.float(), dim=1).flatten(1)
    return 1.0 / norms.clamp_min(1e-12)


def select_2d(x: Tensor, k: int, padding: int, similarity: str = "cosine",
              scale: float | None = None, precision: str | None = None) -> Tensor:
    """The ``k`` best positions of the zero-padded map for every pixel, its own position
    excluded (the self-first layer puts it first): ``[B, C, H, W] -> [B, H·W, k]`` int64
    indices into the ``(H + 2p)(W + 2p)`` padded raster, best first, ties to the lower
    position (a stable descending sort of the scores). ``x`` is read in place, in any
    memory format (channels-last reads whole pixel rows).

    ``similarity``: ``"cosine"`` or ``"dot"`` (scaled by ``scale``, default ``1/√C``).
    Scores accumulate in float32 from bf16/fp16 products, or TF32 for float32 inputs
    (``precision="ieee"``: IEEE float32 products); a list can differ from the float32 ranking
    only where two scores are within that rounding of each other (a near-tie). No autograd.
    """
    _check_image("x", x)
    if similarity not in ("cosine", "dot"):
        raise ValueError(f"similarity must be 'cosine' or 'dot', got {similarity!r}")
    batch, channels, height, width = x.shape
    positions = (height + 2 * padding) * (width + 2 * padding)
    if not isinstance(k, int) or not 1 <= k <= min(MAX_SELECT_K, positions - 1):
        raise ValueError(f"k must be an int in [1, min({MAX_SELECT_K}, positions - 1 = "
                         f"{positions - 1})], got {k!r}")
    _require(x.device)
    out = torch.empty(batch, height * width, k, dtype=torch.long, device=x.device)
    if batch == 0:
        return out
    x = x.detach()
    inv = inverse_norms(x) if similarity == "cosine" else out  # any pointer for dot
    scale = 1.0 / channels ** 0.5 if scale is None else float(scale)
    grid = (triton.cdiv(height * width, BLOCK_Q), batch)
    _select_2d_kernel[grid](
        x, inv, out, height, width, padding, channels, k, scale, *x.stride(),
        COSINE=similarity == "cosine", KP=max(2, triton.next_power_of_2(k)), BLOCK_Q=BLOCK_Q,
        BLOCK_N=BLOCK_N, BLOCK_C=_block(channels),
        PRECISION=_dot_precision(x.dtype, precision), UPCAST=_interpreted(), num_warps=4)
    return out


def inverse_index(index: Tensor, num_keys: int) -> tuple[Tensor, Tensor]:
    """CSR of ``index [M, k]`` (flat keys in ``0..num_keys-1``): ``order`` lists the flat
    entries ``m·k + j`` sorted by key (stable: ascending within a key), ``rowptr
    [num_keys + 1]`` delimits each key's entries."""
    flat = index.reshape(-1)
    sorted_keys, order = torch.sort(flat, stable=True)
    rowptr = torch.searchsorted(sorted_keys, torch.arange(num_keys + 1, device=flat.device,
                                                          dtype=flat.dtype))
    return order, rowptr


class GatherGemm(torch.autograd.Function):
    """``(x [B, C, H, W], index [B, H·W, k] into the padded raster, weight [O, C, k]) ->
    [B·H·W, O]``: the standard aggregation of the padded map's rows, in place."""

    @staticmethod
    def forward(ctx, x, index, weight, padding, precision):
        batch, channels, height, width = x.shape
        k = index.shape[-1]
        out_channels = weight.shape[0]
        rows = batch * height * width
        w = weight.to(x.dtype).permute(2, 1, 0).contiguous()  # (k, C, O)
        index = index.reshape(rows, k).contiguous()
        out = torch.empty(rows, out_channels, dtype=x.dtype, device=x.device)
        block_o = _block(out_channels, high=64)
        prec = _dot_precision(x.dtype, precision)
        if rows:
            grid = (triton.cdiv(rows, BLOCK_M), triton.cdiv(out_channels, block_o))
            _gather_gemm_kernel[grid](
                x, index, w, out, rows, height * width, height, width, padding, channels,
                out_channels, k, *x.stride(), BLOCK_M=BLOCK_M, BLOCK_C=_block(channels),
                BLOCK_O=block_o, PRECISION=prec, UPCAST=_interpreted())
        ctx.save_for_backward(x, index, weight)
        ctx.padding, ctx.prec = padding, prec
        return out

    @staticmethod
    def backward(ctx, grad_out):
        x, index, weight = ctx.saved_tensors
        batch, channels, height, width = x.shape
        rows, k = index.shape
        out_channels = weight.shape[0]
        p = ctx.padding
        grad_out = grad_out.to(x.dtype).contiguous()
        grad_x = grad_w = None
        geometry = (rows, height * width, height, width, p, channels)
        if ctx.needs_input_grad[2]:
            block_c, block_o = _block(channels), _block(out_channels, high=64)
            splits = max(1, min(64, rows // 4096))
            per_split = triton.cdiv(triton.cdiv(rows, splits), BLOCK_M) * BLOCK_M
            splits = triton.cdiv(rows, per_split)
            part = torch.empty(splits, k, channels, out_channels, dtype=torch.float32,
                               device=x.device)
            grid = (k * triton.cdiv(channels, block_c), triton.cdiv(out_channels, block_o),
                    splits)
            _gather_gemm_dw_kernel[grid](
                x, index, grad_out, part, *geometry, out_channels, k, per_split, *x.stride(),
                BLOCK_M=BLOCK_M, BLOCK_C=block_c, BLOCK_O=block_o, PRECISION=ctx.prec,
                UPCAST=_interpreted())
            grad_w = part.sum(0).permute(2, 1, 0).to(weight.dtype)  # (O, C, k)
        if ctx.needs_input_grad[0]:
            w = weight.to(x.dtype).permute(0, 2, 1).reshape(out_channels, k * channels)
            grad_rows = torch.matmul(grad_out, w)  # (M, k·C): each gathered row's gradient
            positions = (height + 2 * p) * (width + 2 * p)
            offsets = (torch.arange(rows, device=x.device) // (height * width)) * positions
            order, rowptr = inverse_index(index + offsets[:, None], batch * positions)
            grad_x = torch.empty_like(x)  # same memory format as x
            block_c = _block(channels, high=128)
            grid = (triton.cdiv(rows, BLOCK_P), triton.cdiv(channels, block_c))
            _scatter_rows_kernel[grid](
                order, rowptr, grad_rows, grad_x, rows, height * width, height, width, p,
                channels, *grad_x.stride(), BLOCK_P=BLOCK_P, BLOCK_C=block_c)
        return grad_x, None, grad_w, None, None


def gather_gemm(x: Tensor, index: Tensor, weight: Tensor, padding: int,
                precision: str | None = None) -> Tensor:
    """Standard ConvNN aggregation read straight from the image: ``[B, C, H, W]`` input
    (any memory format; the zero border implicit), ``index [B, H·W, k]`` into the padded
    raster, ``weight [O, C, k]`` (Conv1d layout) -> ``[B, H·W, O]`` in ``x``'s dtype.
    Products on tensor cores (bf16/fp16, or TF32 for float32; ``precision="ieee"`` for IEEE
    float32), float32 accumulation; a backward without atomics (see the module)."""
    _check_image("x", x)
    if index.dim() != 3 or index.shape[:2] != (x.shape[0], x.shape[2] * x.shape[3]):
        raise ValueError(f"index must be [B, H·W, k] = [{x.shape[0]}, "
                         f"{x.shape[2] * x.shape[3]}, k], got {tuple(index.shape)}")
    if weight.dim() != 3 or weight.shape[1:] != (x.shape[1], index.shape[2]):
        raise ValueError(f"weight must be [O, C={x.shape[1]}, k={index.shape[2]}], got "
                         f"{tuple(weight.shape)}")
    _require(x.device)
    out = GatherGemm.apply(x, index, weight, padding, precision)
    return out.view(x.shape[0], x.shape[2] * x.shape[3], weight.shape[0])


def compile_variants(card) -> list:
    """The launch configurations of this module's kernels at the paper's shapes (VGG-11 on
    CIFAR: 3 to 512 channels, k = 9 with self first) on ``card`` (see
    :mod:`convnn.bench.compile`)."""
    from .kernels import PAPER_CHANNELS, KernelVariant, _float_dtypes, pointer_type

    geometry = {"H": "i32", "W": "i32", "P": "i32", "C": "i32"}
    strides = {"stride_b": "i32", "stride_c": "i32", "stride_h": "i32", "stride_w": "i32"}
    channel_blocks = sorted({_block(c) for c in (3, *PAPER_CHANNELS)})
    out_block = _block(64, high=64)
    variants = []
    for dtype in _float_dtypes(card):
        ptr = pointer_type(dtype)
        # the layer passes precision=None: TF32 products for float32, 16-bit ones otherwise
        for precision in ("tf32",):
            tag = ptr[1:]
            for block_c in channel_blocks:
                for cosine in (True, False):
                    variants.append(KernelVariant(
                        _select_2d_kernel, f"select_2d {tag} C-block={block_c} "
                        f"{'cosine' if cosine else 'dot'} k=8",
                        {"x_ptr": ptr, "inv_ptr": "*fp32", "idx_ptr": "*i64", **geometry,
                         "K": "i32", "scale": "fp32", **strides},
                        {"COSINE": cosine, "KP": 8, "BLOCK_Q": BLOCK_Q, "BLOCK_N": BLOCK_N,
                         "BLOCK_C": block_c, "PRECISION": precision, "UPCAST": False},
                        hot=True))
                common = {"x_ptr": ptr, "idx_ptr": "*i64", "M": "i32", "HW": "i32", **geometry}
                variants.append(KernelVariant(
                    _gather_gemm_kernel, f"gather_gemm {tag} C-block={block_c}",
                    {**common, "w_ptr": ptr, "out_ptr": ptr, "O": "i32", "K": "i32", **strides},
                    {"BLOCK_M": BLOCK_M, "BLOCK_C": block_c, "BLOCK_O": out_block,
                     "PRECISION": precision, "UPCAST": False}, hot=True))
                variants.append(KernelVariant(
                    _gather_gemm_dw_kernel, f"gather_gemm dW {tag} C-block={block_c}",
                    {**common, "g_ptr": ptr, "part_ptr": "*fp32", "O": "i32", "K": "i32",
                     "rows_per_split": "i32", **strides},
                    {"BLOCK_M": BLOCK_M, "BLOCK_C": block_c, "BLOCK_O": out_block,
                     "PRECISION": precision, "UPCAST": False}))
        for block_c in sorted({_block(c, high=128) for c in (3, *PAPER_CHANNELS)}):
            variants.append(KernelVariant(
                _scatter_rows_kernel, f"gather_gemm dx rows {ptr[1:]} C-block={block_c}",
                {"order_ptr": "*i64", "rowptr_ptr": "*i64", "rows_ptr": ptr, "dx_ptr": ptr,
                 "total": "i32", "HW": "i32", **geometry, **strides},
                {"BLOCK_P": BLOCK_P, "BLOCK_C": block_c}))
    return variants


# --- What the fused 2-D path can run: the predicate of convnn.ops.choose_backend -------------

FUSED_2D_OPTIONS = {"sampling": "all", "selection": "features", "weighting": "ones",
                    "aggregation": "standard", "self_first": True, "sort_by_position": False}
"""The option set of the fused 2-D path: the paper's CNN layer (all candidates, feature
selection, ρ = ones, standard aggregation, self first, rank order)."""
FUSED_2D_SIMILARITIES = ("cosine", "dot")


def can_run_conv2d_fused(*, k: int | None = None, similarity=None,
                         options: dict | None = None, dtype: torch.dtype | None = None,
                         device: torch.device | str | None = None) -> str | None:
    """Step ``"conv2d_fused"`` (:func:`select_2d` + :func:`gather_gemm`): a
    :class:`convnn.layers.ConvNN2d` with ``k`` neighbours (self included) by ``similarity``
    (an entry of ``convnn.ops.SIMILARITIES``) on an input of ``dtype``; ``options``: the layer's values of :data:`FUSED_2D_OPTIONS`."""
    from ._checks import check_int
    from .kernels import card_refusal

    check_int("k", k, minimum=1)
    if options is None:
        raise ValueError("step='conv2d_fused' needs options (the layer's "
                         f"{', '.join(FUSED_2D_OPTIONS)})")
    for name, supported in FUSED_2D_OPTIONS.items():
        if options.get(name) != supported:
            return (f"{name}={options.get(name)!r} (the fused 2-D path takes "
                    f"{name}={supported!r})")
    name = getattr(similarity, "name", None)
    if name not in FUSED_2D_SIMILARITIES:
        return f"similarity={name!r} (the fused 2-D path takes cosine or dot)"
    if not 2 <= k <= MAX_SELECT_K + 1:
        return f"k={k} (the fused 2-D selection takes 2..{MAX_SELECT_K + 1})"
    if dtype is not None and dtype not in SELECT_DTYPES:
        return f"{dtype} input (the fused 2-D path takes float32, bfloat16 and float16)"
    return card_refusal(device, (dtype,))
