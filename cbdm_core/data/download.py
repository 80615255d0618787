"""Plain-urllib downloads and safe tarball extraction (no torchvision needed)."""

from __future__ import annotations

import os
import shutil
import tarfile
import urllib.error
import urllib.request
from pathlib import Path, PurePosixPath

from ..errors import CbdmError


def download_file(url: str, dest: Path, timeout: float = 30.0) -> Path:
    """Fetch ``url`` into ``dest`` (written to ``dest.part`` first so a failure leaves no stub)."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp, open(part, "wb") as f:
            shutil.copyfileobj(resp, f, length=1 << 20)
    except (urllib.error.URLError, OSError, ValueError) as e:
        part.unlink(missing_ok=True)
        reason = getattr(e, "reason", None) or e
        raise CbdmError(
            f"could not download {url} ({reason}); offline? put the files under {dest.parent} by hand"
        ) from None
    os.replace(part, dest)
    return dest


def _check_member(member: tarfile.TarInfo, archive: Path) -> None:
    path = PurePosixPath(member.name)
    if path.is_absolute() or ".." in path.parts or member.name.startswith(("/", "\\")):
        raise CbdmError(f"refusing to extract {archive}: member {member.name!r} escapes the target folder")
    if not (member.isfile() or member.isdir()):
        # Links and device files could point outside the target folder.
        raise CbdmError(f"refusing to extract {archive}: member {member.name!r} is not a plain file or folder")


def safe_extract_tar(archive: Path, dest: Path) -> None:
    """Extract ``archive`` into ``dest``, refusing absolute paths, ``..``, links and devices."""
    archive, dest = Path(archive), Path(dest)
    try:
        with tarfile.open(archive) as tar:
            members = tar.getmembers()
            for m in members:
                _check_member(m, archive)
            if hasattr(tarfile, "data_filter"):  # Python >= 3.11.4 / 3.12: belt and braces
                tar.extractall(dest, members=members, filter="data")
            else:  # pragma: no cover - older Pythons
                tar.extractall(dest, members=members)
    except (tarfile.TarError, EOFError, OSError) as e:
        raise CbdmError(f"could not extract {archive}: {e}") from None
