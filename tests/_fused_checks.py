"""Checks of the Triton kernels, run by ``test_fused_kernels.py`` in a subprocess with
``TRITON_INTERPRET=1`` (the variable must be set before Triton loads)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from convnn import PAPER_ATTENTION, ConvNN2d, ConvNNAttention, kernels, ops


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
            for k in (1, 4, 7):
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
        self.original = getattr(kernels, name)

    def __enter__(self):
        def counted(*args, **kwargs):
            self.calls += 1
            return self.original(*args, **kwargs)
        setattr(kernels, self.name, counted)
        return self

    def __exit__(self, *exc):
        setattr(kernels, self.name, self.original)


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
        # float32 sums in another order may swap two scores within rounding: the choices
        # must then score the same to rounding, rank by rank
        full = ops.pairwise_scores(query.detach(), keys.detach(), similarity)
        torch.testing.assert_close(full.gather(-1, got_i), full.gather(-1, ref_i),
                                   rtol=1e-5, atol=1e-6)
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
        # the paper's default option set runs the fused attention core instead (one launch)
        whole = (sampling, similarity, weighting) == ("all", "dot", "softmax")
        assert core.calls == int(whole), (case, core.calls)
        assert count.calls == (1 if k_search > 0 and not whole else 0), (case, count.calls)
        _close(out, ref_out, case)
        for a, b in zip(grads, ref_grads):
            assert (a is None) == (b is None), case
            if a is not None:
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
        v, index, rho, w = _random_problem(torch.float64, rows=6, values=5, channels=channels,
                                           k=3, with_rho=with_rho)
        assert torch.autograd.gradcheck(kernels.depthwise_gather_aggregate, (v, index, rho, w))
    print("GRADCHECK OK")


def gradients_are_bitwise_deterministic():
    """Many rows selecting a few values (the case atomics make non-deterministic): two runs
    give bitwise equal gradients; they also match a float64 computation."""
    v, index, rho, w = _random_problem(torch.float32, rows=300, values=6, channels=192, k=9)
    upstream = torch.randn(300, 192, generator=torch.Generator().manual_seed(1))
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


def _attention_pair(layer, x, case, tol=1e-5):
    """The layer under ``backend="torch"`` (stable ranking) and under ``backend="triton"``
    with the fused attention core: forward, input and every parameter gradient, to ``tol``
    relative to each tensor's scale. Returns the fused core launches."""
    ref_out, ref_grads = _layer_grads(layer, x, "torch", 0)
    with _CountFused("fused_attention") as core, _CountFused() as select:
        out, grads = _layer_grads(layer, x, "triton", 0)
    assert select.calls == 0, case  # the fused core does its own selection
    for a, b in zip((out, *grads), (ref_out, *ref_grads)):
        assert (a is None) == (b is None), case
        if a is not None:
            scale = max(1.0, float(b.abs().max()))
            torch.testing.assert_close(a, b, rtol=tol, atol=tol * scale, msg=str(case))
    return core.calls


def _core_pair(layer, x, case, tol=1e-5):
    """The per-head core alone on the layer's q, key, v ``[B·h, T, d]``:
    :func:`convnn.kernels.fused_attention` against :func:`convnn.ops.convnn` with
    ``backend="torch"`` (stable ranking): output and the gradients of q, key, v and the
    weights to ``tol`` relative to each tensor's scale (short sums: no B·T accumulation)."""
    with torch.no_grad():
        q, key = layer._selection_features(x)
        v = layer._split(layer.v_proj(x))
    inputs = [t.detach().clone().requires_grad_() for t in (q, key, v, layer.weight)]
    scale = 1.0 / layer.head_dim ** 0.5
    out = kernels.fused_attention(*inputs[:3], inputs[3][:, 0, :].t(), layer.k, scale,
                                  self_first=layer.self_first,
                                  self_logit=ops.PAPER_SELF_LOGIT
                                  if layer.self_score == "constant" else None)
    ops._top = _stable_torch_top
    try:
        ref = ops.convnn(inputs[2], inputs[0], inputs[1], layer.k, inputs[3], similarity="dot",
                         weighting="softmax", aggregation="depthwise",
                         self_first=layer.self_first, scale=scale,
                         self_score=layer.self_score, backend="torch")
    finally:
        ops._top = _torch_top
    upstream = torch.randn(out.shape, generator=torch.Generator().manual_seed(2))
    grads = torch.autograd.grad((out * upstream).sum(), inputs)
    ref_grads = torch.autograd.grad((ref * upstream).sum(), inputs)
    for a, b in zip((out, *grads), (ref, *ref_grads)):
        scale_b = max(1.0, float(b.abs().max()))
        torch.testing.assert_close(a, b, rtol=tol, atol=tol * scale_b, msg=str(case))


FUSED_ATTENTION_MODES = ({}, {"self_first": True},
                         {"self_first": True, "self_score": "constant"})


def fused_attention_matches_torch(tokens=(13, 20), ks=(1, 3, 9, 16), dim_per_head=6,
                                  layer_tol=1e-5):
    """ConvNN attention with the fused Triton core (all candidates, dot, softmax, depthwise)
    against ``backend="torch"``, float32: the core's output and q/key/v/weight gradients to
    1e-5, the layer's forward, input and parameter gradients to ``layer_tol`` (at T = 197
    the out_proj gradient sums B·T = 394 tokens: float32 order alone moves it by ~3e-5);
    1 and 3 heads, the given k (each at the first token count that holds it), the default
    mode (no self-first), self-first with the real and the constant self logit; random
    aggregation weights and projection biases. One fused launch per forward."""
    tokens = (tokens,) if isinstance(tokens, int) else tuple(tokens)
    torch.manual_seed(0)
    cases = 0
    for heads in (1, 3):
        for k in ks:
            fits = [t for t in tokens if k <= t]
            if not fits:
                continue
            for mode in FUSED_ATTENTION_MODES:
                tokens_k = fits[0]
                dim = dim_per_head * heads
                layer = ConvNNAttention.from_config(dim, heads, k=k, bias=True, **mode)
                with torch.no_grad():
                    layer.weight.normal_()
                x = torch.randn(2, tokens_k, dim, requires_grad=True)
                case = (tokens_k, heads, k, mode)
                _core_pair(layer, x, case)
                assert _attention_pair(layer, x, case, float(layer_tol)) == 1, case
                cases += 1
    # dropout on the output (not the weights) keeps the fused core: same seed, same mask
    layer = ConvNNAttention(12, 2, k=5, attn_dropout=0.3, options=PAPER_ATTENTION).train()
    x = torch.randn(2, tokens[0], 12, requires_grad=True)
    assert _attention_pair(layer, x, "output dropout") == 1
    print("FUSED ATTENTION OK", cases + 1)


def fused_attention_falls_back():
    """Every option outside the fused core's set runs the step-by-step path under
    ``backend="triton"`` (no fused core launch), with the reason from ``_kernel_unsupported``,
    and still equals ``backend="torch"``."""
    torch.manual_seed(1)
    cases = [
        ({"sampling": "random", "candidates": 7}, "sampling='random'"),
        ({"sampling": "spatial", "candidates": 7}, "sampling='spatial'"),
        ({"similarity": "cosine"}, "similarity='cosine'"),
        ({"weighting": "ones"}, "weighting='ones'"),
        ({"aggregation": "separable"}, "aggregation='separable'"),
        ({"selection": "mixed"}, "selection='mixed'"),
        ({"k": 17}, "k=17 > 16"),
        ({"dtype": torch.float64}, "float64"),
        ({"attn_dropout": 0.3, "train": True}, "dropout on the weights"),
    ]
    for options, why in cases:
        options = dict(options)
        train = options.pop("train", False)
        dtype = options.get("dtype", torch.float32)
        layer = ConvNNAttention.from_config(12, 2, **{"k": 3, **options}).train(train)
        x = torch.randn(2, 19, 12, dtype=dtype, requires_grad=True)
        q = torch.zeros(1, dtype=dtype)
        with ops.default_backend("triton"):
            decision = ops.backend_decision(
                None, x.device, step="fused_attention", k=layer.k, width=19, aggregation=layer.aggregation,
                similarity=layer.similarity,
                options={"sampling": layer.sampling, "selection": layer.selection,
                         "weighting": layer.weighting,
                         "attn_dropout": layer.attn_dropout if train else 0.0,
                         "dtypes": (q.dtype, q.dtype, layer.weight.dtype)})
        assert decision[0] == "torch" and why in decision[1], (options, decision)
        ref_out, ref_grads = _layer_grads(layer, x, "torch", 3)
        with _CountFused("fused_attention") as core:
            out, grads = _layer_grads(layer, x, "triton", 3)
        assert core.calls == 0, options
        for a, b in zip((out, *grads), (ref_out, *ref_grads)):
            if a is not None:
                _close(a, b, options)
    # bf16 values (autocast) fall back too
    layer = ConvNNAttention(12, 2, k=3)
    with ops.default_backend("triton"), _CountFused("fused_attention") as core, \
            torch.autocast("cpu", dtype=torch.bfloat16):
        layer(torch.randn(2, 9, 12))
    assert core.calls == 0
    # the layer's own backend="triton" takes the core; "torch" and auto (None) never do
    for backend, calls in (("triton", 1), ("torch", 0), (None, 0)):
        layer = ConvNNAttention(12, 2, k=3, backend=backend)
        with ops.default_backend(None), _CountFused("fused_attention") as core:
            layer(torch.randn(2, 9, 12))
        assert core.calls == calls, backend
    print("ATTENTION FALLBACK OK", len(cases))
