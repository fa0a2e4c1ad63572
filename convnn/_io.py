"""Crash-safe file writes for run folders: a file is either its old content or its new
content, never half written.

Every writer puts the new content in a temporary file in the same folder, flushes it, calls
``os.fsync`` on it, moves it over the target with ``os.replace`` (atomic on POSIX and Windows
when both are on one filesystem) and finally syncs the folder so that the rename itself survives
a power cut (best effort: not every platform can open a folder).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import subprocess
import tempfile
from pathlib import Path

import torch

__all__ = [
    "CHECKSUM_SUFFIX",
    "CheckpointError",
    "FolderLockedError",
    "append_jsonl_atomic",
    "atomic_torch_save",
    "atomic_write_json",
    "atomic_write_text",
    "folder_lock",
    "git_commit",
    "load_checkpoint",
    "read_json",
    "read_jsonl",
    "remove_leftovers",
    "save_checkpoint",
]

#: The checksum sidecar of a checkpoint: ``checkpoint.pt`` -> ``checkpoint.pt.sha256``.
CHECKSUM_SUFFIX = ".sha256"


class CheckpointError(ValueError):
    """A checkpoint file that cannot be trusted: empty, truncated, not a checkpoint, or not
    matching its recorded SHA-256."""

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
def atomic_target(path: str | os.PathLike):
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
    with atomic_target(path) as tmp, open(tmp, "w", encoding="utf-8", newline="\n") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def atomic_write_json(path: str | os.PathLike, obj) -> None:
    """Write ``obj`` as indented strict JSON (no NaN or Infinity; with a final newline) to
    ``path``, atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2, allow_nan=False) + "\n")


def _reject_constant(name: str):
    raise ValueError(f"{name} is not valid JSON")


def _loads(text: str, path: Path, where: str = ""):
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except ValueError as err:
        raise ValueError(f"{path}{where} is not valid JSON ({err}); the file is damaged or "
                         "was edited: restore it or start the run again") from None


def read_json(path: str | os.PathLike, what: type = dict):
    """The strict-JSON content of ``path``, which must be a ``what`` (default a dict).

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: naming the file, when it is not valid JSON or not a ``what``.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not a UTF-8 text file; restore it or start the run "
                         "again") from None
    obj = _loads(text, path)
    if not isinstance(obj, what):
        raise ValueError(f"{path} must hold a JSON {'object' if what is dict else what.__name__}"
                         f", got {type(obj).__name__}; restore it or start the run again")
    return obj


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """The records of a strict JSON-lines file (``[]`` when it does not exist); blank lines
    skipped. A line that is not a JSON object raises a ValueError naming the file and line."""
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                record = _loads(line, path, f" line {n}")
                if not isinstance(record, dict):
                    raise ValueError(f"{path} line {n} must be a JSON object, got "
                                     f"{type(record).__name__}")
                records.append(record)
    return records


def append_jsonl_atomic(path: str | os.PathLike, record: dict) -> None:
    """Append one JSON line to ``path`` by rewriting the whole file atomically.

    A crash leaves either the old lines or the old lines plus the complete new one. The cost
    is a rewrite of the file per call, which is nothing for one line per epoch.
    """
    path = Path(path)
    old = path.read_text(encoding="utf-8") if path.is_file() else ""
    if old and not old.endswith("\n"):
        old += "\n"
    atomic_write_text(path, old + json.dumps(record, allow_nan=False) + "\n")


def atomic_torch_save(obj, path: str | os.PathLike) -> None:
    """``torch.save(obj, path)``, atomically (temporary file, fsync, ``os.replace``)."""
    with atomic_target(path) as tmp, open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _read_checksums(path: Path) -> list[str] | None:
    """The hashes listed in ``path``'s sidecar (``None`` without one)."""
    sidecar = path.with_name(path.name + CHECKSUM_SUFFIX)
    try:
        lines = sidecar.read_text(encoding="ascii").splitlines()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as err:
        raise CheckpointError(f"cannot read {sidecar}: {err}") from None
    return [line.split()[0].lower() for line in lines if line.strip()]


def save_checkpoint(obj, path: str | os.PathLike) -> None:
    """``torch.save`` to ``path`` atomically, with its SHA-256 in ``path + ".sha256"``
    (``sha256sum`` format).

    While the new file replaces the old one the sidecar lists both hashes, so whatever the
    moment of a crash the checkpoint on disk matches a listed hash; afterwards it lists the
    new one only.
    """
    path = Path(path)
    sidecar = path.with_name(path.name + CHECKSUM_SUFFIX)
    with atomic_target(path) as tmp:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        new = _sha256(tmp)
        old = (_read_checksums(path) or [_sha256(path)]) if path.is_file() else []
        both = [new, *old]
        atomic_write_text(sidecar, "".join(f"{h}  {path.name}\n" for h in both))
    atomic_write_text(sidecar, f"{new}  {path.name}\n")


def load_checkpoint(path: str | os.PathLike, *, require_checksum: bool = False) -> dict:
    """Load a checkpoint written by :func:`save_checkpoint` on the CPU, with
    ``weights_only=True``, after checking its SHA-256 against the sidecar.

    A checkpoint without a sidecar (written before checksums existed) is loaded unless
    ``require_checksum``.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        CheckpointError: the file is empty, damaged, not a checkpoint or not matching its
            checksum; the message names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path} is empty; restore it or start the run again")
    expected = _read_checksums(path)
    if expected is None and require_checksum:
        raise CheckpointError(f"{path}{CHECKSUM_SUFFIX} is missing, so {path} cannot be "
                              "verified; restore both files or start the run again")
    if expected is not None and _sha256(path) not in expected:
        raise CheckpointError(f"{path} does not match its SHA-256 in {path}{CHECKSUM_SUFFIX}: "
                              "the file is damaged; restore it or start the run again")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch raises many types for a bad file
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise CheckpointError(f"{path} is not a readable checkpoint ({type(err).__name__}: "
                              f"{first}); restore it or start the run again") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} does not hold a checkpoint dict, got "
                              f"{type(obj).__name__}")
    return obj


def remove_leftovers(folder: str | os.PathLike, names) -> list[Path]:
    """Delete the temporary files (``.<name>.*.tmp``) that a killed atomic write of one of
    ``names`` left in ``folder``; returns the deleted paths. Call it only while holding the
    folder's lock: a live writer's temporary file looks the same."""
    removed = []
    for name in names:
        for tmp in Path(folder).glob(f".{name}.*.tmp"):
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
                removed.append(tmp)
    return removed


class FolderLockedError(RuntimeError):
    """Another live process holds the folder's lock."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):  # exists but is not ours, or cannot be asked
        return True
    return True


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike, name: str = ".lock"):
    """Hold an exclusive lock on ``folder`` (created if needed) for the ``with`` block.

    The lock is the file ``folder/name``, created with ``O_EXCL`` and holding the owner's PID
    and host name. A lock left by a process that no longer runs on this host (a killed run) is
    stale and taken over; a live one raises :class:`FolderLockedError` at once.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lock = folder / name
    me = f"{os.getpid()} {socket.gethostname()}\n"
    for _ in range(3):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                pid_text, _, host = lock.read_text(encoding="utf-8").strip().partition(" ")
                pid = int(pid_text)
            except FileNotFoundError:  # released meanwhile: try again
                continue
            except (OSError, ValueError):  # half-written by a process killed at that moment
                pid, host = -1, socket.gethostname()
            if host == socket.gethostname() and (pid <= 0 or not _pid_alive(pid)):
                with contextlib.suppress(FileNotFoundError):
                    lock.unlink()  # stale
                continue
            raise FolderLockedError(
                f"{folder} is in use by another process (PID {pid} on {host or 'unknown'}, "
                f"see {lock}); wait for it to finish or choose another folder. If no such "
                f"process runs any more, delete {lock}") from None
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(me)
        break
    else:
        raise FolderLockedError(f"could not take the lock {lock}; try again")
    try:
        yield lock
    finally:
        with contextlib.suppress(OSError):
            if lock.read_text(encoding="utf-8") == me:
                lock.unlink()


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
