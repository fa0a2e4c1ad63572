"""The convnn command line: ``python -m convnn <command>``.

Commands:
    demo     print the special cases of ConvNN holding numerically
    presets  list the named presets (one per experiment of the paper's tables)
    train    train a preset (``--smoke`` for a short real run; ``--resume`` after a crash)
    eval     evaluate a finished or partial run folder
    book     build the Jupyter Book (offline, warnings as errors) and print index.html's path
    bench    speed and memory ratios of the layers (``--train`` adds training throughput and
             our trainer against a plain loop; ``--proxy`` estimates GPU ratios without a
             GPU; ``--suite DIR`` runs everything on one card; ``--compile DIR`` compiles
             every Triton kernel for sm_75/80/89/90 without a GPU: the CI gate)
    campaign train the queue of runs that matter most within a time budget (resumable)
    import-runs  file returned campaign logs into data/results/ with their provenance

Multi-GPU: ``torchrun --nproc_per_node 4 -m convnn train --preset NAME``.

A user error (a bad argument, a missing or damaged file, a locked or mismatched run folder)
prints ``error: ...`` (one line, or the message's own list of causes and fixes) and exits
with 2; a diverged training run exits with 1. ``--debug`` (before or after the command)
shows the traceback of any error.
"""

from __future__ import annotations

import argparse
import sys


def _demo(args: argparse.Namespace) -> int:
    from .demo import main

    return main()


def _presets(args: argparse.Namespace) -> int:
    import json

    from .experiments import PRESETS, close_preset_names, list_presets

    pattern = " ".join(args.filter)
    presets = list_presets(pattern)
    if args.filter and not presets:
        close = close_preset_names(pattern)
        hint = f"; did you mean {', '.join(close)}?" if close else (
            "; words match whole parts of a name, e.g. vgg11 c10 branching")
        raise ValueError(f"no preset matches {pattern!r}{hint}")
    if args.table:
        tables = sorted({r["table"] for p in PRESETS.values() for r in p.paper_rows()},
                        key=lambda t: [int(x) for x in t.split(".")])
        if args.table not in tables:
            raise ValueError(f"--table {args.table}: no such table; the tables are "
                             f"{', '.join(tables)}")
        presets = [p for p in presets if any(r["table"] == args.table for r in p.paper_rows())]
    if args.json:
        print(json.dumps([p.to_dict() for p in presets], indent=1))
        return 0
    for p in presets:
        rows = p.paper_rows()
        best = ", ".join(f"{r['table']}: {r['best']}" for r in rows if r.get("best") is not None)
        top1 = ", ".join(f"{r['table']}: {r['top1']}" for r in rows if r.get("top1") is not None)
        print(f"{p.name:<48} {p.description}")
        if args.verbose and best:
            print(f"{'':<48} paper best top-1 (table: %): {best}")
        if args.verbose and top1:
            print(f"{'':<48} paper top-1, best or final epoch not stated (table: %): {top1}")
    print(f"{len(presets)} preset(s)", file=sys.stderr)
    return 0


def _train(args: argparse.Namespace) -> int:
    from .runner import run_preset

    overrides = {}
    if args.amp is not None:
        overrides["amp"] = args.amp
    if args.compile:
        overrides["compile"] = True
    if args.batch_size is not None:
        overrides["batch_size"] = args.batch_size
    if args.checkpoint_every is not None:
        overrides["checkpoint_every"] = args.checkpoint_every
    if args.checkpoint_minutes is not None:
        overrides["checkpoint_minutes"] = args.checkpoint_minutes
    summary = run_preset(args.preset, epochs=args.epochs, smoke=args.smoke or None,
                         out_dir=args.out, data_dir=args.data_dir, device=args.device,
                         resume=args.resume, overwrite=args.overwrite,
                         download=not args.no_download, workers=args.workers,
                         synthetic=args.synthetic, **overrides)
    print(f"best test top-1 {summary['best_test_top1']:.2f}% (epoch {summary['best_epoch']}), "
          f"mean of the last epochs {summary['last5_mean_test_top1']:.2f}%")
    return 0


def _eval(args: argparse.Namespace) -> int:
    from .runner import evaluate_run_dir

    metrics = evaluate_run_dir(args.run, data_dir=args.data_dir, device=args.device,
                               workers=args.workers, download=not args.no_download)
    print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                   for k, v in metrics.items()))
    return 0


def _book(args: argparse.Namespace) -> int:
    import shutil
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    if not (root / "_config.yml").exists():
        print(f"error: no _config.yml in {root}; 'book' needs a checkout of the repository",
              file=sys.stderr)
        return 2
    exe = Path(sys.executable).with_name("jupyter-book")
    command = [str(exe) if exe.exists() else (shutil.which("jupyter-book") or "jupyter-book"),
               "build", "-W", "-n", "--keep-going", str(root)]
    rc = subprocess.call(command, cwd=root)
    index = root / "_build" / "html" / "index.html"
    if rc == 0 and index.exists():
        print(f"\nThe book is built: {index}")
    return rc


def _card_names(text: str) -> list[str]:
    from .bench.compile import CARDS

    names = [t.strip() for t in text.split(",") if t.strip()]
    known = [c.name for c in CARDS]
    odd = [n for n in names if n not in known]
    if not names or odd:
        raise argparse.ArgumentTypeError(f"cards must be a comma-separated subset of {known}, "
                                         f"got {text!r}")
    return names


def _bench(args: argparse.Namespace) -> int:
    if args.compile:
        from .bench.compile import run_compile

        return run_compile(args.compile, cards=args.cards, workers=args.workers)
    if args.tensorcore:
        from .bench.tensorcore import run_tensorcore

        session = run_tensorcore(args.tensorcore, tiny=args.quick, device=args.device,
                                 budget_s=args.budget,
                                 command="python -m convnn " + " ".join(sys.argv[1:]))
        failed = [name for name, s in session["stages"].items() if "error" in s]
        print(f"wrote {args.tensorcore}" + (f"; failed stages: {failed}" if failed else ""))
        return 0
    if args.suite:
        from .bench.suite import run_suite

        run_suite(args.suite, tiny=args.quick, device=args.device, budget_s=args.budget)
        return 0
    if args.proxy:
        from ._io import atomic_write_json
        from .bench.proxy import (
            calibration,
            format_calibration,
            format_kernel_estimates,
            format_proxy_rows,
            format_target_estimates,
            kernel_estimates,
            proxy_benchmarks,
            target_estimates,
        )

        rows = proxy_benchmarks(gpu=args.gpu)
        print(f"convnn bench --proxy: estimated training-step throughput on {args.gpu} (bf16), "
              "against the family's baseline; 'est, as runs' uses the committed runs' "
              "convolution speed (NCHW, no autotuning), to compare with their measurements")
        print(format_proxy_rows(rows))
        kernel_rows = kernel_estimates(gpu=args.gpu)
        print("\nestimated with the fused 2-D kernels (uncalibrated: no fused kernel has run "
              "on a GPU yet; ratios against the Conv2d baseline; the attention targets are "
              "estimated below, with the calibrated model and the kernels as built)")
        print(format_kernel_estimates(kernel_rows))
        calibrated = calibration(gpu=args.gpu)
        print("\ncalibration: the model against every committed H200 row (error = model / "
              "measured - 1; LOO = fitted without that case)")
        print(format_calibration(calibrated))
        targets = target_estimates(args.gpu, calibrated)
        print("\nESTIMATES of the issue's targets with the calibrated model (ratio against the "
              "baseline; range: the kernel assumptions; calib. rms: the model's error on the "
              "committed ratios)")
        print(format_target_estimates(targets))
        if args.json:
            atomic_write_json(args.json, {"proxy": rows, "kernel_estimates": kernel_rows,
                                          "calibration": calibrated,
                                          "target_estimates": targets})
            print(f"wrote {args.json}")
        return 0
    from .bench import run

    run(quick=args.quick, train=args.train, json_path=args.json, device=args.device,
        dtype=args.dtype)
    return 0


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text!r}")
    return value


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a positive whole number, got {text!r}")
    return int(text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m convnn", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)
    # --debug before the command (parser) or after it (each command's parent): two dests,
    # since a sub-parser's default would overwrite the value the main parser set
    parser.add_argument("--debug", dest="debug_first", action="store_true",
                        help="show the full traceback of an error")
    common = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    common.add_argument("--debug", action="store_true",
                        help="show the full traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True, metavar="command")
    shared = {"parents": [common], "allow_abbrev": False}

    demo = sub.add_parser("demo", **shared, help="print the special cases holding numerically")
    demo.set_defaults(func=_demo)

    presets = sub.add_parser("presets", **shared, help="list the presets")
    presets.add_argument("filter", nargs="*", help="words the name must contain, e.g. vit c100")
    presets.add_argument("--table", help="only presets reproducing a row of this table, e.g. 6.8")
    presets.add_argument("-v", "--verbose", action="store_true", help="show the paper's numbers")
    presets.add_argument("--json", action="store_true", help="print the full presets as JSON")
    presets.set_defaults(func=_presets)

    tr = sub.add_parser("train", **shared, help="train a preset")
    tr.add_argument("--preset", required=True, help="a name from `python -m convnn presets`")
    tr.add_argument("--epochs", type=int, help="override the number of epochs")
    tr.add_argument("--smoke", action="store_true",
                    help="a short real run: reduced model, a few hundred images, 2 epochs")
    tr.add_argument("--out", help="run folder (default runs/<preset>)")
    tr.add_argument("--data-dir", help="where the dataset is (CIFAR default: $CONVNN_DATA_DIR, "
                                       "then the data cache; ImageNet default: "
                                       "$CONVNN_IMAGENET_DIR, $CONVNN_DATA_DIR/imagenet, then "
                                       "the data cache)")
    tr.add_argument("--no-download", action="store_true",
                    help="never download CIFAR: a missing dataset is an error")
    tr.add_argument("--synthetic", action="store_true",
                    help="with --smoke: train on synthetic data (no dataset needed)")
    tr.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    tr.add_argument("--overwrite", action="store_true", help="replace an existing run folder")
    tr.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when available)")
    tr.add_argument("--amp", choices=["auto", "off", "bf16", "fp16", "tf32"], default="auto",
                    help="mixed precision (default auto: bf16 on GPUs of compute capability "
                         ">= 8.0, fp16 with a gradient scaler on older GPUs, float32 on a CPU)")
    tr.add_argument("--compile", action="store_true", help="torch.compile the model")
    tr.add_argument("--batch-size", type=int, help="override the batch size")
    tr.add_argument("--checkpoint-every", type=int, metavar="EPOCHS",
                    help="write the checkpoint every EPOCHS epochs (default: by time, see "
                         "--checkpoint-minutes; the last epoch is always saved)")
    tr.add_argument("--checkpoint-minutes", type=float, metavar="MINUTES",
                    help="write the checkpoint once MINUTES have passed since the last one "
                         "(default 2; 0: after every epoch). A crash loses at most the epochs "
                         "since the last save")
    tr.add_argument("--workers", type=int, help="image-decoding processes of an ImageNet "
                                                "preset (default: $CONVNN_WORKERS, else up to "
                                                "8 per GPU process)")
    tr.set_defaults(func=_train)

    ev = sub.add_parser("eval", **shared, help="evaluate a run folder")
    ev.add_argument("--run", required=True, help="a run folder written by `train`")
    ev.add_argument("--data-dir", help="where the dataset is (as for train)")
    ev.add_argument("--no-download", action="store_true", help="never download CIFAR")
    ev.add_argument("--device", help="cpu or cuda")
    ev.add_argument("--workers", type=int, help="image-decoding processes (ImageNet runs)")
    ev.set_defaults(func=_eval)

    book = sub.add_parser("book", **shared, help="build the book and print the path of index.html")
    book.set_defaults(func=_book)

    bench = sub.add_parser("bench", **shared, help="speed/memory ratios of the layers")
    bench.add_argument("--quick", action="store_true",
                       help="small batches (always the case on CPU)")
    bench.add_argument("--train", action="store_true",
                       help="also measure training throughput of VGG-11 and ViT-Tiny")
    bench.add_argument("--json", metavar="FILE", help="write the numbers as JSON")
    bench.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    bench.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    bench.add_argument("--proxy", action="store_true",
                       help="estimate GPU training throughput without a GPU (meta tensors)")
    bench.add_argument("--gpu", default="h200", choices=["h200", "h100", "a100"],
                       help="the GPU --proxy estimates for")
    bench.add_argument("--suite", metavar="DIR",
                       help="every measurement on this device, JSON into DIR (<= 8 min on a "
                            "GPU; with --quick, toy sizes)")
    bench.add_argument("--tensorcore", metavar="DIR",
                       help="the tensor-core targets on this device (compiled-kernel tests, "
                            "layers vs bf16 SDPA, training steps in the trainer's precision, T "
                            "sweep, profile, the proxy's estimates; each stage a capped "
                            "subprocess), JSON into DIR, ending with the table of the targets "
                            "(<= 8 min on a GPU; with --quick, toy sizes: run it under "
                            "TRITON_INTERPRET=1 on a CPU)")
    bench.add_argument("--compile", metavar="DIR",
                       help="the compile gate, no GPU needed: every Triton kernel variant "
                            "compiled ahead of time for sm_75/80/89/90 (registers, spills, "
                            "shared memory, mma, occupancy); a table, and JSON into DIR; exit "
                            "1 when a variant fails the gate")
    bench.add_argument("--cards", type=_card_names, metavar="SM,...",
                       help="--compile: only these cards (default: sm_75,sm_80,sm_89,sm_90)")
    bench.add_argument("--workers", type=_positive_int, metavar="N",
                       help="--compile: compiling processes (default: the CPU count, at most 4)")
    bench.add_argument("--budget", type=_positive_seconds, default=480.0, metavar="SECONDS",
                       help="--suite, --tensorcore: skip the stages that would end after this many seconds "
                            "(default 480)")
    bench.set_defaults(func=_bench)

    from .campaign import add_cli as add_campaign_commands

    add_campaign_commands(sub, **shared)  # campaign, import-runs
    return parser


def _message(err: BaseException) -> str:
    """The error's text with its own line breaks (a bulleted list stays a list), without
    blank lines or trailing spaces; an error with no text gives its type's name."""
    lines = [line.rstrip() for line in str(err).strip().splitlines() if line.strip()]
    return "\n".join(lines) or type(err).__name__


def _user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that are the user's to fix (bad arguments, files, folders, data)."""
    from ._io import FolderLockedError
    from .data import DatasetNotFoundError

    return (ValueError, OSError, DatasetNotFoundError, FolderLockedError)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "debug", False) or getattr(args, "debug_first", False):
        return args.func(args)
    from .train import DivergedError, Terminated

    try:
        return args.func(args)
    except BrokenPipeError:  # e.g. `python -m convnn presets | head`
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Terminated as err:
        print(f"terminated: {err}", file=sys.stderr)
        return 143  # 128 + SIGTERM, as a shell reports a process the signal ended
    except DivergedError as err:
        print(f"error: {_message(err)}", file=sys.stderr)
        return 1
    except _user_errors() as err:
        print(f"error: {_message(err)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
