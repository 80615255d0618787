"""What a study's numbers depend on besides its protocol: the code version and the feature
classifier (``cbdm compare merge`` refuses shards that differ in either)."""

from __future__ import annotations

import subprocess
from functools import lru_cache
from pathlib import Path

from ..digests import file_digest  # noqa: F401  (its old home; the study records it)


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
