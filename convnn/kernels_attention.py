"""The fused ConvNN attention core in Triton: all candidates, or sampled (random / spatial).

Per head, ``out[t] = Σ_j ρ[t, j] · w[j] ⊙ v[I[t, j]]``, where ``I[t]`` are the k keys of the
highest scores ``(q_t · key_s) · scale`` among the candidates (best first, ties to the lower
candidate) and ``ρ[t]`` is the softmax of their scores. Self-first (always with sampled
candidates) puts ``t`` in slot 0 with its real score or the paper's constant logit and
searches the other ``k - 1`` among the candidates other than ``t``.

**Precision** (the contract of :mod:`convnn.ops`): the ranking scores are tensor-core
products with float32 accumulation. A bf16 operand enters as it is; a float32 (or float16)
operand ``x`` is split into ``hi = bf16(x)`` and ``lo = bf16(x - hi)`` and the score is
``hi·hi + hi·lo + lo·hi`` ("bf16×3"). The ranking key packs the score's order-preserving
integer with the candidate column in its low :func:`column_bits` bits (a bucket of
``2^(column_bits - 23)`` relative; see the contract). The k logits of the softmax are then
recomputed from the gathered key rows in float32 (k·d multiply-adds a query, the rows the
backward pass gathers anyway). The softmax, the aggregation and every gradient accumulate in
float32; gradients are written in their inputs' dtypes.

**Forward** (:func:`fused_attention`): one program per :data:`BLOCK_Q` = 64 queries of one
batch·head row (grid ``[⌈T / 64⌉, R]``, 4 warps: one warpgroup, 16 query rows a warp), so
the score product is one 64-row ``tl.dot`` a channel slice (``wgmma`` on sm_90,
``mma.sync`` on sm_75-89) and each query row lives in one warp (its reductions are warp
shuffles). ``K`` and ``d`` are compile-time constants: the loops over the ranks are unrolled
(``tl.static_range``), so the k gathers of a 16-channel slice are independent loads in
flight together; the loops over channel slices and key tiles are not pipelined
(:data:`NUM_STAGES`). Keys are read once per query tile (4 times per row at T = 197).

- Selection: the candidates in tiles of :data:`KEY_TILE` = 64 (T = 197: four tiles; r = 32
  sampled: one; 128-key tiles spill on sm_80 with split operands: 255 registers, 124-172
  bytes). Each score becomes one int32 key (the float's order-preserving bits, the
  low bits replaced by the reversed column), so every rank is one max-reduction over the
  row and a compare, the lower column winning ties as before (the old kernel took a max
  and a min-column reduction a rank, across 4 warps); each tile's top-k is merged into the
  running list the same way.
- Then the self slot, the float32 logits of the k selected keys, the softmax, dropout on the
  weights (the caller's mask) and the depthwise aggregation. It writes the output, the
  indices (int32) and ρ ``[R, T, k]`` only: no score matrix.
  Non-finite scores rank last (as ``-inf``), as in :func:`convnn.ops.select_neighbours`.

**Backward**, O(T·k·d) work, no atomics, no one-hot products; three kernels:

- query side (grid ``[⌈T / 64⌉, R]``): dρ (reduced on chip, never written) and this tile's
  partial sums of dw from the k gathered value rows, dscore through the softmax (zero for the
  constant self logit), ``dq = Σ_j dscore_j · scale · key[I_j]`` written in q's dtype;
- candidate side: an inverse index (CSR) of ``I``, built per batch·head row by a stable
  counting sort in one kernel (one program a row: a histogram of its ``T·k`` targets, their
  prefix sum, then each entry's place; rows of more than :data:`MAX_INDEX_TOKENS` tokens
  take a stable sort and a binary search, :func:`convnn.kernels.inverse_index`), then one
  program per token row sums its entries:
  ``dV[s] = Σ ρ · w_j ⊙ g[t]`` and ``dkey[s] = Σ dscore · q[t]`` over the ``(t, j)`` with
  ``I[t, j] = s`` (the self slot included), written in v's and key's dtypes.

  Why segmented sums and not float32 atomics: the gradients are bitwise reproducible (the
  project's other Triton backward is too), and the index is cheap next to the sums
  (``R·T·k`` int32 entries, 1.8 MB at B = 256, T = 197, k = 9, where the sums read 2·T·k·d
  gathered elements); atomics would save the index but make every step's gradients depend on
  the order in which programs finish, and 16-bit gradients would need float32 buffers and a
  cast anyway.

No host synchronisation: the candidate range comes from shapes; the values of
``candidate_positions`` are checked only on a CPU (where it costs nothing). The layer is the
``torch.library`` custom op ``convnn::fused_attention`` (with a fake implementation, and its
backward ``convnn::fused_attention_backward``), so ``torch.compile`` takes it without a graph
break.

Unmeasured on a GPU: checked under ``TRITON_INTERPRET=1`` and compiled ahead of time for
sm_75/80/89/90 (:func:`compile_variants`), so it is opt-in (``backend="triton"``);
``backend=None`` does not take it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import Tensor

from .kernels import KernelVariant, _require, inverse_index, pointer_type, triton

if triton is not None:
    import triton.language as tl

MAX_FUSED_ATTENTION_K = 16
"""Largest k (self included) :func:`fused_attention` takes (the top-k lives in registers)."""
KEY_TILE = 64
"""Candidates per score tile: all of them up to this many (one tile), tiles merged above.
The tests lower it to cross tile boundaries at small T."""
BLOCK_Q = 64
"""Queries per forward / query-side backward program (64 rows: sm_90's ``wgmma`` tile)."""
BLOCK_E = 16
"""Inverse-index entries per step of the candidate-side backward program."""
NUM_WARPS = 4
"""Warps per forward / query-side program: one warpgroup, each query row inside one warp."""
NUM_STAGES = 1
"""Software-pipelining stages: none (the loops over key tiles, channel slices and gathers
are not pipelined: two stages of float32 key tiles would take 180 KB of shared memory;
latency is hidden by the other programs on the SM)."""

_SPLIT_DTYPES = (torch.float32, torch.float16)
_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

if triton is not None:

    # acc + a @ b of bf16 tiles, float32 accumulation (exact float32 products under the
    # interpreter, whose 16-bit tl.dot is wrong)
    from .kernels import _product as _bf16_dot

    @triton.jit
    def _contract_dot(a, b, acc, SPLIT_A: tl.constexpr, SPLIT_B: tl.constexpr,
                      AS_F32: tl.constexpr):
        # acc + a @ b under the precision contract: bf16 tensor-core products, float32
        # accumulation; a split operand contributes hi and lo = bf16(x - hi), lo·lo dropped.
        a_hi = a.to(tl.bfloat16)
        b_hi = b.to(tl.bfloat16)
        acc = _bf16_dot(a_hi, b_hi, acc, AS_F32)
        if SPLIT_B:
            b_lo = (b.to(tl.float32) - b_hi.to(tl.float32)).to(tl.bfloat16)
            acc = _bf16_dot(a_hi, b_lo, acc, AS_F32)
        if SPLIT_A:
            a_lo = (a.to(tl.float32) - a_hi.to(tl.float32)).to(tl.bfloat16)
            acc = _bf16_dot(a_lo, b_hi, acc, AS_F32)
        return acc

    @triton.jit
    def _score_keys(q_base, k_base, cpos_ptr, rows, row_ok, cols, col_ok, scale,
                    ALL: tl.constexpr, SELF_FIRST: tl.constexpr, SPLIT_Q: tl.constexpr,
                    SPLIT_K: tl.constexpr, AS_F32: tl.constexpr, D: tl.constexpr,
                    COL_BITS: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_N: tl.constexpr,
                    BLOCK_D: tl.constexpr):
        # [BLOCK_Q, BLOCK_N] int32 ranking keys of the query rows against candidate columns
        # ``cols``: the score's order-preserving bits, the low COL_BITS bits replaced by the
        # reversed column (a larger key is a better score, or the lower column of a tie).
        if ALL:
            keys = cols
        else:
            keys = tl.load(cpos_ptr + cols, mask=col_ok, other=0)
        acc = tl.zeros((BLOCK_Q, BLOCK_N), dtype=tl.float32)
        for d0 in tl.range(0, D, BLOCK_D, num_stages=1):
            dims = d0 + tl.arange(0, BLOCK_D)
            d_ok = dims < D
            q = tl.load(q_base + rows[:, None] * D + dims[None, :],
                        mask=row_ok[:, None] & d_ok[None, :], other=0.0)
            kt = tl.load(k_base + keys[None, :] * D + dims[:, None],
                         mask=d_ok[:, None] & col_ok[None, :], other=0.0)
            acc = _contract_dot(q, kt, acc, SPLIT_Q, SPLIT_K, AS_F32)
        # + 0.0 turns -0.0 into +0.0 (equal floats, equal keys); non-finite scores (a NaN or
        # infinite feature) rank last, as -inf (ops._top): NaN < inf and inf < inf are false
        s = acc * scale + 0.0
        s = tl.where(s < float("inf"), s, float("-inf"))
        if SELF_FIRST:  # the query's own column is not searched (it still ranks, as -inf)
            if ALL:
                s = tl.where(cols[None, :] == rows[:, None], float("-inf"), s)
            else:
                s = tl.where(keys[None, :] == rows[:, None], float("-inf"), s)
        bits = s.to(tl.int32, bitcast=True)
        ordered = bits ^ ((bits >> 31) & 0x7FFFFFFF)  # int order = float order
        low: tl.constexpr = (1 << COL_BITS) - 1
        packed = (ordered & ~low) | (low - cols)
        PAD: tl.constexpr = -2147483648  # below every score's key, -inf included
        return tl.where(col_ok[None, :] & (rows >= 0)[:, None], packed, PAD)

    @triton.jit
    def _take_top(keys, slots, NUM: tl.constexpr, OFF: tl.constexpr, KP: tl.constexpr,
                  BLOCK_Q: tl.constexpr):
        # The NUM largest keys of every row into slots OFF..OFF+NUM-1 (best first): keys are
        # distinct (the column is in them), so each rank is one max-reduction and a compare.
        PAD: tl.constexpr = -2147483648
        top = tl.full((BLOCK_Q, KP), PAD, tl.int32)
        for j in tl.static_range(NUM):
            best = tl.max(keys, axis=1)
            top = tl.where(slots[None, :] == j + OFF, best[:, None], top)
            keys = tl.where(keys == best[:, None], PAD, keys)
        return top

    @triton.jit
    def _merge_tops(a, b, slots, NUM: tl.constexpr, OFF: tl.constexpr, KP: tl.constexpr,
                    BLOCK_Q: tl.constexpr):
        # The NUM largest keys of two lists (distinct keys: different columns) into slots
        # OFF..OFF+NUM-1, best first.
        PAD: tl.constexpr = -2147483648
        top = tl.full((BLOCK_Q, KP), PAD, tl.int32)
        for j in tl.static_range(NUM):
            best = tl.maximum(tl.max(a, axis=1), tl.max(b, axis=1))
            top = tl.where(slots[None, :] == j + OFF, best[:, None], top)
            a = tl.where(a == best[:, None], PAD, a)
            b = tl.where(b == best[:, None], PAD, b)
        return top

    @triton.jit
    def _slot(x, slots, j: tl.constexpr):
        # column j of a [BLOCK_Q, KP] tile (a sum over the row's own slots)
        return tl.sum(tl.where(slots[None, :] == j, x, 0), axis=1)

    @triton.jit
    def _attention_forward_kernel(
            q_ptr, k_ptr, v_ptr, w_ptr, cpos_ptr, drop_ptr, out_ptr, idx_ptr, p_ptr,
            T, M, scale, self_logit,
            K: tl.constexpr, D: tl.constexpr, DROP: tl.constexpr, ALL: tl.constexpr,
            SELF_FIRST: tl.constexpr, CONST_SELF: tl.constexpr, ONE_TILE: tl.constexpr,
            SPLIT_Q: tl.constexpr, SPLIT_K: tl.constexpr, AS_F32: tl.constexpr,
            COL_BITS: tl.constexpr, KP: tl.constexpr, BLOCK_Q: tl.constexpr,
            BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_G: tl.constexpr):
        b = tl.program_id(1).to(tl.int64)
        rows = tl.program_id(0) * BLOCK_Q + tl.arange(0, BLOCK_Q)
        row_ok = rows < T
        slots = tl.arange(0, KP)
        OFF: tl.constexpr = 1 if SELF_FIRST else 0
        KS: tl.constexpr = K - OFF  # ranks searched
        PAD: tl.constexpr = -2147483648
        base = b * T * D  # int64 scalar; offsets inside a row are int32 (T·d < 2^31)
        q_row, k_row, v_row = q_ptr + base, k_ptr + base, v_ptr + base
        if ONE_TILE:  # every candidate in one tile: the top-k straight from the row
            cols = tl.arange(0, BLOCK_N)
            keys = _score_keys(q_row, k_row, cpos_ptr, rows, row_ok, cols,
                               cols < M, scale, ALL, SELF_FIRST, SPLIT_Q, SPLIT_K, AS_F32, D,
                               COL_BITS, BLOCK_Q, BLOCK_N, BLOCK_D)
            top = _take_top(keys, slots, KS, OFF, KP, BLOCK_Q)
        else:  # tiles of BLOCK_N candidates; each tile's top-KS merged into the running list
            top = tl.full((BLOCK_Q, KP), PAD, tl.int32)
            for n0 in tl.range(0, M, BLOCK_N, num_stages=1):
                cols = n0 + tl.arange(0, BLOCK_N)
                keys = _score_keys(q_row, k_row, cpos_ptr, rows, row_ok, cols,
                                   cols < M, scale, ALL, SELF_FIRST, SPLIT_Q, SPLIT_K, AS_F32,
                                   D, COL_BITS, BLOCK_Q, BLOCK_N, BLOCK_D)
                top = _merge_tops(top, _take_top(keys, slots, KS, OFF, KP, BLOCK_Q), slots,
                                  KS, OFF, KP, BLOCK_Q)
        # slot -> token position; a -inf key (a masked or non-finite score) keeps logit -inf
        low: tl.constexpr = (1 << COL_BITS) - 1
        searched = (slots[None, :] >= OFF) & (slots[None, :] < K) & (top > PAD)
        cols = tl.where(searched, low - (top & low), 0)
        if ALL:
            pos = cols
        else:
            pos = tl.load(cpos_ptr + cols, mask=searched & row_ok[:, None], other=0)
        NEG: tl.constexpr = -2139095040  # the key of -FLT_MAX: below it, -inf keys
        dead = searched & (top < NEG)
        if SELF_FIRST:
            pos = tl.where(slots[None, :] == 0, rows[:, None], pos)
        valid = (slots[None, :] < K) & (rows >= 0)[:, None]
        pos = tl.where(valid, pos, 0)
        # the k logits in float32 from the gathered key rows
        logits = tl.zeros((BLOCK_Q, KP), dtype=tl.float32)
        for d0 in tl.range(0, D, BLOCK_G, num_stages=1):
            dims = d0 + tl.arange(0, BLOCK_G)
            ok = row_ok[:, None] & (dims < D)[None, :]
            q = tl.load(q_row + rows[:, None] * D + dims[None, :], mask=ok,
                        other=0.0).to(tl.float32)
            for j in tl.static_range(K):
                pj = _slot(pos, slots, j)
                kk = tl.load(k_row + pj[:, None] * D + dims[None, :], mask=ok,
                             other=0.0).to(tl.float32)
                logits += tl.where(slots[None, :] == j, tl.sum(q * kk, axis=1)[:, None], 0.0)
        logits = logits * scale
        logits = tl.where(logits < float("inf"), logits, float("-inf"))
        logits = tl.where(dead, float("-inf"), logits)
        if SELF_FIRST and CONST_SELF:
            logits = tl.where(slots[None, :] == 0, self_logit, logits)
        logits = tl.where(valid, logits, float("-inf"))
        mx = tl.max(logits, axis=1)
        e = tl.where(valid, tl.exp(logits - mx[:, None]), 0.0)
        p = e / tl.sum(e, axis=1)[:, None]
        store_ok = row_ok[:, None] & valid
        flat = rows[:, None] * K + slots[None, :]
        at = b * T * K
        tl.store(idx_ptr + at + flat, pos, mask=store_ok)
        tl.store(p_ptr + at + flat, p, mask=store_ok)
        rho = p
        if DROP:  # dropout on the weights: ρ times the caller's mask / (1 - p_drop)
            rho = p * tl.load(drop_ptr + at + flat, mask=store_ok, other=0.0)
        for d0 in tl.range(0, D, BLOCK_G, num_stages=1):
            dims = d0 + tl.arange(0, BLOCK_G)
            d_ok = dims < D
            ok = row_ok[:, None] & d_ok[None, :]
            acc = tl.zeros((BLOCK_Q, BLOCK_G), dtype=tl.float32)
            for j in tl.static_range(K):
                pj = _slot(pos, slots, j)
                rj = _slot(rho, slots, j)
                vv = tl.load(v_row + pj[:, None] * D + dims[None, :], mask=ok,
                             other=0.0).to(tl.float32)
                wj = tl.load(w_ptr + j * D + dims, mask=d_ok, other=0.0).to(tl.float32)
                acc += (vv * wj[None, :]) * rj[:, None]
            tl.store(out_ptr + base + rows[:, None] * D + dims[None, :],
                     acc.to(out_ptr.dtype.element_ty), mask=ok)

    @triton.jit
    def _attention_query_backward_kernel(
            q_ptr, k_ptr, v_ptr, w_ptr, g_ptr, idx_ptr, p_ptr, drop_ptr,
            dq_ptr, ds_ptr, dw_part_ptr, T, scale,
            K: tl.constexpr, D: tl.constexpr, DROP: tl.constexpr, CONST_SELF: tl.constexpr,
            KP: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_G: tl.constexpr):
        # dρ[t, j] = Σ_c g[t, c] w[j, c] v[I[t, j], c] (on chip);
        # dw partial[j, c] = Σ_t ρ g v[I] (this tile's);  dscore = ρ (dρ - Σ ρ dρ) · scale;
        # dq[t] = Σ_j dscore[t, j] key[I[t, j]], written in q's dtype.
        b = tl.program_id(1).to(tl.int64)
        tile = tl.program_id(0)
        rows = tile * BLOCK_Q + tl.arange(0, BLOCK_Q)
        row_ok = rows < T
        slots = tl.arange(0, KP)
        valid = (slots < K)[None, :] & (rows >= 0)[:, None]
        base = b * T * D  # int64 scalar; offsets inside a row are int32
        k_row, v_row, g_row = k_ptr + base, v_ptr + base, g_ptr + base
        flat = b * T * K + (rows[:, None] * K + slots[None, :])
        kv_ok = row_ok[:, None] & valid
        idx = tl.load(idx_ptr + flat, mask=kv_ok, other=0)
        p = tl.load(p_ptr + flat, mask=kv_ok, other=0.0)
        rho = p  # the weights the aggregation used
        if DROP:
            drop = tl.load(drop_ptr + flat, mask=kv_ok, other=0.0)
            rho = p * drop
        drho = tl.zeros((BLOCK_Q, KP), dtype=tl.float32)
        part = (b * tl.num_programs(0) + tile) * K
        for d0 in tl.range(0, D, BLOCK_G, num_stages=1):
            dims = d0 + tl.arange(0, BLOCK_G)
            d_ok = dims < D
            ok = row_ok[:, None] & d_ok[None, :]
            g = tl.load(g_row + rows[:, None] * D + dims[None, :], mask=ok,
                        other=0.0).to(tl.float32)
            for j in tl.static_range(K):
                ij = _slot(idx, slots, j)
                rj = _slot(rho, slots, j)
                vv = tl.load(v_row + ij[:, None] * D + dims[None, :], mask=ok,
                             other=0.0).to(tl.float32)
                wj = tl.load(w_ptr + j * D + dims, mask=d_ok, other=0.0).to(tl.float32)
                gv = g * vv
                drho += tl.where(slots[None, :] == j, tl.sum(gv * wj[None, :], axis=1)[:, None],
                                 0.0)
                tl.store(dw_part_ptr + (part + j) * D + dims, tl.sum(gv * rj[:, None], axis=0),
                         mask=d_ok)
        if DROP:  # through the dropout mask to the softmax output
            drho = drho * drop
        ds = p * (drho - tl.sum(p * drho, axis=1)[:, None])
        if CONST_SELF:  # the constant self logit has no gradient
            ds = tl.where(slots[None, :] == 0, 0.0, ds)
        ds = tl.where(valid, ds * scale, 0.0)
        tl.store(ds_ptr + flat, ds, mask=kv_ok)
        for d0 in tl.range(0, D, BLOCK_G, num_stages=1):
            dims = d0 + tl.arange(0, BLOCK_G)
            ok = row_ok[:, None] & (dims < D)[None, :]
            acc = tl.zeros((BLOCK_Q, BLOCK_G), dtype=tl.float32)
            for j in tl.static_range(K):
                ij = _slot(idx, slots, j)
                kk = tl.load(k_row + ij[:, None] * D + dims[None, :], mask=ok,
                             other=0.0).to(tl.float32)
                acc += kk * _slot(ds, slots, j)[:, None]
            tl.store(dq_ptr + base + rows[:, None] * D + dims[None, :],
                     acc.to(dq_ptr.dtype.element_ty), mask=ok)

    @triton.jit
    def _attention_candidate_backward_kernel(
            q_ptr, w_ptr, g_ptr, p_ptr, drop_ptr, ds_ptr, order_ptr, rowptr_ptr, dv_ptr, dk_ptr,
            K: tl.constexpr, D: tl.constexpr, DROP: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_D: tl.constexpr):
        # Token row s (of R·T): dV[s] = Σ ρ[e] w[j_e] ⊙ g[t_e], dkey[s] = Σ dscore[e] q[t_e]
        # over its inverse-index entries e = t·K + j (I[t, j] = s), in the sorted order
        # (deterministic), accumulated in float32 and written in v's / key's dtype.
        row = tl.program_id(0).to(tl.int64)
        start = tl.load(rowptr_ptr + row)
        stop = tl.load(rowptr_ptr + row + 1)
        for d0 in tl.static_range(0, D, BLOCK_D):
            dims = d0 + tl.arange(0, BLOCK_D)
            d_ok = dims < D
            acc_v = tl.zeros((BLOCK_E, BLOCK_D), dtype=tl.float32)
            acc_k = tl.zeros((BLOCK_E, BLOCK_D), dtype=tl.float32)
            for e0 in range(start, stop, BLOCK_E):
                e = e0 + tl.arange(0, BLOCK_E)
                e_ok = e < stop
                flat = tl.load(order_ptr + e, mask=e_ok, other=0).to(tl.int64)  # (r·T + t)·K + j
                t = flat // K
                j = flat - t * K
                ok = e_ok[:, None] & d_ok[None, :]
                g = tl.load(g_ptr + t[:, None] * D + dims[None, :], mask=ok,
                            other=0.0).to(tl.float32)
                w = tl.load(w_ptr + j[:, None] * D + dims[None, :], mask=ok,
                            other=0.0).to(tl.float32)
                r = tl.load(p_ptr + flat, mask=e_ok, other=0.0)
                if DROP:
                    r = r * tl.load(drop_ptr + flat, mask=e_ok, other=0.0)
                acc_v += g * w * r[:, None]
                q = tl.load(q_ptr + t[:, None] * D + dims[None, :], mask=ok,
                            other=0.0).to(tl.float32)
                acc_k += q * tl.load(ds_ptr + flat, mask=e_ok, other=0.0)[:, None]
            tl.store(dv_ptr + row * D + dims, tl.sum(acc_v, axis=0).to(dv_ptr.dtype.element_ty),
                     mask=d_ok)
            tl.store(dk_ptr + row * D + dims, tl.sum(acc_k, axis=0).to(dk_ptr.dtype.element_ty),
                     mask=d_ok)


    @triton.jit
    def _attention_inverse_index_kernel(idx_ptr, order_ptr, rowptr_ptr, T,
                                        K: tl.constexpr, BLOCK_T: tl.constexpr,
                                        BLOCK_E: tl.constexpr):
        # The inverse (CSR) of I for one batch·head row r: its T·K entries e = t·K + j
        # (globally r·T·K + e) in the order of their target s = I[t, j], ascending e within a
        # target (a stable counting sort), and rowptr[r·T + s] = r·T·K + (entries of targets
        # below s). Two passes over I: a histogram, then each entry's place (gathered from
        # the running count of its target, plus the entries before it in this block).
        r = tl.program_id(0).to(tl.int64)
        n = T * K
        base = r * n
        bins = tl.arange(0, BLOCK_T)
        counts = tl.zeros((BLOCK_T,), dtype=tl.int32)
        for e0 in range(0, n, BLOCK_E):
            e = e0 + tl.arange(0, BLOCK_E)
            ok = e < n
            s = tl.load(idx_ptr + base + e, mask=ok, other=0)
            counts += tl.histogram(s, BLOCK_T, mask=ok)
        start = tl.cumsum(counts, axis=0) - counts
        tl.store(rowptr_ptr + r * T + bins, (base + start).to(tl.int32), mask=bins < T)
        # the next row's start, which that row's program writes too (the same value)
        tl.store(rowptr_ptr + (r + 1) * T + bins, (base + n).to(tl.int32), mask=bins == 0)
        earlier = tl.arange(0, BLOCK_E)[None, :] < tl.arange(0, BLOCK_E)[:, None]
        placed = start  # per target: where its next entry goes
        for e0 in range(0, n, BLOCK_E):
            e = e0 + tl.arange(0, BLOCK_E)
            ok = e < n
            s = tl.load(idx_ptr + base + e, mask=ok, other=0)
            ahead = tl.sum(((s[:, None] == s[None, :]) & earlier).to(tl.int32), axis=1)
            at = tl.gather(placed, s, 0) + ahead
            tl.store(order_ptr + base + at, (base + e).to(tl.int32), mask=ok)
            placed += tl.histogram(s, BLOCK_T, mask=ok)


def _interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def _block_d(dim: int, split: bool = False) -> int:
    """Channels per slice of the score product: 64, or 32 where an operand is split (its
    float32 key slice ``[32, 256]`` is 64 registers a thread before the split)."""
    return max(16, min(32 if split else 64, triton.next_power_of_2(dim)))


def _block_g(dim: int) -> int:
    """Channels per gathered row slice: 16 (one 32-byte sector of a bf16 row), so the k
    gathers of a slice (k·16 values a row) can all be in flight without spilling."""
    return 16


def column_bits(candidates: int) -> int:
    """Low bits of the ranking key that hold the column: enough for ``candidates`` columns.
    The score keeps the other ``32 - column_bits`` bits, a bucket of
    ``2^(column_bits - 23)`` of its magnitude (the precision contract's ``δ``)."""
    return max(1, (int(candidates) - 1).bit_length())


@dataclass(frozen=True)
class _Launch:
    """One kernel launch configuration: its ``tl.constexpr`` values, warps and stages."""

    constexprs: dict
    num_warps: int
    num_stages: int


def _forward_launch(tokens: int, candidates: int | None, dim: int, k: int, *, q_dtype,
                    key_dtype, self_first: bool, constant_self: bool, drop: bool,
                    interpreted: bool) -> _Launch:
    """The forward kernel's configuration (the launcher and :func:`compile_variants`)."""
    every = candidates is None
    m = tokens if every else candidates
    one_tile = m <= KEY_TILE
    block_n = max(16, triton.next_power_of_2(m)) if one_tile else KEY_TILE
    return _Launch({
        "K": k, "D": dim, "DROP": bool(drop), "ALL": every, "SELF_FIRST": bool(self_first),
        "CONST_SELF": bool(constant_self), "ONE_TILE": one_tile,
        "SPLIT_Q": q_dtype in _SPLIT_DTYPES, "SPLIT_K": key_dtype in _SPLIT_DTYPES,
        "AS_F32": bool(interpreted), "COL_BITS": column_bits(block_n if one_tile else m),
        "KP": max(2, triton.next_power_of_2(k)), "BLOCK_Q": BLOCK_Q, "BLOCK_N": block_n,
        # 32-channel slices where an operand is split, and for a tile of <= 32 candidates
        # (sampled r = 32): with 64 the bf16 variant spilled 8 B on sm_80 (the compile gate)
        "BLOCK_D": _block_d(dim, split=(q_dtype in _SPLIT_DTYPES or key_dtype in _SPLIT_DTYPES
                                        or block_n <= 32)),
        "BLOCK_G": _block_g(dim)}, NUM_WARPS, NUM_STAGES)


def _query_backward_launch(dim: int, k: int, *, constant_self: bool, drop: bool) -> _Launch:
    return _Launch({"K": k, "D": dim, "DROP": bool(drop), "CONST_SELF": bool(constant_self),
                    "KP": max(2, triton.next_power_of_2(k)), "BLOCK_Q": BLOCK_Q,
                    "BLOCK_G": _block_g(dim)}, NUM_WARPS, 1)


MAX_INDEX_TOKENS = 256
"""Most tokens a row's inverse index is built for in one program (its histogram lives in
registers); longer rows take :func:`convnn.kernels.inverse_index` (a stable sort)."""


def _inverse_index_launch(tokens: int, k: int) -> _Launch:
    return _Launch({"K": k, "BLOCK_T": max(16, triton.next_power_of_2(tokens)),
                    "BLOCK_E": 32}, 4, 1)


def _candidate_backward_launch(dim: int, k: int, *, drop: bool) -> _Launch:
    return _Launch({"K": k, "D": dim, "DROP": bool(drop), "BLOCK_E": BLOCK_E, "BLOCK_D": _block_d(dim)}, 2, 1)


def _launch(kernel, grid, launch: _Launch, *args) -> None:
    kernel[grid](*args, **launch.constexprs, num_warps=launch.num_warps,
                 num_stages=launch.num_stages)


def _forward_impl(q: Tensor, key: Tensor, v: Tensor, w: Tensor, cand: Tensor | None,
                  drop: Tensor | None, k: int, scale: float, self_first: bool,
                  self_logit: float | None) -> tuple[Tensor, Tensor, Tensor]:
    q, key, v, w = q.contiguous(), key.contiguous(), v.contiguous(), w.contiguous()
    rows, tokens, dim = q.shape
    every = cand is None
    out = torch.empty_like(v)
    idx = torch.empty(rows, tokens, k, dtype=torch.int32, device=q.device)
    # all candidates: the kernel reads no position (idx stands in for the pointer)
    cpos = idx if every else cand.to(device=q.device, dtype=torch.int32).contiguous()
    p = torch.empty(rows, tokens, k, dtype=torch.float32, device=q.device)
    if rows and tokens:
        launch = _forward_launch(tokens, None if every else cand.shape[0], dim, k,
                                 q_dtype=q.dtype, key_dtype=key.dtype, self_first=self_first,
                                 constant_self=self_logit is not None, drop=drop is not None,
                                 interpreted=_interpreted())
        _launch(_attention_forward_kernel, (triton.cdiv(tokens, BLOCK_Q), rows), launch,
                q, key, v, w, cpos, p if drop is None else drop, out, idx, p, tokens,
                tokens if every else cand.shape[0], float(scale), float(self_logit or 0.0))
    return out, idx, p


def _backward_impl(grad_out: Tensor, q: Tensor, key: Tensor, v: Tensor, w: Tensor, idx: Tensor,
                   p: Tensor, drop: Tensor | None, scale: float,
                   constant_self: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    rows, tokens, dim = q.shape
    k = idx.shape[-1]
    grad_q, grad_key, grad_v = torch.empty_like(q), torch.empty_like(key), torch.empty_like(v)
    if rows == 0 or tokens == 0:
        return grad_q, grad_key.zero_(), grad_v, torch.zeros_like(w)
    q, key, v, w = q.contiguous(), key.contiguous(), v.contiguous(), w.contiguous()
    g = grad_out.contiguous()
    tiles = triton.cdiv(tokens, BLOCK_Q)
    dscore = torch.empty(rows, tokens, k, dtype=torch.float32, device=q.device)
    partial_w = torch.empty(rows * tiles, k, dim, dtype=torch.float32, device=q.device)
    drop_arg = p if drop is None else drop
    _launch(_attention_query_backward_kernel, (tiles, rows),
            _query_backward_launch(dim, k, constant_self=constant_self, drop=drop is not None),
            q, key, v, w, g, idx, p, drop_arg, grad_q, dscore, partial_w, tokens, float(scale))
    # the inverse index of I over the R·T token rows: entry (r·T + t)·k + j -> r·T + I[t, j]
    narrow = rows * tokens * k < 2 ** 31  # int32 entries
    if tokens <= MAX_INDEX_TOKENS and narrow:
        order = torch.empty(rows * tokens * k, dtype=torch.int32, device=q.device)
        rowptr = torch.empty(rows * tokens + 1, dtype=torch.int32, device=q.device)
        _launch(_attention_inverse_index_kernel, (rows,), _inverse_index_launch(tokens, k),
                idx, order, rowptr, tokens)
    else:
        offset = torch.arange(rows, device=q.device, dtype=torch.int32).mul_(tokens)
        order, rowptr = inverse_index((idx + offset.view(rows, 1, 1)).view(rows * tokens, k),
                                      rows * tokens)
        if narrow:
            order, rowptr = order.int(), rowptr.int()
    _launch(_attention_candidate_backward_kernel, (rows * tokens,),
            _candidate_backward_launch(dim, k, drop=drop is not None),
            q, w, g, p, drop_arg, dscore, order, rowptr, grad_v, grad_key)
    return grad_q, grad_key, grad_v, partial_w.sum(0).to(w.dtype)


@torch.library.custom_op("convnn::fused_attention", mutates_args=())
def _fused_attention_op(q: Tensor, key: Tensor, v: Tensor, w: Tensor, cand: Tensor | None,
                        drop: Tensor | None, k: int, scale: float, self_first: bool,
                        self_logit: float | None) -> tuple[Tensor, Tensor, Tensor]:
    """``(out [R, T, d] in v's dtype, I [R, T, k] int32, ρ [R, T, k] float32)``."""
    return _forward_impl(q, key, v, w, cand, drop, k, scale, self_first, self_logit)


@_fused_attention_op.register_fake
def _fused_attention_fake(q, key, v, w, cand, drop, k, scale, self_first, self_logit):
    rows, tokens, dim = q.shape
    return (v.new_empty(rows, tokens, dim), q.new_empty(rows, tokens, k, dtype=torch.int32),
            q.new_empty(rows, tokens, k, dtype=torch.float32))


@torch.library.custom_op("convnn::fused_attention_backward", mutates_args=())
def _fused_attention_backward_op(grad_out: Tensor, q: Tensor, key: Tensor, v: Tensor,
                                 w: Tensor, idx: Tensor, p: Tensor, drop: Tensor | None,
                                 scale: float, constant_self: bool
                                 ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(dq, dkey, dv, dw)`` in the dtypes of ``q, key, v, w``."""
    return _backward_impl(grad_out, q, key, v, w, idx, p, drop, scale, constant_self)


@_fused_attention_backward_op.register_fake
def _fused_attention_backward_fake(grad_out, q, key, v, w, idx, p, drop, scale, constant_self):
    return (torch.empty_like(q), torch.empty_like(key), torch.empty_like(v),
            torch.empty_like(w))


def _setup_context(ctx, inputs, output):
    q, key, v, w, _cand, drop, _k, scale, _self_first, self_logit = inputs
    _out, idx, p = output
    ctx.save_for_backward(q, key, v, w, idx, p, drop)
    ctx.scale, ctx.constant_self = float(scale), self_logit is not None
    ctx.mark_non_differentiable(idx, p)


def _backward(ctx, grad_out, _grad_idx, _grad_p):
    q, key, v, w, idx, p, drop = ctx.saved_tensors
    grad_q, grad_key, grad_v, grad_w = _fused_attention_backward_op(
        grad_out, q, key, v, w, idx, p, drop, ctx.scale, ctx.constant_self)
    return grad_q, grad_key, grad_v, grad_w, None, None, None, None, None, None


_fused_attention_op.register_autograd(_backward, setup_context=_setup_context)


def _check_candidates(candidate_positions: Tensor, tokens: int) -> None:
    """Value checks of the candidate positions, on a CPU only (on a GPU they would wait
    for the device: the layers draw their candidates in range and distinct)."""
    if candidate_positions.device.type != "cpu" or torch.compiler.is_compiling():
        return
    cmin, cmax = int(candidate_positions.min()), int(candidate_positions.max())
    if cmin < 0 or cmax >= tokens:
        raise ValueError(f"candidate_positions must lie in [0, T={tokens}), got [{cmin}, {cmax}]")
    if candidate_positions.unique().numel() != candidate_positions.numel():
        raise ValueError("candidate_positions must be distinct")


def fused_attention(q: Tensor, key: Tensor, v: Tensor, w: Tensor, k: int, scale: float, *,
                    self_first: bool = False, self_logit: float | None = None,
                    candidate_positions: Tensor | None = None, weight_dropout: Tensor | None = None,
                    return_indices: bool = False):
    """The ConvNN attention core of one head in one kernel: dot similarity, softmax
    weighting, depthwise aggregation, over all tokens or sampled candidates.

    ``q, key, v [R, T, d]`` (``R`` = batch·heads; float32, bfloat16 or float16, mixed
    allowed: under autocast the selection features stay float32 and ``v`` is bf16),
    ``w [k, d]`` (rank-major depthwise weights) -> ``out [R, T, d]`` in ``v``'s dtype, with
    ``out[t] = Σ_j ρ[t, j] · w[j] ⊙ v[I[t, j]]``: ``I[t]`` the k best keys among the
    candidates by ``(q_t · key_s) · scale`` (ranked under the precision contract of
    :mod:`convnn.ops`; best first, ties to the lower candidate), ``ρ[t]`` the softmax of
    their float32 scores. ``candidate_positions [m]``: distinct token indices to search
    (sampled candidates; needs ``self_first``; their values are checked on a CPU only);
    ``None``: all tokens. With ``self_first``, ``I[t, 0] = t`` and the other ``k - 1`` are
    searched among the candidates other than ``t``; the self logit is its real score
    (``self_logit=None``) or the constant ``self_logit`` (the authors' sampled attention uses
    :data:`convnn.ops.PAPER_SELF_LOGIT`). ``weight_dropout [R, T, k]``: dropout on the
    weights, the mask divided by the keep probability (``F.dropout(ones, p)``): ``ρ`` is
    multiplied by it after the softmax. ``return_indices``: also return ``I [R, T, k]``
    (int64). Needs ``1 <= k <= min(candidates, MAX_FUSED_ATTENTION_K)``.
    Differentiable in ``q``, ``key``, ``v`` and ``w``, without atomics; no host
    synchronisation; the custom op ``convnn::fused_attention`` (``torch.compile`` takes it).
    Unmeasured on a GPU: checked under ``TRITON_INTERPRET=1`` and compiled for every card by
    the compile gate (``python -m convnn bench --compile``).
    """
    if q.dim() != 3 or key.shape != q.shape or v.shape != q.shape:
        raise ValueError("q, key and v must all be [R, T, d], got "
                         f"{tuple(q.shape)}, {tuple(key.shape)} and {tuple(v.shape)}")
    tensors = (q, key, v, w)
    if any(t.dtype not in _DTYPES for t in tensors):
        raise ValueError("fused_attention takes float32, bfloat16 or float16 q, key, v and w, "
                         f"got {[t.dtype for t in tensors]}")
    tokens, dim = q.shape[1], q.shape[2]
    if self_logit is not None and (isinstance(self_logit, bool)
                                   or not isinstance(self_logit, (int, float))):
        raise TypeError(f"self_logit must be None or a number, got {self_logit!r}")
    if candidate_positions is not None:
        if not self_first:
            raise ValueError("sampled candidates put the query first: pass self_first=True")
        if candidate_positions.dim() != 1 or candidate_positions.numel() == 0:
            raise ValueError("candidate_positions must be a non-empty [m] index, got shape "
                             f"{tuple(candidate_positions.shape)}")
        if candidate_positions.numel() > tokens:
            raise ValueError(f"candidate_positions must hold at most T={tokens} distinct "
                             f"positions, got {candidate_positions.numel()}")
        _check_candidates(candidate_positions, tokens)
        available = candidate_positions.numel()
    else:
        available = tokens
    if not isinstance(k, int) or not 1 <= k <= min(available, MAX_FUSED_ATTENTION_K):
        raise ValueError(f"k must be an int in [1, min({available}, {MAX_FUSED_ATTENTION_K})] "
                         f"(the candidates), got {k!r}")
    if w.shape != (k, dim):
        raise ValueError(f"w must be [k, d] = [{k}, {dim}], got {tuple(w.shape)}")
    if weight_dropout is not None:
        if weight_dropout.shape != (q.shape[0], tokens, k):
            raise ValueError(f"weight_dropout must be [R, T, k] = [{q.shape[0]}, {tokens}, {k}], "
                             f"got {tuple(weight_dropout.shape)}")
        weight_dropout = weight_dropout.detach().to(torch.float32).contiguous()
    _require(q.device)
    out, idx, _ = _fused_attention_op(q, key, v, w, candidate_positions, weight_dropout, k,
                                      float(scale), bool(self_first),
                                      None if self_logit is None else float(self_logit))
    return (out, idx.long()) if return_indices else out


# ------------------------------------------------------------------ the compile gate
PAPER_TOKENS = 197
"""ViT-Tiny's tokens (224×224 input, patch 16, + the class token): the gate's shapes."""
PAPER_K = 9
PAPER_CANDIDATES = 32
PAPER_HEAD_DIMS = (192, 64)
"""d of a head: 1×192 (the paper's final runs) and 3×64."""


def _dtype_mixes(card) -> dict[str, tuple]:
    """What the card runs, as (q/key, v, w) dtypes: float32; the autocast mix (q/key float32
    selection features, 16-bit values, w a float32 parameter: bf16, or float16 on a card
    without bf16); and a model cast to the 16-bit dtype (all bf16, or all float16)."""
    f32 = torch.float32
    low = torch.bfloat16 if card.bf16 else torch.float16
    name = "bf16" if card.bf16 else "fp16"
    return {"fp32": (f32, f32, f32), f"autocast-{name}": (f32, low, f32),
            name: (low, low, low)}


_MODES = (("all", None, False, False), ("r=32", PAPER_CANDIDATES, True, False),
          ("r=32 paper-self-logit", PAPER_CANDIDATES, True, True))
"""(name, candidates, self_first, constant self logit) at the paper's shapes."""


def compile_variants(card) -> list[KernelVariant]:
    """Every launch configuration of the fused attention core at the paper's shapes
    (T = 197, k = 9, d = 192 and 64; all candidates, and r = 32 sampled candidates with the
    real or the paper's constant self logit) in the dtypes ``card`` runs, built by the
    launchers' own configuration helpers. The forward kernels are hot; the backward kernels
    are listed at 1×192 (d = 64 changes only the constant D)."""
    i32, f32p, i32p = "i32", pointer_type(torch.float32), pointer_type(torch.int32)
    variants = []
    for mix, (qk, val, wt) in _dtype_mixes(card).items():
        qk_p, v_p, w_p = pointer_type(qk), pointer_type(val), pointer_type(wt)
        for dim in PAPER_HEAD_DIMS:
            for mode, cand, self_first, constant_self in _MODES:
                launch = _forward_launch(PAPER_TOKENS, cand, dim, PAPER_K, q_dtype=qk,
                                         key_dtype=qk, self_first=self_first,
                                         constant_self=constant_self, drop=False,
                                         interpreted=False)
                signature = {"q_ptr": qk_p, "k_ptr": qk_p, "v_ptr": v_p, "w_ptr": w_p,
                             "cpos_ptr": i32p, "drop_ptr": f32p, "out_ptr": v_p,
                             "idx_ptr": i32p, "p_ptr": f32p, "T": i32, "M": i32,
                             "scale": "fp32", "self_logit": "fp32"}
                variants.append(KernelVariant(
                    _attention_forward_kernel,
                    f"attention_forward {mode} {mix} T={PAPER_TOKENS} d={dim} k={PAPER_K}",
                    signature, launch.constexprs, launch.num_warps, launch.num_stages,
                    hot=True))
                if dim != PAPER_HEAD_DIMS[0] or mode == "r=32":
                    continue  # the query backward differs only by CONST_SELF and D
                launch = _query_backward_launch(dim, PAPER_K, constant_self=constant_self,
                                                drop=False)
                signature = {"q_ptr": qk_p, "k_ptr": qk_p, "v_ptr": v_p, "w_ptr": w_p,
                             "g_ptr": v_p, "idx_ptr": i32p, "p_ptr": f32p, "drop_ptr": f32p,
                             "dq_ptr": qk_p, "ds_ptr": f32p, "dw_part_ptr": f32p, "T": i32,
                             "scale": "fp32"}
                which = "paper-self-logit" if constant_self else "real-self-score"
                variants.append(KernelVariant(
                    _attention_query_backward_kernel,
                    f"attention_query_backward {which} {mix} T={PAPER_TOKENS} d={dim} "
                    f"k={PAPER_K}", signature, launch.constexprs, launch.num_warps,
                    launch.num_stages))
        dim = PAPER_HEAD_DIMS[0]
        launch = _candidate_backward_launch(dim, PAPER_K, drop=False)
        signature = {"q_ptr": qk_p, "w_ptr": w_p, "g_ptr": v_p, "p_ptr": f32p,
                     "drop_ptr": f32p, "ds_ptr": f32p, "order_ptr": i32p,
                     "rowptr_ptr": i32p, "dv_ptr": v_p, "dk_ptr": qk_p}
        variants.append(KernelVariant(
            _attention_candidate_backward_kernel,
            f"attention_candidate_backward {mix} T={PAPER_TOKENS} d={dim} k={PAPER_K}",
            signature, launch.constexprs, launch.num_warps, launch.num_stages))
    launch = _inverse_index_launch(PAPER_TOKENS, PAPER_K)
    variants.append(KernelVariant(
        _attention_inverse_index_kernel, f"attention_inverse_index T={PAPER_TOKENS} k={PAPER_K}",
        {"idx_ptr": i32p, "order_ptr": i32p, "rowptr_ptr": i32p, "T": i32},
        launch.constexprs, launch.num_warps, launch.num_stages))
    return variants


# --- What the attention core can run: the predicate of convnn.ops.choose_backend -------------

FUSED_ATTENTION_OPTIONS = {"sampling": ("all", "random", "spatial"),
                           "selection": ("features",), "similarity": ("dot",),
                           "weighting": ("softmax",), "aggregation": ("depthwise",)}
"""The option sets of the fused attention core: the paper's ViT ConvNN layers (all, random or
spatial candidates)."""
FUSED_ATTENTION_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
"""The tensor dtypes it takes (16-bit values: the bf16 training path)."""


def can_run_fused_attention(*, k: int | None = None, width: int | None = None,
                            aggregation: str | None = None, similarity=None,
                            options: dict | None = None, dtype: torch.dtype | None = None,
                            device: torch.device | str | None = None) -> str | None:
    """Step ``"fused_attention"`` (:func:`fused_attention`): the core of a
    :class:`convnn.layers.ConvNNAttention` with ``k`` neighbours of ``width`` tokens;
    ``options``: the layer's ``sampling``, ``selection``, ``weighting``, ``attn_dropout``
    (on the weights) and ``dtypes`` (of queries, keys, values, weights); ``similarity``: an
    entry of ``convnn.ops.SIMILARITIES``."""
    from ._checks import check_int
    from .kernels import card_refusal

    check_int("k", k, minimum=1)
    if options is None:
        raise ValueError("step='fused_attention' needs options (the attention layer's "
                         "sampling, selection, weighting, attn_dropout, dtypes)")
    given = {**options, "similarity": getattr(similarity, "name", None),
             "aggregation": aggregation}
    for name, supported in FUSED_ATTENTION_OPTIONS.items():
        if given.get(name) not in supported:
            allowed = " or ".join(repr(v) for v in supported)
            return (f"{name}={given.get(name)!r} (the fused attention core takes "
                    f"{name}={allowed} only)")
    if k > MAX_FUSED_ATTENTION_K:
        return (f"k={k} > {MAX_FUSED_ATTENTION_K} (the fused attention core keeps its top-k "
                "in registers)")
    if width is not None:
        check_int("width", width, minimum=1)
        if k > width:
            return f"k={k} > {width} tokens"
    dtypes = set(options.get("dtypes", ())) | ({dtype} if dtype is not None else set())
    odd = dtypes - set(FUSED_ATTENTION_DTYPES)
    if odd:
        return (f"{', '.join(sorted(str(d) for d in odd))} tensors (the fused attention core "
                "takes float32, bfloat16 and float16)")
    return card_refusal(device, dtypes)
