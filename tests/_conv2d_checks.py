"""Checks of :mod:`convnn.kernels_conv2d` against the PyTorch path, run by
``test_conv2d_kernels.py`` in a subprocess with ``TRITON_INTERPRET=1`` (small maps: 5×5, 6×7).
Each check prints a marker when it passes."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from convnn import ConvNN2d, kernels_conv2d, ops
from convnn.layers import BranchingConv2d


def _padded(x: torch.Tensor, p: int) -> torch.Tensor:
    return F.pad(x, (p, p, p, p)).flatten(2).transpose(1, 2)  # (B, N, C)


def _reference_selection(x, k, p, similarity):
    """Stable float32 ranking of the padded map (self excluded), and the score matrix."""
    values = _padded(x.float(), p)
    height, width = x.shape[2:]
    qpos = ops.interior_positions(height, width, p)
    idx, _ = ops.select_neighbours(values[:, qpos], values, k + 1, similarity,
                                   query_positions=qpos, self_first=True, with_scores=False,
                                   stable=True, backend="torch")
    q, keys, extra = ops._prepare(values[:, qpos], values, similarity)
    scores = ops._block_scores(q, keys, extra, similarity, None, torch.float32)
    return idx[..., 1:], scores


def _contract_tolerance(x, p, similarity):
    """2 max τ: how far apart the float32 scores of a near-tie may be under the precision
    contract (``ops.selection_score_bound`` of the prepared features, the ops docstring)."""
    values = _padded(x.float(), p)
    qpos = ops.interior_positions(*x.shape[2:], p)
    q, keys, _ = ops._prepare(values[:, qpos], values, similarity)
    scale = 1.0 if similarity == "cosine" else 1.0 / x.shape[1] ** 0.5
    return 2 * ops.selection_score_bound(q, keys, scale).max().item()


def _same_up_to_near_ties(got, ref, scores, tol):
    """Equal lists, or lists whose scores agree rank by rank within ``tol`` (a near-tie)."""
    picked = scores.gather(-1, got)
    wanted = scores.gather(-1, ref)
    torch.testing.assert_close(picked, wanted, rtol=0, atol=tol)
    return (got != ref).any(-1).float().mean().item()


def selection_matches_stable_reference() -> None:
    torch.manual_seed(0)
    cases = [((2, 8, 5, 5), 1, 8, "cosine"), ((2, 6, 6, 7), 2, 5, "cosine"),
             ((1, 16, 6, 7), 1, 8, "dot"), ((2, 20, 5, 5), 0, 3, "cosine")]
    for shape, p, k, similarity in cases:
        x = torch.randn(shape)
        relu = x.relu()
        relu[:, :, 1, 1:4] = 0  # zero pixels: exact ties at score 0 with the border
        for feats in (x, relu):
            ref, scores = _reference_selection(feats, k, p, similarity)
            tol = _contract_tolerance(feats, p, similarity)
            for layout in (torch.contiguous_format, torch.channels_last):
                laid = feats.contiguous(memory_format=layout)
                # IEEE float32 products: the stable float32 ranking, ties to the lower position
                got = kernels_conv2d.select_2d(laid, k, p, similarity, precision="ieee")
                assert torch.equal(got, ref), (shape, p, k, similarity, layout)
                # the precision contract (bf16x3): the same lists up to near-ties (the post-ReLU
                # maps have parallel pixels, whose equal float32 scores the contract may split)
                got = kernels_conv2d.select_2d(laid, k, p, similarity)
                _same_up_to_near_ties(got, ref, scores, tol)
            # bf16 inputs: products of the rounded inputs, float32 sums
            rounded = feats.bfloat16()
            ref16, scores16 = _reference_selection(rounded.float(), k, p, similarity)
            got16 = kernels_conv2d.select_2d(rounded.contiguous(memory_format=torch.channels_last),
                                              k, p, similarity)
            _same_up_to_near_ties(got16, ref16, scores16, 1e-5)
    # a card without bf16 (a T4) runs the launch configuration with IEEE float32 products
    original = kernels_conv2d.card_arch
    kernels_conv2d.card_arch = lambda device: 75
    try:
        assert kernels_conv2d.select_2d_config(torch.float32, 8, 8, "cosine", 75)["DOT"] == "ieee"
        x = torch.randn(2, 8, 5, 5)
        assert torch.equal(kernels_conv2d.select_2d(x, 8, 1), _reference_selection(x, 8, 1,
                                                                                  "cosine")[0])
    finally:
        kernels_conv2d.card_arch = original
    print("SELECT OK")


def _aggregate_reference(x, index, weight, p):
    return ops.aggregate(ops.gather_neighbours(_padded(x, p), index), None, weight)


def gather_gemm_matches_reference() -> None:
    torch.manual_seed(1)
    for (batch, channels, height, width), p, k, out_channels in (
            ((2, 8, 5, 5), 1, 9, 12), ((1, 5, 6, 7), 2, 4, 3), ((2, 17, 5, 6), 0, 6, 20)):
        positions = (height + 2 * p) * (width + 2 * p)
        index = torch.randint(0, positions, (batch, height * width, k))
        index[0, :, 0] = 0  # a hub (a border corner when p > 0): many entries, one key
        for dtype, tol in ((torch.float32, 1e-5), (torch.bfloat16, 3e-2)):
            for layout in (torch.contiguous_format, torch.channels_last):
                x = torch.randn(batch, channels, height, width).to(dtype)
                x = x.contiguous(memory_format=layout).requires_grad_(True)
                weight = torch.randn(out_channels, channels, k, requires_grad=True)
                out = kernels_conv2d.gather_gemm(x, index, weight, p)
                assert out.dtype == dtype and out.shape == (batch, height * width, out_channels)
                upstream = torch.randn(out.shape)
                gx, gw = torch.autograd.grad((out.float() * upstream).sum(), (x, weight))
                assert gx.is_contiguous(memory_format=layout) and gx.dtype == dtype
                xr = x.detach().float().requires_grad_(True)
                wr = weight.detach().to(dtype).float().requires_grad_(True)
                ref = _aggregate_reference(xr, index, wr, p)
                gxr, gwr = torch.autograd.grad((ref * upstream).sum(), (xr, wr))
                scale = ref.abs().max().item()
                torch.testing.assert_close(out.float(), ref, rtol=tol, atol=tol * scale)
                torch.testing.assert_close(gx.float(), gxr, rtol=tol,
                                           atol=tol * gxr.abs().max().item())
                torch.testing.assert_close(gw, gwr, rtol=tol, atol=tol * gwr.abs().max().item())
                # no atomics: the same call gives bitwise the same gradients
                gx2 = torch.autograd.grad((kernels_conv2d.gather_gemm(x, index, weight, p).float()
                                           * upstream).sum(), x)[0]
                assert torch.equal(gx, gx2)
    print("GATHER GEMM OK")


def layer_matches_torch_path() -> None:
    torch.manual_seed(2)
    seen = []
    original = kernels_conv2d.select_2d

    def spy(x, *args, **kwargs):
        seen.append((x.data_ptr(), x.stride()))
        return original(x, *args, **kwargs)

    kernels_conv2d.select_2d = spy
    try:
        for similarity, (height, width), k in (("cosine", (5, 5), 9), ("dot", (6, 7), 5)):
            ref_layer = ConvNN2d(6, 10, k=k, similarity=similarity, backend="torch")
            fused = ConvNN2d(6, 10, k=k, similarity=similarity, backend="triton")
            fused.load_state_dict(ref_layer.state_dict())
            assert fused.backend_decision(torch.randn(1, 6, height, width))[0] == "triton"
            x0 = torch.randn(2, 6, height, width)
            for layout in (torch.contiguous_format, torch.channels_last):
                x = x0.contiguous(memory_format=layout).requires_grad_(True)
                xr = x0.clone().requires_grad_(True)
                seen.clear()
                out = fused(x)
                assert seen == [(x.data_ptr(), x.stride())]  # read in place: no copy
                ref = ref_layer(xr)
                torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
                if layout == torch.channels_last:
                    assert out.is_contiguous(memory_format=torch.channels_last)
                upstream = torch.randn(out.shape)
                got = torch.autograd.grad((out * upstream).sum(), [x, *fused.parameters()])
                want = torch.autograd.grad((ref * upstream).sum(),
                                           [xr, *ref_layer.parameters()])
                for a, b in zip(got, want):
                    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
        # the branching layer in channels-last, as the trainer runs VGG on CUDA
        branching = BranchingConv2d(6, 8, ratio=0.5, backend="triton")
        branching_ref = BranchingConv2d(6, 8, ratio=0.5, backend="torch")
        branching_ref.load_state_dict(branching.state_dict())
        branching.to(memory_format=torch.channels_last)
        x = torch.randn(2, 6, 5, 5)
        out = branching(x.contiguous(memory_format=torch.channels_last))
        assert out.is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(out, branching_ref(x), rtol=1e-5, atol=1e-5)
    finally:
        kernels_conv2d.select_2d = original
    print("LAYER OK")


def run_all() -> None:
    selection_matches_stable_reference()
    gather_gemm_matches_reference()
    layer_matches_torch_path()
