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
import threading
import time
import warnings
from pathlib import Path

import torch

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

__all__ = [
    "CHECKSUM_SUFFIX",
    "LOCK_HEARTBEAT_SECONDS",
    "LOCK_STALE_SECONDS",
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
    "remove_leftovers",
    "save_checkpoint",
    "sha256_of",
    "verify_checksum",
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


_HASHES: dict[tuple, str] = {}


def sha256_of(path: str | os.PathLike) -> str:
    """The SHA-256 of a file, remembered while its size, mtime and inode stay the same (a
    1.5 GB checkpoint is hashed once per process, not at every look)."""
    st = os.stat(path)
    key = (str(Path(path).resolve()), st.st_size, st.st_mtime_ns, st.st_ino)
    if key not in _HASHES:
        _HASHES[key] = _sha256(Path(path))
    return _HASHES[key]


def verify_checksum(path: str | os.PathLike, *, require: bool = False) -> str | None:
    """Check ``path`` against its SHA-256 sidecar without loading it; returns its hash
    (``None`` when it has no sidecar and ``require`` is false).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        CheckpointError: empty, no sidecar (with ``require``) or not matching it.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path} is empty; restore it or start the run again")
    expected = _read_checksums(path)
    if expected is None:
        if require:
            raise CheckpointError(f"{path}{CHECKSUM_SUFFIX} is missing, so {path} cannot be "
                                  "verified; restore both files or start the run again")
        return None
    found = sha256_of(path)
    if found not in expected:
        raise CheckpointError(f"{path} does not match its SHA-256 in {path}{CHECKSUM_SUFFIX}: "
                              "the file is damaged; restore it or start the run again")
    return found


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


def save_checkpoint(obj, path: str | os.PathLike) -> str:
    """``torch.save`` to ``path`` atomically, with its SHA-256 in ``path + ".sha256"``
    (``sha256sum`` format).

    While the new file replaces the old one the sidecar lists both hashes, so whatever the
    moment of a crash the checkpoint on disk matches a listed hash; afterwards it lists the
    new one only. Returns the new file's SHA-256.
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
    return new


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
    verify_checksum(path, require=require_checksum)
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


#: Seconds between two refreshes of a held lock's heartbeat (the lock file's mtime).
LOCK_HEARTBEAT_SECONDS = 30.0
#: A lock of another host whose heartbeat is older than this is taken over (seconds).
LOCK_STALE_SECONDS = 300.0


def hostname() -> str:
    """This machine's name, as recorded in a lock (a function, so tests can fake it)."""
    return socket.gethostname()


def _lock_owner(text: str) -> tuple[int | None, str]:
    """``(pid, host)`` of a lock file's content (``(None, "")`` when empty or damaged)."""
    pid_text, _, host = text.strip().partition(" ")
    try:
        return int(pid_text), host.strip()
    except ValueError:
        return None, host.strip()


class _Heartbeat:
    """Refresh the lock file's mtime every ``every`` seconds while the lock is held."""

    def __init__(self, fd: int, every: float | None):
        self.fd, self.stop = fd, threading.Event()
        self.thread = None
        if every:
            self.thread = threading.Thread(target=self._beat, args=(every,), daemon=True,
                                           name="convnn-lock-heartbeat")
            self.thread.start()

    def _beat(self, every: float) -> None:
        while not self.stop.wait(every):
            with contextlib.suppress(OSError):
                os.utime(self.fd)

    def close(self) -> None:
        self.stop.set()
        if self.thread is not None:
            self.thread.join()


def _try_lock(fd: int) -> bool:
    if fcntl is None:  # no flock (Windows): the content decides alone
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except (BlockingIOError, PermissionError):
        return False
    return True


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike, name: str = ".lock", *,
                heartbeat: float | None = LOCK_HEARTBEAT_SECONDS,
                stale_after: float = LOCK_STALE_SECONDS, clock=time.time,
                log=None):
    """Hold an exclusive lock on ``folder`` (created if needed) for the ``with`` block.

    The lock is the file ``folder/name``, holding the owner's PID and host name, and locked
    with ``fcntl.flock`` for as long as the owner lives: the kernel, not the file's content,
    decides who holds it on this host, so a lock file that is still empty (its creator not
    yet past ``flock``) is never taken for a stale one, and a takeover is atomic.

    * On this host, a lock whose ``flock`` is free belongs to a process that ended (a killed
      run): it is taken over at once.
    * A lock written by **another host** (a disconnected Colab runtime writing to Google
      Drive) cannot be ``flock``-ed from here; its holder refreshes the file's mtime every
      ``heartbeat`` seconds, and a lock whose heartbeat is older than ``stale_after`` seconds
      is taken over, with a note to ``log``.
    * Otherwise :class:`FolderLockedError` is raised at once.

    Args:
        heartbeat: seconds between two refreshes of the mtime (``None``: none).
        stale_after: the age (seconds) after which another host's lock counts as dead.
        clock: the time source compared with the mtime (a fake one in tests).
        log: where the takeover note goes (default: a warning).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lock = folder / name
    me_host = hostname()
    me = f"{os.getpid()} {me_host}\n"
    for _ in range(5):
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            if not _try_lock(fd):
                pid, host = _lock_owner(_read_fd(fd))
                raise FolderLockedError(
                    f"{folder} is in use by another process (PID {pid} on {host or me_host}, "
                    f"see {lock}); wait for it to finish or choose another folder")
            try:
                same = os.fstat(fd).st_ino == os.stat(lock).st_ino
            except FileNotFoundError:
                same = False
            if not same:  # released (unlinked) between our open and our flock: try again
                os.close(fd)
                continue
            pid, host = _lock_owner(_read_fd(fd))
            if host and host != me_host and pid is not None:
                age = clock() - os.fstat(fd).st_mtime
                if age < stale_after:
                    raise FolderLockedError(
                        f"{folder} is in use by PID {pid} on host {host} (its lock {lock} was "
                        f"refreshed {age:.0f} s ago; a lock of another host is taken over once "
                        f"its heartbeat is {stale_after:.0f} s old). Wait for it, or, if that "
                        f"machine is gone, try again after that or delete {lock}")
                note = (f"note: took over the lock of PID {pid} on host {host}: its heartbeat is "
                        f"{age:.0f} s old (more than {stale_after:.0f} s), so that machine is "
                        "gone")
                if log is None:
                    warnings.warn(note, stacklevel=3)
                else:
                    log(note)
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
            os.write(fd, me.encode("utf-8"))
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            raise
        break
    else:
        raise FolderLockedError(f"could not take the lock {lock}; try again")
    beat = _Heartbeat(fd, heartbeat)
    try:
        yield lock
    finally:
        beat.close()
        with contextlib.suppress(OSError):
            if _read_fd(fd) == me:
                lock.unlink()  # while still holding flock: a waiter then sees a new inode
        os.close(fd)


def _read_fd(fd: int) -> str:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        return os.read(fd, 4096).decode("utf-8", "replace")
    except OSError:
        return ""


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
