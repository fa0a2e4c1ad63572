"""Crash-safe file writes for run folders: a file is either its old content or its new
content, never half written.

Every writer puts the new content in a temporary file in the same folder, flushes it, calls
``os.fsync`` on it, moves it over the target with ``os.replace`` (atomic on POSIX and Windows
when both are on one filesystem) and finally syncs the folder so that the rename itself survives
a power cut (best effort: not every platform can open a folder).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import socket
import subprocess
import tempfile
import threading
import time
import uuid
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
    "HeldLock",
    "LinkRefusedError",
    "LockLostError",
    "append_jsonl_atomic",
    "atomic_torch_save",
    "atomic_write_json",
    "atomic_write_text",
    "folder_lock",
    "git_commit",
    "load_checkpoint",
    "read_bytes",
    "read_json",
    "read_jsonl",
    "refuse_link",
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

class LinkRefusedError(ValueError):
    """A symbolic link where a run or campaign folder has one of its own files. Nothing is
    read or written through it: the link could point at any file of the user's."""


#: ``os.open`` flag that refuses a link as the last part of a path (0 where there is none).
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


def refuse_link(path: str | os.PathLike) -> None:
    """Raise :class:`LinkRefusedError`, naming ``path`` and its target, when ``path`` is a
    symbolic link (checked with ``lstat``: the link itself, wherever it points)."""
    path = Path(path)
    if path.is_symlink():
        try:
            target = os.readlink(path)
        except OSError:
            target = "?"
        raise LinkRefusedError(
            f"{path} is a symbolic link (to {target}); convnn reads and writes no link in a "
            "run or campaign folder, so nothing was read or written through it. Remove the "
            "link (or replace it with a copy of the file)")


def open_nofollow(path: str | os.PathLike, flags: int, mode: int = 0o644) -> int:
    """``os.open(path, flags | O_NOFOLLOW)``; a link raises :class:`LinkRefusedError`."""
    refuse_link(path)  # where there is no O_NOFOLLOW (Windows), this check alone
    try:
        return os.open(path, flags | _NOFOLLOW, mode)
    except OSError as err:
        if err.errno in (errno.ELOOP, errno.EMLINK):  # the link appeared since the check
            refuse_link(path)
        raise


def read_bytes(path: str | os.PathLike) -> bytes:
    """The bytes of the file ``path``, refusing a link (:class:`LinkRefusedError`)."""
    with os.fdopen(open_nofollow(path, os.O_RDONLY), "rb") as f:
        return f.read()


def _read_text(path: Path) -> str:
    return read_bytes(path).decode("utf-8")


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
    refuse_link(path)
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
        text = _read_text(path)
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
    refuse_link(path)
    if not path.is_file():
        return []
    records = []
    for n, line in enumerate(_read_text(path).splitlines(), 1):
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
    refuse_link(path)
    old = _read_text(path) if path.is_file() else ""
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
    refuse_link(path)
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
    refuse_link(path)
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
    with os.fdopen(open_nofollow(path, os.O_RDONLY), "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _read_checksums(path: Path) -> list[str] | None:
    """The hashes listed in ``path``'s sidecar (``None`` without one)."""
    sidecar = path.with_name(path.name + CHECKSUM_SUFFIX)
    try:
        lines = read_bytes(sidecar).decode("ascii").splitlines()
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
        with os.fdopen(open_nofollow(path, os.O_RDONLY), "rb") as f:
            obj = torch.load(f, map_location="cpu", weights_only=True)
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


class LockLostError(FolderLockedError):
    """The lock this process held was taken over by another process (this one was paused or
    cut off for longer than the stale age): it must stop writing."""


#: Seconds between two refreshes of a held lock's heartbeat (the lock file's mtime).
LOCK_HEARTBEAT_SECONDS = 30.0
#: A lock of another host whose heartbeat is older than this is taken over (seconds).
LOCK_STALE_SECONDS = 300.0
#: Seconds a starter waits between writing its claim and reading the others' (see
#: :func:`folder_lock`); ``$CONVNN_LOCK_SETTLE_SECONDS`` overrides it.
LOCK_SETTLE_SECONDS = 2.0


def hostname() -> str:
    """This machine's name, as recorded in a lock (a function, so tests can fake it)."""
    return socket.gethostname()


def _lock_owner(text: str) -> tuple[int | None, str, str]:
    """``(pid, host, token)`` of a lock file's content ``"PID HOST [TOKEN]"`` (``(None, "",
    "")`` when empty or damaged; older locks have no token)."""
    parts = text.split()
    pid = int(parts[0]) if parts and parts[0].isdigit() else None
    return pid, (parts[1] if len(parts) > 1 else ""), (parts[2] if len(parts) > 2 else "")


def _settle_seconds() -> float:
    try:
        return max(0.0, float(os.environ.get("CONVNN_LOCK_SETTLE_SECONDS",
                                             LOCK_SETTLE_SECONDS)))
    except ValueError:
        return LOCK_SETTLE_SECONDS


class HeldLock:
    """A lock held by :func:`folder_lock`: its file, its owner token and :meth:`check`."""

    def __init__(self, path: Path, fd: int, token: str, marker: Path, log):
        self.path, self.fd, self.token, self.marker, self.log = path, fd, token, marker, log
        self.lost: str | None = None

    def _owner_now(self) -> str | None:
        """Who holds the lock now, when it is not this holder (``None``: still ours)."""
        try:
            text = read_bytes(self.path).decode("utf-8", "replace")
        except FileNotFoundError:
            return "nobody (the lock file was deleted)"
        except OSError as err:
            return f"unknown ({err})"
        pid, host, token = _lock_owner(text)
        if token == self.token and self.marker.is_file():
            return None
        return f"PID {pid} on host {host}" if pid is not None else "another process"

    def check(self) -> None:
        """Raise :class:`LockLostError` when another process has taken the lock over; call
        it before every write to the folder (the heartbeat checks it too)."""
        if self.lost is None:
            owner = self._owner_now()
            if owner is not None:
                self._lose(owner)
        if self.lost is not None:
            raise LockLostError(self.lost)

    def _lose(self, owner: str) -> None:
        self.lost = (f"the lock {self.path} was taken over by {owner} while this process held "
                     "it (this process was paused or cut off for longer than the lock's stale "
                     "age, so its heartbeat looked dead); stopped without writing anything "
                     "more. The folder now belongs to that process")
        note = f"warning: {self.lost}"
        if self.log is None:
            warnings.warn(note, stacklevel=2)
        else:
            self.log(note)


class _Heartbeat:
    """Every ``every`` seconds: check that the lock is still ours (else stop and say so) and
    refresh the mtimes of the lock file and of the holder's marker."""

    def __init__(self, held: HeldLock, every: float | None):
        self.held, self.stop = held, threading.Event()
        self.thread = None
        if every:
            self.thread = threading.Thread(target=self._beat, args=(every,), daemon=True,
                                           name="convnn-lock-heartbeat")
            self.thread.start()

    def _beat(self, every: float) -> None:
        while not self.stop.wait(every):
            try:
                self.held.check()
            except LockLostError:
                return
            with contextlib.suppress(OSError):
                os.utime(self.held.fd)
                os.utime(self.held.marker)

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


def _claim(folder: Path, name: str, token: str, me: str, prev_token: str, clock, sleep,
           settle: float, stale_after: float) -> Path:
    """The start protocol for mounts where ``flock`` is not shared between hosts; returns
    the holder's marker, or raises :class:`FolderLockedError` (see :func:`folder_lock`)."""
    if prev_token:  # the holder being taken over (dead, or stale): its marker goes
        with contextlib.suppress(OSError):
            (folder / f"{name}.held-{prev_token}").unlink()
    claim = folder / f"{name}.claim-{token}"
    fd = open_nofollow(claim, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        os.write(fd, me.encode("utf-8"))
    finally:
        os.close(fd)
    try:
        sleep(settle)
    except BaseException:
        with contextlib.suppress(OSError):
            claim.unlink()
        raise
    rivals = []
    for path in folder.glob(f"{name}.*-*"):
        kind, _, other = path.name[len(name) + 1:].partition("-")
        if other == token or kind not in ("claim", "held"):
            continue
        try:
            fresh = clock() - path.lstat().st_mtime < stale_after
        except FileNotFoundError:
            continue
        if not fresh:  # left by a process that died long ago
            with contextlib.suppress(OSError):
                path.unlink()
        elif kind == "held" or other < token:
            rivals.append((kind, other))
    if rivals:
        with contextlib.suppress(OSError):
            claim.unlink()
        why = ("it holds the lock" if any(k == "held" for k, _ in rivals) else
               "it started at the same time and its claim won")
        raise FolderLockedError(
            f"{folder} is in use by another process ({why}; see the {name}.held-* and "
            f"{name}.claim-* files there); wait for it to finish or choose another folder")
    # won: the marker is a new file beside the claim, which stays until the release (a
    # rename would let a rival's concurrent listing miss both names)
    marker = folder / f"{name}.held-{token}"
    os.close(open_nofollow(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
    return marker


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike, name: str = ".lock", *,
                heartbeat: float | None = LOCK_HEARTBEAT_SECONDS,
                stale_after: float = LOCK_STALE_SECONDS, clock=time.time,
                log=None, host: str | None = None, settle: float | None = None,
                sleep=time.sleep):
    """Hold an exclusive lock on ``folder`` (created if needed) for the ``with`` block;
    yields a :class:`HeldLock`, whose :meth:`HeldLock.check` the holder calls before every
    write.

    The lock is the file ``folder/name``, holding ``"PID HOST TOKEN"`` (the token unique to
    this holder), and locked with ``fcntl.flock`` for as long as the owner lives: the
    kernel, not the file's content, decides who holds it on this host, so a lock file that
    is still empty (its creator not yet past ``flock``) is never taken for a stale one, and
    a takeover is atomic.

    * On this host, a lock whose ``flock`` is free belongs to a process that ended (a killed
      run): it is taken over at once.
    * A lock written by **another host** (a disconnected Colab runtime writing to Google
      Drive) cannot be ``flock``-ed from here; its holder refreshes the file's mtime every
      ``heartbeat`` seconds, and a lock whose heartbeat is older than ``stale_after`` seconds
      is taken over, with a note to ``log``.
    * Otherwise :class:`FolderLockedError` is raised at once.

    **A holder that was taken over stops.** A frozen holder (a paused VM, a suspended
    laptop) wakes up to find another token in the lock file: its heartbeat and every
    :meth:`HeldLock.check` see it, say so, and raise :class:`LockLostError`, so it writes
    nothing more.

    **Simultaneous starts where ``flock`` is not shared between hosts** (network and Drive
    mounts, where every host's ``flock`` succeeds): after ``flock``, each starter creates
    its own claim file ``name.claim-TOKEN`` with ``O_EXCL`` (atomic, and unique, so nobody
    overwrites anybody), waits ``settle`` seconds, then lists the folder. It loses if it
    sees a fresh ``name.held-*`` marker or a fresh claim with a lower token (and deletes its
    claim); otherwise it creates its marker ``name.held-TOKEN``, keeps its claim until it
    releases the lock, and only then writes the lock file. (A rename of the claim to the
    marker would not do: a listing running during a rename may show neither name.) Why two
    cannot both win: say X and Y win with X's token lower. Y did not see X's claim, so Y
    listed before X created it; X listed ``settle`` seconds after creating it, so later
    than Y's listing by more than ``settle``. Y kept its claim and created its marker right
    after listing, so, as long as that and its visibility on the mount take less than
    ``settle``, X saw Y's marker and lost: a contradiction. ``settle`` must therefore exceed the mount's delay in showing a
    new file to the other hosts (:data:`LOCK_SETTLE_SECONDS`; ``$CONVNN_LOCK_SETTLE_SECONDS``
    to change it). Markers and claims older than ``stale_after`` are a dead process's and
    are removed.

    Args:
        heartbeat: seconds between two checks and refreshes (``None``: none).
        stale_after: the age (seconds) after which another host's lock counts as dead.
        clock: the time source compared with the mtimes (a fake one in tests).
        log: where the takeover notes go (default: a warning).
        host: this machine's name (default :func:`hostname`; tests fake several hosts).
        settle: the claim's settle delay in seconds (default as above).
        sleep: how the settle delay is waited (a fake one in tests).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lock = folder / name
    me_host = hostname() if host is None else host
    token = f"{uuid.uuid4().hex}"
    me = f"{os.getpid()} {me_host} {token}\n"
    settle = _settle_seconds() if settle is None else settle
    for _ in range(5):
        fd = open_nofollow(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            if not _try_lock(fd):
                pid, host_, _ = _lock_owner(_read_fd(fd))
                raise FolderLockedError(
                    f"{folder} is in use by another process (PID {pid} on {host_ or me_host}, "
                    f"see {lock}); wait for it to finish or choose another folder")
            try:
                same = os.fstat(fd).st_ino == os.stat(lock).st_ino
            except FileNotFoundError:
                same = False
            if not same:  # released (unlinked) between our open and our flock: try again
                os.close(fd)
                continue
            pid, host_, prev_token = _lock_owner(_read_fd(fd))
            if host_ and host_ != me_host and pid is not None:
                age = clock() - os.fstat(fd).st_mtime
                if age < stale_after:
                    raise FolderLockedError(
                        f"{folder} is in use by PID {pid} on host {host_} (its lock {lock} was "
                        f"refreshed {age:.0f} s ago; a lock of another host is taken over once "
                        f"its heartbeat is {stale_after:.0f} s old). Wait for it, or, if that "
                        f"machine is gone, try again after that or delete {lock}")
                note = (f"note: took over the lock of PID {pid} on host {host_}: its heartbeat "
                        f"is {age:.0f} s old (more than {stale_after:.0f} s), so that machine "
                        "is gone")
                if log is None:
                    warnings.warn(note, stacklevel=3)
                else:
                    log(note)
            marker = _claim(folder, name, token, me, prev_token, clock, sleep, settle,
                            stale_after)
            try:
                same = os.fstat(fd).st_ino == os.stat(lock).st_ino
            except FileNotFoundError:
                same = False
            if not same:  # the holder we waited behind released it meanwhile: start again
                for path in (marker, marker.with_name(f"{name}.claim-{token}")):
                    with contextlib.suppress(OSError):
                        path.unlink()
                os.close(fd)
                continue
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
    held = HeldLock(lock, fd, token, marker, log)
    beat = _Heartbeat(held, heartbeat)
    try:
        yield held
    finally:
        beat.close()
        with contextlib.suppress(OSError):
            if _read_fd(fd) == me:
                lock.unlink()  # while still holding flock: a waiter then sees a new inode
        for path in (marker, marker.with_name(f"{name}.claim-{token}")):
            with contextlib.suppress(OSError):
                path.unlink()
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
