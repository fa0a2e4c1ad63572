"""The compile gate (``python -m convnn bench --compile``): what it measures and what fails it.

CI runs the whole gate as its own stage; these tests check its parts on tiny kernels, and that
the committed report covers every variant the kernel modules list today.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

triton = pytest.importorskip("triton")
tl = pytest.importorskip("triton.language")

from convnn.bench import compile as gate
from convnn.kernels import KernelVariant

REPORT = Path(__file__).resolve().parents[1] / "data" / "results" / "compile" / "compile.json"


@triton.jit
def _copy_kernel(src_ptr, dst_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    tl.store(dst_ptr + offs, tl.load(src_ptr + offs, mask=offs < n), mask=offs < n)


@triton.jit
def _shape_changing_loop_kernel(dst_ptr, K, ROWS: tl.constexpr, KP: tl.constexpr):
    # the bug class of _select_2d_kernel: a loop-carried value that starts [1, KP] and is
    # reassigned [ROWS, KP]; the interpreter broadcasts it, the compiler rejects it
    rows = tl.arange(0, ROWS)
    slots = tl.arange(0, KP)
    free = slots[None, :] < K
    for _ in range(K):
        free = free & (rows[:, None] >= 0)
    tl.store(dst_ptr + rows[:, None] * KP + slots[None, :], free.to(tl.int32))


def _variant(kernel, **constexprs) -> KernelVariant:
    signature = ({"src_ptr": "*fp32", "dst_ptr": "*fp32", "n": "i32"} if kernel is _copy_kernel
                 else {"dst_ptr": "*i32", "K": "i32"})
    return KernelVariant(kernel, "test", signature, constexprs, hot=True)


@pytest.fixture(autouse=True)
def _compiler_not_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)


def test_a_kernel_compiles_with_its_resources_read_for_each_card():
    for name in ("sm_75", "sm_90"):
        row = gate.compile_variant(_variant(_copy_kernel, BLOCK=128), gate.card(name))
        assert row["compiled"], row["error"]
        assert 0 < row["registers"] <= 255
        assert row["spill_bytes"] == 0
        assert row["blocks_per_sm"] >= 1
        assert gate.failures(row) == []


def test_the_gate_catches_a_loop_carried_value_that_changes_shape():
    row = gate.compile_variant(_variant(_shape_changing_loop_kernel, ROWS=32, KP=8),
                               gate.card("sm_90"))
    assert not row["compiled"]
    assert "Loop-carried variable free" in row["error"]
    assert gate.failures(row) and gate.failures(row)[0].startswith("does not compile")


def test_the_interpreter_does_not_catch_it():
    # why the gate exists: the same kernel runs under the interpreter (TRITON_INTERPRET=1)
    from triton.runtime.interpreter import InterpretedFunction

    dst = torch.zeros(32, 8, dtype=torch.int32)
    InterpretedFunction(_shape_changing_loop_kernel.fn)[(1,)](dst, 3, ROWS=32, KP=8)
    assert dst[:, :3].all() and not dst[:, 3:].any()


def test_occupancy_follows_registers_shared_memory_and_warps():
    h100 = gate.card("sm_90")
    # 255 registers round up to 8,192 a warp: two 4-warp blocks in 65,536 registers
    assert gate.blocks_per_sm(h100, 255, 0, 4) == 2
    # 170 KB of shared memory (the attention forward before the redesign): one block
    assert gate.blocks_per_sm(h100, 128, 170 * 1024, 4) == 1
    # small kernels hit the warp limit: 64 warps / 8
    assert gate.blocks_per_sm(h100, 32, 0, 8) == 8
    t4 = gate.card("sm_75")
    assert gate.blocks_per_sm(t4, 32, 48 * 1024, 4) == 1  # 64 KB per SM, no reserve


def test_the_gate_fails_on_shared_memory_over_the_limit_and_on_hot_spills():
    base = {"card": "sm_89", "compiled": True, "error": None, "registers": 128,
            "spill_bytes": 0, "shared_bytes": 96 * 1024, "blocks_per_sm": 1, "hot": True}
    assert gate.failures(base) == []
    assert "per block on sm_89" in gate.failures({**base, "shared_bytes": 120 * 1024})[0]
    spilled = {**base, "spill_bytes": 64}
    assert gate.failures(spilled) == []  # sm_89 reports spills, the gate is sm_80/sm_90
    assert "spills 64 B on sm_90" in gate.failures({**spilled, "card": "sm_90"})[0]
    assert gate.failures({**spilled, "card": "sm_90", "hot": False}) == []


def test_no_bf16_variant_is_listed_for_a_card_without_bf16():
    t4 = gate.card("sm_75")
    listed = gate.variants(t4)
    assert listed
    assert not any("*bf16" in v.signature.values() for v in listed)
    assert any("*bf16" in v.signature.values() for v in gate.variants(gate.card("sm_90")))


def test_the_committed_report_covers_every_variant():
    assert REPORT.exists(), (f"{REPORT} is missing: python -m convnn bench --compile "
                             "data/results/compile writes it")
    report = json.loads(REPORT.read_text())
    committed = {(r["card"], r["variant"]) for r in report["rows"]}
    listed = {(c.name, v.name) for c in gate.CARDS for v in gate.variants(c)}
    missing = sorted(listed - committed)
    assert not missing, (f"{len(missing)} kernel variants are not in the committed report, "
                         f"e.g. {missing[:3]}: python -m convnn bench --compile "
                         "data/results/compile regenerates it")
