"""Exclusive locks on the folders cbdm writes (run, sample and feature-cache folders).

``fcntl.flock`` on ``<folder>/.cbdm.lock``: the kernel drops the lock when the holder
exits, however it exits (SIGKILL included), so a crash never leaves a folder stuck.
The holder writes its PID into the file so a refused writer can name it. Locks are
re-entrant within one process (the same folder locked twice by nested code).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import threading
from pathlib import Path
from typing import Iterator

from .atomic import current_umask, ensure_dir
from .errors import CbdmError

LOCK_NAME = ".cbdm.lock"

_held: dict[Path, list[int]] = {}  # folder -> [fd, depth]
_guard = threading.Lock()


class FolderBusyError(CbdmError):
    """Another process is writing the folder."""


def _holder_pid(fd: int) -> str:
    try:
        text = os.pread(fd, 32, 0).decode(errors="replace").strip()
    except OSError:
        text = ""
    return text if text.isdigit() else "unknown"


def acquire(folder: Path, what: str = "folder") -> None:
    """Lock ``folder`` (created if needed) for this process, or raise :class:`FolderBusyError`."""
    folder = ensure_dir(Path(folder), what)
    key = folder.resolve()
    with _guard:
        if key in _held:
            _held[key][1] += 1
            return
        try:
            fd = os.open(key / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666 & ~current_umask())
        except OSError as exc:
            raise CbdmError(f"cannot lock {what} {folder}: {exc.strerror or exc}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            pid = _holder_pid(fd)
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise FolderBusyError(f"{what} {folder} is in use by another cbdm process (PID {pid}); "
                                      "wait for it to finish or use another folder") from None
            raise CbdmError(f"cannot lock {what} {folder}: {exc.strerror or exc}") from None
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError:
            pass  # the PID is only informative; the lock itself is held
        _held[key] = [fd, 1]


def release(folder: Path) -> None:
    """Undo one :func:`acquire` of ``folder``; the last one unlocks it."""
    key = Path(folder).resolve()
    with _guard:
        entry = _held.get(key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] > 0:
            return
        del _held[key]
        with contextlib.suppress(OSError):
            os.ftruncate(entry[0], 0)
        os.close(entry[0])  # closing the descriptor drops the flock


@contextlib.contextmanager
def folder_lock(folder: Path, what: str = "folder") -> Iterator[Path]:
    """``with folder_lock(path): ...`` holds the lock for the block."""
    acquire(folder, what)
    try:
        yield Path(folder)
    finally:
        release(folder)


def is_locked_here(folder: Path) -> bool:
    """Whether this process holds the lock on ``folder``."""
    return Path(folder).resolve() in _held
