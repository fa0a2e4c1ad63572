"""CUDA checks: the fast path on the GPU matches the reference path on the CPU.

Skipped without CUDA (CI has none); run on a GPU machine with ``python -m pytest tests/test_gpu.py``.
"""

import pytest
import torch

from convnn import ConvNN2d, ConvNNAttention

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def _run(layer, x, seed=0):
    layer.zero_grad()
    x = x.clone().requires_grad_(True)
    torch.manual_seed(seed)
    out = layer(x)
    upstream = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(out)
    (out.float() * upstream.float()).sum().backward()
    return out.detach().double().cpu(), x.grad.double().cpu(), {
        n: p.grad.double().cpu() for n, p in layer.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("kwargs", [{}, {"aggregation": "standard"},
                                    {"similarity": "euclidean", "weighting": "similarity"},
                                    {"selection": "mixed"}])
def test_attention_cuda_fast_matches_cpu_reference(kwargs):
    torch.manual_seed(0)
    cpu = ConvNNAttention.from_config(64, 2, k=9, backend="reference", **kwargs).double()
    gpu = ConvNNAttention.from_config(64, 2, k=9, **kwargs).double().cuda()
    with torch.no_grad():
        cpu.weight.add_(0.1 * torch.randn_like(cpu.weight))
    gpu.load_state_dict(cpu.state_dict())
    x = torch.randn(4, 197, 64, dtype=torch.float64)
    for a, b in zip(_run(cpu, x)[:2], _run(gpu, x.cuda())[:2]):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("kwargs", [{}, {"sampling": "spatial", "candidates": 6},
                                    {"weighting": "softmax", "aggregation": "separable"}])
def test_convnn2d_cuda_fast_matches_cpu_reference(kwargs):
    torch.manual_seed(1)
    cpu = ConvNN2d.from_config(16, 24, backend="reference", **kwargs).double()
    gpu = ConvNN2d.from_config(16, 24, **kwargs).double().cuda()
    gpu.load_state_dict(cpu.state_dict())
    x = torch.randn(3, 16, 20, 20, dtype=torch.float64)
    out_c, gx_c, gp_c = _run(cpu, x)
    out_g, gx_g, gp_g = _run(gpu, x.cuda())
    torch.testing.assert_close(out_g, out_c, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(gx_g, gx_c, rtol=1e-9, atol=1e-9)
    for name in gp_c:
        torch.testing.assert_close(gp_g[name], gp_c[name], rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_on_cuda_is_finite_and_close(dtype):
    torch.manual_seed(2)
    layer = ConvNNAttention(192, 1, k=9).cuda()
    x = torch.randn(8, 197, 192, device="cuda")
    ref = layer(x).double()
    with torch.autocast("cuda", dtype=dtype):
        out = layer(x)
    assert torch.isfinite(out).all()
    # Rounding can change which neighbour is k-th for a few tokens; on average the output
    # stays within a few percent of float32.
    relative = (out.double() - ref).abs().mean() / ref.abs().mean()
    assert relative < 0.1, relative
    conv = ConvNN2d(32, 32).cuda()
    img = torch.randn(4, 32, 16, 16, device="cuda")
    with torch.autocast("cuda", dtype=dtype):
        y = conv(img)
    y.float().sum().backward()
    assert torch.isfinite(y).all()


def test_random_candidates_fixed_in_eval_on_cuda():
    layer = ConvNNAttention(32, 2, k=5, sampling="random", candidates=16).cuda().eval()
    x = torch.randn(2, 65, 32, device="cuda")
    with torch.no_grad():
        assert torch.equal(layer(x), layer(x))
        cpu = ConvNNAttention(32, 2, k=5, sampling="random", candidates=16).eval()
        cpu.load_state_dict(layer.state_dict())
        torch.testing.assert_close(cpu(x.cpu()), layer(x).cpu(), rtol=1e-4, atol=1e-4)


# ------------------------------------------------- the fused attention core (issue 21), compiled
FUSED_SHAPES = [(1, 192), (3, 64)]  # the paper's 1 head x 192, and 3 x 64
FUSED_DTYPES = {"float32": (torch.float32,) * 3, "bfloat16": (torch.bfloat16,) * 3,
                "autocast": (torch.float32, torch.bfloat16, torch.float32)}  # q/key, v, w


def _fused_reference(monkeypatch, q, key, v, w, k, scale, self_first, self_score, cand):
    from convnn import ops

    stable = ops._top
    monkeypatch.setattr(ops, "_top", lambda s, kk, st, fused=False: stable(s, kk, True))
    out = ops.convnn(v, q, key, k, w.t().unsqueeze(1), None, similarity="dot",
                     weighting="softmax", aggregation="depthwise", candidate_positions=cand,
                     self_first=self_first, scale=scale, self_score=self_score,
                     backend="torch")
    monkeypatch.setattr(ops, "_top", stable)
    return out


@pytest.mark.parametrize("dtypes", list(FUSED_DTYPES), ids=list(FUSED_DTYPES))
@pytest.mark.parametrize("heads, head_dim", FUSED_SHAPES)
@pytest.mark.parametrize("sampling", ["all", "random", "spatial"])
def test_fused_attention_core_cuda_matches_the_torch_path(monkeypatch, dtypes, heads,
                                                          head_dim, sampling):
    """Compiled fused core vs the PyTorch path at T = 197, k = 9, forward and backward:
    integer features (exact scores, ties to the lower key) give equal lists; outputs and
    gradients within the contract's tolerance (float32 2e-4, 16-bit 4 · 2^-8 of the scale)."""
    from convnn import kernels_attention, ops

    gen = torch.Generator().manual_seed(0)
    batch, tokens, k = 4, 197, 9
    rows = batch * heads
    q = torch.randint(-3, 4, (rows, tokens, head_dim), generator=gen).float()
    key = torch.randint(-3, 4, (rows, tokens, head_dim), generator=gen).float()
    v = torch.randn(rows, tokens, head_dim, generator=gen)
    w = torch.randn(k, head_dim, generator=gen)
    cand = None
    if sampling == "random":
        cand = ops.random_candidates(tokens, 32, generator=gen).cuda()
    elif sampling == "spatial":
        cand = ops.spatial_candidates_1d(tokens, 32).cuda()
    self_first = cand is not None
    self_score = "constant" if sampling == "random" else "similarity"
    kinds = FUSED_DTYPES[dtypes]
    low = [t.to(kind).cuda().requires_grad_()
           for t, kind in zip((q, key, v, w), (kinds[0], kinds[0], kinds[1], kinds[2]))]
    high = [t.detach().float().requires_grad_() for t in low]
    scale = head_dim ** -0.5
    out, idx = kernels_attention.fused_attention(*low, k, scale, self_first=self_first,
                                       self_logit=ops.PAPER_SELF_LOGIT
                                       if self_score == "constant" else None,
                                       candidate_positions=cand,
                                       return_indices=True)
    ref_idx, _ = ops.select_neighbours_reference(
        high[0].detach(), high[1].detach(), k, "dot", candidate_positions=cand,
        self_first=self_first, scale=scale, stable=True, with_scores=False)
    assert torch.equal(idx, ref_idx)
    ref = _fused_reference(monkeypatch, *high, k, scale, self_first, self_score, cand)
    upstream = torch.randn(out.shape, generator=gen).cuda()
    grads = torch.autograd.grad((out.float() * upstream).sum(), low)
    ref_grads = torch.autograd.grad((ref * upstream).sum(), high)
    tol = 2e-4 if dtypes == "float32" else 4 * 2.0 ** -8
    for a, b in zip((out, *grads), (ref, *ref_grads)):
        scale_b = max(1.0, float(b.detach().abs().max()))
        torch.testing.assert_close(a.detach().float(), b.detach().float(), rtol=tol,
                                   atol=tol * scale_b)


def test_fused_attention_core_cuda_lists_within_the_precision_contract():
    """Gaussian float32 features at 1 x 192, T = 197: the compiled kernel's lists equal the
    float32 lists except on near-ties within the contract's bound."""
    from convnn import kernels_attention, ops

    gen = torch.Generator().manual_seed(1)
    q = torch.randn(16, 197, 192, generator=gen).cuda()
    key = torch.randn(16, 197, 192, generator=gen).cuda()
    v = torch.randn(16, 197, 192, generator=gen).cuda()
    w = torch.ones(9, 192, device="cuda")
    scale = 192 ** -0.5
    with torch.no_grad():
        _, idx = kernels_attention.fused_attention(q, key, v, w, 9, scale, return_indices=True)
        scores = torch.matmul(q.double(), key.double().transpose(-1, -2)) * scale
        ref = torch.sort(scores, dim=-1, descending=True, stable=True).indices[..., :9]
        tau = ops.selection_score_bound(q, key, scale).double().amax(-1, keepdim=True)
        gap = (scores.gather(-1, idx) - scores.gather(-1, ref)).abs()
    assert bool((gap <= 2 * tau).all())
    assert float((idx != ref).any(-1).float().mean()) <= 1e-3


@pytest.mark.parametrize("options", [{}, {"sampling": "random", "candidates": 32}],
                         ids=["all", "random32"])
def test_fused_attention_layer_cuda_bf16_autocast_takes_the_kernel(options):
    """A bf16-autocast ConvNN attention layer under backend="triton" runs the fused core,
    and its forward and backward stay close to the PyTorch path's."""
    from convnn import kernels_attention

    torch.manual_seed(3)
    layer = ConvNNAttention(192, 1, k=9, backend="triton", **options).cuda().train()
    x = torch.randn(8, 197, 192, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        assert layer.backend_decision(x)[0] == "triton"
    calls = []
    original = kernels_attention.fused_attention

    def counted(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    results = {}
    for backend in ("triton", "torch"):
        layer.backend = backend
        kernels_attention.fused_attention = counted
        try:
            out, gx, _ = _run_autocast(layer, x)
        finally:
            kernels_attention.fused_attention = original
        results[backend] = (out, gx)
    assert len(calls) == 1
    for a, b in zip(results["triton"], results["torch"]):
        assert torch.isfinite(a).all()
        assert float((a - b).abs().mean() / b.abs().mean()) < 2e-2


@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 0),
                    reason="needs a card with bf16 tensor cores")
def test_contract_projection_on_cuda_equals_its_cpu_emulation_within_the_bound():
    """Under bf16 autocast on a bf16 card the selection's q/k come from
    ``ops.contract_linear`` (one bf16 GEMM over 3C inputs, float32 out): within the projection
    bound of the float32 projection, and the layer's lists are the float32 lists."""
    from convnn import ops

    torch.manual_seed(4)
    layer = ConvNNAttention(192, 1, k=9).cuda()
    x = torch.randn(4, 197, 192, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        assert ops.contract_projection_applies(x.device)
        q, _ = layer._selection_features(x)
        idx = layer.neighbours(x)
    assert q.dtype == torch.float32
    exact = torch.nn.functional.linear(x.double(), layer.q_proj.weight.double())
    bound = ops.selection_score_bound(x, layer.q_proj.weight).double()
    assert bool(((q.double() - exact).abs() <= bound).all())
    emulated = ops.contract_linear(x.cpu(), layer.q_proj.weight.detach().cpu())
    torch.testing.assert_close(q.cpu(), emulated, rtol=0, atol=float(bound.max()))
    with torch.no_grad():
        reference = layer.neighbours(x)  # float32 projections and ranking
    mismatch = float((idx != reference).any(-1).float().mean())
    assert mismatch <= 2e-3, mismatch


def test_projection_kernel_on_cuda_equals_the_contract_linear_path():
    """The Triton q/k projection (``backend="triton"``) on the card: q and k equal
    ``ops.contract_linear``'s within the contract's bound (both bf16×3 products; only the
    summation order differs), and its gradients equal the bf16 linear's within float32
    summation error (the same bf16 operands, rounded to nearest on the card)."""
    from convnn import kernels_projection, ops

    torch.manual_seed(6)
    for heads in (1, 3):
        x = torch.randn(8, 197, 192, device="cuda", requires_grad=True)
        weight = (torch.randn(384, 192, device="cuda") / 14).requires_grad_()
        bias = torch.randn(384, device="cuda", requires_grad=True)
        q, key = kernels_projection.contract_projection(x, weight, bias, heads)
        both = ops.contract_linear(x, weight, bias)

        def per_head(part, heads=heads):
            return part.view(8, 197, heads, -1).transpose(1, 2).reshape(8 * heads, 197, -1)

        bound = float(ops.selection_score_bound(x, weight).max()) + 1e-6
        for got, ref in ((q, per_head(both[..., :192])), (key, per_head(both[..., 192:]))):
            torch.testing.assert_close(got, ref, rtol=0, atol=2 * bound)
        gq, gk = torch.randn_like(q), torch.randn_like(key)
        got = torch.autograd.grad((q * gq).sum() + (key * gk).sum(), (x, weight, bias))
        ref = torch.autograd.grad((per_head(both[..., :192]) * gq).sum()
                                  + (per_head(both[..., 192:]) * gk).sum(), (x, weight, bias))
        for a, b in zip(got, ref):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-3)


def _run_autocast(layer, x):
    layer.zero_grad()
    x = x.clone().requires_grad_(True)
    torch.manual_seed(0)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = layer(x)
    out.float().sum().backward()
    return out.detach().double(), x.grad.double(), [p.grad for p in layer.parameters()]


def test_bf16_vit_tiny_step_takes_the_fused_core_on_cuda():
    """One bf16-autocast training step of the paper's ViT-Tiny (all candidates and r = 32)
    under backend="triton": each of the 12 blocks launches the fused core once."""
    from convnn import kernels_attention
    from convnn.models.vit import vit_tiny_paper

    for options in ({"k": 9}, {"k": 9, "sampling": "random", "candidates": 32}):
        torch.manual_seed(0)
        model = vit_tiny_paper(10, "convnn_attention", backend="triton", **options).cuda()
        images = torch.randn(8, 3, 224, 224, device="cuda")
        labels = torch.randint(0, 10, (8,), device="cuda")
        calls = []
        original = kernels_attention.fused_attention

        def counted(*args, _original=original, _calls=calls, **kwargs):
            _calls.append(1)
            return _original(*args, **kwargs)

        kernels_attention.fused_attention = counted
        try:
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = torch.nn.functional.cross_entropy(model(images), labels)
            loss.backward()
        finally:
            kernels_attention.fused_attention = original
        assert len(calls) == 12 and torch.isfinite(loss)
        assert all(torch.isfinite(p.grad).all() for p in model.parameters()
                   if p.grad is not None)


# --- the fused 2-D path of ConvNN2d (convnn.kernels_conv2d), compiled -----------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_fused_2d_selection_compiled_equals_float32_ranking_up_to_near_ties(dtype, layout):
    from convnn import kernels_conv2d, ops

    torch.manual_seed(3)
    x = torch.randn(4, 64, 32, 32, device="cuda").relu().to(dtype)
    x = x.contiguous(memory_format=layout)
    got = kernels_conv2d.select_2d(x, 8, 1)
    values = torch.nn.functional.pad(x.float(), (1, 1, 1, 1)).flatten(2).transpose(1, 2)
    qpos = ops.interior_positions(32, 32, 1, device="cuda")
    q, keys, _ = ops._prepare(values[:, qpos], values, "cosine")
    scores = torch.matmul(q.double(), keys.double().transpose(1, 2))  # float64 truth
    scores[:, torch.arange(qpos.numel()), qpos] = float("-inf")
    want = torch.sort(scores, dim=-1, descending=True, stable=True).indices[..., :8]
    # TF32 / bf16 products: lists equal except where scores are within rounding (near-ties)
    tol = 2e-3 if dtype == torch.float32 else 1e-2
    torch.testing.assert_close(scores.gather(-1, got), scores.gather(-1, want), rtol=0, atol=tol)
    differ = (got != want).any(-1).float().mean().item()
    print(f"fused 2-D selection {dtype}: {differ:.4f} of the lists differ (near-ties)")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_2d_layer_compiled_matches_the_torch_path(dtype):
    torch.manual_seed(4)
    ref = ConvNN2d(32, 48, backend="torch").cuda()
    fused = ConvNN2d(32, 48, backend="triton").cuda()
    fused.load_state_dict(ref.state_dict())
    x = torch.randn(4, 32, 16, 16, device="cuda").contiguous(memory_format=torch.channels_last)
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        out_f, out_r = fused(x), ref(x)
    assert fused.backend_decision(x)[0] == "triton"
    assert out_f.is_contiguous(memory_format=torch.channels_last)
    rel = (out_f.float() - out_r.float()).abs().mean() / out_r.float().abs().mean()
    assert rel < (2e-3 if dtype == torch.float32 else 3e-2), rel
    g = torch.randn_like(out_f.float())
    (out_f.float() * g).sum().backward()
    (out_r.float() * g).sum().backward()
    for a, b in zip(fused.parameters(), ref.parameters()):
        err = (a.grad - b.grad).abs().mean() / b.grad.abs().mean()
        assert err < (5e-3 if dtype == torch.float32 else 5e-2), err
