"""Sampling cost of a comparison: wall seconds per 1,000 images of each report sample set.

The study times its own call to the sampler (sampling and writing the images, not evaluation)
into ``sampling-time.json`` beside the samples; a resumed folder adds the time of each call, so
a set sampled in pieces reports the sum of its pieces (the part of a shard lost to Ctrl-C is
not counted). The device and torch thread count are recorded: costs compare only on the same.
"""

from __future__ import annotations

import json
import platform
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Optional

import torch

from ..atomic import atomic_write_text
from .stats import summarize

TIMING_JSON = "sampling-time.json"


def read_timing(folder: Path) -> Optional[dict[str, Any]]:
    """A sample folder's timing record, or None (none written, or unreadable)."""
    try:
        doc = json.loads((Path(folder) / TIMING_JSON).read_text())
        return doc if isinstance(doc, dict) and isinstance(doc.get("seconds"), (int, float)) else None
    except (OSError, ValueError):
        return None


@contextmanager
def timed_sampling(folder: Path, num: int, device: Any) -> Iterator[None]:
    """Add the wall time of the block to ``folder``'s timing record (also when it is interrupted)."""
    start = time.perf_counter()
    finished = False
    try:
        yield
        finished = True
    finally:
        before = read_timing(folder) or {}
        doc = {"seconds": float(before.get("seconds", 0.0)) + time.perf_counter() - start, "images": int(num),
               "complete": finished, "calls": int(before.get("calls", 0)) + 1, "device": str(device),
               "threads": torch.get_num_threads(), "machine": platform.processor() or platform.machine()}
        if Path(folder).is_dir():
            atomic_write_text(Path(folder) / TIMING_JSON, json.dumps(doc, indent=2) + "\n")


def seconds_per_1000(folder: Path) -> Optional[float]:
    """Seconds per 1,000 images of a completely sampled folder (None without a record)."""
    doc = read_timing(folder)
    if doc is None or not doc.get("complete") or not doc.get("images"):
        return None
    return 1000.0 * float(doc["seconds"]) / int(doc["images"])


def cost_summary(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """compare.json's ``sampling_cost`` of one method: seconds per 1,000 report images, mean ±
    sd over seeds and per seed, with the devices they were measured on."""
    per_seed = {r["seed"]: seconds_per_1000(Path(r["samples"])) for r in reports}
    s = summarize(list(per_seed.values()))
    devices = sorted({str((read_timing(Path(r["samples"])) or {}).get("device")) for r in reports
                      if read_timing(Path(r["samples"])) is not None})
    return {"seconds_per_1000_images": {"mean": s.mean, "sd": s.sd, "n": s.n, "per_seed": per_seed},
            "devices": devices}


def cost_lines(methods: dict[str, Any]) -> list[str]:
    """compare.md's sampling-cost table (report sets only)."""
    lines = ["| method | samples | s / 1,000 images (mean ± sd) | per seed | device |", "|---|---|---|---|---|"]
    for label, m in methods.items():
        cost = m.get("sampling_cost") or {}
        sec = cost.get("seconds_per_1000_images") or {}
        if sec.get("mean") is None:
            mean = "–"
        else:
            mean = f"{sec['mean']:.3g}" + ("" if sec.get("sd") is None else f" ± {sec['sd']:.2g}")
        seeds = ", ".join("–" if v is None else f"{v:.3g}" for v in (sec.get("per_seed") or {}).values())
        arm = m.get("sampling_arm")
        source = f"{arm['sample_from']}'s runs" if arm else "own runs"
        lines.append(f"| {label} | {source} | {mean} | {seeds} | {', '.join(cost.get('devices') or []) or '–'} |")
    return lines
