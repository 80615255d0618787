"""SHA-256 of files: what a sample folder's manifest and a study record about the files that
shaped their numbers (a guidance classifier, a feature classifier)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Optional


def file_digest(path: Optional[Path]) -> Optional[str]:
    """SHA-256 of a file (the classifier's weights and metadata), ``None`` without one."""
    if path is None or not Path(path).is_file():
        return None
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
