"""Checks of the Triton kernels, run by ``test_fused_kernels.py`` in a subprocess with
``TRITON_INTERPRET=1`` (the variable must be set before Triton loads)."""

from __future__ import annotations

import sys
import traceback

import torch
import torch.nn.functional as F

from convnn import ConvNN2d, ConvNNAttention, kernels, kernels_attention, kernels_projection, ops

BEGIN, END = "=== CHECK BEGIN ", "=== CHECK END "


def run_checks(*calls: str) -> None:
    """Run each check (a call expression of this module) in turn, its output between marker
    lines; a failing check prints its traceback and the next one still runs."""
    for call in calls:
        print(BEGIN + call, flush=True)
        try:
            eval(call, globals())
        except Exception:  # noqa: BLE001 (reported to the test, which fails)
            traceback.print_exc(file=sys.stdout)
        print(END + call, flush=True)


def _stable_top(scores, k):
    return torch.sort(scores, dim=-1, descending=True, stable=True).indices[..., :k]


def _assert_selected_dominate(scores, idx):
    """Every selected score >= every unselected score of the same row."""
    chosen = scores.gather(-1, idx)
    rest = scores.scatter(-1, idx, float("-inf"))
    assert bool((chosen.min(-1).values >= rest.max(-1).values).all())


def topk_matches_stable_sort():
    assert kernels.available(torch.device("cpu"))
    gen = torch.Generator().manual_seed(0)
    for width in (13, 197):
        for k in range(1, 17):
            if k > width:
                continue
            scores = torch.randn(2, 5, width, generator=gen)
            scores[0, :, ::3] = 0.0  # many exact ties
            scores[1, 1, :] = 0.5  # a row of equal scores
            scores[1, 2, : width // 2] = float("-inf")  # -inf masks
            scores[1, 3, :] = float("-inf")  # all masked: columns 0..k-1
            scores[1, 4, 1:] = float("-inf")  # fewer finite scores than k
            idx = kernels.row_topk(scores, k)
            assert idx.dtype == torch.long and idx.shape == (2, 5, k)
            assert torch.equal(idx, _stable_top(scores, k)), (width, k)
            _assert_selected_dominate(scores, idx)
    # float64 rows, a non-contiguous view, a row wider than a power of two block
    scores = torch.randn(7, 1100, dtype=torch.float64, generator=gen).round(decimals=1)
    assert torch.equal(kernels.row_topk(scores, 9), _stable_top(scores, 9))
    view = scores[:, ::2]
    assert torch.equal(kernels.row_topk(view, 5), _stable_top(view, 5))
    print("TOPK OK")


def selection_with_ties_matches_stable_reference():
    """Zero-padded maps (cosine 0 ties) through ``select_neighbours``: the Triton top-k gives the
    stable reference's indices and scores, with all, random and spatial candidates."""
    torch.manual_seed(0)
    x = F.pad(torch.randn(2, 4, 5, 5), (2, 2, 2, 2)).flatten(2).transpose(1, 2)  # (2, 81, 4)
    x[:, 40] = x[:, 41]  # duplicate features: equal non-zero scores too
    n = x.shape[1]
    qpos = torch.arange(n)
    cases = [{}, {"self_first": True},
             {"self_first": True,
              "candidate_positions": torch.tensor([0, 3, 9, 20, 40, 41, 60, 80])},
             {"self_first": True, "candidate_positions": ops.spatial_candidates_2d(5, 5, 3, 2)}]
    for similarity in ("cosine", "dot", "euclidean"):
        for case in cases:
            for k in (1, 7):
                with ops.default_backend("triton"):
                    got_i, got_s = ops.select_neighbours(x, x, k, similarity,
                                                         query_positions=qpos, **case)
                with ops.default_backend("torch"):
                    ref_i, ref_s = ops.select_neighbours_reference(
                        x, x, k, similarity, query_positions=qpos, stable=True, **case)
                assert torch.equal(got_i, ref_i), (similarity, case, k)
                # -d at d ~ 0 is a square root of rounding noise in either path
                tol = 2e-3 if similarity == "euclidean" else 1e-5
                torch.testing.assert_close(got_s, ref_s, rtol=tol, atol=tol)
    # The 2-D layer, cosine on a padded map: identical to the PyTorch path with a stable sort.
    layer = ConvNN2d(3, 3, k=9, padding=1, weighting="softmax", aggregation="depthwise")
    img = torch.randn(2, 3, 6, 6)
    img[:, :, :2] = 0.0
    with ops.default_backend("triton"):
        got = layer.neighbours(img)
    sel = F.pad(img, (1, 1, 1, 1)).flatten(2).transpose(1, 2)
    q = ops.interior_positions(6, 6, 1)
    ref = ops.select_neighbours_reference(sel[:, q], sel, 9, "cosine", query_positions=q,
                                          self_first=layer.self_first, stable=True)[0]
    assert torch.equal(got, ref)
    print("SELECTION OK")


class _CountFused:
    """Counts the fused-selection kernel launches (proof that the fused path ran); ``name``:
    the kernel entry point counted (``"fused_attention"``: the fused attention core)."""

    def __init__(self, name="fused_topk"):
        self.calls = 0
        self.name = name
        self.module = {"fused_attention": kernels_attention,
                       "contract_projection": kernels_projection}.get(name, kernels)
        self.original = getattr(self.module, name)

    def __enter__(self):
        def counted(*args, **kwargs):
            self.calls += 1
            return self.original(*args, **kwargs)
        setattr(self.module, self.name, counted)
        return self

    def __exit__(self, *exc):
        setattr(self.module, self.name, self.original)


def _exact_features(rows, tokens, dim, similarity, gen):
    """Features whose scores are exact in float32 whatever the summation order: small integers
    (dot), or ±1 in exactly 4 of the dims, norm 2 (cosine: normalised entries ±0.5). Repeated
    rows and zero rows make ties: equal scores that only the column order separates."""
    if similarity == "dot":
        x = torch.randint(-3, 4, (rows, tokens, dim), generator=gen).float()
    else:
        x = torch.zeros(rows, tokens, dim)
        for r in range(rows):
            for t in range(tokens):
                where = torch.randperm(dim, generator=gen)[:4]
                x[r, t, where] = torch.randint(0, 2, (4,), generator=gen).float() * 2 - 1
    x[:, 1::5] = x[:, :1]  # every fifth row repeats the first
    x[:, 2::7] = 0.0  # zero rows: score 0 against everything
    return x


def _candidate_sets(tokens, gen):
    """All keys, a random subset (unsorted), evenly spaced keys (``candidates = T // 2``)."""
    count = max(2, tokens // 2)
    return (("all", None),
            ("random", torch.randperm(tokens, generator=gen)[:count]),
            ("spaced", ops.spatial_candidates_1d(tokens, count)))


def _fused_case(query, keys, k, similarity, cand, self_first, exact, gen):
    """One selection through the fused kernel and the stable PyTorch path: indices (and, where
    they are equal, scores and their gradients) must agree."""
    query = query.clone().requires_grad_()
    keys = keys.clone().requires_grad_()
    opts = {"candidate_positions": cand, "self_first": self_first, "stable": True}
    with _CountFused() as count:
        got_i, got_s = ops.select_neighbours(query, keys, k, similarity, backend="triton",
                                             **opts)
    k_search = k - 1 if self_first else k
    assert count.calls == (1 if k_search > 0 else 0), (k, self_first, count.calls)
    ref_i, ref_s = ops.select_neighbours(query, keys, k, similarity, backend="torch", **opts)
    plain_i, _ = ops.select_neighbours_reference(query.detach(), keys.detach(), k, similarity,
                                                 with_scores=False, **opts)
    assert torch.equal(ref_i, plain_i)
    if not exact and not torch.equal(got_i, ref_i):
        # the precision contract (bf16x3) may swap two scores within its bound: the choices
        # must then be a near-tie, rank by rank (the ops docstring: at most 2 max τ apart)
        full = ops.pairwise_scores(query.detach(), keys.detach(), similarity)
        entry = ops.get_similarity(similarity)
        q, kk, _ = entry.prepare(query.detach(), keys.detach())
        tau = ops.selection_score_bound(q, kk, entry.fused_scale(q, None)).amax(-1, True)
        gap = (full.gather(-1, got_i) - full.gather(-1, ref_i)).abs()
        assert bool((gap <= 2 * tau + 1e-6).all()), float((gap / tau).max())
        return 1
    assert torch.equal(got_i, ref_i), (similarity, k, self_first, cand)
    torch.testing.assert_close(got_s, ref_s, rtol=1e-5, atol=1e-5)
    upstream = torch.randn(ref_s.shape, generator=gen)
    got_g = torch.autograd.grad((got_s * upstream).sum(), (query, keys), allow_unused=True)
    ref_g = torch.autograd.grad((ref_s * upstream).sum(), (query, keys), allow_unused=True)
    for a, b in zip(got_g, ref_g):
        assert (a is None) == (b is None)
        if a is not None:  # relative to the scale: normalising zero rows gives huge gradients
            scale = max(1.0, float(b.abs().max()))
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5 * scale)
    return 0


def fused_selection_matches_stable_reference(tokens=13, dim=8, every=1, images=2):
    """The fused selection (Triton, no score matrix) against the stable PyTorch path and the
    full-matrix reference, float32: dot and cosine, 1 and 3 heads (batch·heads rows of 2
    images), k from 1 to 16, all / random / evenly spaced candidates, self-first on and off
    (the own column is -inf), exact-valued features with many ties, then Gaussian features.
    ``every``: every n-th k; ``images``: batch·heads rows are ``images · heads``."""
    tokens, dim, every, images = int(tokens), int(dim), int(every), int(images)
    gen = torch.Generator().manual_seed(0)
    cases = swapped = 0
    for similarity in ("dot", "cosine"):
        for heads in (1, 3):
            for exact in (True, False):
                if exact:
                    x = _exact_features(images * heads, tokens, dim, similarity, gen)
                    q = _exact_features(images * heads, tokens, dim, similarity, gen)
                else:
                    # no repeated rows here: the interpreter's tl.dot (a BLAS matmul) may
                    # round equal columns differently; exact ties are the first family's
                    x = torch.randn(images * heads, tokens, dim, generator=gen)
                    q = torch.randn(images * heads, tokens, dim, generator=gen)
                for name, cand in _candidate_sets(tokens, gen):
                    available = tokens if cand is None else cand.shape[0]
                    for self_first in ((False, True) if cand is None else (True,)):
                        for k in range(1, min(17, available + 1))[::every]:
                            keys = x
                            query = x if (self_first or name != "all") else q
                            swapped += _fused_case(query, keys, k, similarity, cand, self_first,
                                                   exact, gen)
                            cases += 1
    print("FUSED SELECTION OK", cases, "near-tie swaps", swapped)


def fused_selection_falls_back():
    """Euclidean and more than 16 searched neighbours run the PyTorch path (no fused launch)
    under ``backend="triton"`` and still equal the stable reference; float64 too."""
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 40, 6, generator=gen)
    for similarity, k, dtype in (("euclidean", 5, torch.float32), ("dot", 17, torch.float32),
                                 ("cosine", 18, torch.float32), ("cosine", 5, torch.float64)):
        xx = x.to(dtype)
        with _CountFused() as count:
            got = ops.select_neighbours(xx, xx, k, similarity, stable=True, backend="triton")
        assert count.calls == 0, (similarity, k, dtype)
        ref = ops.select_neighbours(xx, xx, k, similarity, stable=True, backend="torch")
        assert torch.equal(got[0], ref[0])
        torch.testing.assert_close(got[1], ref[1])
    # bf16 inputs rank in float32: the fused kernel runs and agrees with the PyTorch path
    low = x.bfloat16()
    with _CountFused() as count:
        got = ops.select_neighbours(low, low, 6, "dot", stable=True, backend="triton")
    assert count.calls == 1
    ref = ops.select_neighbours(low, low, 6, "dot", stable=True, backend="torch")
    assert torch.equal(got[0], ref[0]) and got[1].dtype == ref[1].dtype == torch.float32
    torch.testing.assert_close(got[1], ref[1])
    print("FALLBACK OK")


def _stable_torch_top(scores, k, stable, fused=False):
    return _torch_top(scores, k, True)


_torch_top = ops._top


def _layer_grads(layer, x, kernel, seed):
    # The reference ranks with a stable sort, as the Triton top-k does: float32 scores of
    # random data tie now and then, and torch.topk orders ties arbitrarily.
    ops._top = _stable_torch_top if kernel == "torch" else _torch_top
    try:
        with ops.default_backend(kernel):
            torch.manual_seed(seed)
            out = layer(x)
    finally:
        ops._top = _torch_top
    upstream = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)
    params = [p for p in layer.parameters() if p.requires_grad]
    grads = torch.autograd.grad((out * upstream).sum(), [x, *params], allow_unused=True)
    return out.detach(), grads


SAMPLINGS = (("all", False), ("all", True), ("random", True), ("spatial", True))


def _attention_cases(tokens):
    """Every k of ``ks`` once per head count, cycling through the candidate sets."""
    ks = range(1, 12) if tokens == 13 else (3, 9, 12, 16)
    cases = []
    for heads in (1, 3):
        for i, k in enumerate(ks):
            sampling, self_first = SAMPLINGS[(i + heads) % len(SAMPLINGS)]
            cases.append((tokens, heads, k, sampling, self_first, ("ones", "softmax")[i % 2]))
    return cases


def _close(a, b, case):
    """float32 sums in another order: relative to the tensor's scale."""
    scale = float(b.abs().max()) + 1e-6
    torch.testing.assert_close(a, b, rtol=1e-4, atol=2e-6 * scale, msg=str(case))


def attention_matches_fast_path(tokens=13, every=1):
    """ConvNN attention forward and backward, Triton kernels vs the PyTorch fast path, float32:
    1 and 3 heads, k from 1 to 11 (T = 13) or up to 16 (T = 197), all / random / spatial
    candidates, self-first on and off, ones and softmax weighting, dot and cosine (the fused
    selection: one launch per forward); ``every``: every n-th case."""
    torch.manual_seed(0)
    cases = _attention_cases(int(tokens))[::int(every)]
    for i, case in enumerate(cases):
        tokens, heads, k, sampling, self_first, weighting = case
        kw = {} if sampling == "all" else {"candidates": 11 if tokens == 13 else 32}
        similarity = ("dot", "cosine")[(i // 2) % 2]
        layer = ConvNNAttention.from_config(6 * heads, heads, k=k, sampling=sampling, self_first=self_first,
                                weighting=weighting, aggregation="depthwise",
                                similarity=similarity, **kw)
        x = torch.randn(2, tokens, 6 * heads, requires_grad=True)
        ref_out, ref_grads = _layer_grads(layer, x, "torch", i)
        with _CountFused() as count, _CountFused("fused_attention") as core:
            out, grads = _layer_grads(layer, x, "triton", i)
        k_search = k - 1 if self_first else k
        # dot + softmax (any candidates) runs the fused attention core instead (one launch)
        whole = (similarity, weighting) == ("dot", "softmax")
        assert core.calls == int(whole), (case, core.calls)
        assert count.calls == (1 if k_search > 0 and not whole else 0), (case, count.calls)
        for a, b in zip((out, *grads), (ref_out, *ref_grads)):
            assert (a is None) == (b is None), case
            if a is None:
                continue
            if whole:  # scores under the precision contract
                _assert_scaled_close(a, b, _contract_tolerance(torch.float32), case)
            else:
                _close(a, b, case)
    print("ATTENTION OK", len(cases))


def _random_problem(dtype, rows=9, values=7, channels=5, k=4, seed=0, with_rho=True):
    gen = torch.Generator().manual_seed(seed)
    opts = {"dtype": dtype, "requires_grad": True}
    v = torch.randn(values, channels, generator=gen, dtype=dtype).requires_grad_()
    index = torch.randint(0, values, (rows, k), generator=gen)
    index[0] = 2  # one row selecting the same value k times
    rho = torch.rand(rows, k, generator=gen, dtype=dtype).requires_grad_() if with_rho else None
    w = torch.randn(k, channels, generator=gen, **opts)
    return v, index, rho, w


def gradcheck_float64():
    for with_rho, channels in ((True, 5), (False, 3)):
        v, index, rho, w = _random_problem(torch.float64, rows=4, values=3, channels=channels,
                                           k=2, with_rho=with_rho)
        assert torch.autograd.gradcheck(kernels.depthwise_gather_aggregate, (v, index, rho, w))
    print("GRADCHECK OK")


def gradients_are_bitwise_deterministic():
    """Many rows selecting a few values (the case atomics make non-deterministic): two runs
    give bitwise equal gradients; they also match a float64 computation."""
    v, index, rho, w = _random_problem(torch.float32, rows=100, values=6, channels=48, k=9)
    upstream = torch.randn(100, 48, generator=torch.Generator().manual_seed(1))
    runs = []
    for _ in range(2):
        out = kernels.depthwise_gather_aggregate(v, index, rho, w)
        runs.append(torch.autograd.grad((out * upstream).sum(), (v, rho, w)))
    for a, b in zip(*runs):
        assert torch.equal(a, b)
    d = [t.detach().double().requires_grad_() for t in (v, rho, w)]
    ref = (d[0][index] * d[2] * d[1][..., None]).sum(1)
    ref_grads = torch.autograd.grad((ref * upstream.double()).sum(), d)
    for a, b in zip(runs[0], ref_grads):
        torch.testing.assert_close(a.double(), b, rtol=1e-4, atol=1e-4)
    # the CSR inverse index lists every flat position once, grouped by value row
    order, rowptr = kernels.inverse_index(index, 6)
    assert torch.equal(order.sort().values, torch.arange(index.numel()))
    assert rowptr[0] == 0 and rowptr[-1] == index.numel()
    flat = index.reshape(-1)
    for row in range(6):
        assert bool((flat[order[rowptr[row]:rowptr[row + 1]]] == row).all())
    print("DETERMINISTIC OK")


def bfloat16_inputs_accumulate_in_float32():
    v, index, rho, w = _random_problem(torch.float32, rows=40, values=11, channels=24, k=5)
    low = [t.detach().bfloat16().requires_grad_() for t in (v, rho, w)]
    out = kernels.depthwise_gather_aggregate(low[0], index, low[1], low[2])
    assert out.dtype == torch.bfloat16
    grads = torch.autograd.grad(out.float().sum(), low)
    assert [g.dtype for g in grads] == [torch.bfloat16] * 3
    hi = [t.float().detach().requires_grad_() for t in low]
    ref = (hi[0][index] * hi[2] * hi[1][..., None]).sum(1)
    torch.testing.assert_close(out.float(), ref, rtol=2e-2, atol=2e-2)
    for a, b in zip(grads, torch.autograd.grad(ref.sum(), hi)):
        torch.testing.assert_close(a.float(), b, rtol=2e-2, atol=5e-2)
    print("BF16 OK")


# ------------------------------------------------------------------ the fused attention core
BF16_UNIT = 2.0 ** -8
"""bf16 unit roundoff: the contract's tolerances for 16-bit tensors are multiples of it."""


def _contract_tolerance(dtype):
    """Relative to each tensor's scale. float32: bf16×3 scores (τ ≈ 1e-4 · scale · Σ|q||k|,
    through the softmax) and float32 sums: 2e-4. bf16: every input, ρ in the backward's
    tensor-core products, and the output are rounded once to bf16 (float32 accumulation):
    four roundings, 4 · 2^-8."""
    return 2e-4 if dtype == torch.float32 else 4 * BF16_UNIT


def _assert_scaled_close(got, ref, tol, case):
    scale = max(1.0, float(ref.detach().abs().max()))
    torch.testing.assert_close(got.detach().float(), ref.detach().float(), rtol=tol, atol=tol * scale,
                               msg=lambda m: f"{case}: {m}")


def _integer_features(rows, tokens, dim, gen):
    """Small integers: exact in bf16 and in every float32 sum, so scores tie exactly; every
    fifth row repeats the first and every seventh is zero (ties that only the column order
    separates)."""
    x = torch.randint(-3, 4, (rows, tokens, dim), generator=gen).float()
    x[:, 1::5] = x[:, :1]
    x[:, 2::7] = 0.0
    return x


def _reference_core(q, key, v, w, k, scale, self_first, self_score, cand):
    """The PyTorch fast path of the same core on float32 copies, with a stable sort."""
    ops._top = _stable_torch_top
    try:
        return ops.convnn(v, q, key, k, w.t().unsqueeze(1), None, similarity="dot",
                          weighting="softmax", aggregation="depthwise",
                          candidate_positions=cand, self_first=self_first, scale=scale,
                          self_score=self_score, backend="torch")
    finally:
        ops._top = _torch_top


def _core_case(rows, tokens, dim, k, cand, mode, dtypes, exact, gen, scale=0.35):
    """One fused-core call against the reference: indices (equal; exact ties broken by the
    lower candidate), output and the q, key, v, w gradients within the contract's tolerance
    for the widest of ``dtypes`` (q/key, v, w)."""
    make = (lambda: _integer_features(rows, tokens, dim, gen)) if exact else \
        (lambda: torch.randn(rows, tokens, dim, generator=gen))
    q, key, v = make(), make(), torch.randn(rows, tokens, dim, generator=gen)
    w = torch.randn(k, dim, generator=gen)
    low = [q.to(dtypes[0]), key.to(dtypes[0]), v.to(dtypes[1]), w.to(dtypes[2])]
    low = [t.detach().requires_grad_() for t in low]
    high = [t.detach().float().requires_grad_() for t in low]
    self_first = bool(mode.get("self_first")) or cand is not None
    self_score = mode.get("self_score", "similarity")
    out, idx = kernels_attention.fused_attention(*low, k, scale, self_first=self_first,
                                       self_logit=ops.PAPER_SELF_LOGIT
                                       if self_score == "constant" else None,
                                       candidate_positions=cand,
                                       return_indices=True)
    assert out.dtype == low[2].dtype and idx.dtype == torch.long
    ref_idx, _ = ops.select_neighbours_reference(
        high[0].detach(), high[1].detach(), k, "dot", candidate_positions=cand,
        self_first=self_first, scale=scale, stable=True, with_scores=False)
    case = (rows, tokens, dim, k, None if cand is None else len(cand), mode, dtypes, exact)
    assert torch.equal(idx, ref_idx), case
    ref = _reference_core(*high, k, scale, self_first, self_score, cand)
    upstream = torch.randn(out.shape, generator=gen)
    grads = torch.autograd.grad((out.float() * upstream).sum(), low)
    ref_grads = torch.autograd.grad((ref * upstream).sum(), high)
    tol = _contract_tolerance(torch.float32 if all(d == torch.float32 for d in dtypes)
                              else torch.bfloat16)
    _assert_scaled_close(out, ref, tol, case)
    for name, a, b, t in zip(["q", "key", "v", "w"], grads, ref_grads, low):
        assert a.dtype == t.dtype, (case, name)
        _assert_scaled_close(a, b, tol, (case, name))


FUSED_ATTENTION_MODES = ({}, {"self_first": True},
                         {"self_first": True, "self_score": "constant"})
F32 = (torch.float32,) * 3
BF16 = (torch.bfloat16,) * 3
AUTOCAST = (torch.float32, torch.bfloat16, torch.float32)  # q/key float32, v bf16, w float32


def fused_attention_core_matches_reference(tokens=(13, 20, 67), key_tile=16, dim=16, rows=2,
                                           ks=(1, 5, 9, 16)):
    """The fused core (:func:`convnn.kernels_attention.fused_attention`) against the PyTorch path:
    all candidates (no self-first, self-first with the real and the constant self logit)
    and sampled candidates (random, evenly spaced; the query itself sometimes among them),
    float32, bf16 and the autocast mix, exact-integer features (ties) and Gaussian ones.
    ``key_tile``: candidates per score tile (lowered so that T = 20 and 67 cross tiles and
    take the merge path; T = 13 is one tile); T = 67 also crosses the 64-query tiles of the
    forward and backward and masks the padding columns of the last key tile."""
    from convnn import kernels_attention

    tokens = (tokens,) if isinstance(tokens, int) else tuple(tokens)
    gen = torch.Generator().manual_seed(0)
    saved = kernels_attention.KEY_TILE
    kernels_attention.KEY_TILE = int(key_tile)
    cases = 0
    try:
        for i, t in enumerate(tokens):
            count = max(5, t // 3)
            cand_sets = (None, torch.randperm(t, generator=gen)[:count].sort().values,
                         ops.spatial_candidates_1d(t, count))
            for j, cand in enumerate(cand_sets):
                modes = FUSED_ATTENTION_MODES if cand is None else FUSED_ATTENTION_MODES[1:]
                for m, mode in enumerate(modes):
                    available = t if cand is None else len(cand)
                    fits = [k for k in ks if k <= available]
                    k = fits[(i + j + m) % len(fits)]
                    dtypes = (F32, BF16, AUTOCAST)[(i + j + m) % 3]
                    exact = (i + j + m) % 2 == 0
                    _core_case(rows, t, dim, k, cand, mode, dtypes, exact, gen)
                    cases += 1
        # a NaN and an infinite key feature: those keys rank last (as -inf), as in the
        # PyTorch path, and never index out of range
        for tile in (16, 256):
            kernels_attention.KEY_TILE = tile
            q, key, v = (torch.randn(2, 20, 16, generator=gen) for _ in range(3))
            key[0, 3, 5], key[1, 7, 0] = float("nan"), float("inf")
            out, idx = kernels_attention.fused_attention(q, key, v, torch.ones(5, 16), 5, 0.25,
                                               return_indices=True)
            ref_idx, _ = ops.select_neighbours_reference(q, key, 5, "dot", scale=0.25,
                                                         stable=True, with_scores=False)
            assert torch.equal(idx, ref_idx) and not bool((idx[0] == 3).any()), tile
            ref = _reference_core(q, key, v, torch.ones(5, 16), 5, 0.25, False, "similarity",
                                  None)
            _assert_scaled_close(out, ref, _contract_tolerance(torch.float32), "non-finite")
            cases += 1
    finally:
        kernels_attention.KEY_TILE = saved
    print("FUSED CORE OK", cases)


def fused_attention_core_shapes(tokens=197, dim_per_head=(192, 64), k=9, candidates=32):
    """The paper's shapes (T = 197, 1×192 and 3×64; all candidates in one 256-key tile, and
    r = 32 sampled), float32 and bf16, one image per shape (slow under the interpreter):
    exact-integer features against the reference (values and gradients); Gaussian float32
    features: the lists equal the float32 lists except on near-ties within the bound."""
    gen = torch.Generator().manual_seed(1)
    cases = swaps = 0
    for dim in dim_per_head:
        rows = 192 // dim
        cand = torch.randperm(tokens, generator=gen)[:candidates].sort().values
        for c, mode, dtypes in ((None, {}, F32), (cand, {"self_score": "constant"}, BF16)):
            _core_case(rows, tokens, dim, k, c, mode, dtypes, True, gen, scale=dim ** -0.5)
            cases += 1
        q, key, v = (torch.randn(rows, tokens, dim, generator=gen) for _ in range(3))
        _, idx = kernels_attention.fused_attention(q, key, v, torch.ones(k, dim), k, dim ** -0.5,
                                         return_indices=True)
        swaps += _near_tie_swaps(q, key, idx, k, dim ** -0.5)
    print("FUSED CORE SHAPES OK", cases, "near-tie swaps", swaps)


def _near_tie_swaps(q, key, idx, k, scale):
    """Lists of ``idx`` that differ from the float32 lists (all candidates, no self-first);
    each difference must be a near-tie within the contract's bound 2 (τ + δ) (ops docstring:
    δ the packed ranking key's bucket)."""
    scores = torch.matmul(q, key.transpose(-1, -2)) * scale
    ref = torch.sort(scores, dim=-1, descending=True, stable=True).indices[..., :k]
    tau = ops.selection_score_bound(q, key, scale).amax(-1, keepdim=True)
    bits = kernels_attention.column_bits(max(16, 1 << (key.shape[1] - 1).bit_length()))
    delta = 2.0 ** (bits - 23) * scores.abs().amax(-1, keepdim=True)
    gap = (scores.gather(-1, idx) - scores.gather(-1, ref)).abs()
    assert bool((gap <= 2 * (tau + delta)).all()), float((gap / tau).max())
    return int((idx != ref).any(-1).sum())


def _attention_pair(layer, x, case, tol):
    """The layer under ``backend="torch"`` (stable ranking) and under ``backend="triton"``
    with the fused core: forward, input and every parameter gradient, to ``tol`` relative
    to each tensor's scale. Returns the fused core launches."""
    ref_out, ref_grads = _layer_grads(layer, x, "torch", 0)
    with _CountFused("fused_attention") as core, _CountFused() as select:
        out, grads = _layer_grads(layer, x, "triton", 0)
    assert select.calls == 0, case  # the fused core does its own selection
    for a, b in zip((out, *grads), (ref_out, *ref_grads)):
        assert (a is None) == (b is None), case
        if a is not None:
            _assert_scaled_close(a, b, tol, case)
    return core.calls


def fused_attention_layer_matches_torch(tokens=13):
    """ConvNNAttention with the fused core against ``backend="torch"``: all candidates in the
    three self modes, random and spatial candidates with the constant self logit, 1 and 3
    heads, projection biases, random aggregation weights; output dropout keeps the core."""
    torch.manual_seed(0)
    cases = 0
    layers = [({}, 1), ({"self_first": True}, 3),
              ({"self_first": True, "self_score": "constant"}, 1),
              ({"sampling": "random", "candidates": 7, "self_score": "constant"}, 3),
              ({"sampling": "spatial", "candidates": 6}, 1)]
    for options, heads in layers:
        layer = ConvNNAttention.from_config(8 * heads, heads, k=4, bias=True, **options)
        with torch.no_grad():
            layer.weight.normal_()
        x = torch.randn(2, tokens, 8 * heads, requires_grad=True)
        assert _attention_pair(layer, x, options, 2e-4) == 1, options
        cases += 1
    # dropout on the output keeps the core; dropout on the weights is the same mask, drawn
    # from the same generator state as F.dropout(ρ) of the step-by-step path
    for where, sampling in (("output", {}), ("weights", {}),
                            ("weights", {"sampling": "random", "candidates": 9})):
        layer = ConvNNAttention.from_config(16, 2, k=5, attn_dropout=0.3,
                                            attn_dropout_on=where, **sampling).train()
        x = torch.randn(2, tokens, 16, requires_grad=True)
        assert _attention_pair(layer, x, (where, sampling), 2e-4) == 1
        cases += 1
    print("FUSED ATTENTION OK", cases)


def fused_attention_falls_back():
    """Every option outside the fused core's set runs the step-by-step path under
    ``backend="triton"`` (no fused core launch), with the reason from
    ``ConvNNAttention.backend_decision``, and still equals ``backend="torch"``."""
    torch.manual_seed(1)
    cases = [
        ({"similarity": "cosine"}, "similarity='cosine'"),
        ({"weighting": "ones"}, "weighting='ones'"),
        ({"aggregation": "separable"}, "aggregation='separable'"),
        ({"selection": "mixed"}, "selection='mixed'"),
        ({"k": 17}, "k=17 > 16"),
        ({"dtype": torch.float64}, "float64"),
    ]
    for options, why in cases:
        options = dict(options)
        train = options.pop("train", False)
        dtype = options.get("dtype", torch.float32)
        layer = ConvNNAttention.from_config(12, 2, **{"k": 3, "backend": "triton", **options}).train(train)
        x = torch.randn(2, 19, 12, dtype=dtype, requires_grad=True)
        decision = layer.backend_decision(x)
        assert decision[0] == "torch" and why in decision[1], (options, decision)
        layer.backend = None
        ref_out, ref_grads = _layer_grads(layer, x, "torch", 3)
        with _CountFused("fused_attention") as core:
            out, grads = _layer_grads(layer, x, "triton", 3)
        assert core.calls == 0, options
        for a, b in zip((out, *grads), (ref_out, *ref_grads)):
            if a is not None:
                _close(a, b, options)
    # the layer's own backend="triton" takes the core; "torch" and auto (None) never do
    for backend, calls in (("triton", 1), ("torch", 0), (None, 0)):
        layer = ConvNNAttention(12, 2, k=3, backend=backend)
        with ops.default_backend(None), _CountFused("fused_attention") as core:
            layer(torch.randn(2, 9, 12))
        assert core.calls == calls, backend
        assert layer.backend_decision(torch.zeros(1, 9, 12))[0] == ("triton" if calls else "torch")
    print("ATTENTION FALLBACK OK", len(cases))


def bf16_vit_step_takes_the_fused_core():
    """A bf16-autocast training step of a small ViT with ConvNN attention (all candidates and
    random r candidates) under ``backend="triton"``: every block's core runs the fused kernel
    (v arrives in bf16, q and key stay float32), ``backend_decision`` says so, and the loss and
    gradients are finite and close to the float32 PyTorch step."""
    from convnn.models.vit import ViT

    torch.manual_seed(0)
    images = torch.randn(2, 3, 16, 16)
    labels = torch.tensor([1, 3])
    for options in ({"k": 5}, {"k": 5, "sampling": "random", "candidates": 8}):
        model = ViT(10, image_size=16, patch_size=4, dim=16, depth=2, mlp_dim=32, num_heads=1,
                    mixer="convnn_attention", layer_options={**options, "backend": "triton"})
        layers = [m for m in model.modules() if isinstance(m, ConvNNAttention)]
        assert len(layers) == 2
        with torch.autocast("cpu", dtype=torch.bfloat16):
            tokens = torch.zeros(2, model.num_tokens, 16)
            decisions = [layer.backend_decision(tokens) for layer in layers]
        assert all(d[0] == "triton" for d in decisions), decisions
        steps = {}
        for backend in ("triton", "torch"):
            for layer in layers:
                layer.backend = backend
            model.zero_grad()
            torch.manual_seed(5)
            with _CountFused("fused_attention") as core, \
                    torch.autocast("cpu", dtype=torch.bfloat16):
                loss = F.cross_entropy(model(images), labels)
            loss.backward()
            assert core.calls == (2 if backend == "triton" else 0), (options, backend)
            steps[backend] = (loss.item(), [p.grad.float().clone() for p in model.parameters()
                                            if p.grad is not None])
        assert all(bool(torch.isfinite(g).all()) for g in steps["triton"][1])
        assert abs(steps["triton"][0] - steps["torch"][0]) < 2e-2 * max(1.0, steps["torch"][0])
    # the paper's ViT-Tiny (197 tokens, 12 blocks, attention dropout 0.1 on the weights) in
    # training under bf16 autocast: every block's core takes the fused kernel
    from convnn.models.vit import vit_tiny_paper

    for options in ({"k": 9}, {"k": 9, "sampling": "random", "candidates": 32}):
        model = vit_tiny_paper(10, "convnn_attention", backend="triton", **options).train()
        layers = [m for m in model.modules() if isinstance(m, ConvNNAttention)]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            decisions = [layer.backend_decision(torch.zeros(1, 197, 192)) for layer in layers]
        assert len(decisions) == 12 and all(d[0] == "triton" for d in decisions), decisions
    print("BF16 VIT OK")


def fused_attention_custom_op():
    """The core is a ``torch.library`` custom op: ``torch.library.opcheck`` passes (schema,
    fake implementation, autograd registration), ``torch.compile(fullgraph=True)`` takes the
    layer's call without a graph break and gives the eager values, and two backward passes
    give bitwise equal gradients (the segmented sums, no atomics)."""
    gen = torch.Generator().manual_seed(2)
    q, key, v = (torch.randn(2, 9, 16, generator=gen, requires_grad=True) for _ in range(3))
    w = torch.randn(4, 16, generator=gen, requires_grad=True)
    cand = torch.tensor([0, 2, 3, 5, 8])
    torch.library.opcheck(kernels_attention._fused_attention_op,
                          (q, key, v, w, cand, None, 4, 0.25, True, 1.0))

    def core(q, key, v, w):
        return kernels_attention.fused_attention(q, key, v, w, 4, 0.25, self_first=True,
                                                 candidate_positions=cand)

    compiled = torch.compile(core, fullgraph=True, backend="aot_eager")
    upstream = torch.randn(2, 9, 16, generator=gen)
    runs = []
    for fn in (core, core, compiled):
        out = fn(q, key, v, w)
        runs.append((out, *torch.autograd.grad((out * upstream).sum(), (q, key, v, w))))
    for a, b in zip(runs[0], runs[1]):
        assert torch.equal(a, b)  # bitwise reproducible
    for a, b in zip(runs[0], runs[2]):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    print("CUSTOM OP OK")


def _per_head(out, heads):
    batch, tokens, width = out.shape
    return (out.view(batch, tokens, heads, width // heads).transpose(1, 2)
            .reshape(batch * heads, tokens, width // heads))


def contract_projection_matches(rows_per_split=64):
    """The projection kernel (:func:`convnn.kernels_projection.contract_projection`): q and
    k per head within :func:`ops.selection_score_bound` of the exact projection (as
    :func:`ops.contract_linear`), v (``values=True``) a bf16 linear's; gradients a bf16
    linear's (every element within the rounding of its two bf16 operands), bitwise equal over two backward passes; 1, 2
    and 3 heads, bias or not, row blocks and dW slices crossed (``rows_per_split`` lowered); a
    custom op that ``torch.compile`` takes; and the layer under ``backend="triton"`` takes it
    where the contract projection applies."""
    kernels_projection.ROWS_PER_SPLIT = rows_per_split
    gen = torch.Generator().manual_seed(3)
    # two bf16 operands: the interpreter truncates each to bf16 (below 2^-7 relative; a card
    # rounds to nearest, 2^-8)
    two_roundings = 2.0 ** -6
    cases = 0
    for heads, head_dim, channels, batch, tokens, bias, scale, values in (
            (1, 32, 24, 2, 70, True, 1.0, True), (3, 16, 40, 3, 7, False, 1e3, False),
            (2, 32, 16, 1, 133, True, 1e-3, False), (3, 16, 32, 2, 9, False, 1.0, True)):
        width, parts = heads * head_dim, 3 if values else 2
        x = (torch.randn(batch, tokens, channels, generator=gen) * scale).requires_grad_()
        w = (torch.randn(parts * width, channels, generator=gen) / 4).requires_grad_()
        b = torch.randn(parts * width, generator=gen).requires_grad_() if bias else None
        out = kernels_projection.contract_projection(x, w, b, heads, values=values)
        assert len(out) == parts
        assert out[0].dtype == out[1].dtype == torch.float32
        assert all(t.shape == (batch * heads, tokens, head_dim) for t in out)
        exact = F.linear(x.double(), w.double(), None if b is None else b.double()).detach()
        # the contract's bound, plus the rounding of the float32 result (with the bias)
        bound = ops.selection_score_bound(x, w).double() + 2.0 ** -24 * exact.abs()
        for i, got in enumerate(out[:2]):
            part = slice(i * width, (i + 1) * width)
            err = (got.double() - _per_head(exact[..., part], heads)).abs()
            assert bool((err <= _per_head(bound[..., part], heads)).all()), (heads, i)
        if values:  # bf16 operands and a bf16 result
            assert out[2].dtype == torch.bfloat16
            part = slice(2 * width, 3 * width)
            mass = x.detach().double().abs() @ w.detach().double()[part].abs().t()
            err = (out[2].double() - _per_head(exact[..., part], heads)).abs()
            slack = two_roundings * mass + 2.0 ** -7 * exact[..., part].abs()
            assert bool((err <= _per_head(slack, heads)).all()), heads
        upstream = [torch.randn(t.shape, generator=gen).to(t.dtype) for t in out]
        params = [x, w] + ([b] if bias else [])
        loss = sum((t.float() * u.float()).sum() for t, u in zip(out, upstream))
        grads = torch.autograd.grad(loss, params, retain_graph=True)
        again = torch.autograd.grad(loss, params)
        assert all(torch.equal(u, v) for u, v in zip(grads, again))  # no atomics
        g = torch.cat([u.float().view(batch, heads, tokens, head_dim).transpose(1, 2)
                       .reshape(batch, tokens, width) for u in upstream], -1).double()
        exact_dx = g @ w.double()
        slack_dx = two_roundings * (g.abs() @ w.double().abs())
        assert bool(((grads[0].double() - exact_dx).abs() <= slack_dx + 1e-30).all())
        gf, xf = g.reshape(-1, parts * width), x.detach().double().reshape(-1, channels)
        exact_dw = gf.t() @ xf
        slack_dw = two_roundings * (gf.abs().t() @ xf.abs())
        assert bool(((grads[1].double() - exact_dw).abs() <= slack_dw + 1e-30).all())
        if bias:
            torch.testing.assert_close(grads[2].double(), gf.sum(0), rtol=1e-5, atol=1e-5)
        cases += 1
    # a custom op: opcheck (schema, fake, autograd) and torch.compile without a graph break
    x = torch.randn(2, 9, 16, generator=gen, requires_grad=True)
    w = torch.randn(64, 16, generator=gen, requires_grad=True)
    b = torch.randn(64, generator=gen, requires_grad=True)
    torch.library.opcheck(kernels_projection._contract_projection_op, (x, w, b, 2, False))
    w3, b3 = w[:48].detach().requires_grad_(), b[:48].detach().requires_grad_()
    compiled = torch.compile(
        lambda x, w, b: kernels_projection.contract_projection(x, w, b, 2, values=True),
        fullgraph=True, backend="aot_eager")
    eager = kernels_projection.contract_projection(x, w3, b3, 2, values=True)
    for a, c in zip(eager, compiled(x, w3, b3)):
        assert torch.equal(a, c)
    # the layer under bf16 autocast: backend="triton" takes the kernel where the contract
    # projection applies (faked here), with the lists of ops.contract_linear
    original = ops.contract_projection_applies
    ops.contract_projection_applies = lambda device: True
    try:
        for heads in (3,):
            layer = ConvNNAttention(48, heads, k=5, bias=True)
            x = torch.randn(2, 24, 48, requires_grad=True)
            runs = {}
            for backend in ("triton", "torch"):
                layer.backend = backend
                with _CountFused("contract_projection") as proj, \
                        torch.autocast("cpu", dtype=torch.bfloat16):
                    lists = layer.neighbours(x)
                    grads = torch.autograd.grad(  # q, k and v from the kernel's one launch
                        layer(x).float().square().sum(),
                        [x, layer.k_proj.weight, layer.q_proj.bias, layer.v_proj.weight])
                assert proj.calls == (2 if backend == "triton" else 0), (backend, proj.calls)
                assert layer.projection_backend(x)[0] == backend
                runs[backend] = (lists, grads)
            assert torch.equal(runs["triton"][0], runs["torch"][0])
            for a, c in zip(runs["triton"][1], runs["torch"][1]):
                # two bf16 paths (the interpreter truncates to bf16): 1.6-2.6 % apart here; a
                # wiring fault (heads, the q/k/v order, the bias) would be O(1)
                assert float((a - c).norm() / c.norm()) < 5e-2
            cases += 1
    finally:
        ops.contract_projection_applies = original
    # what it refuses, with the reason, and auto leaves it off
    layer = ConvNNAttention(24, 2, k=3, backend="triton")  # h·d = 24: no 16-column tile
    decision = layer.projection_backend(torch.zeros(1, 5, 24))
    assert decision[0] == "torch" and "multiple of 16" in decision[1], decision
    decision = ConvNNAttention(32, 2, k=3, backend="triton").projection_backend(
        torch.zeros(1, 5, 32, dtype=torch.bfloat16))
    assert decision[0] == "torch" and "bfloat16 input" in decision[1], decision
    with ops.default_backend(None):
        decision = ConvNNAttention(32, 2, k=3).projection_backend(torch.zeros(1, 5, 32))
    assert decision[0] == "torch" and "off until it is measured" in decision[1], decision
    print("CONTRACT PROJECTION OK", cases)


def attention_inverse_index_matches():
    """The fused core's inverse-index kernel (a stable counting sort per batch·head row)
    equals a stable sort and a binary search (:func:`convnn.kernels.inverse_index`): the
    entries of each token in ascending order, and the row pointers; repeated targets, tokens
    no entry selects, one token, and the paper's T = 197."""
    gen = torch.Generator().manual_seed(7)
    cases = 0
    for rows, tokens, k in ((3, 13, 4), (2, 197, 9), (4, 1, 1), (1, 40, 16)):
        idx = torch.randint(0, max(1, tokens // 3), (rows, tokens, k), generator=gen,
                            dtype=torch.int32)
        idx[0, :, 0] = torch.arange(tokens, dtype=torch.int32)  # every token at least once
        order = torch.empty(rows * tokens * k, dtype=torch.int32)
        rowptr = torch.empty(rows * tokens + 1, dtype=torch.int32)
        kernels_attention._launch(kernels_attention._attention_inverse_index_kernel, (rows,),
                                  kernels_attention._inverse_index_launch(tokens, k),
                                  idx, order, rowptr, tokens)
        offset = (torch.arange(rows, dtype=torch.int32) * tokens).view(rows, 1, 1)
        want_order, want_rowptr = kernels.inverse_index((idx + offset).view(-1, k),
                                                        rows * tokens)
        assert torch.equal(order.long(), want_order), (rows, tokens, k)
        assert torch.equal(rowptr.long(), want_rowptr), (rows, tokens, k)
        cases += 1
    print("INVERSE INDEX OK", cases)
