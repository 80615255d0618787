"""A ``cbdm compare`` study folder: the protocol it holds (a re-run must match it) and what a
finished sample folder left behind (its ``metrics.json``, its manifest's seed)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

from ..atomic import atomic_write_text, ensure_dir
from ..errors import CbdmError
from .compare_plan import StudyPlan
from .protocol import protocol_dict

PROTOCOL_JSON = "protocol.json"
# Fields that do not change any number: a re-run may change them.
_FREE = {("description",), ("training", "device"), ("evaluation", "cache_dir"), ("sampling", "batch_size")}


def check_folder(plan: StudyPlan) -> None:
    """A study folder holds one protocol: refuse to mix results of a different one."""
    check_folder_readonly(plan)
    ensure_dir(plan.out_dir, "study folder")
    atomic_write_text(plan.out_dir / PROTOCOL_JSON, json.dumps(protocol_dict(plan.protocol), indent=2) + "\n")


def check_folder_readonly(plan: StudyPlan) -> None:
    """:func:`check_folder` without writing anything (``--dry-run``): a file as the folder, a study of
    a different protocol in it."""
    if plan.out_dir.exists() and not plan.out_dir.is_dir():
        raise CbdmError(f"study folder {plan.out_dir} is a file, not a folder")
    path = plan.out_dir / PROTOCOL_JSON
    current = protocol_dict(plan.protocol)
    if path.is_file():
        try:
            saved = json.loads(path.read_text())
        except ValueError:
            raise CbdmError(f"{path} is not readable JSON; remove it or use another --out") from None
        diff = first_difference(saved, current)
        if diff is not None:
            raise CbdmError(f"{plan.out_dir} holds a study of a different protocol (differs at {diff}); "
                            "use another --out")


def first_difference(a: Any, b: Any, prefix: tuple = ()) -> Optional[str]:
    if prefix in _FREE:
        return None
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            found = first_difference(a.get(key), b.get(key), prefix + (key,))
            if found is not None:
                return found
        return None
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):  # e.g. methods: entry by entry
        for i, (x, y) in enumerate(zip(a, b)):
            found = first_difference(x, y, prefix + (str(i),))
            if found is not None:
                return found
        return None
    return None if a == b else ".".join(prefix) or "(root)"


def read_metrics(folder: Path) -> Optional[dict[str, Any]]:
    path = folder / "metrics.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError:  # a damaged report is recomputed (the samples are kept)
        return None


def manifest_seed(folder: Path) -> Optional[int]:
    """The sampling seed recorded in a sample folder's manifest (what the report shows)."""
    try:
        return int(json.loads((folder / "manifest.json").read_text())["settings"]["seed"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
