"""Triton kernels: row top-k for neighbour selection, and depthwise gather-aggregate.

**Row top-k** (:func:`row_topk`): each row of a score matrix (up to :data:`MAX_TOPK_WIDTH`
wide) stays in registers and k passes of max/argmax pick the neighbours, the lowest column
winning ties, so the result is the first k columns of a stable descending sort. It replaces
``torch.topk`` in the fast selection path for ``k <= MAX_TOPK_K``.

**Fused selection** (:func:`fused_topk`): the same top-k, but the scores are never written:
one program per tile of query rows of one batch·head row computes the score tiles on tensor
cores under the precision contract of :mod:`convnn.ops` (bf16×3, float32 accumulation; IEEE
float32 on cards without bf16) key tile by key tile, masks the query's own column, and keeps
the best k (k <= :data:`MAX_FUSED_TOPK_K`) as int64 ranking keys (score bits above the
reversed column: distinct, ties to the lower column) in registers, merged tile by tile by a
threshold select (as :mod:`convnn.kernels_conv2d`'s selection). The caller
recomputes the k selected scores (with autograd) from the gathered keys. Dot and cosine only;
``backend="triton"`` only (auto leaves it off): unmeasured on a GPU.

**Gather-aggregate** (:func:`depthwise_gather_aggregate`):
``out[m, c] = Σ_j ρ[m, j] · w[j, c] · V[I[m, j], c]``, tile by tile in registers; the
``[M, k, C]`` gathered tensor is never written, in the forward or the backward pass. The
backward pass uses no atomics, so its gradients are bitwise reproducible:

- dρ and dw: one program per row tile loops over the ranks and channel tiles; dρ is summed
  in registers, dw is written as one partial sum per row tile and reduced by ``sum(0)``;
- dV: the indices are sorted into an inverse index (CSR: for every value row, the flat
  positions ``m·k + j`` that selected it) and one program per value row sums its entries.

Bytes moved per ConvNN attention layer, forward + backward, ViT-Tiny shapes (B = 256, T = 197,
D = 192, k = 9, bf16 values; an estimate from tensor sizes, to be checked on a GPU): the
PyTorch fast path writes and reads the gathered ``[B·T, k, D]`` tensor (87 M elements, 174 MB)
about ten times and issues 87 M float32 atomics, about 4 GB in all; these kernels read the
values (19 MB, each batch element's rows stay in L2), the gradient (19 MB), the indices and ρ
(~16 MB, twice), write the output, dρ, dw partials and dV (~80 MB), and sort the indices
(~0.1 GB): about 0.35 GB. The row top-k reads the ``[B·h, T, T]`` float32 scores once
(119 MB at 3 heads) where ``torch.topk``'s radix select makes several passes; the fused
selection writes no scores at all: it reads the float32 queries and keys (39 MB each at
D = 192), the keys again per tile of 32 queries mostly from L2, and writes 3.6 MB of indices.

**Fused attention core** (:func:`fused_attention`, in :mod:`convnn.kernels_attention`): the
per-head core of ConvNN attention (all or sampled candidates, dot similarity, softmax ρ,
depthwise weights) in one forward kernel on tensor cores and three backward kernels in
O(T·k·d), no atomics (an inverse index by a stable counting sort in one kernel). Step
``"fused_attention"``: :class:`convnn.layers.ConvNNAttention` under ``backend="triton"`` only; auto leaves it off, unmeasured on a GPU.

The kernels run on CUDA tensors, or anywhere under ``TRITON_INTERPRET=1`` (how the tests check
them on a CPU). They run where :func:`convnn.ops.choose_backend` picks ``"triton"``
(``backend="triton"``, ``with convnn.ops.default_backend("triton")`` or
``CONVNN_BACKEND=triton``); the default stays the PyTorch fast path until a GPU measurement
says otherwise. This module imports nothing of the package: :mod:`convnn.ops` calls it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import Tensor

try:  # Triton ships with CUDA builds of PyTorch; CPU-only installs may lack it.
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the installation
    triton = None
    tl = None

MAX_TOPK_WIDTH = 2048
"""Widest score row :func:`row_topk` takes (a 34×34 padded CIFAR map has 1156 positions)."""
MAX_TOPK_K = 32
"""Largest k :func:`row_topk` takes (it makes k passes over the row)."""


@dataclass(frozen=True)
class KernelVariant:
    """One launch configuration of a Triton kernel, as the compile gate
    (``python -m convnn bench --compile``) builds it ahead of time for a card.

    Each kernel module lists the variants its launchers can reach at the paper's shapes in
    ``compile_variants(card)`` (``card.arch``: 75, 80, 89 or 90; ``card.bf16``: whether the
    card runs bfloat16), built from the same launch-configuration helper as its launchers.
    """

    kernel: object
    """The ``@triton.jit`` function."""
    name: str
    """What the variant stands for, e.g. ``"attention_forward all bf16 T=197 d=192 k=9"``."""
    signature: dict
    """Every runtime argument -> its Triton type (``"*bf16"``, ``"*fp32"``, ``"i32"``, ...)."""
    constexprs: dict
    """Every ``tl.constexpr`` argument -> its value."""
    num_warps: int = 4
    num_stages: int = 3
    hot: bool = False
    """A hot forward kernel at the paper's shapes: spilled registers fail the gate."""


class VariantSet:
    """The distinct :class:`KernelVariant` of a module's launch configurations, in the order
    first added (two launches with the same kernel, types and configuration are one)."""

    def __init__(self) -> None:
        self._found: dict = {}

    def add(self, kernel, name: str, signature: dict, config: dict, hot: bool) -> None:
        """``config``: the launch configuration's constexprs with ``num_warps`` (and
        ``num_stages``, default 3)."""
        config = dict(config)
        warps, stages = config.pop("num_warps"), config.pop("num_stages", 3)
        key = (kernel.__name__, tuple(sorted(signature.items())), tuple(sorted(config.items())),
               warps, stages)
        if key not in self._found:
            self._found[key] = KernelVariant(kernel, name, signature, config, warps, stages, hot)

    def listed(self) -> list[KernelVariant]:
        return list(self._found.values())


def pointer_type(dtype: torch.dtype) -> str:
    """The Triton signature type of a pointer to ``dtype`` (``torch.bfloat16`` -> ``"*bf16"``)."""
    return "*" + {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16",
                  torch.int32: "i32", torch.int64: "i64"}[dtype]


def card_arch(device: torch.device) -> int:
    """The compute capability of the card that runs the kernels as ``10·major + minor`` (80 for
    an A100); the interpreter stands for an sm_90 card (the launch configuration it checks)."""
    if device.type != "cuda":
        return 90
    major, minor = torch.cuda.get_device_capability(device)
    return 10 * major + minor


def available(device: torch.device | str | None = None) -> bool:
    """True when the Triton kernels can run on ``device`` (CUDA, or the interpreter)."""
    if triton is None:
        return False
    if os.environ.get("TRITON_INTERPRET") == "1":
        return True
    return device is not None and torch.device(device).type == "cuda"


def _require(device: torch.device) -> None:
    if not available(device):
        raise RuntimeError("the Triton kernels need a CUDA tensor (or TRITON_INTERPRET=1) "
                           f"and an installed triton; got a {device.type} tensor, "
                           f"triton {'missing' if triton is None else 'installed'}")


if triton is not None:

    @triton.jit
    def _row_topk_kernel(s_ptr, idx_ptr, R, N, stride_r, K,
                         BLOCK_R: tl.constexpr, BLOCK_N: tl.constexpr):
        rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
        cols = tl.arange(0, BLOCK_N)
        row_ok = rows < R
        ok = row_ok[:, None] & (cols[None, :] < N)
        s = tl.load(s_ptr + rows.to(tl.int64)[:, None] * stride_r + cols[None, :], mask=ok,
                    other=float("-inf"))
        free = ok  # columns not taken yet
        for j in range(K):
            live = tl.where(free, s, float("-inf"))
            best = tl.max(live, axis=1)
            hit = free & (live == best[:, None])  # -inf == -inf: masked columns still count
            pos = tl.min(tl.where(hit, cols[None, :], BLOCK_N), axis=1)  # lowest column wins
            tl.store(idx_ptr + rows.to(tl.int64) * K + j, pos.to(tl.int64), mask=row_ok)
            free = free & (cols[None, :] != pos[:, None])

    @triton.jit
    def _product(a, b, acc, AS_F32: tl.constexpr):
        # acc + a @ b of two 16-bit tiles, float32 accumulation. AS_F32 (the interpreter, whose
        # 16-bit tl.dot is wrong): the same values multiplied as float32, which is exact (the
        # product of two bf16 or two fp16 values fits a float32).
        if AS_F32:
            return tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
        return tl.dot(a, b, acc)

    @triton.jit
    def _selection_dot(a, b, acc, DOT: tl.constexpr, AS_F32: tl.constexpr):
        # acc + a @ b under the precision contract of selection (convnn.ops): DOT = "split":
        # bf16x3 (hi = bf16(x), lo = bf16(x - hi); hi·hi + hi·lo + lo·hi, float32 sums);
        # "native": one product of the 16-bit operands as they are (bf16 or fp16: exact
        # products); "ieee": IEEE float32 products (no tensor cores: cards without bf16).
        if DOT == "ieee":
            return tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
        if DOT == "native":
            return _product(a, b, acc, AS_F32)
        a_hi = a.to(tl.bfloat16)
        b_hi = b.to(tl.bfloat16)
        a_lo = (a.to(tl.float32) - a_hi.to(tl.float32)).to(tl.bfloat16)
        b_lo = (b.to(tl.float32) - b_hi.to(tl.float32)).to(tl.bfloat16)
        acc = _product(a_hi, b_hi, acc, AS_F32)
        acc = _product(a_hi, b_lo, acc, AS_F32)
        return _product(a_lo, b_hi, acc, AS_F32)

    @triton.jit
    def _rank_keys(s, cols, NONE: tl.constexpr):
        # int64 ranking keys of a [rows, cols] score tile, larger = better: the score's
        # order-preserving bits above (NONE - column), so equal scores rank the lower column
        # first and every key of a row is distinct. NaN and +inf rank as -inf (last), -0.0 as
        # +0.0 (equal scores, as float comparison has them).
        s = tl.where(s < float("inf"), s, float("-inf"))
        s = tl.where(s == 0.0, 0.0, s)
        bits = s.to(tl.int32, bitcast=True)
        ordered = bits ^ ((bits >> 31) & 0x7FFFFFFF)
        return (ordered.to(tl.int64) << 32) | (NONE - cols).to(tl.int64)

    @triton.jit
    def _key_columns(keys, NONE: tl.constexpr):
        # the columns of ranking keys (inverse of _rank_keys' low half)
        return NONE - (keys & 0xFFFFFFFF).to(tl.int32)

    @triton.jit
    def _start_ranked(BLOCK_Q: tl.constexpr, KP: tl.constexpr):
        # the running list before any tile: KP distinct keys below every real one (-inf at any
        # column is about -2^63 + 2^53), so each insertion replaces exactly one of them
        slots = tl.arange(0, KP).to(tl.int64)
        return tl.zeros((BLOCK_Q, KP), tl.int64) + (-9223372036854775807 + slots)[None, :]

    @triton.jit
    def _insert_ranked(top, keys):
        # top [rows, KP] (the best KP keys so far, unsorted) ∪ keys [rows, n] -> the best KP.
        # A threshold select: only keys above a row's current worst can enter, and it takes
        # as many passes as the most such keys in one row (at most KP; 0 for most tiles late
        # in a row), each moving a row's best remaining key into the slot of its worst.
        # Keys are distinct within a row, so every comparison is exact: no ties.
        KP: tl.constexpr = top.shape[1]
        live = keys > tl.min(top, axis=1)[:, None]
        need = tl.max(tl.minimum(tl.sum(live.to(tl.int32), axis=1), KP), axis=0)
        for _ in range(need):
            best = tl.max(tl.where(live, keys, -9223372036854775807), axis=1)
            worst = tl.min(top, axis=1)
            top = tl.where((best > worst)[:, None] & (top == worst[:, None]), best[:, None], top)
            live = live & (keys != best[:, None])
        return top

    @triton.jit
    def _store_ranked(out_ptr, top, row_ok, K, NONE: tl.constexpr):
        # the columns of the best K keys, best first: out_ptr [rows] points at each row's K
        for j in range(K):
            best = tl.max(top, axis=1)
            tl.store(out_ptr + j, _key_columns(best, NONE).to(tl.int64), mask=row_ok)
            top = tl.where(top == best[:, None], -9223372036854775807, top)

    @triton.jit
    def _contract_score_tile(q_base, k_base, stride_kn, rows, row_ok, cols, col_ok, D,
                             scale, BLOCK_Q: tl.constexpr, BLOCK_N: tl.constexpr,
                             BLOCK_D: tl.constexpr, DOT: tl.constexpr, AS_F32: tl.constexpr):
        # (q·k) · scale of BLOCK_Q query rows against BLOCK_N key rows under the precision
        # contract (_selection_dot); q_base points at the query rows, k_base at key row 0.
        acc = tl.zeros((BLOCK_Q, BLOCK_N), dtype=tl.float32)
        for d0 in range(0, D, BLOCK_D):
            dims = d0 + tl.arange(0, BLOCK_D)
            d_ok = dims < D
            q = tl.load(q_base + dims[None, :], mask=row_ok[:, None] & d_ok[None, :],
                        other=0.0)
            kt = tl.load(k_base + cols.to(tl.int64)[None, :] * stride_kn + dims[:, None],
                         mask=d_ok[:, None] & col_ok[None, :], other=0.0)
            acc = _selection_dot(q, kt, acc, DOT, AS_F32)
        return acc * scale

    @triton.jit
    def _fused_topk_kernel(q_ptr, k_ptr, qpos_ptr, cpos_ptr, idx_ptr, n, m, D, K, scale,
                           stride_qb, stride_qn, stride_kb, stride_kn,
                           SELF_MASK: tl.constexpr, KP: tl.constexpr, BLOCK_Q: tl.constexpr,
                           BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, DOT: tl.constexpr,
                           AS_F32: tl.constexpr):
        # One program: BLOCK_Q query rows of one batch·head row b against all m keys of b,
        # BLOCK_N keys at a time; the best KP ranking keys of every row stay in registers.
        b = tl.program_id(1).to(tl.int64)
        rows = tl.program_id(0) * BLOCK_Q + tl.arange(0, BLOCK_Q)
        row_ok = rows < n
        NONE: tl.constexpr = 2147483647
        top = _start_ranked(BLOCK_Q, KP)
        qp = rows
        if SELF_MASK:
            qp = tl.load(qpos_ptr + rows, mask=row_ok, other=-1)
        q_base = q_ptr + b * stride_qb + rows.to(tl.int64)[:, None] * stride_qn
        for n0 in range(0, m, BLOCK_N):
            cols = n0 + tl.arange(0, BLOCK_N)
            col_ok = cols < m
            s = _contract_score_tile(q_base, k_ptr + b * stride_kb, stride_kn, rows, row_ok,
                                     cols, col_ok, D, scale, BLOCK_Q, BLOCK_N, BLOCK_D, DOT,
                                     AS_F32)
            if SELF_MASK:  # the query's own column (a candidate at the query's position)
                cp = tl.load(cpos_ptr + cols, mask=col_ok, other=-2)
                s = tl.where(cp[None, :] == qp[:, None], float("-inf"), s)
            # columns past m rank last, after every real column (k <= m: never taken)
            keys = _rank_keys(tl.where(col_ok[None, :], s, float("-inf")), cols[None, :], NONE)
            top = _insert_ranked(top, keys)
        _store_ranked(idx_ptr + (b * n + rows.to(tl.int64)) * K, top, row_ok, K, NONE)

    @triton.jit
    def _forward_kernel(v_ptr, idx_ptr, rho_ptr, w_ptr, out_ptr, M, C, K,
                        HAS_RHO: tl.constexpr, ACC: tl.constexpr, BLOCK_M: tl.constexpr,
                        BLOCK_C: tl.constexpr):
        rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
        cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
        row_ok = rows < M
        col_ok = cols < C
        tile_ok = row_ok[:, None] & col_ok[None, :]
        rows64 = rows.to(tl.int64)
        acc = tl.zeros((BLOCK_M, BLOCK_C), dtype=ACC)
        for j in range(K):
            src = tl.load(idx_ptr + rows64 * K + j, mask=row_ok, other=0)
            v = tl.load(v_ptr + src[:, None] * C + cols[None, :], mask=tile_ok, other=0.0)
            w = tl.load(w_ptr + j * C + cols, mask=col_ok, other=0.0)
            term = v.to(ACC) * w.to(ACC)[None, :]
            if HAS_RHO:
                r = tl.load(rho_ptr + rows64 * K + j, mask=row_ok, other=0.0)
                term = term * r.to(ACC)[:, None]
            acc += term
        tl.store(out_ptr + rows64[:, None] * C + cols[None, :],
                 acc.to(out_ptr.dtype.element_ty), mask=tile_ok)

    @triton.jit
    def _backward_rows_kernel(v_ptr, idx_ptr, rho_ptr, w_ptr, g_ptr, grho_ptr, gw_part_ptr,
                              M, C, K, HAS_RHO: tl.constexpr, NEED_RHO: tl.constexpr,
                              NEED_W: tl.constexpr, ACC: tl.constexpr, BLOCK_M: tl.constexpr,
                              BLOCK_C: tl.constexpr):
        # dρ[m, j] = Σ_c g[m, c] w[j, c] V[I[m, j], c]   (a full sum, in registers)
        # dw[j, c] = Σ_m ρ[m, j] g[m, c] V[I[m, j], c]   (this row tile's partial sum)
        tile = tl.program_id(0)
        rows = tile * BLOCK_M + tl.arange(0, BLOCK_M)
        row_ok = rows < M
        rows64 = rows.to(tl.int64)
        for j in range(K):
            src = tl.load(idx_ptr + rows64 * K + j, mask=row_ok, other=0)
            r = tl.full((BLOCK_M,), 1.0, ACC)
            if HAS_RHO:
                r = tl.load(rho_ptr + rows64 * K + j, mask=row_ok, other=0.0).to(ACC)
            acc_rho = tl.zeros((BLOCK_M,), dtype=ACC)
            for c0 in range(0, C, BLOCK_C):
                cols = c0 + tl.arange(0, BLOCK_C)
                col_ok = cols < C
                tile_ok = row_ok[:, None] & col_ok[None, :]
                g = tl.load(g_ptr + rows64[:, None] * C + cols[None, :], mask=tile_ok,
                            other=0.0).to(ACC)
                v = tl.load(v_ptr + src[:, None] * C + cols[None, :], mask=tile_ok,
                            other=0.0).to(ACC)
                gv = g * v
                if NEED_RHO:
                    w = tl.load(w_ptr + j * C + cols, mask=col_ok, other=0.0).to(ACC)
                    acc_rho += tl.sum(gv * w[None, :], axis=1)
                if NEED_W:
                    tl.store(gw_part_ptr + (tile.to(tl.int64) * K + j) * C + cols,
                             tl.sum(gv * r[:, None], axis=0), mask=col_ok)
            if NEED_RHO:
                tl.store(grho_ptr + rows64 * K + j, acc_rho, mask=row_ok)

    @triton.jit
    def _backward_values_kernel(order_ptr, rowptr_ptr, rho_ptr, w_ptr, g_ptr, gv_ptr, C, K,
                                HAS_RHO: tl.constexpr, ACC: tl.constexpr,
                                BLOCK_E: tl.constexpr, BLOCK_C: tl.constexpr):
        # dV[s, c] = Σ over entries (m, j) with I[m, j] = s of ρ[m, j] w[j, c] g[m, c]
        key = tl.program_id(0).to(tl.int64)
        cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
        col_ok = cols < C
        start = tl.load(rowptr_ptr + key)
        stop = tl.load(rowptr_ptr + key + 1)
        acc = tl.zeros((BLOCK_E, BLOCK_C), dtype=ACC)
        for e0 in range(start, stop, BLOCK_E):
            e = e0 + tl.arange(0, BLOCK_E)
            e_ok = e < stop
            flat = tl.load(order_ptr + e, mask=e_ok, other=0)  # m·K + j
            m = flat // K
            j = flat - m * K
            ok = e_ok[:, None] & col_ok[None, :]
            g = tl.load(g_ptr + m[:, None] * C + cols[None, :], mask=ok, other=0.0).to(ACC)
            w = tl.load(w_ptr + j[:, None] * C + cols[None, :], mask=ok, other=0.0).to(ACC)
            term = g * w
            if HAS_RHO:
                r = tl.load(rho_ptr + flat, mask=e_ok, other=0.0).to(ACC)
                term = term * r[:, None]
            acc += term
        tl.store(gv_ptr + key * C + cols, tl.sum(acc, axis=0), mask=col_ok)


def _accumulator(dtype: torch.dtype):
    """float64 stays float64; everything else accumulates in float32."""
    return (tl.float64, torch.float64) if dtype == torch.float64 else (tl.float32, torch.float32)


def channel_block(channels: int) -> int:
    """Channels per program: the largest of 128, 64, 32, 16 that divides ``channels`` (D = 192
    takes three blocks of 64, no padding to 256), else the next power of two up to 128."""
    for block in (128, 64, 32, 16):
        if channels % block == 0:
            return block
    return min(128, triton.next_power_of_2(channels))


BLOCK_M = 32  # rows per forward / dρ-dw program
BLOCK_E = 16  # inverse-index entries per step of the dV program


def gather_aggregate_config(dtype: torch.dtype, channels: int) -> dict:
    """The launch configuration shared by the gather-aggregate kernels (the accumulator, the
    channel block, ``num_warps``); the forward and dρ-dw kernels add ``BLOCK_M``, the dV
    kernel ``BLOCK_E``."""
    return {"ACC": _accumulator(dtype)[0], "BLOCK_C": channel_block(channels), "num_warps": 4}


def inverse_index(index: Tensor, num_rows: int) -> tuple[Tensor, Tensor]:
    """CSR form of ``index [M, k]``: ``order`` lists the flat positions ``m·k + j`` sorted by
    ``index`` (stable, so ascending within a row) and ``rowptr [num_rows + 1]`` delimits the
    entries of each value row. Deterministic (a stable sort and a binary search)."""
    flat = index.reshape(-1)
    sorted_index, order = torch.sort(flat, stable=True)
    rowptr = torch.searchsorted(sorted_index,
                                torch.arange(num_rows + 1, device=flat.device, dtype=flat.dtype))
    return order, rowptr


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
        config = gather_aggregate_config(values.dtype, channels)
        grid = (triton.cdiv(rows, BLOCK_M), triton.cdiv(channels, config["BLOCK_C"]))
        _forward_kernel[grid](values, index, values if rho is None else rho, w, out,
                              rows, channels, k, HAS_RHO=rho is not None, BLOCK_M=BLOCK_M,
                              **config)
        ctx.save_for_backward(values, index, rho, w)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        values, index, rho, w = ctx.saved_tensors
        need_v, _, need_rho, need_w = ctx.needs_input_grad
        need_rho = need_rho and rho is not None
        rows, k = index.shape
        num_values, channels = values.shape
        acc_torch = _accumulator(values.dtype)[1]
        opts = {"dtype": acc_torch, "device": values.device}
        grad_out = grad_out.contiguous()
        config = gather_aggregate_config(values.dtype, channels)
        block_c = config["BLOCK_C"]
        rho_arg = values if rho is None else rho  # any pointer when HAS_RHO is False
        grad_v = grad_rho = grad_w = None
        if need_rho or need_w:
            tiles = triton.cdiv(rows, BLOCK_M)
            grad_rho = torch.empty(rows, k, **opts) if need_rho else None
            partial_w = torch.empty(tiles, k, channels, **opts) if need_w else None
            _backward_rows_kernel[(tiles,)](
                values, index, rho_arg, w, grad_out,
                values if grad_rho is None else grad_rho,
                values if partial_w is None else partial_w,
                rows, channels, k, HAS_RHO=rho is not None, NEED_RHO=need_rho,
                NEED_W=need_w, BLOCK_M=BLOCK_M, **config)
            grad_w = partial_w.sum(0) if need_w else None
        if need_v:
            order, rowptr = inverse_index(index, num_values)
            grad_v = torch.empty(num_values, channels, **opts)
            _backward_values_kernel[(num_values, triton.cdiv(channels, block_c))](
                order, rowptr, rho_arg, w, grad_out, grad_v, channels, k,
                HAS_RHO=rho is not None, BLOCK_E=BLOCK_E, **config)
        return (None if grad_v is None else grad_v.to(values.dtype), None,
                None if grad_rho is None else grad_rho.to(rho.dtype),
                None if grad_w is None else grad_w.to(w.dtype))


def depthwise_gather_aggregate(values: Tensor, index: Tensor, rho: Tensor | None,
                               w: Tensor) -> Tensor:
    """Fused ``Σ_j ρ[m, j] w[j, :] ⊙ values[index[m, j]]``: ``[R, C], [M, k] -> [M, C]``."""
    _require(values.device)
    return DepthwiseGatherAggregate.apply(values, index, rho, w)


def row_topk(scores: Tensor, k: int) -> Tensor:
    """Column indices of the k largest entries of every row, ``[..., N] -> [..., k]`` (int64),
    best first, ties to the lower column: exactly ``sort(stable=True, descending=True)[..., :k]``
    for scores without NaN. Needs ``1 <= k <= min(N, MAX_TOPK_K)`` and ``N <= MAX_TOPK_WIDTH``.
    No autograd: gather the scores with the returned indices."""
    width = scores.shape[-1]
    if not isinstance(k, int) or not 1 <= k <= min(width, MAX_TOPK_K):
        raise ValueError(f"k must be an int in [1, min(N={width}, {MAX_TOPK_K})], got {k!r}")
    if width > MAX_TOPK_WIDTH:
        raise ValueError(f"scores rows must be at most {MAX_TOPK_WIDTH} wide, got N={width}")
    _require(scores.device)
    if scores.dtype not in (torch.float32, torch.float64):
        scores = scores.float()  # rank in float32 or better
    lead = scores.shape[:-1]
    flat = scores.reshape(-1, width)
    if flat.stride(-1) != 1:
        flat = flat.contiguous()
    rows = flat.shape[0]
    out = torch.empty(rows, k, dtype=torch.long, device=scores.device)
    if rows:
        config = row_topk_config(width)
        _row_topk_kernel[(triton.cdiv(rows, config["BLOCK_R"]),)](
            flat, out, rows, width, flat.stride(0), k, **config)
    return out.view(*lead, k)


def row_topk_config(width: int) -> dict:
    """The launch configuration of :func:`row_topk` for rows ``width`` wide (the same on
    every card: no products)."""
    block_n = triton.next_power_of_2(width)
    return {"BLOCK_R": max(1, min(64, 4096 // block_n)), "BLOCK_N": block_n,
            "num_warps": 8 if block_n >= 1024 else 4}


MAX_FUSED_TOPK_K = 16
"""Largest k :func:`fused_topk` takes (its running list of ranking keys lives in registers)."""
FUSED_BLOCK_Q = 32  # query rows per fused-selection program
FUSED_BLOCK_N = 64  # keys per score tile


def fused_topk(query: Tensor, keys: Tensor, k: int, scale: float = 1.0, *,
               query_positions: Tensor | None = None,
               candidate_positions: Tensor | None = None) -> Tensor:
    """Top-k keys of every query by ``(query · key) · scale`` without writing the scores.

    ``query [R, n, D]``, ``keys [R, m, D]`` (float32; ``R`` = batch·heads) ->
    ``[R, n, k]`` int64 indices into ``0..m-1``, best first, ties to the lower key: the
    ``sort(scores, descending=True, stable=True).indices[..., :k]`` of the scores
    ``(query @ keys.T) * scale`` under the precision contract of :mod:`convnn.ops` (bf16×3
    tensor-core products, float32 sums), so equal to the float32 list except on near-ties
    (:func:`convnn.ops.selection_score_bound`); non-finite scores rank last, as -inf. Cosine is
    this on normalised inputs with ``scale=1``.

    With ``query_positions [n]`` and ``candidate_positions [m]`` (int), the key whose position
    equals the query's is scored ``-inf`` (the self-first mask; it still ranks, after every
    finite score, as in a stable sort). Needs ``1 <= k <= min(m, MAX_FUSED_TOPK_K)``. No
    autograd: recompute the selected scores from the gathered keys.

    One program per tile of :data:`FUSED_BLOCK_Q` query rows of one batch·head row loops over
    the keys in tiles of :data:`FUSED_BLOCK_N`: a score tile (three bf16 tensor-core products,
    float32 accumulation), the masks, then a threshold select of the tile's ranking keys
    into the running top-k kept in registers. Bytes (B·h = 128, T = 197, D = 192, k = 9, float32): it
    reads the queries once and the keys once per query tile (each batch row's 151 KB of keys stays in L2), about
    7 × 19 MB from L2 and 19 MB + 19 MB from memory, and writes the 1.8 MB of indices; the
    unfused path writes the ``[B·h, T, T]`` float32 scores (20 MB) and reads them back at least
    once. Unmeasured on a GPU: checked under ``TRITON_INTERPRET=1`` and compiled by the gate.
    """
    if (query.dim() != 3 or keys.dim() != 3 or query.shape[0] != keys.shape[0]
            or query.shape[2] != keys.shape[2]):
        raise ValueError("query and keys must be [R, n, D] and [R, m, D], got "
                         f"{tuple(query.shape)} and {tuple(keys.shape)}")
    if query.dtype != torch.float32 or keys.dtype != torch.float32:
        raise ValueError(f"fused_topk ranks float32 inputs, got {query.dtype} and {keys.dtype}")
    rows, n, dim = query.shape
    m = keys.shape[1]
    if not isinstance(k, int) or not 1 <= k <= min(m, MAX_FUSED_TOPK_K):
        raise ValueError(f"k must be an int in [1, min(m={m}, {MAX_FUSED_TOPK_K})], got {k!r}")
    if (query_positions is None) != (candidate_positions is None):
        raise ValueError("pass query_positions and candidate_positions together (self mask)")
    _require(query.device)
    out = torch.empty(rows, n, k, dtype=torch.long, device=query.device)
    if rows == 0 or n == 0:
        return out
    query, keys = query.detach(), keys.detach()
    if query.stride(-1) != 1:
        query = query.contiguous()
    if keys.stride(-1) != 1:
        keys = keys.contiguous()
    self_mask = query_positions is not None
    if self_mask:
        qpos = query_positions.to(device=query.device, dtype=torch.int32).contiguous()
        cpos = candidate_positions.to(device=query.device, dtype=torch.int32).contiguous()
    else:
        qpos = cpos = out  # any pointer when SELF_MASK is False
    config = fused_topk_config(dim, k, self_mask, card_arch(query.device))
    grid = (triton.cdiv(n, config["BLOCK_Q"]), rows)
    _fused_topk_kernel[grid](
        query, keys, qpos, cpos, out, n, m, dim, k, float(scale),
        query.stride(0), query.stride(1), keys.stride(0), keys.stride(1),
        AS_F32=os.environ.get("TRITON_INTERPRET") == "1", **config)
    return out


def fused_topk_config(dim: int, k: int, self_mask: bool, arch: int) -> dict:
    """The launch configuration of :func:`fused_topk` (constexprs, ``num_warps``,
    ``num_stages``; not the interpreter's ``AS_F32``) on an ``sm_<arch>`` card: bf16×3
    tensor-core products (IEEE float32 on cards without bf16, older than sm_80)."""
    if arch < 80:
        dot, block_d, warps, stages = "ieee", 32, 4, 3
    else:
        dot, block_d, warps, stages = "split", 32, 8, 1
    return {"SELF_MASK": self_mask, "KP": max(2, triton.next_power_of_2(k)),
            "BLOCK_Q": FUSED_BLOCK_Q, "BLOCK_N": FUSED_BLOCK_N,
            "BLOCK_D": max(16, min(block_d, triton.next_power_of_2(dim))), "DOT": dot,
            "num_warps": warps, "num_stages": stages}


PAPER_ATTENTION = {"tokens": 197, "dim": 192, "heads": (1, 3), "k": 9, "sampled": 32}
"""ConvNN attention at ViT-Tiny's shapes on CIFAR (the paper's): T = 197 tokens, D = 192 in
1 or 3 heads, k = 9, all candidates or r = 32 sampled."""
PAPER_CHANNELS = (64, 128, 192, 256, 512)
"""Channel counts of the paper's layers (VGG-11's 64–512, ViT-Tiny's width 192)."""
PAPER_MAP_SIDES = (32, 16, 8, 4, 2)
"""The map sides of the ConvNN2d layers of VGG-11 on CIFAR (padding 1: rows of (side + 2)²
positions, 1,156 at 32×32), whose PyTorch path ranks with :func:`row_topk`."""


def compile_variants(card) -> list[KernelVariant]:
    """Every launch configuration of this module's kernels that the paper's networks reach on
    ``card`` (``card.arch``: 75, 80, 89 or 90; ``card.bf16``), built by the launchers' own
    configuration helpers, one variant per distinct configuration (named by the first shape
    that reaches it): the row top-k over every score row width, the fused selection (1×192
    and 3×64 heads, self-first on and off) and the depthwise gather-aggregate at every
    channel count, in float32 and the card's 16-bit dtype. Forward kernels are hot (spills
    fail the gate)."""
    variants = VariantSet()
    add = variants.add

    shapes = PAPER_ATTENTION
    widths = [shapes["tokens"], shapes["sampled"]] + [(s + 2) ** 2 for s in PAPER_MAP_SIDES]
    for width in widths:
        add(_row_topk_kernel, f"row_topk fp32 N={width}",
            {"s_ptr": "*fp32", "idx_ptr": "*i64", "R": "i32", "N": "i32", "stride_r": "i32",
             "K": "i32"}, row_topk_config(width), True)
    for heads in shapes["heads"]:
        dim = shapes["dim"] // heads
        for self_mask in (True, False):
            k = shapes["k"] - 1 if self_mask else shapes["k"]
            add(_fused_topk_kernel, f"fused_topk fp32 d={dim} k={k}",
                {"q_ptr": "*fp32", "k_ptr": "*fp32", "qpos_ptr": "*i32", "cpos_ptr": "*i32",
                 "idx_ptr": "*i64", "n": "i32", "m": "i32", "D": "i32", "K": "i32",
                 "scale": "fp32", "stride_qb": "i32", "stride_qn": "i32", "stride_kb": "i32",
                 "stride_kn": "i32"},
                {**fused_topk_config(dim, k, self_mask, card.arch), "AS_F32": False}, True)
    half = torch.bfloat16 if card.bf16 else torch.float16
    for dtype in (torch.float32, half):
        ptr, name = pointer_type(dtype), str(dtype).removeprefix("torch.")
        for channels in PAPER_CHANNELS:
            config = gather_aggregate_config(dtype, channels)
            for has_rho in (True, False):
                rho = "*fp32" if has_rho else ptr  # ρ is a float32 softmax
                tag = f"{name} C={channels} rho={has_rho}"
                add(_forward_kernel, f"gather_aggregate {tag}",
                    {"v_ptr": ptr, "idx_ptr": "*i64", "rho_ptr": rho, "w_ptr": ptr,
                     "out_ptr": ptr, "M": "i32", "C": "i32", "K": "i32"},
                    {"HAS_RHO": has_rho, "BLOCK_M": BLOCK_M, **config}, True)
                add(_backward_rows_kernel, f"gather_aggregate_rows {tag}",
                    {"v_ptr": ptr, "idx_ptr": "*i64", "rho_ptr": rho, "w_ptr": ptr,
                     "g_ptr": ptr, "grho_ptr": "*fp32", "gw_part_ptr": "*fp32", "M": "i32",
                     "C": "i32", "K": "i32"},
                    {"HAS_RHO": has_rho, "NEED_RHO": has_rho, "NEED_W": True,
                     "BLOCK_M": BLOCK_M, **config}, False)
                add(_backward_values_kernel, f"gather_aggregate_values {tag}",
                    {"order_ptr": "*i64", "rowptr_ptr": "*i64", "rho_ptr": rho, "w_ptr": ptr,
                     "g_ptr": ptr, "gv_ptr": "*fp32", "C": "i32", "K": "i32"},
                    {"HAS_RHO": has_rho, "BLOCK_E": BLOCK_E, **config}, False)
    return variants.listed()


# --- What this module's kernels can run: predicates of convnn.ops.choose_backend -------------
# Each kernel step has one ``can_run_<step>(...)``: ``None`` where its kernel takes these
# options on ``device``, else the reason. ``convnn.ops.KERNEL_STEPS`` lists them in one place.

BF16_CAPABILITY = (8, 0)
"""The first compute capability whose tensor cores take bfloat16 (A100). The compile gate
builds bf16 variants from sm_80 on only, so no bf16 variant is chosen below it (a T4 is 7.5)."""


def device_capability(device: torch.device | str | None) -> tuple[int, int] | None:
    """``(major, minor)`` of a CUDA ``device``; ``None`` for any other device, or where no
    CUDA driver answers (then nothing is known of the card)."""
    if device is None:
        return None
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    return tuple(torch.cuda.get_device_capability(device))


def card_refusal(device: torch.device | str | None, dtypes) -> str | None:
    """Why no compiled variant for tensors of ``dtypes`` runs on ``device``'s card
    (``None``: one does): bfloat16 below compute capability 8.0."""
    capability = device_capability(device)
    if capability is None or capability >= BF16_CAPABILITY:
        return None
    if torch.bfloat16 in set(dtypes):
        return (f"bfloat16 tensors on a compute capability {capability[0]}.{capability[1]} "
                "card (the bf16 variants need 8.0 or newer)")
    return None


def can_run_topk(*, k: int | None = None, width: int | None = None,
                 device: torch.device | str | None = None) -> str | None:
    """Step ``"topk"`` (:func:`row_topk`): ``k`` neighbours of float32 score rows of
    ``width`` candidates."""
    from ._checks import check_int

    check_int("k", k, minimum=1)
    check_int("width", width, minimum=1)
    if k > MAX_TOPK_K:
        return f"k={k} > {MAX_TOPK_K} (the row top-k makes k passes)"
    if width > MAX_TOPK_WIDTH:
        return f"{width} candidates > {MAX_TOPK_WIDTH} (a row must fit registers)"
    return None


def can_run_gather_aggregate(*, aggregation: str | None = None,
                             dtype: torch.dtype | None = None,
                             device: torch.device | str | None = None) -> str | None:
    """Step ``"gather_aggregate"`` (:func:`depthwise_gather_aggregate`): ``aggregation`` (a
    name of ``convnn.ops.AGGREGATIONS``) of values of ``dtype``."""
    if aggregation == "standard":
        return "standard aggregation (a dense matmul; only depthwise/separable are fused)"
    return card_refusal(device, (dtype,))


def can_run_fused_topk(*, k: int | None = None, similarity=None,
                       dtype: torch.dtype | None = None,
                       device: torch.device | str | None = None) -> str | None:
    """Step ``"fused_topk"`` (:func:`fused_topk`): ``k`` neighbours searched by
    ``similarity`` (an entry of ``convnn.ops.SIMILARITIES``), ranking in ``dtype``."""
    from ._checks import check_int

    check_int("k", k, minimum=1)
    if similarity is None:
        raise ValueError("step='fused_topk' needs similarity (a name in SIMILARITIES)")
    if similarity.fused_scale is None:
        return (f"similarity={similarity.name!r} (the fused selection scores dot and cosine "
                "only)")
    if k > MAX_FUSED_TOPK_K:
        return (f"k={k} > {MAX_FUSED_TOPK_K} neighbours searched (the fused selection keeps "
                "its running top-k in registers)")
    if dtype is not None and dtype not in (torch.float32, torch.float16, torch.bfloat16):
        return f"{dtype} ranking (the fused selection ranks in float32)"
    return card_refusal(device, (dtype,))
