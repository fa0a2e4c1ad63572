"""Test-session setup shared by the unit tests and the notebooks (nbval kernels inherit the env).

- ``CONVNN_SMOKE=1`` makes every notebook run its short version (few steps, small subsets).
- ``CONVNN_OFFLINE=1`` keeps the sample images from trying a download.
- ``CONVNN_LOCK_SETTLE_SECONDS=0``: no settle delay when a test takes a run folder's lock.
- ``CONVNN_DATA_DIR`` points at the offline CIFAR-10 copy in ``<repo>/../shared/datasets`` when
  it exists and the variable is unset, so tests and notebooks never download anything.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATASETS = REPO_ROOT.parent / "shared" / "datasets"

os.environ.setdefault("CONVNN_SMOKE", "1")
os.environ.setdefault("CONVNN_OFFLINE", "1")  # tests never touch the network
# the lock's settle delay guards simultaneous starts on mounts without a shared flock; the
# tests' folders are local (flock excludes), and the claim tests pass their own settle
os.environ.setdefault("CONVNN_LOCK_SETTLE_SECONDS", "0")

if os.environ.get("CONVNN_DATA_DIR"):
    DATA_DIR_REASON = f"CONVNN_DATA_DIR={os.environ['CONVNN_DATA_DIR']} (set by the caller)"
elif SHARED_DATASETS.is_dir():
    os.environ["CONVNN_DATA_DIR"] = str(SHARED_DATASETS)
    DATA_DIR_REASON = f"CONVNN_DATA_DIR={SHARED_DATASETS} (the shared offline copy)"
else:
    DATA_DIR_REASON = (
        f"CONVNN_DATA_DIR is unset and {SHARED_DATASETS} does not exist: tests that need real "
        "CIFAR data are skipped"
    )


def pytest_report_header(config: pytest.Config) -> list[str]:
    return [f"convnn: CONVNN_SMOKE={os.environ['CONVNN_SMOKE']}", f"convnn: {DATA_DIR_REASON}"]
