"""Sampling a folder's images in batches: which indices are still to make, which part is
this rank's, and the images written as whole shards or one PNG each.

Sample ``i`` draws ``x_T`` and its step noise from ``sample_generators(seed, [i])`` alone,
so the images depend neither on the batch size nor on the number of processes.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import numpy as np
import torch

from ..device import DistContext
from ..errors import CbdmError
from ..images import as_numpy_nhwc, to_uint8
from . import shards as sh
from .core import sample_resolved
from .noise import randn_like_per_sample, sample_generators
from .resolved import ResolvedSampling
from .sample_folder import ProgressFn, SampleResult

if TYPE_CHECKING:
    from ..run import LoadedRun


def plan_work(out_dir: Path, spans: list, labels_np: np.ndarray, settings: dict[str, Any],
               dirs: Optional[list[str]], chosen: Optional[np.ndarray], check: bool) -> list[np.ndarray]:
    """Per span, the sample indices still to make: the missing ones, or the chosen ones
    (with npz, a missing shard is made whole: a shard file is complete or absent)."""
    work = []
    for span in spans:
        idx = np.arange(span.start, span.stop)
        pick = idx if chosen is None else chosen[(chosen >= span.start) & (chosen < span.stop)]
        if dirs is not None:  # png: one file per image
            if chosen is None:
                pick = np.array([i for i in idx if not sh.png_path(out_dir, dirs[labels_np[i]], i).exists()],
                                dtype=np.int64)
            work.append(pick)
            continue
        path = out_dir / span.name
        if not path.exists():
            work.append(idx if chosen is None or pick.size else idx[:0])
            continue
        if check:
            _, got = sh.read_shard(path)
            want = labels_np[span.start:span.stop]
            if len(got) != span.count or not np.array_equal(got, want):
                raise CbdmError(f"{path} does not match the planned samples (count or labels); "
                                "use a new --out or --overwrite")
        work.append(pick if chosen is not None else idx[:0])
    return work


def _my_part(spans: list, work: list[np.ndarray], rank: int, world: int, png: bool) -> list[tuple[Any, np.ndarray]]:
    """This rank's contiguous range of the work: of the images (png) or of the shards (npz)."""
    if png:
        flat = np.concatenate(work) if work else np.zeros(0, np.int64)
        part = np.array_split(flat, world)[rank]
        return [(None, part)] if part.size else []
    units = [(span, idx) for span, idx in zip(spans, work) if idx.size]
    lo, hi = rank * len(units) // world, (rank + 1) * len(units) // world
    return units[lo:hi]


def write_my_part(run: "LoadedRun", labels_np: np.ndarray, work: list[np.ndarray], *, out_dir: Path,
                  sampling: ResolvedSampling, seed: int, spans: list, dirs: Optional[list[str]],
                  chw: tuple[int, int, int], batch_size: int, done: int, total: int,
                  on_progress: Optional[ProgressFn], result: SampleResult, ctx: DistContext) -> None:
    """Sample and write this rank's part of the work (whole shard files, or one PNG per image)."""
    own = 0
    for span, idx in _my_part(spans, work, ctx.rank, ctx.world, dirs is not None):
        images = _sample_indices(run, idx, labels_np, sampling=sampling, seed=seed, batch_size=batch_size, chw=chw,
                                 done=done + own * ctx.world, total=total, scale=ctx.world,
                                 on_progress=on_progress)
        if dirs is not None:
            for i, im in zip(idx.tolist(), images):
                sh.write_png(sh.png_path(out_dir, dirs[labels_np[i]], i), im)
        else:
            path = out_dir / span.name
            if len(idx) == span.count:
                full = images
            else:  # the chosen rows of an existing shard
                full, _ = sh.read_shard(path)
                full = full.copy()
                full[idx - span.start] = images
            sh.write_shard(path, full, labels_np[span.start:span.stop])
            result.generated.append(path)
        own += len(idx)
        if on_progress is not None:
            on_progress(float(min(done + own * ctx.world, total)), total)


def _sample_indices(run: "LoadedRun", idx: np.ndarray, labels: np.ndarray, *, sampling: ResolvedSampling,
                    seed: int, batch_size: int, chw: tuple[int, int, int], done: float, total: int, scale: int,
                    on_progress: Optional[ProgressFn]) -> np.ndarray:
    """uint8 NHWC images of samples ``idx``, in batches of at most ``batch_size``; sample ``i``
    draws its noise from ``sample_generators(seed, [i])`` alone."""
    device = next(run.model.parameters()).device
    out = np.empty((len(idx), chw[1], chw[2], chw[0]), dtype=np.uint8)
    for b0 in range(0, len(idx), batch_size):
        rows = idx[b0:b0 + batch_size]
        gens = sample_generators(seed, rows.tolist())
        x_T = randn_like_per_sample(chw, gens, device=device)
        y = torch.from_numpy(labels[rows]).to(device)
        base, n = done + b0 * scale, len(rows) * scale

        def step_cb(i: int, steps: int, x: torch.Tensor, _base: float = base, _n: int = n) -> None:
            if on_progress is not None:
                on_progress(min(_base + _n * (i + 1) / steps, total), total)

        x0 = sample_resolved(run.model, run.schedule, x_T, y, sampling, generator=gens, callback=step_cb)
        if not bool(torch.isfinite(x0).all()):
            raise CbdmError(f"samples {int(rows[0])}..{int(rows[-1])} came out NaN or inf (non-finite weights, or "
                            "a guidance strength too large?); stopped; the complete files before them are kept")
        out[b0:b0 + len(rows)] = as_numpy_nhwc(to_uint8(x0))
    return out
