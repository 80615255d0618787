"""What a study's numbers depend on besides its protocol: the code version and the feature
classifier (``cbdm compare merge`` refuses shards that differ in either)."""

from __future__ import annotations

import hashlib
import subprocess
from functools import lru_cache
from pathlib import Path
from typing import Optional


@lru_cache(maxsize=1)
def code_version() -> str:
    """``<package version>`` plus ``+g<commit>`` when the code is a git checkout (``-dirty`` with
    uncommitted changes to tracked files)."""
    from importlib import metadata

    try:
        version = metadata.version("cbdm")
    except metadata.PackageNotFoundError:
        version = "unknown"
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=here, capture_output=True,
                                text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return version
    return f"{version}+g{commit}" + ("-dirty" if dirty else "")


def file_digest(path: Optional[Path]) -> Optional[str]:
    """SHA-256 of a file (the classifier's weights and metadata), ``None`` without one."""
    if path is None or not Path(path).is_file():
        return None
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
