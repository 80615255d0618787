"""Atomic file writes: temporary file in the same folder, fsync, rename."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Callable, Iterator

from .errors import CbdmError


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path; on success it replaces ``path`` atomically.

    On any failure the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
    except OSError as exc:
        raise CbdmError(f"cannot write to {path.parent}: {exc.strerror or exc}") from None
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            # mkstemp (and writers that replace the file, like safetensors) leave 0600; the
            # finished file should follow the user's umask like any other file.
            os.fchmod(f.fileno(), 0o666 & ~current_umask())
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    except OSError as exc:
        tmp_path.unlink(missing_ok=True)
        raise CbdmError(f"could not write {path}: {exc.strerror or exc}") from None
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def current_umask() -> int:
    """The process umask, read without changing it where the OS allows (Linux)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def ensure_dir(folder: Path, what: str = "folder") -> Path:
    """Create ``folder`` (and parents) or raise a one-line :class:`CbdmError`."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise CbdmError(f"{what} {folder} is a file, not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CbdmError(f"cannot create {what} {folder}: {exc.strerror or exc}") from None
    return folder


def check_writable(path: Path, what: str = "output") -> None:
    """Fail early, in one line, when the file ``path`` could not be written later
    (its folder cannot be created or written to, or it is a folder itself)."""
    if Path(path).is_dir():
        raise CbdmError(f"the {what} {path} is a folder; give a file name")
    folder = ensure_dir(Path(path).parent, f"folder of the {what}")
    try:
        fd, tmp = tempfile.mkstemp(prefix=".write-test.", suffix=".tmp", dir=folder)
        os.close(fd)
        os.unlink(tmp)
    except OSError as exc:
        raise CbdmError(f"cannot write the {what} {path}: {exc.strerror or exc}") from None


PROBE_BYTES = 4096  # one block: a full disk refuses it, an empty probe file would not


def _probe_write(fd: int) -> None:
    """Write the probe's bytes (a function of its own so tests can make it fail)."""
    data = b"\0" * PROBE_BYTES
    if os.write(fd, data) != len(data):
        raise OSError(28, "No space left on device (short write)")


def check_folder_writable(folder: Path, what: str = "output folder") -> None:
    """Fail early, in one line, when files could not be written into ``folder`` later: it (or,
    when it does not exist yet, its nearest existing parent) is a file, read-only or full.
    Creates nothing: a command refused later leaves no empty folder behind."""
    folder = Path(folder)
    probe_dir = folder
    while not probe_dir.exists() and probe_dir != probe_dir.parent:
        probe_dir = probe_dir.parent
    if not probe_dir.is_dir():
        raise CbdmError(f"cannot write the {what} {folder}: {probe_dir} is a file, not a folder")
    try:
        fd, tmp = tempfile.mkstemp(prefix=".write-test.", suffix=".tmp", dir=probe_dir)
    except OSError as exc:
        raise CbdmError(f"cannot write the {what} {folder}: {exc.strerror or exc}") from None
    try:
        _probe_write(fd)
    except OSError as exc:
        raise CbdmError(f"cannot write the {what} {folder}: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def remove_stale_temps(folder: Path) -> list[Path]:
    """Delete the temporary files an interrupted atomic write left in ``folder``.

    Only call this while holding the folder's lock: then no write is in progress.
    """
    removed = []
    if Path(folder).is_dir():
        for p in Path(folder).iterdir():
            if p.name.startswith(".") and (p.name.endswith(".tmp") or p.name.startswith(".tmp")) and p.is_file():
                p.unlink(missing_ok=True)
                removed.append(p)
    return removed


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def atomic_write_with(path: Path, writer: Callable[[Path], None]) -> None:
    """Call ``writer(tmp_path)`` and move the result into place atomically."""
    with atomic_path(path) as tmp:
        writer(tmp)
