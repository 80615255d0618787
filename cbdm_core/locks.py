"""Exclusive locks on the folders cbdm writes (run, sample and feature-cache folders).

``fcntl.flock`` on ``<folder>/.cbdm.lock``: the kernel drops the lock when the holder
exits, however it exits (SIGKILL included), so a crash never leaves a folder stuck.
The holder writes its PID into the file so a refused writer can name it. Locks are
re-entrant within one process (the same folder locked twice by nested code).

The lock file exists only while a process holds it: the last :func:`release` unlinks it
while still locked, and :func:`acquire` re-checks after locking that the path still names
the file it locked (else it retries), so nobody ever holds an unlinked lock file. A refused
start (``release(folder, discard=True)``) also removes the folder when :func:`acquire`
created it and it is still empty, so it leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import threading
import time
from pathlib import Path
from typing import Callable, Iterator, Optional

from .atomic import current_umask, ensure_dir
from .errors import CbdmError

LOCK_NAME = ".cbdm.lock"

_held: dict[Path, list[int]] = {}  # folder -> [fd, depth, 1 if acquire created the folder]
_guard = threading.Lock()


class FolderBusyError(CbdmError):
    """Another process is writing the folder (``pid``: its PID as text, or ``"unknown"``)."""

    def __init__(self, message: str, pid: str = "unknown") -> None:
        super().__init__(message)
        self.pid = pid


def _holder_pid(fd: int) -> str:
    try:
        text = os.pread(fd, 32, 0).decode(errors="replace").strip()
    except OSError:
        text = ""
    return text if text.isdigit() else "unknown"


def _still_linked(fd: int, path: Path) -> bool:
    """Whether ``path`` still names the file open as ``fd`` (its previous holder
    unlinks it on release, maybe between our open and our lock)."""
    try:
        return os.stat(path).st_ino == os.fstat(fd).st_ino
    except OSError:
        return False


def acquire(folder: Path, what: str = "folder") -> None:
    """Lock ``folder`` (created if needed) for this process, or raise :class:`FolderBusyError`."""
    folder_existed = Path(folder).is_dir()
    folder = ensure_dir(Path(folder), what)
    key = folder.resolve()
    with _guard:
        if key in _held:
            _held[key][1] += 1
            return
        while True:
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
                                          "wait for it to finish or use another folder", pid) from None
                raise CbdmError(f"cannot lock {what} {folder}: {exc.strerror or exc}") from None
            if _still_linked(fd, key / LOCK_NAME):
                break
            os.close(fd)  # locked a file that its holder has just removed: lock the current one
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError:
            pass  # the PID is only informative; the lock itself is held
        _held[key] = [fd, 1, int(not folder_existed)]


def acquire_waiting(folder: Path, what: str, timeout_s: float,
                    on_wait: Optional[Callable[[str], None]] = None, poll_s: float = 0.2) -> bool:
    """:func:`acquire`, but wait (polling every ``poll_s``) while another process holds the
    lock: ``True`` once locked, ``False`` after ``timeout_s`` seconds still busy.

    ``on_wait(pid)`` is called once, when the first attempt finds the folder busy, so the
    caller can say what it is waiting for.
    """
    deadline = time.monotonic() + max(0.0, timeout_s)
    announced = False
    while True:
        try:
            acquire(folder, what)
            return True
        except FolderBusyError as exc:
            if not announced and on_wait is not None:
                on_wait(exc.pid)
            announced = True
            if time.monotonic() >= deadline:
                return False
            time.sleep(min(poll_s, max(0.0, deadline - time.monotonic())) or poll_s)


def release(folder: Path, discard: bool = False) -> None:
    """Undo one :func:`acquire` of ``folder``; the last one unlocks it and removes the lock file.

    ``discard``: the start was refused; also remove the folder when :func:`acquire` created
    it and it is empty.
    """
    key = Path(folder).resolve()
    with _guard:
        entry = _held.get(key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] > 0:
            return
        del _held[key]
        fd, _, created_folder = entry
        with contextlib.suppress(OSError):
            os.unlink(key / LOCK_NAME)  # while still locked: see the module docstring
        os.close(fd)  # closing the descriptor drops the flock
        if discard and created_folder:
            with contextlib.suppress(OSError):
                key.rmdir()  # only when empty: whatever else is there stays


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
