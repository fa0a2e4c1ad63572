"""Triton kernels of :class:`convnn.layers.ConvNN2d` on images: a fused 2-D selection and the
standard aggregation as a gather-GEMM, both reading the input in place (NHWC or NCHW strides,
the zero border implicit: no padded copy, no ``[B, H·W, k, C]`` gathered tensor, no score
matrix).

**Fused 2-D selection** (:func:`select_2d`): one program per tile of :data:`SELECT_BLOCK_Q`
query pixels of one image scores them against every position of the zero-padded map (1,156
at 32×32 with padding 1), :data:`SELECT_BLOCK_N` positions at a time, with ``tl.dot`` on
tensor cores under the precision contract of :mod:`convnn.ops` (float32 inputs: bf16×3;
bf16/fp16 inputs: one product of the 16-bit values, exact in float32; float32 accumulation;
cards older than sm_80, without bf16: IEEE float32 products). A border position is a zero
vector: its score is exactly 0 (cosine and dot), as in the padded PyTorch path. The query's
own position is masked (self-first). One pass over the row: each score becomes an int64
ranking key, its order-preserving float bits above ``2^31 - 1 - position``, so keys are
distinct and a larger key is a better score or, of equal scores, the lower position (a
stable descending sort; NaN and +inf rank as -inf, last, as in
:func:`convnn.ops.select_neighbours`). The running list holds each row's best k keys; a tile
is a threshold select against it: only keys above a row's current worst can enter, in as
many passes (one max over the tile, one min over the list) as the most such keys in one
row, so after the first tiles most tiles cost one comparison. The k keys are ordered once at
the end. (``tl.topk`` and a bitonic merge would be branch-free, but Triton's interpreter
runs their ``xor_sum`` element by element in Python: about 12 times slower checks.)

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

from .kernels import KernelVariant, VariantSet, available, card_arch, inverse_index, pointer_type

try:  # Triton ships with CUDA builds of PyTorch; CPU-only installs may lack it.
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the installation
    triton = None
    tl = None

MAX_SELECT_K = 16
"""Largest number of neighbours searched (k - 1 with self-first) the fused selection takes."""
SELECT_BLOCK_Q = 32  # query pixels per selection program
SELECT_BLOCK_N = 64  # padded positions per score tile
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
    from .kernels import _insert_ranked, _rank_keys, _selection_dot, _start_ranked, _store_ranked

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
                          BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr, DOT: tl.constexpr,
                          AS_F32: tl.constexpr):
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
        NONE: tl.constexpr = 2147483647
        top = _start_ranked(BLOCK_Q, KP)  # the best KP ranking keys of every row so far
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
                acc = _selection_dot(q, kt, acc, DOT, AS_F32)
            if COSINE:
                k_pix = (cols // Wp - P) * W + (cols % Wp - P)
                inv_k = tl.load(inv_ptr + b * HW + k_pix, mask=col_ok & inside, other=0.0)
                s = acc * inv_q[:, None] * inv_k[None, :]
            else:
                s = acc * scale
            # the own position and the columns past the map rank last (-inf; past the map:
            # the highest columns, so never before a real one)
            s = tl.where((cols[None, :] == q_pos[:, None]) | ~col_ok[None, :], float("-inf"), s)
            top = _insert_ranked(top, _rank_keys(s, cols[None, :], NONE))
        _store_ranked(idx_ptr + (b * HW + rows.to(tl.int64)) * K, top, row_ok, K, NONE)

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


def _interpreted() -> bool:
    import os

    return os.environ.get("TRITON_INTERPRET") == "1"


def select_2d_config(dtype: torch.dtype, channels: int, k: int, similarity: str, arch: int,
                     precision: str | None = None) -> dict:
    """The launch configuration of :func:`select_2d` (its constexprs and ``num_warps``, without
    the interpreter's ``AS_F32``) for ``k`` neighbours searched on an ``sm_<arch>`` card. The
    launcher and the compile gate (:func:`compile_variants`) both build it here."""
    if precision not in (None, "ieee"):
        raise ValueError(f"precision must be None (the contract) or 'ieee', got {precision!r}")
    if precision == "ieee" or arch < 80:  # no bf16 tensor cores: IEEE float32 products
        dot, block_c, warps, stages = "ieee", 32, 4, 3
    elif dtype == torch.float32:  # bf16x3: six operand tiles, so narrower and unpipelined
        dot, block_c, warps, stages = "split", 32, 4, 1
    else:  # one bf16 / fp16 product
        dot, block_c, warps, stages = "native", 64, 8, 3
    # budgets measured by the compile gate at C = 64 and k = 9 (module docstring)
    return {"COSINE": similarity == "cosine", "KP": max(2, triton.next_power_of_2(k)),
            "BLOCK_Q": SELECT_BLOCK_Q, "BLOCK_N": SELECT_BLOCK_N,
            "BLOCK_C": _block(channels, high=block_c), "DOT": dot, "num_warps": warps,
            "num_stages": stages}


def gather_gemm_config(dtype: torch.dtype, channels: int, out_channels: int, arch: int,
                       precision: str | None = None) -> dict:
    """The launch configuration of the gather-GEMM forward and ``dW`` kernels on an
    ``sm_<arch>`` card (the launcher and :func:`compile_variants` both build it here):
    float32 products in TF32 on tensor cores (``precision="ieee"``, or a card older than
    sm_80: IEEE float32), 16-bit ones as they are; float32 accumulation."""
    if precision not in (None, "tf32", "ieee"):
        raise ValueError(f"precision must be 'tf32', 'ieee' or None, got {precision!r}")
    if arch < 80:
        prec, block_c, warps = "ieee", 32, 4
    elif dtype == torch.float32:
        prec, block_c, warps = precision or "tf32", 32, 8
    else:
        prec, block_c, warps = "tf32", 64, 8  # ignored for 16-bit operands
    return {"BLOCK_M": BLOCK_M, "BLOCK_C": _block(channels, high=block_c),
            "BLOCK_O": _block(out_channels, high=64), "PRECISION": prec, "num_warps": warps,
            "num_stages": 3}


def scatter_rows_config(channels: int) -> dict:
    """The launch configuration of the ``dx`` kernel (a sum of gradient rows, no products)."""
    return {"BLOCK_P": BLOCK_P, "BLOCK_C": _block(channels, high=128), "num_warps": 4}


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
    Scores follow the precision contract of :mod:`convnn.ops` (bf16×3 for float32 inputs, one
    exact 16-bit product for bf16/fp16 ones, float32 sums; ``precision="ieee"`` or a card
    without bf16: IEEE float32 products): a list can differ from the float32 ranking only on a
    near-tie (:func:`convnn.ops.selection_score_bound`). No autograd.
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
    config = select_2d_config(x.dtype, channels, k, similarity, card_arch(x.device), precision)
    grid = (triton.cdiv(height * width, config["BLOCK_Q"]), batch)
    _select_2d_kernel[grid](x, inv, out, height, width, padding, channels, k, scale, *x.stride(),
                            AS_F32=_interpreted(), **config)
    return out


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
        config = gather_gemm_config(x.dtype, channels, out_channels, card_arch(x.device),
                                    precision)
        if _interpreted():  # the interpreter computes every dot in float32 whatever it is told
            config["PRECISION"] = "ieee"
        if rows:
            grid = (triton.cdiv(rows, BLOCK_M), triton.cdiv(out_channels, config["BLOCK_O"]))
            _gather_gemm_kernel[grid](
                x, index, w, out, rows, height * width, height, width, padding, channels,
                out_channels, k, *x.stride(), UPCAST=_interpreted(), **config)
        ctx.save_for_backward(x, index, weight)
        ctx.padding, ctx.config = padding, config
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
            config = ctx.config
            block_c, block_o = config["BLOCK_C"], config["BLOCK_O"]
            splits = max(1, min(64, rows // 4096))
            per_split = triton.cdiv(triton.cdiv(rows, splits), BLOCK_M) * BLOCK_M
            splits = triton.cdiv(rows, per_split)
            part = torch.empty(splits, k, channels, out_channels, dtype=torch.float32,
                               device=x.device)
            grid = (k * triton.cdiv(channels, block_c), triton.cdiv(out_channels, block_o),
                    splits)
            _gather_gemm_dw_kernel[grid](
                x, index, grad_out, part, *geometry, out_channels, k, per_split, *x.stride(),
                UPCAST=_interpreted(), **config)
            grad_w = part.sum(0).permute(2, 1, 0).to(weight.dtype)  # (O, C, k)
        if ctx.needs_input_grad[0]:
            w = weight.to(x.dtype).permute(0, 2, 1).reshape(out_channels, k * channels)
            grad_rows = torch.matmul(grad_out, w)  # (M, k·C): each gathered row's gradient
            positions = (height + 2 * p) * (width + 2 * p)
            offsets = (torch.arange(rows, device=x.device) // (height * width)) * positions
            order, rowptr = inverse_index(index + offsets[:, None], batch * positions)
            grad_x = torch.empty_like(x)  # same memory format as x
            config = scatter_rows_config(channels)
            grid = (triton.cdiv(rows, BLOCK_P), triton.cdiv(channels, config["BLOCK_C"]))
            _scatter_rows_kernel[grid](
                order, rowptr, grad_rows, grad_x, rows, height * width, height, width, p,
                channels, *grad_x.stride(), **config)
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


PAPER_LAYERS = ((3, 64, 32), (64, 128, 16), (128, 256, 8), (256, 256, 8), (256, 512, 4),
                (512, 512, 4), (512, 512, 2), (512, 512, 2))
"""The 3×3 layers of VGG-11 (configuration A) on CIFAR, ``(in channels, out channels, map
side)``: the ConvNN2d layers of the paper's networks (``ratio=1``; ``ratio=0.5`` gives the
ConvNN branch half the out channels). The paper's k is 9, cosine similarity, padding 1."""
PAPER_K = 9


def _paper_launches(card) -> list[tuple[torch.dtype, int, int]]:
    """``(dtype, in channels, out channels)`` of every ConvNN2d launch of the paper's networks
    on ``card``: float32 (no AMP, the paper's precision) at every layer; under AMP (bf16, or
    fp16 on a card without bf16) every layer but the first, which reads the float32 image."""
    half = torch.bfloat16 if card.bf16 else torch.float16
    launches = []
    for i, (cin, cout, _) in enumerate(PAPER_LAYERS):
        for dtype in (torch.float32,) if i == 0 else (torch.float32, half):
            for out in (cout // 2, cout):
                launches.append((dtype, cin, out))
    return launches


def compile_variants(card) -> list[KernelVariant]:
    """Every launch configuration of this module's kernels that the paper's networks reach on
    ``card`` (``card.arch``: 75, 80, 89 or 90; ``card.bf16``), built by the launchers' own
    configuration helpers, one variant per distinct configuration (named by the first layer
    that reaches it; cosine, the paper's, and dot similarity). The selection and the
    gather-GEMM forward are hot (spills fail the gate)."""
    geometry = {"H": "i32", "W": "i32", "P": "i32", "C": "i32", "K": "i32"}
    strides = {"stride_b": "i32", "stride_c": "i32", "stride_h": "i32", "stride_w": "i32"}
    variants = VariantSet()
    add = variants.add

    for dtype, cin, cout in _paper_launches(card):
        x = pointer_type(dtype)
        tag = f"{str(dtype).removeprefix('torch.')} C={cin}"
        for similarity in ("cosine", "dot"):
            sel = select_2d_config(dtype, cin, PAPER_K - 1, similarity, card.arch)
            add(_select_2d_kernel, f"select_2d {tag} {similarity} k={PAPER_K}",
                {"x_ptr": x, "inv_ptr": "*fp32", "idx_ptr": "*i64", **geometry,
                 "scale": "fp32", **strides}, {**sel, "AS_F32": False}, True)
        gemm = {**gather_gemm_config(dtype, cin, cout, card.arch), "UPCAST": False}
        rows = {"M": "i32", "HW": "i32", "H": "i32", "W": "i32", "P": "i32", "C": "i32",
                "O": "i32", "K": "i32"}
        add(_gather_gemm_kernel, f"gather_gemm {tag} O={cout}",
            {"x_ptr": x, "idx_ptr": "*i64", "w_ptr": x, "out_ptr": x, **rows, **strides},
            gemm, True)
        add(_gather_gemm_dw_kernel, f"gather_gemm_dw {tag} O={cout}",
            {"x_ptr": x, "idx_ptr": "*i64", "g_ptr": x, "part_ptr": "*fp32", **rows,
             "rows_per_split": "i32", **strides}, gemm, False)
        add(_scatter_rows_kernel, f"scatter_rows {tag}",
            {"order_ptr": "*i64", "rowptr_ptr": "*i64", "rows_ptr": x, "dx_ptr": x,
             "total": "i32", "HW": "i32", "H": "i32", "W": "i32", "P": "i32", "C": "i32",
             **strides}, scatter_rows_config(cin), False)
    return variants.listed()


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
