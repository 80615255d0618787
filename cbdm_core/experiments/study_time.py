"""Where a study's wall time goes: training vs sampling and evaluation (issue 29, item 3).

``cbdm compare`` times its phases into ``study-time.json`` in the study folder, one record per
call of the command (a resumed study adds a record; an interrupted call keeps what it timed), so
the share of sampling and evaluation is a number every study reports instead of an estimate from
file stamps. Phases:

* ``reference``: preparing the reference set's features (once per study);
* ``training``: every training run and arm classifier, in workers or in this process;
* ``sampling_evaluation``: choosing w, sampling and evaluating every set, the held-out check.

Writing the report itself (tables and plots, seconds) is not counted. Each record names its
threads, ``--jobs`` and machine: shares compare only between like records.
"""

from __future__ import annotations

import json
import platform
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Optional

import torch

from ..atomic import atomic_write_text

STUDY_TIME_JSON = "study-time.json"
PHASES = ("reference", "training", "sampling_evaluation")


def read_study_time(folder: Path) -> list[dict[str, Any]]:
    """The folder's call records (empty when none was written or the file is unreadable)."""
    try:
        doc = json.loads((Path(folder) / STUDY_TIME_JSON).read_text())
    except (OSError, ValueError):
        return []
    calls = doc.get("calls") if isinstance(doc, dict) else None
    return [c for c in calls if isinstance(c, dict) and isinstance(c.get("seconds"), dict)] if isinstance(
        calls, list) else []


class StudyClock:
    """Accumulates this call's seconds per phase and saves them after every phase, so a call
    stopped by Ctrl-C or an error still leaves its record."""

    def __init__(self, folder: Path, jobs: int) -> None:
        self.folder = Path(folder)
        self._earlier = read_study_time(self.folder)
        self._call: dict[str, Any] = {
            "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "jobs": int(jobs), "threads": torch.get_num_threads(),  # training workers share these
            "machine": platform.processor() or platform.machine(), "complete": False,
            "seconds": {name: 0.0 for name in PHASES}}

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        if name not in PHASES:
            raise ValueError(f"unknown study phase {name!r}")
        start = time.perf_counter()
        try:
            yield
        finally:
            self._call["seconds"][name] += time.perf_counter() - start
            self.save()

    def note(self, key: str, value: Any) -> None:
        """Record a fact of this call (e.g. ``sampling_threads``) beside its times."""
        self._call[key] = value

    def finish(self) -> None:
        self._call["complete"] = True
        self.save()

    def calls(self) -> list[dict[str, Any]]:
        return [*self._earlier, self._call]

    def save(self) -> None:
        if self.folder.is_dir():
            atomic_write_text(self.folder / STUDY_TIME_JSON,
                              json.dumps({"calls": self.calls()}, indent=2) + "\n")


def time_summary(calls: list[dict[str, Any]], shards: int = 1) -> Optional[dict[str, Any]]:
    """compare.json's ``study_time``: seconds per phase summed over the calls (and shards), and
    the share of sampling and evaluation in the timed total; None without records."""
    if not calls:
        return None
    seconds = {name: sum(float(c["seconds"].get(name, 0.0)) for c in calls) for name in PHASES}
    total = sum(seconds.values())
    return {"seconds": seconds, "total": total, "calls": len(calls), "shards": int(shards),
            "sampling_evaluation_share": seconds["sampling_evaluation"] / total if total > 0 else None,
            "jobs": sorted({int(c.get("jobs", 1)) for c in calls}),
            "threads": sorted({int(c.get("threads", 1)) for c in calls}),
            "sampling_threads": sorted({int(c["sampling_threads"]) for c in calls if "sampling_threads" in c}),
            "machines": sorted({str(c.get("machine", "")) for c in calls})}


def time_split(summary: dict[str, Any], mark: str = "") -> str:
    """``training X min, sampling and evaluation Y min (Z%)``: the command's line and compare.md's
    (``mark`` around the share, e.g. ``**`` in Markdown)."""
    s, share = summary["seconds"], summary["sampling_evaluation_share"]
    return (f"training {s['training'] / 60:.1f} min, sampling and evaluation {s['sampling_evaluation'] / 60:.1f} min"
            + (f" ({mark}{100 * share:.0f}%{mark})" if share is not None else ""))


def time_lines(summary: Optional[dict[str, Any]]) -> list[str]:
    """compare.md's lines on where the wall time went (nothing without a record)."""
    if not summary:
        return []
    where = (f"{summary['calls']} call(s) of `cbdm compare`" if summary["shards"] <= 1 else
             f"{summary['calls']} call(s) over {summary['shards']} shards, summed")
    return [f"Timed over {where} (`study-time.json`; --jobs {'/'.join(map(str, summary['jobs']))}, "
            f"{'/'.join(map(str, summary['threads']))} torch thread(s) in the main process"
            + (f", sampling on {'/'.join(map(str, summary['sampling_threads']))}" if summary.get("sampling_threads")
               else "") + "): "
            f"{time_split(summary, '**')}, reference {summary['seconds']['reference'] / 60:.1f} min; the percentage is "
            "sampling and evaluation's share of the timed total.",
            "A resumed study times only what each call did: a share over calls that skipped finished parts is "
            "not a single study's."]
