"""The fused ConvNN attention core in Triton: all candidates, or sampled (random / spatial).

Per head, ``out[t] = Σ_j ρ[t, j] · w[j] ⊙ v[I[t, j]]``, where ``I[t]`` are the k keys of the
highest scores ``(q_t · key_s) · scale`` among the candidates (best first, ties to the lower
candidate) and ``ρ[t]`` is the softmax of their scores. Self-first (always with sampled
candidates) puts ``t`` in slot 0 with its real score or the paper's constant logit and
searches the other ``k - 1`` among the candidates other than ``t``.

**Precision** (the contract of :mod:`convnn.ops`): scores are tensor-core products with
float32 accumulation. A 16-bit bf16 operand enters as it is; a float32 (or float16) operand
``x`` is split into ``hi = bf16(x)`` and ``lo = bf16(x - hi)`` and the score is
``hi·hi + hi·lo + lo·hi`` ("bf16×3", three tensor-core products), within
:func:`convnn.ops.selection_score_bound` of the float32 score. The softmax, the aggregation
and every gradient accumulate in float32; outputs take the dtype of ``v``.

**Forward** (:func:`fused_attention`), one program per :data:`BLOCK_Q` queries of one
batch·head row (grid ``[⌈T / BLOCK_Q⌉, R]``):

- ``m ≤`` :data:`KEY_TILE` candidates (T = 197 with all candidates, r = 32 sampled): the
  whole ``[BLOCK_Q, m]`` score row is one ``tl.dot`` tile in registers (256 keys for
  T = 197; the d = 192 head in three 64-wide chunks) and the top-k is picked from it by k
  passes of max / lowest-column-of-the-max, with no merge;
- more candidates: the same per :data:`KEY_TILE`-wide tile, merged into the running top-k
  (the cheap merge: it touches k + tile entries per pass, only above 256 keys);
- then the self slot, the softmax over the k logits, dropout on the weights (the caller's
  mask, as the step-by-step path's ``F.dropout(ρ)``) and the depthwise aggregation (k
  gathered value rows per query, ``BLOCK_D`` channels at a time), all in registers. It
  writes the output, the indices (int32) and ρ ``[R, T, k]`` only: no score matrix.
  Non-finite scores rank last (as ``-inf``), as in :func:`convnn.ops.select_neighbours`.

**Backward**, no sort, no atomics, no per-row programs; two kernels:

- query side (grid ``[⌈T / BLOCK_Q⌉, R]``): dρ and this tile's dw partial sums from the k
  gathered value rows, dscore through the softmax (zero for the constant self logit),
  dq as ``Σ_j dscore_j · scale · key[I_j]`` (gathered), and the self slot's dV and dkey
  rows (the query's own row, written once);
- candidate side (grid ``[⌈m / BLOCK_S⌉, R, ⌈d / BLOCK_D⌉]``): each program owns
  ``BLOCK_S`` candidate rows and accumulates their dV and dkey in an on-chip
  ``[BLOCK_S, BLOCK_D]`` tile, sweeping the queries ``BLOCK_T`` at a time: for every rank j a
  one-hot ``[BLOCK_S, BLOCK_T]`` matrix of ``I[t, j] = s`` weighted by ``ρ[t, j]`` times
  ``(g ⊙ w_j)`` on tensor cores; dkey with the one-hot matrices summed over j, weighted by
  dscore, times q. With r = 32 sampled candidates that is one program per row and head, its
  cost linear in T; with all candidates ``⌈T / BLOCK_S⌉`` programs per row, quadratic like
  the scores. The candidate rows are added to the self rows by distinct indices (no atomics).

Unmeasured on a GPU: checked under ``TRITON_INTERPRET=1`` only, so it is opt-in
(``backend="triton"``); ``backend=None`` does not take it.
"""

from __future__ import annotations

import os

import torch
from torch import Tensor

from .kernels import _merge_top, _require, triton

if triton is not None:
    import triton.language as tl

MAX_FUSED_ATTENTION_K = 16
"""Largest k (self included) :func:`fused_attention` takes (the top-k lives in registers)."""
KEY_TILE = 256
"""Candidates per score tile: all of them up to this many (no merge), tiles merged above.
The tests lower it to cross tile boundaries at small T."""
BLOCK_Q = 16
"""Queries per forward / query-side backward program."""
BLOCK_S = 32
"""Candidate rows per candidate-side backward program."""
BLOCK_T = 32
"""Queries per step of the candidate-side backward program."""

_SPLIT_DTYPES = (torch.float32, torch.float16)
_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

if triton is not None:

    @triton.jit
    def _bf16_dot(a, b, acc, AS_F32: tl.constexpr):
        # acc + a @ b of bf16 tiles with float32 accumulation. AS_F32 (under the interpreter,
        # whose bf16 tl.dot is wrong in Triton 3.8): the same bf16 values multiplied as
        # float32, which is exact (a product of two bf16 values fits a float32).
        if AS_F32:
            return tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
        return tl.dot(a.to(tl.bfloat16), b.to(tl.bfloat16), acc)

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
    def _scores(q_base, k_base, cpos_ptr, rows, row_ok, cols, col_ok, D, scale,
                ALL: tl.constexpr, SPLIT_Q: tl.constexpr, SPLIT_K: tl.constexpr,
                AS_F32: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
        # [BLOCK_Q, BLOCK_N] scores of the query rows against candidate columns ``cols``
        if ALL:
            keys = cols.to(tl.int64)
        else:
            keys = tl.load(cpos_ptr + cols, mask=col_ok, other=0).to(tl.int64)
        acc = tl.zeros((BLOCK_Q, BLOCK_N), dtype=tl.float32)
        for d0 in range(0, D, BLOCK_D):
            dims = d0 + tl.arange(0, BLOCK_D)
            d_ok = dims < D
            q = tl.load(q_base + rows.to(tl.int64)[:, None] * D + dims[None, :],
                        mask=row_ok[:, None] & d_ok[None, :], other=0.0)
            kt = tl.load(k_base + keys[None, :] * D + dims[:, None],
                         mask=d_ok[:, None] & col_ok[None, :], other=0.0)
            acc = _contract_dot(q, kt, acc, SPLIT_Q, SPLIT_K, AS_F32)
        acc = acc * scale
        # non-finite scores (a NaN or infinite feature) rank last, as -inf (ops._top):
        # NaN < inf and inf < inf are both false
        return tl.where(acc < float("inf"), acc, float("-inf"))

    @triton.jit
    def _attention_forward_kernel(
            q_ptr, k_ptr, v_ptr, w_ptr, cpos_ptr, drop_ptr, out_ptr, idx_ptr, p_ptr,
            T, M, D, K, KS, scale, self_logit,
            DROP: tl.constexpr, ALL: tl.constexpr, SELF_FIRST: tl.constexpr, CONST_SELF: tl.constexpr,
            OFF: tl.constexpr, ONE_TILE: tl.constexpr, SPLIT_Q: tl.constexpr,
            SPLIT_K: tl.constexpr, AS_F32: tl.constexpr, KP: tl.constexpr,
            BLOCK_Q: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
        b = tl.program_id(1).to(tl.int64)
        rows = tl.program_id(0) * BLOCK_Q + tl.arange(0, BLOCK_Q)
        row_ok = rows < T
        rows64 = rows.to(tl.int64)
        slots = tl.arange(0, KP)
        NONE: tl.constexpr = 2147483647  # "no column": loses every tie, never stored
        base = b * T * D
        top_v = tl.full((BLOCK_Q, KP), float("-inf"), tl.float32)
        top_i = tl.full((BLOCK_Q, KP), NONE, tl.int32)
        if ONE_TILE:  # every candidate in one tile: top-k straight from the row
            cols = tl.arange(0, BLOCK_N)
            col_ok = cols < M
            s = _scores(q_ptr + base, k_ptr + base, cpos_ptr, rows, row_ok, cols, col_ok, D,
                        scale, ALL, SPLIT_Q, SPLIT_K, AS_F32, BLOCK_Q, BLOCK_N, BLOCK_D)
            if SELF_FIRST:  # the query's own column is not searched
                if ALL:
                    s = tl.where(cols[None, :] == rows[:, None], float("-inf"), s)
                else:
                    cp = tl.load(cpos_ptr + cols, mask=col_ok, other=-1)
                    s = tl.where(cp[None, :] == rows[:, None], float("-inf"), s)
            free = col_ok[None, :] & (rows >= 0)[:, None]
            for j in range(KS):
                live = tl.where(free, s, float("-inf"))
                best = tl.max(live, axis=1)
                hit = free & (live == best[:, None])  # -inf == -inf: masked columns rank too
                pos = tl.min(tl.where(hit, cols[None, :], NONE), axis=1)
                here = slots[None, :] == j + OFF
                top_v = tl.where(here, best[:, None], top_v)
                top_i = tl.where(here, pos[:, None], top_i)
                free = free & (cols[None, :] != pos[:, None])
        else:  # tiles of BLOCK_N candidates merged into the running top-k
            for n0 in range(0, M, BLOCK_N):
                cols = n0 + tl.arange(0, BLOCK_N)
                col_ok = cols < M
                s = _scores(q_ptr + base, k_ptr + base, cpos_ptr, rows, row_ok, cols, col_ok,
                            D, scale, ALL, SPLIT_Q, SPLIT_K, AS_F32, BLOCK_Q, BLOCK_N, BLOCK_D)
                if SELF_FIRST:
                    if ALL:
                        s = tl.where(cols[None, :] == rows[:, None], float("-inf"), s)
                    else:
                        cp = tl.load(cpos_ptr + cols, mask=col_ok, other=-1)
                        s = tl.where(cp[None, :] == rows[:, None], float("-inf"), s)
                s_free = col_ok[None, :] & (rows >= 0)[:, None]
                top_v, top_i = _merge_top(top_v, top_i, s, s_free, cols, slots, KS, OFF, NONE,
                                          BLOCK_Q, KP)
        searched = (slots >= OFF)[None, :] & (slots < K)[None, :] & (rows >= 0)[:, None]
        if not ALL:  # candidate columns -> token positions
            top_i = tl.load(cpos_ptr + top_i, mask=searched, other=0).to(tl.int32)
        if SELF_FIRST:  # slot 0: the query itself, with its real score or the constant logit
            own = tl.zeros((BLOCK_Q,), dtype=tl.float32) + self_logit
            if not CONST_SELF:
                dot = tl.zeros((BLOCK_Q,), dtype=tl.float32)
                for d0 in range(0, D, BLOCK_D):
                    dims = d0 + tl.arange(0, BLOCK_D)
                    ok = row_ok[:, None] & (dims < D)[None, :]
                    at = base + rows64[:, None] * D + dims[None, :]
                    q = tl.load(q_ptr + at, mask=ok, other=0.0).to(tl.float32)
                    kk = tl.load(k_ptr + at, mask=ok, other=0.0).to(tl.float32)
                    dot += tl.sum(q * kk, axis=1)
                own = dot * scale
            top_v = tl.where(slots[None, :] == 0, own[:, None], top_v)
            top_i = tl.where(slots[None, :] == 0, rows[:, None], top_i)
        valid = (slots < K)[None, :] & (rows >= 0)[:, None]
        logits = tl.where(valid, top_v, float("-inf"))
        mx = tl.max(logits, axis=1)
        e = tl.where(valid, tl.exp(logits - mx[:, None]), 0.0)
        p = e / tl.sum(e, axis=1)[:, None]
        top_i = tl.where(valid, top_i, 0)
        store_ok = row_ok[:, None] & valid
        flat = (b * T + rows64)[:, None] * K + slots[None, :]
        tl.store(idx_ptr + flat, top_i, mask=store_ok)
        tl.store(p_ptr + flat, p, mask=store_ok)
        rho = p
        if DROP:  # dropout on the weights: ρ times the caller's mask / (1 - p_drop)
            rho = p * tl.load(drop_ptr + flat, mask=store_ok, other=0.0)
        for d0 in range(0, D, BLOCK_D):
            dims = d0 + tl.arange(0, BLOCK_D)
            d_ok = dims < D
            ok = row_ok[:, None] & d_ok[None, :]
            acc = tl.zeros((BLOCK_Q, BLOCK_D), dtype=tl.float32)
            for j in range(K):
                sel = slots[None, :] == j
                pj = tl.sum(tl.where(sel, rho, 0.0), axis=1)
                ij = tl.sum(tl.where(sel, top_i, 0), axis=1)
                vv = tl.load(v_ptr + base + ij.to(tl.int64)[:, None] * D + dims[None, :],
                             mask=ok, other=0.0).to(tl.float32)
                wj = tl.load(w_ptr + j * D + dims, mask=d_ok, other=0.0).to(tl.float32)
                acc += (vv * wj[None, :]) * pj[:, None]
            tl.store(out_ptr + base + rows64[:, None] * D + dims[None, :],
                     acc.to(out_ptr.dtype.element_ty), mask=ok)

    @triton.jit
    def _attention_query_backward_kernel(
            q_ptr, k_ptr, v_ptr, w_ptr, g_ptr, idx_ptr, p_ptr, drop_ptr,
            dq_ptr, ds_ptr, dw_part_ptr, dv_self_ptr, dk_self_ptr,
            T, D, K, scale, DROP: tl.constexpr,
            SELF_FIRST: tl.constexpr, CONST_SELF: tl.constexpr, KP: tl.constexpr,
            BLOCK_Q: tl.constexpr, BLOCK_D: tl.constexpr):
        # dρ[t, j] = Σ_c g[t, c] w[j, c] v[I[t, j], c];  dw partial[j, c] = Σ_t ρ g v[I];
        # dscore = ρ (dρ - Σ ρ dρ) · scale;  dq[t] = Σ_j dscore[t, j] key[I[t, j]];
        # self slot: dV[t] += ρ[t, 0] w[0] ⊙ g[t], dkey[t] += dscore[t, 0] q[t].
        b = tl.program_id(1).to(tl.int64)
        tile = tl.program_id(0)
        rows = tile * BLOCK_Q + tl.arange(0, BLOCK_Q)
        row_ok = rows < T
        rows64 = rows.to(tl.int64)
        slots = tl.arange(0, KP)
        valid = (slots < K)[None, :] & (rows >= 0)[:, None]
        base = b * T * D
        flat = (b * T + rows64)[:, None] * K + slots[None, :]
        kv_ok = row_ok[:, None] & valid
        idx = tl.load(idx_ptr + flat, mask=kv_ok, other=0)
        p = tl.load(p_ptr + flat, mask=kv_ok, other=0.0)
        rho = p  # the weights the aggregation used
        if DROP:
            drop = tl.load(drop_ptr + flat, mask=kv_ok, other=0.0)
            rho = p * drop
        drho = tl.zeros((BLOCK_Q, KP), dtype=tl.float32)
        part = (b * tl.num_programs(0) + tile) * K
        for d0 in range(0, D, BLOCK_D):
            dims = d0 + tl.arange(0, BLOCK_D)
            d_ok = dims < D
            ok = row_ok[:, None] & d_ok[None, :]
            g = tl.load(g_ptr + base + rows64[:, None] * D + dims[None, :], mask=ok,
                        other=0.0).to(tl.float32)
            for j in range(K):
                sel = slots[None, :] == j
                pj = tl.sum(tl.where(sel, rho, 0.0), axis=1)
                ij = tl.sum(tl.where(sel, idx, 0), axis=1)
                vv = tl.load(v_ptr + base + ij.to(tl.int64)[:, None] * D + dims[None, :],
                             mask=ok, other=0.0).to(tl.float32)
                wj = tl.load(w_ptr + j * D + dims, mask=d_ok, other=0.0).to(tl.float32)
                gv = g * vv
                drho += tl.where(sel, tl.sum(gv * wj[None, :], axis=1)[:, None], 0.0)
                tl.store(dw_part_ptr + (part + j) * D + dims, tl.sum(gv * pj[:, None], axis=0),
                         mask=d_ok)
                if SELF_FIRST:  # noqa: SIM102 (constexpr, then a runtime test)
                    if j == 0:
                        tl.store(dv_self_ptr + base + rows64[:, None] * D + dims[None, :],
                                 g * wj[None, :] * pj[:, None], mask=ok)
        if DROP:  # through the dropout mask to the softmax output
            drho = drho * drop
        ds = p * (drho - tl.sum(p * drho, axis=1)[:, None])
        if SELF_FIRST and CONST_SELF:  # the constant logit has no gradient
            ds = tl.where(slots[None, :] == 0, 0.0, ds)
        ds = tl.where(valid, ds * scale, 0.0)
        tl.store(ds_ptr + flat, ds, mask=kv_ok)
        ds0 = tl.sum(tl.where(slots[None, :] == 0, ds, 0.0), axis=1)
        for d0 in range(0, D, BLOCK_D):
            dims = d0 + tl.arange(0, BLOCK_D)
            d_ok = dims < D
            ok = row_ok[:, None] & d_ok[None, :]
            acc = tl.zeros((BLOCK_Q, BLOCK_D), dtype=tl.float32)
            for j in range(K):
                sel = slots[None, :] == j
                dj = tl.sum(tl.where(sel, ds, 0.0), axis=1)
                ij = tl.sum(tl.where(sel, idx, 0), axis=1)
                kk = tl.load(k_ptr + base + ij.to(tl.int64)[:, None] * D + dims[None, :],
                             mask=ok, other=0.0).to(tl.float32)
                acc += kk * dj[:, None]
            at = base + rows64[:, None] * D + dims[None, :]
            tl.store(dq_ptr + at, acc, mask=ok)
            if SELF_FIRST and not CONST_SELF:
                qq = tl.load(q_ptr + at, mask=ok, other=0.0).to(tl.float32)
                tl.store(dk_self_ptr + at, qq * ds0[:, None], mask=ok)

    @triton.jit
    def _attention_candidate_backward_kernel(
            q_ptr, w_ptr, g_ptr, idx_ptr, p_ptr, ds_ptr, cpos_ptr, dv_ptr, dk_ptr,
            T, M, D, K, ALL: tl.constexpr, OFF: tl.constexpr, LOW_V: tl.constexpr,
            LOW_K: tl.constexpr, AS_F32: tl.constexpr,
            BLOCK_S: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr):
        # dV[s] = Σ_{t, j ≥ OFF: I[t, j] = s} ρ[t, j] w[j] ⊙ g[t]; dkey[s] likewise with
        # dscore[t, j] q[t]: one-hot [BLOCK_S, BLOCK_T] matrices on tensor cores, on chip.
        b = tl.program_id(1).to(tl.int64)
        cand = tl.program_id(0) * BLOCK_S + tl.arange(0, BLOCK_S)
        c_ok = cand < M
        if ALL:
            spos = cand
        else:
            spos = tl.load(cpos_ptr + cand, mask=c_ok, other=-1)
        spos = tl.where(c_ok, spos, -1)
        dims = tl.program_id(2) * BLOCK_D + tl.arange(0, BLOCK_D)
        d_ok = dims < D
        base = b * T * D
        acc_v = tl.zeros((BLOCK_S, BLOCK_D), dtype=tl.float32)
        acc_k = tl.zeros((BLOCK_S, BLOCK_D), dtype=tl.float32)
        for t0 in range(0, T, BLOCK_T):
            t = t0 + tl.arange(0, BLOCK_T)
            t_ok = t < T
            t64 = t.to(tl.int64)
            ok = t_ok[:, None] & d_ok[None, :]
            g = tl.load(g_ptr + base + t64[:, None] * D + dims[None, :], mask=ok, other=0.0)
            g = g.to(tl.float32)
            hits_ds = tl.zeros((BLOCK_S, BLOCK_T), dtype=tl.float32)
            for j in range(OFF, K):
                at = (b * T + t64) * K + j
                ij = tl.load(idx_ptr + at, mask=t_ok, other=-2)
                pj = tl.load(p_ptr + at, mask=t_ok, other=0.0)
                dj = tl.load(ds_ptr + at, mask=t_ok, other=0.0)
                hit = spos[:, None] == ij[None, :]
                wj = tl.load(w_ptr + j * D + dims, mask=d_ok, other=0.0).to(tl.float32)
                gw = g * wj[None, :]
                onehot = tl.where(hit, pj[None, :], 0.0)
                if LOW_V:
                    acc_v = _bf16_dot(onehot.to(tl.bfloat16), gw.to(tl.bfloat16), acc_v, AS_F32)
                else:
                    acc_v = tl.dot(onehot, gw, acc_v, input_precision="tf32x3")
                hits_ds += tl.where(hit, dj[None, :], 0.0)
            qq = tl.load(q_ptr + base + t64[:, None] * D + dims[None, :], mask=ok, other=0.0)
            if LOW_K:
                acc_k = _bf16_dot(hits_ds.to(tl.bfloat16), qq.to(tl.bfloat16), acc_k, AS_F32)
            else:
                acc_k = tl.dot(hits_ds, qq.to(tl.float32), acc_k, input_precision="tf32x3")
        out = (b * M + cand.to(tl.int64))[:, None] * D + dims[None, :]
        tl.store(dv_ptr + out, acc_v, mask=c_ok[:, None] & d_ok[None, :])
        tl.store(dk_ptr + out, acc_k, mask=c_ok[:, None] & d_ok[None, :])


def _interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def _block_d(dim: int) -> int:
    return max(16, min(64, triton.next_power_of_2(dim)))


class FusedAttention(torch.autograd.Function):
    """Autograd op of :func:`fused_attention`: ``(q, key, v [R, T, d], w [k, d]) -> [R, T, d]``.

    Saves the inputs (alive anyway), the indices (int32) and ρ ``[R, T, k]``: no score
    matrix and no gathered ``[R, T, k, d]`` tensor, in either pass.
    """

    @staticmethod
    def forward(ctx, q, key, v, w, cand, drop, k, scale, self_first, self_logit):
        constant_self = self_logit is not None
        q, key, v, w = q.contiguous(), key.contiguous(), v.contiguous(), w.contiguous()
        rows, tokens, dim = q.shape
        every = cand is None
        m = tokens if every else cand.shape[0]
        cpos = (torch.zeros(1, dtype=torch.int32, device=q.device) if every
                else cand.to(device=q.device, dtype=torch.int32).contiguous())
        out = torch.empty_like(v)
        idx = torch.empty(rows, tokens, k, dtype=torch.int32, device=q.device)
        p = torch.empty(rows, tokens, k, dtype=torch.float32, device=q.device)
        if rows and tokens:
            one_tile = m <= KEY_TILE
            block_n = max(16, triton.next_power_of_2(m)) if one_tile else KEY_TILE
            grid = (triton.cdiv(tokens, BLOCK_Q), rows)
            _attention_forward_kernel[grid](
                q, key, v, w, cpos, p if drop is None else drop, out, idx, p, tokens, m, dim,
                k, k - 1 if self_first else k, float(scale), float(self_logit or 0.0),
                DROP=drop is not None, ALL=every, SELF_FIRST=bool(self_first), CONST_SELF=bool(constant_self),
                OFF=1 if self_first else 0, ONE_TILE=one_tile,
                SPLIT_Q=q.dtype in _SPLIT_DTYPES, SPLIT_K=key.dtype in _SPLIT_DTYPES, AS_F32=_interpreted(),
                KP=max(2, triton.next_power_of_2(k)), BLOCK_Q=BLOCK_Q, BLOCK_N=block_n,
                BLOCK_D=_block_d(dim), num_warps=4)
        ctx.save_for_backward(q, key, v, w, cpos, idx, p, drop)
        ctx.every, ctx.m = every, m
        ctx.scale, ctx.self_first, ctx.constant_self = float(scale), self_first, constant_self
        ctx.mark_non_differentiable(idx)
        return out, idx

    @staticmethod
    def backward(ctx, grad_out, _grad_idx):
        q, key, v, w, cpos, idx, p, drop = ctx.saved_tensors
        rows, tokens, dim = q.shape
        k, m, every = idx.shape[-1], ctx.m, ctx.every
        dev = q.device
        if rows == 0 or tokens == 0:
            return (torch.zeros_like(q), torch.zeros_like(key), torch.zeros_like(v),
                    torch.zeros_like(w), None, None, None, None, None, None)
        g = grad_out.contiguous()
        f32 = {"dtype": torch.float32, "device": dev}
        block_d = _block_d(dim)
        tiles = triton.cdiv(tokens, BLOCK_Q)
        grad_q = torch.empty(rows, tokens, dim, **f32)
        dscore = torch.empty(rows, tokens, k, **f32)
        partial_w = torch.empty(rows * tiles, k, dim, **f32)
        self_first, const = ctx.self_first, ctx.constant_self
        dv_self = torch.empty(rows, tokens, dim, **f32) if self_first else grad_q
        dk_self = (torch.empty(rows, tokens, dim, **f32) if self_first and not const
                   else grad_q)
        _attention_query_backward_kernel[(tiles, rows)](
            q, key, v, w, g, idx, p, p if drop is None else drop, grad_q, dscore, partial_w,
            dv_self, dk_self, tokens, dim, k, ctx.scale, DROP=drop is not None, SELF_FIRST=bool(self_first), CONST_SELF=bool(const),
            KP=max(2, triton.next_power_of_2(k)), BLOCK_Q=BLOCK_Q, BLOCK_D=block_d,
            num_warps=4)
        cand_v = torch.empty(rows, m, dim, **f32)
        cand_k = torch.empty(rows, m, dim, **f32)
        low_v = g.dtype == torch.bfloat16  # bf16 training: bf16 operands, as flash attention
        low_k = low_v and q.dtype == torch.bfloat16
        _attention_candidate_backward_kernel[(triton.cdiv(m, BLOCK_S), rows,
                                              triton.cdiv(dim, block_d))](
            q, w, g, idx, p if drop is None else p * drop, dscore, cpos, cand_v, cand_k, tokens,
            m, dim, k,
            ALL=every, OFF=1 if self_first else 0, LOW_V=low_v, LOW_K=low_k,
            AS_F32=_interpreted(), BLOCK_S=BLOCK_S,
            BLOCK_T=BLOCK_T, BLOCK_D=block_d, num_warps=4)
        grad_v = _combine(cand_v, every, cpos, dv_self if self_first else None, tokens)
        grad_key = _combine(cand_k, every, cpos, dk_self if self_first and not const else None,
                            tokens)
        grad_w = partial_w.sum(0)
        return (grad_q.to(q.dtype), grad_key.to(key.dtype), grad_v.to(v.dtype),
                grad_w.to(w.dtype), None, None, None, None, None, None)


def _combine(cand_rows: Tensor, every: bool, cpos: Tensor, self_rows: Tensor | None,
             tokens: int) -> Tensor:
    """Gradient rows of the candidates ``[R, m, d]`` added to the self-slot rows
    ``[R, T, d]`` (distinct candidate indices: a plain indexed add, no atomics)."""
    if every:
        return cand_rows if self_rows is None else self_rows + cand_rows
    if self_rows is None:  # the constant self logit: no self-slot key gradient
        self_rows = cand_rows.new_zeros(cand_rows.shape[0], int(tokens), cand_rows.shape[2])
    at = cpos.long()
    self_rows[:, at] = self_rows[:, at] + cand_rows
    return self_rows


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
    candidates by ``(q_t · key_s) · scale`` (scores under the precision contract of
    :mod:`convnn.ops`; best first, ties to the lower candidate), ``ρ[t]`` their softmax.
    ``candidate_positions [m]``: distinct token indices to search (sampled candidates; needs
    ``self_first``); ``None``: all tokens. With ``self_first``, ``I[t, 0] = t`` and the
    other ``k - 1`` are searched among the candidates other than ``t``; the self logit is
    its real score (``self_logit=None``) or the constant ``self_logit`` (the authors'
    sampled attention uses :data:`convnn.ops.PAPER_SELF_LOGIT`). ``weight_dropout [R, T, k]``: dropout on the weights, the mask divided
    by the keep probability (``F.dropout(ones, p)``): ``ρ`` is multiplied by it after the
    softmax. ``return_indices``: also return ``I [R, T, k]`` (int64).
    Needs ``1 <= k <= min(candidates, MAX_FUSED_ATTENTION_K)``.
    Differentiable in ``q``, ``key``, ``v`` and ``w``, without atomics or sorting.
    Unmeasured on a GPU: only checked under ``TRITON_INTERPRET=1``.
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
        cmin, cmax = int(candidate_positions.min()), int(candidate_positions.max())
        if cmin < 0 or cmax >= tokens:
            raise ValueError(f"candidate_positions must lie in [0, T={tokens}), got "
                             f"[{cmin}, {cmax}]")
        if candidate_positions.unique().numel() != candidate_positions.numel():
            raise ValueError("candidate_positions must be distinct")
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
    out, idx = FusedAttention.apply(q, key, v, w, candidate_positions, weight_dropout, k, scale,
                                    bool(self_first),
                                    None if self_logit is None else float(self_logit))
    return (out, idx.long()) if return_indices else out


def compile_variants(card) -> list:
    """The launch configurations of the attention core at the paper's shapes (ViT-Tiny:
    T = 197 tokens, heads of 64 and one head of 192, k = 9; all candidates and r = 32
    sampled) on ``card``, in the dtypes it runs (see :mod:`convnn.bench.compile`)."""
    from .kernels import KernelVariant, pointer_type

    if card.bf16:  # bf16 autocast: float32 or bf16 selection features, bf16 values
        dtype_sets = ((torch.float32, torch.bfloat16), (torch.bfloat16, torch.bfloat16),
                      (torch.float32, torch.float32))
    else:  # fp16 autocast on a T4
        dtype_sets = ((torch.float32, torch.float16), (torch.float16, torch.float16),
                      (torch.float32, torch.float32))
    modes = (("all", True, False, False), ("random r=32", False, True, False),
             ("random r=32 paper self logit", False, True, True))
    variants = []
    block_d = _block_d(64)
    for qk, values in dtype_sets:
        qk_ptr, v_ptr = pointer_type(qk), pointer_type(values)
        low = values == torch.bfloat16
        tag = f"q/k {qk_ptr[1:]} v {v_ptr[1:]}"
        for mode, every, self_first, const_self in modes:
            m = 197 if every else 32
            variants.append(KernelVariant(
                _attention_forward_kernel, f"attention forward {mode} {tag} k=9",
                {"q_ptr": qk_ptr, "k_ptr": qk_ptr, "v_ptr": v_ptr, "w_ptr": v_ptr,
                 "cpos_ptr": "*i32", "drop_ptr": "*fp32", "out_ptr": v_ptr, "idx_ptr": "*i32",
                 "p_ptr": "*fp32", "T": "i32", "M": "i32", "D": "i32", "K": "i32",
                 "KS": "i32", "scale": "fp32", "self_logit": "fp32"},
                {"DROP": False, "ALL": every, "SELF_FIRST": self_first,
                 "CONST_SELF": const_self, "OFF": 1 if self_first else 0, "ONE_TILE": True,
                 "SPLIT_Q": qk in _SPLIT_DTYPES, "SPLIT_K": qk in _SPLIT_DTYPES,
                 "AS_F32": False, "KP": 16, "BLOCK_Q": BLOCK_Q,
                 "BLOCK_N": max(16, triton.next_power_of_2(m)), "BLOCK_D": block_d},
                hot=True))
            variants.append(KernelVariant(
                _attention_query_backward_kernel, f"attention backward query {mode} {tag}",
                {"q_ptr": qk_ptr, "k_ptr": qk_ptr, "v_ptr": v_ptr, "w_ptr": v_ptr,
                 "g_ptr": v_ptr, "idx_ptr": "*i32", "p_ptr": "*fp32", "drop_ptr": "*fp32",
                 "dq_ptr": "*fp32", "ds_ptr": "*fp32", "dw_part_ptr": "*fp32",
                 "dv_self_ptr": "*fp32", "dk_self_ptr": "*fp32", "T": "i32", "D": "i32",
                 "K": "i32", "scale": "fp32"},
                {"DROP": False, "SELF_FIRST": self_first, "CONST_SELF": const_self,
                 "KP": 16, "BLOCK_Q": BLOCK_Q, "BLOCK_D": block_d}))
            variants.append(KernelVariant(
                _attention_candidate_backward_kernel,
                f"attention backward candidates {mode} {tag}",
                {"q_ptr": qk_ptr, "w_ptr": v_ptr, "g_ptr": v_ptr, "idx_ptr": "*i32",
                 "p_ptr": "*fp32", "ds_ptr": "*fp32", "cpos_ptr": "*i32", "dv_ptr": "*fp32",
                 "dk_ptr": "*fp32", "T": "i32", "M": "i32", "D": "i32", "K": "i32"},
                {"ALL": every, "OFF": 1 if self_first else 0, "LOW_V": low,
                 "LOW_K": low and qk == torch.bfloat16, "AS_F32": False, "BLOCK_S": BLOCK_S,
                 "BLOCK_T": BLOCK_T, "BLOCK_D": block_d}))
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
