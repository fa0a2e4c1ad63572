"""The compile gate: every Triton kernel variant the package can launch, compiled ahead of
time for the cards our users have, on a machine without a GPU.

``python -m convnn bench --compile OUT`` prints a table of kernel × card and writes it as
``OUT/compile.json`` and ``OUT/compile.md``. Each row gives:

- whether the variant compiles, with the compiler's message when it does not;
- registers per thread and spill bytes (stores + loads), from the log of the ``ptxas -v``
  run that Triton makes with the ptxas it bundles;
- static shared memory (Triton's metadata);
- the matrix instructions in the PTX (``wgmma`` on sm_90, ``mma.sync`` on sm_75–sm_89);
- thread blocks per SM that fit (registers, shared memory, warps and the block limit).

The variants come from each kernel module's ``compile_variants(card)``
(:class:`convnn.kernels.KernelVariant`), built from the launch-configuration helpers the
launchers use, at the paper's shapes and in the dtypes each card runs (no bf16 on sm_75).
The command exits with 1 when the gate fails: a compile error, shared memory over a card's
per-block limit, or spilled registers in a hot forward kernel on sm_80 or sm_90 (the
targets of issue 31). The interpreter (``TRITON_INTERPRET=1``) checks values, not types or
budgets: a kernel is done when it passes this gate too.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import subprocess
import tempfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from .._io import atomic_write_json, git_commit


@dataclass(frozen=True)
class Card:
    """A GPU generation's compile target and the per-SM budgets of its occupancy."""

    name: str
    """``"sm_90"``."""
    arch: int
    """Compute capability × 10, Triton's ``GPUTarget`` arch."""
    example: str
    """The cards our users have of this generation."""
    bf16: bool
    """Whether its tensor cores take bfloat16 (sm_80 and newer)."""
    shared_per_block: int
    """The most shared memory one block may use (bytes, with the opt-in carve-out)."""
    shared_per_sm: int
    max_warps_per_sm: int
    max_blocks_per_sm: int
    registers_per_sm: int = 65536


CARDS = (
    Card("sm_75", 75, "T4 (Colab)", False, 65536, 65536, 32, 16),
    Card("sm_80", 80, "A100", True, 166912, 167936, 64, 32),
    Card("sm_89", 89, "L4 (Colab)", True, 101376, 102400, 48, 24),
    Card("sm_90", 90, "H100 / H200", True, 232448, 233472, 64, 32),
)
"""The cards the gate compiles for (NVIDIA's tables of compute capabilities)."""
SPILL_GATED = ("sm_80", "sm_90")
"""Cards where a hot forward kernel must not spill."""
KERNEL_MODULES = ("convnn.kernels", "convnn.kernels_conv2d", "convnn.kernels_attention",
                  "convnn.kernels_projection")
"""The modules whose ``compile_variants(card)`` list what the package can launch."""


def card(name: str) -> Card:
    """The :data:`CARDS` entry called ``name`` (``"sm_90"``)."""
    for c in CARDS:
        if c.name == name:
            return c
    raise ValueError(f"card must be one of {[c.name for c in CARDS]}, got {name!r}")


def variants(target: Card) -> list:
    """Every :class:`~convnn.kernels.KernelVariant` of the kernel modules for ``target``."""
    import importlib

    found = []
    for name in KERNEL_MODULES:
        module = importlib.import_module(name)
        found.extend(module.compile_variants(target))
    return found


def _ptxas_log(ptx: str, arch: int) -> str:
    """``ptxas -v`` on ``ptx`` with Triton's flags (for a variant Triton took from its cache,
    where it ran no ptxas)."""
    from triton.backends.nvidia.compiler import get_ptxas

    gpu = f"sm_{arch}a" if arch == 90 else f"sm_{arch}"
    with tempfile.TemporaryDirectory() as folder:
        src = Path(folder) / "kernel.ptx"
        src.write_text(ptx)
        proc = subprocess.run(
            [get_ptxas(arch).path, "-lineinfo", "-v", "--regAllocOptLevel=2",
             f"--gpu-name={gpu}", str(src), "-o", str(src.with_suffix(".o"))],
            capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"ptxas failed: {proc.stderr.strip()[-500:]}")
    return proc.stderr


def _ptxas_usage(log: str) -> dict:
    """Registers and spill bytes from a ``ptxas -v`` log."""
    regs = re.search(r"Used (\d+) registers", log)
    if regs is None:
        raise RuntimeError(f"no register count in the ptxas log: {log.strip()[-300:]!r}")
    stores = re.search(r"(\d+) bytes spill stores", log)
    loads = re.search(r"(\d+) bytes spill loads", log)
    return {"registers": int(regs.group(1)),
            "spill_bytes": (int(stores.group(1)) if stores else 0)
            + (int(loads.group(1)) if loads else 0)}


def blocks_per_sm(target: Card, registers: int, shared: int, num_warps: int) -> int:
    """Blocks of ``num_warps`` warps that fit on one SM of ``target`` (the occupancy
    calculator's rules: registers are allocated per warp in units of 256, one block needs
    its shared memory plus 1 KB reserved on sm_80 and newer)."""
    limits = [target.max_blocks_per_sm, target.max_warps_per_sm // num_warps]
    per_warp = -(-max(registers, 1) * 32 // 256) * 256
    limits.append(target.registers_per_sm // (per_warp * num_warps))
    if shared:
        reserved = 1024 if target.arch >= 80 else 0
        limits.append(target.shared_per_sm // (shared + reserved))
    return max(0, min(limits))


def _mma_kinds(ptx: str) -> list[str]:
    kinds = []
    if "wgmma.mma_async" in ptx:
        kinds.append("wgmma")
    if re.search(r"\bmma\.sync", ptx):
        kinds.append("mma.sync")
    return kinds


def compile_variant(variant, target: Card) -> dict:
    """Compile one variant for one card ahead of time; the report row (never raises for a
    compile error: ``compiled`` is False and ``error`` holds the compiler's message)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend

    row = {"kernel": variant.kernel.fn.__name__ if hasattr(variant.kernel, "fn")
           else variant.kernel.__name__,
           "variant": variant.name, "card": target.name, "arch": target.arch,
           "num_warps": variant.num_warps, "num_stages": variant.num_stages,
           "hot": variant.hot, "compiled": False, "error": None, "registers": None,
           "spill_bytes": None, "shared_bytes": None, "mma": [], "blocks_per_sm": None}
    fn = variant.kernel
    signature = {}
    for name in fn.arg_names:
        if name in variant.constexprs:
            signature[name] = "constexpr"
        elif name in variant.signature:
            signature[name] = variant.signature[name]
        else:
            row["error"] = f"the variant gives no type for argument {name!r}"
            return row
    try:
        gpu = GPUTarget("cuda", target.arch, 32)
        backend = make_backend(gpu)
        options = backend.parse_options({"num_warps": variant.num_warps,
                                         "num_stages": variant.num_stages})
        # as a launch with torch tensors: every pointer 16-byte aligned (Triton specialises
        # on it; without it loads are not vectorised and the registers read differ)
        aligned = {(i,): [["tt.divisibility", 16]] for i, name in enumerate(fn.arg_names)
                   if signature[name].startswith("*")}
        source = ASTSource(fn=fn, signature=signature, constexprs=dict(variant.constexprs),
                           attrs=aligned)
        log = io.StringIO()
        with contextlib.redirect_stdout(log):  # Triton prints its ptxas -v log (the knob)
            compiled = triton.compile(source, target=gpu, options=options.__dict__)
    except Exception as error:  # noqa: BLE001 (the compiler's own message is the report)
        text = str(error).strip()
        row["error"] = f"{type(error).__name__}: {text[-1500:]}"
        return row
    ptx = compiled.asm["ptx"]
    ptxas = log.getvalue()
    if "Used " not in ptxas:  # from Triton's cache: no ptxas ran
        ptxas = _ptxas_log(ptx, target.arch)
    usage = _ptxas_usage(ptxas)
    shared = int(compiled.metadata.shared)
    row.update(compiled=True, shared_bytes=shared, mma=_mma_kinds(ptx), **usage)
    row["blocks_per_sm"] = blocks_per_sm(target, usage["registers"], shared, variant.num_warps)
    return row


def failures(row: dict) -> list[str]:
    """Why ``row`` fails the gate (empty: it passes)."""
    target = card(row["card"])
    if not row["compiled"]:
        return [f"does not compile: {row['error']}"]
    why = []
    if row["shared_bytes"] > target.shared_per_block:
        why.append(f"{row['shared_bytes']} B shared memory > {target.shared_per_block} B "
                   f"per block on {target.name}")
    if row["hot"] and row["spill_bytes"] and target.name in SPILL_GATED:
        why.append(f"a hot forward kernel spills {row['spill_bytes']} B on {target.name}")
    if row["blocks_per_sm"] == 0:
        why.append(f"no block fits on an SM of {target.name}")
    return why


def _compile_card(name: str) -> list[dict]:
    os.environ.pop("TRITON_INTERPRET", None)
    import triton

    triton.knobs.nvidia.dump_ptxas_log = True  # ptxas -v's log, printed per compile
    target = card(name)
    return [compile_variant(v, target) for v in variants(target)]


def compile_report(cards=None, workers: int | None = None) -> list[dict]:
    """Rows of every variant on every card in ``cards`` (names; default all of
    :data:`CARDS`), compiled in ``workers`` processes (default: the CPU count, at most 4)."""
    names = [card(c).name for c in cards] if cards else [c.name for c in CARDS]
    workers = workers or min(4, os.cpu_count() or 1, len(names))
    if workers <= 1:
        per_card = [_compile_card(n) for n in names]
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            per_card = list(pool.map(_compile_card, names))
    rows = [row for group in per_card for row in group]
    for row in rows:
        row["gate"] = failures(row)
    return rows


def format_report(rows: list[dict]) -> str:
    """The report as a Markdown table, one row per variant and card."""
    head = ("| kernel | variant | card | compiles | regs | spill B | shared KB | mma | "
            "blocks/SM | gate |\n|---|---|---|---|---|---|---|---|---|---|")
    lines = [head]
    for r in rows:
        if r["compiled"]:
            cells = [str(r["registers"]), str(r["spill_bytes"]),
                     f"{r['shared_bytes'] / 1024:.1f}", ", ".join(r["mma"]) or "none",
                     str(r["blocks_per_sm"])]
        else:
            cells = ["", "", "", "", ""]
        gate = "; ".join(r["gate"]) if r["gate"] else "ok"
        gate = gate.replace("|", "\\|").replace("\n", " ")
        lines.append(f"| {r['kernel']} | {r['variant']} | {r['card']} | "
                     f"{'yes' if r['compiled'] else 'NO'} | " + " | ".join(cells)
                     + f" | {gate[:300]} |")
    return "\n".join(lines)


def run_compile(out: str | os.PathLike, cards=None, workers: int | None = None) -> int:
    """``python -m convnn bench --compile OUT``: compile, print, write ``OUT/compile.json``
    and ``OUT/compile.md``; 0 when every row passes the gate, 1 otherwise."""
    try:
        import triton
    except ImportError:
        print("error: --compile needs triton (it ships with the CUDA builds of torch)")
        return 2
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    rows = compile_report(cards, workers)
    import datetime
    import platform

    import triton

    command = f"python -m convnn bench --compile {out}" + (
        f" --cards {','.join(cards)}" if cards else "")
    report = {"command": command,
              "commit": git_commit(), "date": datetime.date.today().isoformat(),
              "machine": f"{platform.machine()} CPU, {os.cpu_count()} cores (no GPU needed)",
              "triton": triton.__version__,
              "cards": [c.__dict__ for c in CARDS if not cards or c.name in cards],
              "rows": rows}
    atomic_write_json(folder / "compile.json", report)
    table = format_report(rows)
    failed = [r for r in rows if r["gate"]]
    (folder / "compile.md").write_text(
        f"# Compile report\n\n`{report['command']}` at commit {report['commit']} on "
        f"{report['date']}, Triton {triton.__version__}, {report['machine']}: "
        f"{len(rows)} variant-card pairs, {len(failed)} failing the gate.\n\n{table}\n",
        encoding="utf-8")
    print(table)
    print(f"\n{len(rows)} variant-card pairs, {len(failed)} failing the gate; "
          f"wrote {folder / 'compile.json'}")
    for r in failed:
        print(f"FAIL {r['kernel']} [{r['variant']}] on {r['card']}: {'; '.join(r['gate'])}")
    return 1 if failed else 0


def read_report(path: str | os.PathLike) -> dict:
    """A ``compile.json`` written by :func:`run_compile`."""
    return json.loads(Path(path).read_text(encoding="utf-8"))
