"""The convnn command line: ``python -m convnn <command>``.

Commands:
    demo     print the special cases of ConvNN holding numerically
    book     build the Jupyter Book (offline, warnings as errors) and print index.html's path
    bench    speed and memory ratios of the layers (``--train`` adds training throughput)
"""

from __future__ import annotations

import argparse
import sys


def _demo(args: argparse.Namespace) -> int:
    from .demo import main

    return main()


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


def _bench(args: argparse.Namespace) -> int:
    from .bench import run

    run(quick=args.quick, train=args.train, json_path=args.json, device=args.device,
        dtype=args.dtype)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m convnn", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="command")

    demo = sub.add_parser("demo", help="print the special cases holding numerically")
    demo.set_defaults(func=_demo)

    book = sub.add_parser("book", help="build the book and print the path of index.html")
    book.set_defaults(func=_book)

    bench = sub.add_parser("bench", help="speed/memory ratios of the layers")
    bench.add_argument("--quick", action="store_true",
                       help="small batches (always the case on CPU)")
    bench.add_argument("--train", action="store_true",
                       help="also measure training throughput of VGG-11 and ViT-Tiny")
    bench.add_argument("--json", metavar="FILE", help="write the numbers as JSON")
    bench.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    bench.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    bench.set_defaults(func=_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
