"""Crash-safe file writes for run folders: a file is either its old content or its new
content, never half written.

Every writer puts the new content in a temporary file in the same folder, flushes it, calls
``os.fsync`` on it, moves it over the target with ``os.replace`` (atomic on POSIX and Windows
when both are on one filesystem) and finally syncs the folder so that the rename itself survives
a power cut (best effort: not every platform can open a folder).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import tempfile
from pathlib import Path

import torch

__all__ = [
    "append_jsonl_atomic",
    "atomic_torch_save",
    "atomic_write_json",
    "atomic_write_text",
    "git_commit",
    "read_jsonl",
]

_REPO_ROOT = Path(__file__).resolve().parents[1]
_UMASK = os.umask(0o022)
os.umask(_UMASK)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. Windows cannot open folders
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def _atomic_target(path: str | os.PathLike):
    """Yield a temporary path next to ``path``; on success, move it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    with contextlib.suppress(OSError):  # mkstemp makes 0600; give the usual permissions
        os.chmod(tmp, 0o666 & ~_UMASK)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Replace the file at ``path`` with ``text`` (UTF-8), atomically.

    Args:
        path: the target file; its folder is created if needed.
        text: the whole new content.
    """
    with _atomic_target(path) as tmp, open(tmp, "w", encoding="utf-8", newline="\n") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def atomic_write_json(path: str | os.PathLike, obj) -> None:
    """Write ``obj`` as indented JSON (with a final newline) to ``path``, atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2, allow_nan=True) + "\n")


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """The records of a JSON-lines file (``[]`` when it does not exist); blank lines skipped."""
    path = Path(path)
    if not path.is_file():
        return []
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def append_jsonl_atomic(path: str | os.PathLike, record: dict) -> None:
    """Append one JSON line to ``path`` by rewriting the whole file atomically.

    A crash leaves either the old lines or the old lines plus the complete new one. The cost
    is a rewrite of the file per call, which is nothing for one line per epoch.
    """
    path = Path(path)
    old = path.read_text(encoding="utf-8") if path.is_file() else ""
    if old and not old.endswith("\n"):
        old += "\n"
    atomic_write_text(path, old + json.dumps(record, allow_nan=True) + "\n")


def atomic_torch_save(obj, path: str | os.PathLike) -> None:
    """``torch.save(obj, path)``, atomically (temporary file, fsync, ``os.replace``)."""
    with _atomic_target(path) as tmp, open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())


def git_commit(cwd: str | os.PathLike | None = None) -> str:
    """The short hash of ``HEAD`` of the repository holding ``cwd`` (default: this package's
    checkout), or ``"unknown"`` when there is no repository or no ``git``. Never raises.

    ``CONVNN_GIT_COMMIT`` overrides it, for copies of a checkout without ``.git`` (e.g. a
    working tree sent to a GPU machine)."""
    if os.environ.get("CONVNN_GIT_COMMIT"):
        return os.environ["CONVNN_GIT_COMMIT"]
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=cwd if cwd is not None else _REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError, ValueError):
        return "unknown"
    commit = out.stdout.strip()
    return commit if out.returncode == 0 and commit else "unknown"
