"""Triton row top-k, fused selection, the fused attention core and atomics-free gather-aggregate
(issue 12), checked on a CPU with the Triton interpreter, plus the kernel dispatch decisions.
The kernel checks live in ``_fused_checks.py`` and run in a subprocess so that
``TRITON_INTERPRET=1`` is set before Triton loads."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from convnn import ConvNNAttention, kernels, ops

triton = pytest.importorskip("triton", reason="Triton is not installed (CPU-only torch build)")

TESTS = Path(__file__).resolve().parent


def _run(call: str, marker: str) -> None:
    env = {**os.environ, "TRITON_INTERPRET": "1", "CONVNN_BACKEND": "torch"}
    code = f"import sys; sys.path.insert(0, {str(TESTS)!r}); import _fused_checks as c; c.{call}"
    proc = subprocess.run([sys.executable, "-c", code], env=env, cwd=TESTS.parent,
                          capture_output=True, text=True, timeout=900, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert marker in proc.stdout


def test_row_topk_equals_a_stable_sort_with_ties_and_masks():
    _run("topk_matches_stable_sort()", "TOPK OK")


def test_selection_with_zero_padding_ties_matches_the_stable_reference():
    _run("selection_with_ties_matches_stable_reference()", "SELECTION OK")


def test_attention_matches_the_fast_path_forward_and_backward():
    _run("attention_matches_fast_path(13, every=5)", "ATTENTION OK 5")


@pytest.mark.slow
def test_attention_matches_the_fast_path_every_case_t13():
    _run("attention_matches_fast_path(13)", "ATTENTION OK 22")


@pytest.mark.slow
def test_attention_matches_the_fast_path_t197():
    _run("attention_matches_fast_path(197)", "ATTENTION OK 8")


def test_fused_selection_equals_the_stable_reference_t13():
    # 304 selections: dot/cosine x 1/3 heads x exact/Gaussian features x candidate sets x k
    _run("fused_selection_matches_stable_reference(13)", "FUSED SELECTION OK 304")


@pytest.mark.slow
def test_fused_selection_equals_the_stable_reference_t197():
    # several key tiles per row (197 > 64), sampled candidates of 98 keys; k = 1, 6, 11, 16
    _run("fused_selection_matches_stable_reference(197, dim=24, every=5, images=1)",
         "FUSED SELECTION OK 128")


def test_fused_selection_falls_back_for_unsupported_options():
    _run("fused_selection_falls_back()", "FALLBACK OK")


def test_fused_attention_core_matches_the_torch_path():
    # T = 13 (k = 1, 3, 9) and T = 20 (k = 16); 1 and 3 heads; no self-first, self-first with
    # the real and the constant self logit; plus output dropout: 6 x 4 + 1 layers
    _run("fused_attention_matches_torch((13, 20))", "FUSED ATTENTION OK 25")


@pytest.mark.slow
def test_fused_attention_core_matches_the_torch_path_t197():
    # four key tiles per row, k = 9 and 16, 1 and 3 heads, the three self modes
    _run("fused_attention_matches_torch(197, ks=(9, 16), dim_per_head=16, layer_tol=1e-4)",
         "FUSED ATTENTION OK 13")


def test_fused_attention_core_falls_back_for_unsupported_options():
    _run("fused_attention_falls_back()", "ATTENTION FALLBACK OK 9")


def test_gather_aggregate_gradcheck_float64():
    _run("gradcheck_float64()", "GRADCHECK OK")


def test_gather_aggregate_gradients_are_bitwise_deterministic():
    _run("gradients_are_bitwise_deterministic()", "DETERMINISTIC OK")


def test_gather_aggregate_bfloat16_accumulates_in_float32():
    _run("bfloat16_inputs_accumulate_in_float32()", "BF16 OK")


# ------------------------------------------------------------------ dispatch, no kernel launch
def test_channel_block_fits_head_and_model_widths_without_padding():
    assert kernels.channel_block(192) == 64  # three blocks, not one padded to 256
    assert kernels.channel_block(64) == 64
    assert kernels.channel_block(256) == 128
    assert kernels.channel_block(48) == 16
    assert kernels.channel_block(12) == 16  # small: one padded block
    assert kernels.channel_block(1000) == 128


def test_torch_choice_never_uses_triton(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    with ops.default_backend("torch"):
        assert ops.backend_decision(None, "cuda", step="topk", k=9, width=197)[0] == "torch"
        assert ops.backend_decision(None, "cuda", step="gather_aggregate",
                                   aggregation="depthwise")[0] == "torch"


def test_auto_uses_triton_on_cuda_only(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with ops.default_backend(None):
        assert ops.backend_decision(None, "cuda", step="topk", k=9, width=197)[0] == "triton"
        assert ops.backend_decision(None, "cuda", step="gather_aggregate",
                                   aggregation="separable")[0] == "triton"
        backend, reason = ops.backend_decision(None, "cpu", step="topk", k=9, width=197)
        assert backend == "torch" and "cpu" in reason
        monkeypatch.setenv("TRITON_INTERPRET", "1")  # the interpreter is for tests, not auto
        assert ops.backend_decision(None, "cpu", step="topk", k=9, width=197)[0] == "torch"
        monkeypatch.setattr(kernels, "triton", None)  # no Triton installed
        assert ops.backend_decision(None, "cuda", step="topk", k=9, width=197)[0] == "torch"


@pytest.mark.parametrize("kernel", ["triton", "auto"])
def test_unsupported_options_fall_back_cleanly(kernel, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    unsupported = [
        ("topk", {"k": kernels.MAX_TOPK_K + 1, "width": 197}, "k=33"),
        ("topk", {"k": 9, "width": kernels.MAX_TOPK_WIDTH + 1}, "2049 candidates"),
        ("gather_aggregate", {"aggregation": "standard"}, "standard aggregation"),
        ("fused_topk", {"k": 9, "similarity": "euclidean"}, "similarity='euclidean'"),
        ("fused_topk", {"k": kernels.MAX_FUSED_TOPK_K + 1, "similarity": "cosine"}, "k=17"),
        ("fused_topk", {"k": 9, "similarity": "dot", "dtype": torch.float64}, "float64"),
    ]
    with ops.default_backend(None if kernel == "auto" else kernel):
        for step, options, why in unsupported:
            for device in ("cuda", "cpu"):  # no error on a CPU even when forced
                backend, reason = ops.backend_decision(None, device, step=step, **options)
                assert backend == "torch" and why in reason, (step, options, reason)
        assert ops.backend_decision(None, "cuda", step="topk", k=kernels.MAX_TOPK_K,
                                   width=kernels.MAX_TOPK_WIDTH)[0] == "triton"
        fused = ops.backend_decision(None, "cuda", step="fused_topk", k=kernels.MAX_FUSED_TOPK_K,
                                    similarity="dot", dtype=torch.bfloat16)
        # opt-in: auto leaves the fused selection off until it is measured on a GPU
        assert fused[0] == ("triton" if kernel == "triton" else "torch"), fused
        if kernel == "auto":
            assert "measured on a GPU" in fused[1]


FUSED_ATTENTION = {"k": 9, "width": 197, "aggregation": "depthwise", "similarity": "dot",
                   "options": {"sampling": "all", "selection": "features",
                               "weighting": "softmax", "attn_dropout": 0.0,
                               "dtypes": (torch.float32,)}}


def _attention_options(**change):
    options = {**FUSED_ATTENTION, **{k: v for k, v in change.items() if k in FUSED_ATTENTION}}
    options["options"] = {**FUSED_ATTENTION["options"],
                          **{k: v for k, v in change.items() if k not in FUSED_ATTENTION}}
    return options


def test_fused_attention_is_opt_in_and_falls_back_with_a_reason(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with ops.default_backend("triton"):
        assert ops.backend_decision(None, "cuda", step="fused_attention", **FUSED_ATTENTION)[0] == "triton"
        assert ops.choose_backend(None, "cuda", step="fused_attention",
                                  **FUSED_ATTENTION) == "triton"
    with ops.default_backend(None):  # auto never takes it: unmeasured on a GPU
        backend, reason = ops.backend_decision(None, "cuda", step="fused_attention", **FUSED_ATTENTION)
        assert backend == "torch" and "measured on a GPU" in reason
    assert ops.choose_backend("torch", "cuda", step="fused_attention",
                              **FUSED_ATTENTION) == "torch"
    unsupported = [
        ({"sampling": "random"}, "sampling='random'"),
        ({"selection": "coords"}, "selection='coords'"),
        ({"similarity": "cosine"}, "similarity='cosine'"),
        ({"weighting": "similarity"}, "weighting='similarity'"),
        ({"aggregation": "standard"}, "aggregation='standard'"),
        ({"attn_dropout": 0.1}, "dropout"),
        ({"k": kernels.MAX_FUSED_ATTENTION_K + 1}, "k=17 > 16"),
        ({"k": 9, "width": 5}, "k=9 > 5 tokens"),
        ({"dtypes": (torch.float32, torch.bfloat16)}, "bfloat16"),
    ]
    with ops.default_backend("triton"):
        for change, why in unsupported:
            for device in ("cuda", "cpu"):  # no error on a CPU: the options fall back first
                backend, reason = ops.backend_decision(None, device, step="fused_attention",
                                                      **_attention_options(**change))
                assert backend == "torch" and why in reason, (change, reason)
        with pytest.raises(ValueError, match="options"):
            ops.backend_decision(None, "cuda", step="fused_attention", k=9, aggregation="depthwise",
                                similarity="dot")


def test_forced_triton_on_cpu_without_interpreter_raises(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with ops.default_backend("triton"), pytest.raises(RuntimeError, match="needs CUDA tensors"):
        ops.backend_decision(None, "cpu", step="topk", k=9, width=197)
    # standard aggregation in attention is unsupported: the PyTorch path runs, no error
    layer = ConvNNAttention(8, 2, k=3, aggregation="standard", similarity="cosine")
    with ops.default_backend("triton"), pytest.raises(RuntimeError, match="needs CUDA tensors"):
        layer(torch.randn(1, 5, 8))  # the top-k step is supported, so it is forced
    with ops.default_backend("triton"):
        out = ops.convnn(torch.randn(1, 5, 4), torch.randn(1, 5, 4), torch.randn(1, 5, 4), 3,
                         torch.randn(4, 4, 3), neighbours=torch.randint(0, 5, (5, 3)))
    assert out.shape == (1, 5, 4)


def test_bad_dispatch_arguments_name_themselves():
    with pytest.raises(ValueError, match="step"):
        ops.backend_decision(None, "cuda", step="softmax")
    with ops.default_backend(None):
        with pytest.raises(ValueError, match="width"):
            ops.backend_decision(None, "cuda", step="topk", k=9)
        with pytest.raises(ValueError, match="aggregation"):
            ops.backend_decision(None, "cuda", step="gather_aggregate", aggregation="dense")
        with pytest.raises(ValueError, match="similarity"):
            ops.backend_decision(None, "cuda", step="fused_topk", k=9)
        with pytest.raises(ValueError, match="similarity"):
            ops.backend_decision(None, "cuda", step="fused_topk", k=9, similarity="manhattan")
    with pytest.raises(ValueError, match="k must be"):
        kernels.fused_topk(torch.zeros(1, 5, 4), torch.zeros(1, 5, 4), 17)
    with pytest.raises(ValueError, match="float32"):
        kernels.fused_topk(torch.zeros(1, 5, 4).double(), torch.zeros(1, 5, 4).double(), 2)
    with pytest.raises(ValueError, match="k must be"):
        kernels.row_topk(torch.zeros(2, 5), 6)
    with pytest.raises(ValueError, match="N=3000"):
        kernels.row_topk(torch.zeros(2, 3000), 4)
