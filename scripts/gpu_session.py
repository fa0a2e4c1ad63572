"""One GPU session: CUDA tests, the benchmarks, and a short VGG-11 comparison on CIFAR-10.

Run from the repository root on a CUDA machine:

    CONVNN_DATA_DIR=<folder with cifar10-jpeg.tar.gz> python scripts/gpu_session.py OUT_DIR

It writes into OUT_DIR: ``session.log`` (everything printed), ``bench.json`` (layer and
training benchmarks, ``python -m convnn bench --train --json``) and ``runs.tar.gz`` (the run
logs of the comparison: config.json, metrics.jsonl, summary.json per run; no checkpoints).
The comparison trains ``vgg11-c10-conv2d`` and ``vgg11-c10-branching-r0.5`` with the paper's
protocol for the same number of epochs, chosen so that both fit in ``--train-seconds``.

With ``--campaign MINUTES`` the session instead spends what is left of MINUTES (counted from
its start, after the tests and the benchmark) on the run queue of :mod:`convnn.campaign`:

    CONVNN_DATA_DIR=<folder> python scripts/gpu_session.py OUT_DIR --campaign 9

Run folders and checkpoints stay in ``--campaign-dir`` (default ``runs/campaign``, kept on the
machine), so the same command again continues the campaign; the log packs
(``campaign-logs-N.tar.gz``, at most 16 MB each) go to OUT_DIR. File them into
``data/results/`` with ``python -m convnn import-runs OUT_DIR --commit <commit>``.

The logs name the commit ``git rev-parse HEAD`` gives. When the GPU machine gets a copy of
the working tree whose ``.git`` may be older than the tree, put the commit in the command:
``CONVNN_GIT_COMMIT=<commit> python scripts/gpu_session.py ...``.

``--tensorcore SECONDS`` runs the tensor-core benchmark (``python -m convnn bench
--tensorcore``: the compiled-kernel tests, layers against bf16 SDPA, ViT-Tiny and VGG-11
training steps fused / PyTorch / baseline in the trainer's precision, the T sweep, a profile,
the proxy's estimates and the table of the targets; each stage its own capped subprocess)
within SECONDS (at most 480) and packs it as ``tensorcore.tar.gz``, then ends the session (or
goes on with ``--campaign``); it runs its own kernel checks, so pair it with ``--skip-tests
--skip-bench``:

    python scripts/gpu_session.py OUT_DIR --tensorcore 480 --skip-tests --skip-bench

Every command the session runs has a time limit (:data:`LIMITS`); one over it is killed with
the processes it started, and the session goes on.

One 15-minute GPU session as measured on an H200 (2026-11-28): ``--suite-seconds 240``
spent 147 s on the suite's loop stage and skipped its training stage; use
``--suite-seconds 300`` to get both.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's convnn, whatever else is installed
COMPARISON = ("vgg11-c10-conv2d", "vgg11-c10-branching-r0.5")
LIMITS = {"probe": 60, "tests": 300, "bench": 600, "suite_slack": 120, "tensorcore_slack": 60}
"""Seconds each command may run (the suite and the tensor-core benchmark: their budget plus
this slack)."""


def bench_packed(out: Path, name: str, flags: str, log, limit: float) -> int:
    """``python -m convnn bench`` with ``flags`` (``{dir}``: its output folder ``out/name``),
    then the folder packed into ``out/name.tar.gz`` and removed (one file comes back)."""
    folder = out / name
    rc = sh(f"{sys.executable} -m convnn bench " + flags.format(dir=folder), log, limit)
    if folder.is_dir():
        with tarfile.open(out / f"{name}.tar.gz", "w:gz") as tar:
            tar.add(folder, arcname=name)
        shutil.rmtree(folder)
    return rc


def sh(command: str, log, limit: float) -> int:
    """Run ``command`` for at most ``limit`` seconds (then kill it and what it started)."""
    log(f"$ {command}")
    proc = subprocess.Popen(command, shell=True, cwd=ROOT, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        output, _ = proc.communicate(timeout=limit)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        log(output)
        log(f"[killed after its limit of {limit:.0f} s]")
        return 124
    log(output)
    log(f"[exit {proc.returncode}]")
    return proc.returncode


def profile_step(path: Path, log) -> None:
    """Top CUDA kernels of one bf16 training step of ViT-Tiny, SDPA vs ConvNN attention."""
    import torch

    from convnn.models import ModelConfig, build_model

    if not torch.cuda.is_available():
        return
    x = torch.randn(256, 3, 224, 224, device="cuda")
    y = torch.randint(0, 10, (256,), device="cuda")
    with open(path, "w", encoding="utf-8") as out:
        for label, options in (("attention (SDPA)", {"mixer": "attention"}),
                               ("ConvNN attention all k=9", {"mixer": "convnn_attention",
                                                             "layer_options": {"k": 9}})):
            table = _profile_model(build_model(ModelConfig(name="vit_tiny", **options),
                                               device="cuda"), x, y)
            out.write(f"== {label}: 3 training steps, batch 256, bf16 autocast\n{table}\n")
            log(f"profiled {label}")
            torch.cuda.empty_cache()


def _profile_model(model, x, y) -> str:
    import torch
    import torch.nn.functional as F
    from torch.profiler import ProfilerActivity, profile

    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()

    for _ in range(3):
        step()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(3):
            step()
        torch.cuda.synchronize()
    return prof.key_averages().table(sort_by="cuda_time_total", row_limit=25,
                                     max_name_column_width=60)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("--train-seconds", type=float, default=200.0,
                        help="wall-clock budget for the two training runs together")
    parser.add_argument("--max-epochs", type=int, default=30)
    parser.add_argument("--compare", nargs="+", default=list(COMPARISON),
                        help="presets to train for the same number of epochs")
    parser.add_argument("--epochs", type=int, help="epochs per run (default: from the budget)")
    parser.add_argument("--profile", action="store_true",
                        help="write profile.txt: top CUDA ops of a ViT-Tiny training step")
    parser.add_argument("--skip-tests", action="store_true")
    parser.add_argument("--skip-bench", action="store_true")
    parser.add_argument("--quick", action="store_true", help="tiny settings (CPU dry run)")
    parser.add_argument("--suite-seconds", type=float, metavar="SECONDS",
                        help="run the benchmark suite (python -m convnn bench --suite) within "
                             "this budget instead of bench --train; packed as "
                             "bench-suite.tar.gz")
    parser.add_argument("--tensorcore", type=float, metavar="SECONDS",
                        help="run the tensor-core benchmark (python -m convnn bench "
                             "--tensorcore) within this budget; packed as tensorcore.tar.gz")
    parser.add_argument("--campaign", type=float, metavar="MINUTES",
                        help="the session's total minutes: after the tests and the benchmark, "
                             "train the campaign queue in what is left (instead of the "
                             "comparison)")
    parser.add_argument("--campaign-dir", type=Path, default=ROOT / "runs" / "campaign",
                        help="run folders and checkpoints of the campaign (kept between "
                             "commands on the same machine)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    log_file = open(args.out / "session.log", "a", encoding="utf-8")  # noqa: SIM115

    def log(text: str) -> None:
        print(text, flush=True)
        log_file.write(text + "\n")
        log_file.flush()

    start = time.time()
    from convnn._io import git_commit

    log(f"gpu_session at {time.strftime('%Y-%m-%dT%H:%M:%S%z')}, commit {git_commit()}")
    sh("nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true", log,
       LIMITS["probe"])
    sh(f"{sys.executable} -c 'import torch, torchvision; print(torch.__version__, "
       "torchvision.__version__, torch.cuda.is_available())'", log, LIMITS["probe"])
    if not args.skip_tests:
        rc = sh(f"{sys.executable} -m pytest -q -o addopts='' -p no:cacheprovider "
                "tests/test_gpu.py tests/test_attention.py tests/test_train.py tests/test_data.py "
                "-k 'cuda or gpu'", log, LIMITS["tests"])
        if rc not in (0, 5) and not os.environ.get("CONVNN_BACKEND"):
            # A kernel that fails its CUDA checks must not decide the training runs.
            os.environ["CONVNN_BACKEND"] = "torch"
            log("CUDA tests failed: the rest of the session runs with CONVNN_BACKEND=torch")
    bench_path = args.out / "bench.json"
    if args.suite_seconds:
        bench_packed(args.out, "bench-suite", f"--suite {{dir}} --budget {args.suite_seconds:g}"
                     + (" --quick" if args.quick else ""), log,
                     args.suite_seconds + LIMITS["suite_slack"])
    elif not args.skip_bench:
        sh(f"{sys.executable} -m convnn bench --train --json {bench_path}"
           + (" --quick" if args.quick else ""), log, LIMITS["bench"])
    if args.tensorcore:
        bench_packed(args.out, "tensorcore", f"--tensorcore {{dir}} --budget {args.tensorcore:g}"
                     + (" --quick --device cpu" if args.quick else ""), log,
                     args.tensorcore + LIMITS["tensorcore_slack"])
        if args.campaign is None:
            log(f"gpu_session done in {time.time() - start:.0f} s")
            return 0

    if args.campaign is not None:
        from convnn.campaign import run_campaign

        minutes = args.campaign - (time.time() - start) / 60
        log(f"campaign: {minutes:.1f} of {args.campaign:g} minutes left after the checks")
        if minutes <= 0.5:
            log("campaign: no time left; nothing trained")
            return 0
        flags = "".join(f" --{f.replace('_', '-')}" for f in ("skip_tests", "skip_bench",
                                                              "quick") if getattr(args, f))
        if args.suite_seconds:
            flags += f" --suite-seconds {args.suite_seconds:g}"
        result = run_campaign(minutes, args.campaign_dir, logs_dir=args.out, log=log,
                              smoke=args.quick, device="cpu" if args.quick else None,
                              command=f"python scripts/gpu_session.py OUT_DIR --campaign "
                                      f"{args.campaign:g}{flags}")
        log(f"campaign: {json.dumps(result)}")
        log(f"gpu_session done in {time.time() - start:.0f} s")
        return 0

    # Choose epochs so both runs fit the budget, from the measured training throughput.
    import torch

    from convnn.runner import run_preset

    epoch_seconds = {}
    if bench_path.exists():
        rows = json.loads(bench_path.read_text()).get("training", [])
        for name, case in zip(COMPARISON, ("Conv2d", "branching λ=0.5")):
            row = next((r for r in rows if r["model"] == "VGG-11" and r["case"] == case), None)
            if row:  # train + a test pass (a third of the cost per image)
                epoch_seconds[name] = (50000 + 10000 / 3) / row["images_per_second"]
    per_epoch = sum(epoch_seconds.values()) if len(epoch_seconds) == 2 else None
    epochs = 1 if per_epoch is None else max(1, min(args.max_epochs,
                                                    int(args.train_seconds / (1.3 * per_epoch))))
    if args.epochs:
        epochs = args.epochs
    log(f"estimated seconds per epoch {epoch_seconds}; training {epochs} epoch(s) each")
    if args.profile:
        profile_step(args.out / "profile.txt", log)
    runs = args.out / "runs"
    for name in args.compare:
        t0 = time.time()
        try:
            kwargs = {"smoke": True, "epochs": 1} if args.quick else {"smoke": False,
                                                                       "epochs": epochs}
            summary = run_preset(name, out_dir=runs / name, overwrite=True, progress=False,
                                 download=False, log=log, **kwargs)
            log(f"{name}: {json.dumps(summary)} ({time.time() - t0:.0f} s)")
        except Exception as err:  # noqa: BLE001 - keep going: the other run and the logs still matter
            log(f"{name}: FAILED {type(err).__name__}: {err}")
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    with tarfile.open(args.out / "runs.tar.gz", "w:gz") as tar:
        for path in sorted(runs.rglob("*")):
            if path.is_file() and path.suffix in (".json", ".jsonl"):
                tar.add(path, arcname=str(path.relative_to(args.out)))
    for path in runs.rglob("checkpoint.pt"):
        path.unlink()
    log(f"gpu_session done in {time.time() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
