"""Write ``data/paper_curves.json.gz``: what the book needs of the authors' per-epoch logs.

Usage (from the repository root)::

    python scripts/make_paper_curves.py PATH/TO/paper_curves.json

The input is the full extraction of the authors' training logs (432 runs, about 10 MB of
JSON): per run, its path in the authors' repositories, its arguments, and per epoch the
wall-clock seconds, train/test loss, top-1 and top-5. The output keeps, per run, the path,
the repository, the indices of the ``paper_results.json`` records it backs, its best and
last-5 mean, and per epoch the seconds, train/test loss and train/test top-1, stored as
columns (one list per metric), losses rounded to 5 decimals and seconds to 2. Arguments
and top-5 are dropped. The file is gzipped with a fixed timestamp, so the same input gives
the same bytes.
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
from pathlib import Path

COLUMNS = ("seconds", "train_loss", "train_top1", "test_loss", "test_top1")
#: Decimals kept per column: top-1 as logged (4), losses to 1e-5 (logged to 1e-8), seconds to
#: 0.01 s.
DECIMALS = {"seconds": 2, "train_loss": 5, "train_top1": 4, "test_loss": 5, "test_top1": 4}
OUT = Path(__file__).resolve().parents[1] / "data" / "paper_curves.json.gz"


def convert(full: dict) -> dict:
    runs = []
    for run in full["runs"]:
        epochs = run["epochs"]
        if [e["epoch"] for e in epochs] != list(range(1, len(epochs) + 1)):
            raise ValueError(f"{run['path']}: epochs are not 1..{len(epochs)}")
        entry = {"path": run["path"], "repo": run["repo"], "records": run["records"],
                 "best": run["best"], "avg5": run["avg5"], "epochs": len(epochs)}
        entry.update({c: [round(e[c], DECIMALS[c]) for e in epochs] for c in COLUMNS})
        runs.append(entry)
    return {
        "source": full["source"],
        "abridged": "convnn keeps per run: path, repo, records, best, avg5, epochs (count) "
                    "and the per-epoch columns " + ", ".join(COLUMNS) + " (losses rounded to 5 "
                    "decimals, seconds to 2; the arguments and top-5 of the full extraction "
                    "are dropped)",
        "columns": list(COLUMNS),
        "runs": runs,
        "unmatched_records": full.get("unmatched_records", []),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="the full paper_curves.json")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    data = convert(json.loads(args.source.read_text(encoding="utf-8")))
    raw = json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    with open(args.out, "wb") as f, gzip.GzipFile(fileobj=f, mode="wb", compresslevel=9,
                                                  mtime=0, filename="") as gz:
        gz.write(raw)
    print(f"{args.out}: {len(data['runs'])} runs, {args.out.stat().st_size / 1e6:.2f} MB "
          f"({len(raw) / 1e6:.1f} MB as JSON)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
