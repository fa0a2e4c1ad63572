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

from convnn import ConvNNAttention, kernels, kernels_attention, ops

triton = pytest.importorskip("triton", reason="Triton is not installed (CPU-only torch build)")

TESTS = Path(__file__).resolve().parent
HANG_GUARD_S = 3600  # a hang guard only: the interpreter is slow on a busy machine

# test name -> (check call in _fused_checks, marker it prints). The checks of the tests that
# pytest selected run in one interpreter subprocess (one Triton/PyTorch start-up, not one per
# test); each test then reads its own section of the output.
CHECKS = {
    "test_row_topk_equals_a_stable_sort_with_ties_and_masks":
        ("topk_matches_stable_sort()", "TOPK OK"),
    "test_selection_with_zero_padding_ties_matches_the_stable_reference":
        ("selection_with_ties_matches_stable_reference()", "SELECTION OK"),
    "test_attention_matches_the_fast_path_forward_and_backward":
        ("attention_matches_fast_path(13, every=5)", "ATTENTION OK 5"),
    "test_fused_selection_equals_the_stable_reference_t13":
        # dot/cosine x 1/3 heads x exact/Gaussian features x candidate sets, every 4th k
        ("fused_selection_matches_stable_reference(13, every=4)", "FUSED SELECTION OK 96"),
    "test_fused_selection_falls_back_for_unsupported_options":
        ("fused_selection_falls_back()", "FALLBACK OK"),
    "test_fused_attention_core_matches_the_reference_within_the_contract":
        # T = 13 (one tile), 20 and 67 (16-key tiles merged, query / backward tiles crossed);
        # all, random and spaced candidates; the self modes; float32, bf16, autocast mix
        ("fused_attention_core_matches_reference()", "FUSED CORE OK 23"),
    "test_fused_attention_layer_matches_the_torch_path":
        ("fused_attention_layer_matches_torch()", "FUSED ATTENTION OK 8"),
    "test_fused_attention_core_falls_back_for_unsupported_options":
        ("fused_attention_falls_back()", "ATTENTION FALLBACK OK 6"),
    "test_bf16_vit_step_takes_the_fused_attention_core":
        ("bf16_vit_step_takes_the_fused_core()", "BF16 VIT OK"),
    "test_fused_attention_is_a_custom_op_torch_compile_takes":
        ("fused_attention_custom_op()", "CUSTOM OP OK"),
    "test_attention_inverse_index_kernel_equals_a_stable_sort":
        ("attention_inverse_index_matches()", "INVERSE INDEX OK 4"),
    "test_contract_projection_kernel_matches_the_contract":
        # 1-3 heads, q/k and q/k/v, bias or not, row blocks and dW slices crossed; custom op;
        # the layer under autocast
        ("contract_projection_matches()", "CONTRACT PROJECTION OK 5"),
    "test_gather_aggregate_gradcheck_float64": ("gradcheck_float64()", "GRADCHECK OK"),
    "test_gather_aggregate_gradients_are_bitwise_deterministic":
        ("gradients_are_bitwise_deterministic()", "DETERMINISTIC OK"),
    "test_gather_aggregate_bfloat16_accumulates_in_float32":
        ("bfloat16_inputs_accumulate_in_float32()", "BF16 OK"),
    # slow: the paper's sizes and the exhaustive sweeps
    "test_attention_matches_the_fast_path_every_case_t13":
        ("attention_matches_fast_path(13)", "ATTENTION OK 22"),
    "test_attention_matches_the_fast_path_t197":
        ("attention_matches_fast_path(197)", "ATTENTION OK 8"),
    "test_fused_selection_equals_the_stable_reference_every_k_t13":
        ("fused_selection_matches_stable_reference(13)", "FUSED SELECTION OK 304"),
    "test_fused_selection_equals_the_stable_reference_t197":
        # several key tiles per row (197 > 64), sampled candidates of 98 keys; k = 1, 6, 11, 16
        ("fused_selection_matches_stable_reference(197, dim=24, every=5, images=1)",
         "FUSED SELECTION OK 128"),
    "test_fused_attention_core_one_tile_t67":
        ("fused_attention_core_matches_reference(key_tile=256)", "FUSED CORE OK 23"),
    "test_fused_attention_core_paper_shapes_t197":
        # 1x192 and 3x64 at T = 197: all candidates (one 256-key tile) and r = 32
        ("fused_attention_core_shapes()", "FUSED CORE SHAPES OK 4 "),
}


BEGIN, END = "=== CHECK BEGIN ", "=== CHECK END "  # as in _fused_checks.run_checks


def _sections(output: str) -> dict[str, str]:
    sections = {}
    for part in output.split(BEGIN)[1:]:
        call, _, rest = part.partition("\n")
        sections[call] = rest.split(END + call)[0]
    return sections


@pytest.fixture(scope="module")
def check_output(request) -> dict[str, str]:
    """Run the checks of every selected test of this module in one interpreter subprocess."""
    selected = [item.originalname for item in request.session.items
                if getattr(item, "module", None) is request.module
                and getattr(item, "originalname", None) in CHECKS]
    calls = [CHECKS[name][0] for name in dict.fromkeys(selected)]
    env = {**os.environ, "TRITON_INTERPRET": "1", "CONVNN_BACKEND": "torch"}
    code = (f"import sys; sys.path.insert(0, {str(TESTS)!r}); import _fused_checks as c; "
            f"c.run_checks(*{calls!r})")
    proc = subprocess.run([sys.executable, "-c", code], env=env, cwd=TESTS.parent,
                          capture_output=True, text=True, timeout=HANG_GUARD_S, check=False)
    sections = _sections(proc.stdout)
    sections["<process>"] = f"exit {proc.returncode}\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return sections


def _check(check_output: dict[str, str], name: str) -> None:
    call, marker = CHECKS[name]
    assert call in check_output, check_output["<process>"]
    assert marker in check_output[call], check_output[call]


def test_attention_inverse_index_kernel_equals_a_stable_sort(check_output):
    _check(check_output, "test_attention_inverse_index_kernel_equals_a_stable_sort")


def test_contract_projection_kernel_matches_the_contract(check_output):
    _check(check_output, "test_contract_projection_kernel_matches_the_contract")


def test_row_topk_equals_a_stable_sort_with_ties_and_masks(check_output):
    _check(check_output, "test_row_topk_equals_a_stable_sort_with_ties_and_masks")


def test_selection_with_zero_padding_ties_matches_the_stable_reference(check_output):
    _check(check_output, "test_selection_with_zero_padding_ties_matches_the_stable_reference")


def test_attention_matches_the_fast_path_forward_and_backward(check_output):
    _check(check_output, "test_attention_matches_the_fast_path_forward_and_backward")


def test_fused_selection_equals_the_stable_reference_t13(check_output):
    _check(check_output, "test_fused_selection_equals_the_stable_reference_t13")


def test_fused_selection_falls_back_for_unsupported_options(check_output):
    _check(check_output, "test_fused_selection_falls_back_for_unsupported_options")


def test_fused_attention_core_matches_the_reference_within_the_contract(check_output):
    _check(check_output, "test_fused_attention_core_matches_the_reference_within_the_contract")


def test_fused_attention_layer_matches_the_torch_path(check_output):
    _check(check_output, "test_fused_attention_layer_matches_the_torch_path")


def test_fused_attention_core_falls_back_for_unsupported_options(check_output):
    _check(check_output, "test_fused_attention_core_falls_back_for_unsupported_options")


def test_bf16_vit_step_takes_the_fused_attention_core(check_output):
    _check(check_output, "test_bf16_vit_step_takes_the_fused_attention_core")


def test_fused_attention_is_a_custom_op_torch_compile_takes(check_output):
    _check(check_output, "test_fused_attention_is_a_custom_op_torch_compile_takes")


def test_gather_aggregate_gradcheck_float64(check_output):
    _check(check_output, "test_gather_aggregate_gradcheck_float64")


def test_gather_aggregate_gradients_are_bitwise_deterministic(check_output):
    _check(check_output, "test_gather_aggregate_gradients_are_bitwise_deterministic")


def test_gather_aggregate_bfloat16_accumulates_in_float32(check_output):
    _check(check_output, "test_gather_aggregate_bfloat16_accumulates_in_float32")


@pytest.mark.slow
def test_attention_matches_the_fast_path_every_case_t13(check_output):
    _check(check_output, "test_attention_matches_the_fast_path_every_case_t13")


@pytest.mark.slow
def test_attention_matches_the_fast_path_t197(check_output):
    _check(check_output, "test_attention_matches_the_fast_path_t197")


@pytest.mark.slow
def test_fused_selection_equals_the_stable_reference_every_k_t13(check_output):
    _check(check_output, "test_fused_selection_equals_the_stable_reference_every_k_t13")


@pytest.mark.slow
def test_fused_selection_equals_the_stable_reference_t197(check_output):
    _check(check_output, "test_fused_selection_equals_the_stable_reference_t197")


@pytest.mark.slow
def test_fused_attention_core_one_tile_t67(check_output):
    _check(check_output, "test_fused_attention_core_one_tile_t67")


@pytest.mark.slow
def test_fused_attention_core_paper_shapes_t197(check_output):
    _check(check_output, "test_fused_attention_core_paper_shapes_t197")


def test_every_check_has_its_test():
    names = {name for name in globals() if name.startswith("test_")}
    assert set(CHECKS) <= names, set(CHECKS) - names


# ------------------------------------------------------------------ compile variants, no compile
@pytest.mark.parametrize("arch", [75, 80, 89, 90])
def test_attention_compile_variants_are_the_launchers_configurations(arch):
    """compile_variants lists the forward (hot), both backward kernels and the inverse index
    at the paper's shapes, in the card's dtypes (no bf16 on sm_75), with the launchers' own
    constexprs, and every runtime argument typed."""
    from types import SimpleNamespace

    card = SimpleNamespace(arch=arch, bf16=arch >= 80)
    variants = kernels_attention.compile_variants(card)
    names = [v.name for v in variants]
    assert len(names) == len(set(names))
    assert {v.kernel for v in variants} == {
        kernels_attention._attention_forward_kernel,
        kernels_attention._attention_query_backward_kernel,
        kernels_attention._attention_candidate_backward_kernel,
        kernels_attention._attention_inverse_index_kernel}
    assert all(v.hot == (v.kernel is kernels_attention._attention_forward_kernel)
               for v in variants)
    assert any("bf16" in name for name in names) == card.bf16
    assert all("bf16" not in str(v.signature) for v in variants) or card.bf16
    for v in variants:
        params = set(v.kernel.arg_names)
        assert set(v.signature) | set(v.constexprs) == params, v.name
        assert not set(v.signature) & set(v.constexprs), v.name
    forward = next(v for v in variants if v.name.startswith("attention_forward all fp32")
                   and "d=192" in v.name)
    launch = kernels_attention._forward_launch(197, None, 192, 9, q_dtype=torch.float32,
                                               key_dtype=torch.float32, self_first=False,
                                               constant_self=False, drop=False,
                                               interpreted=False)
    assert forward.constexprs == launch.constexprs
    # 64-row query tiles (sm_90's wgmma), T = 197 in 64-key tiles, columns in 8 bits
    assert forward.constexprs["BLOCK_Q"] >= 64 and not forward.constexprs["ONE_TILE"]
    assert forward.constexprs["BLOCK_N"] == 64 and forward.constexprs["COL_BITS"] == 8


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
    supported = [{"sampling": "random"}, {"sampling": "spatial"}, {"attn_dropout": 0.1},
                 {"dtypes": (torch.float32, torch.float32, torch.bfloat16, torch.float32)},
                 {"dtypes": (torch.bfloat16,) * 4}, {"dtypes": (torch.float16,)}]
    with ops.default_backend("triton"):
        for change in supported:  # sampled candidates, weight dropout, the bf16 training path
            assert ops.backend_decision(None, "cuda", step="fused_attention",
                                        **_attention_options(**change))[0] == "triton", change
    unsupported = [
        ({"sampling": "grid"}, "sampling='grid'"),
        ({"selection": "coords"}, "selection='coords'"),
        ({"similarity": "cosine"}, "similarity='cosine'"),
        ({"weighting": "similarity"}, "weighting='similarity'"),
        ({"aggregation": "standard"}, "aggregation='standard'"),
        ({"k": kernels_attention.MAX_FUSED_ATTENTION_K + 1}, "k=17 > 16"),
        ({"k": 9, "width": 5}, "k=9 > 5 tokens"),
        ({"dtypes": (torch.float32, torch.float64)}, "float64"),
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
