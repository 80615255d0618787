"""Generate many samples from a loaded run into a resumable folder of shards.

:func:`generate_samples` is what ``cbdm sample`` runs; evaluation and sweeps can
call it directly. Sample ``i`` (its position in the label list) draws ``x_T``
and its step noise from its own generator ``sample_generators(seed, [i])``, so
the images do not depend on the batch size, and a resumed run gives the same
images as an uninterrupted one.

Its parts, one job each: :mod:`.preflight` (checks before any work), :mod:`.sample_folder`
(manifest, lock, kept files), :mod:`.batches` (the images), :mod:`.sample_grid` (``grid.png``);
their public names are importable from here as before.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence

import numpy as np

from .. import locks
from ..device import DistContext
from ..errors import CbdmError
from . import shards as sh
from .api import resolve_steps  # noqa: F401  (its old home: the name helper lives at the sampling edge)
from .batches import plan_work, write_my_part
from .preflight import check_request, checked_sampling, chosen_indices, estimate_output_bytes, image_shape, preflight
from .resolved import ResolvedSampling
from .sample_folder import (ProgressFn, SampleResult, guidance_file_digests, lock_folder, manifest_settings,
                            new_manifest)
from .sample_grid import finish_folder
from .settings import SampleJob, SamplerSettings, SamplingSettings

if TYPE_CHECKING:
    from ..run import LoadedRun

__all__ = ["generate_samples", "SampleResult", "ProgressFn", "preflight", "estimate_output_bytes",
           "guidance_file_digests", "resolve_steps"]


def _job_settings(settings: SamplerSettings) -> SamplingSettings:
    """``settings`` with a job: its own, or the job's defaults for plain sampler settings."""
    return settings if isinstance(settings, SamplingSettings) else SamplingSettings.of(settings, SampleJob())


def generate_samples(run: "LoadedRun", labels: Sequence[int], *, out_dir: Path,
                     sampling: ResolvedSampling, shard_size: int = 5000, overwrite: bool = False,
                     on_progress: Optional[ProgressFn] = None,
                     on_ready: Optional[Callable[[int], None]] = None, image_format: str = "npz",
                     indices: Optional[Sequence[int]] = None, ctx: Optional[DistContext] = None,
                     remedy: Optional[str] = None) -> SampleResult:
    """Sample ``len(labels)`` images from ``run`` into shards under ``out_dir``.

    Args:
        run: from :func:`cbdm_core.run.load_run`; sampling runs on its model's device.
        labels: class of every sample (``0..C-1``); keep it sorted by class for a
            tidy folder (:func:`cbdm_core.sampling.plan.plan_labels` does).
        out_dir: sample folder. Complete shards already there are checked and kept
            when the settings match its manifest; other settings raise
            :class:`CbdmError` unless ``overwrite`` (which first removes the
            shards, manifest and grid, nothing else).
        sampling: how to sample, its names resolved at the edge
            (:func:`cbdm_core.sampling.api.resolve_sampling` of a
            :class:`~cbdm_core.sampling.settings.SamplingSettings`; ``num`` is ignored here:
            ``labels`` says how many). Sample ``i`` uses ``sample_generators(seed, [i])``;
            ``classes`` and ``ema`` are recorded in the manifest; ``per_class`` images per class
            row of ``grid.png``. Plain :class:`SamplerSettings` take the job's defaults.
        shard_size: images per shard file.
        on_progress: ``on_progress(images_done, total)`` as sampling advances;
            ``images_done`` counts the kept shards first, then the new images.
        on_ready: ``on_ready(images_already_done)`` once the plan is checked,
            before the first network call.
        image_format: ``npz`` (shards) or ``png`` (one PNG per image in class folders).
        indices: (re)generate only these sample indices (``--seeds A-B``), even if present.
        ctx: under torchrun (:func:`~cbdm_core.training.distributed.setup_distributed`) each
            process makes a contiguous range of the work; the images do not depend on it.
        remedy: what a refused folder's error suggests (default: `cbdm sample`'s new --out or --overwrite).
    """
    if not isinstance(sampling, ResolvedSampling):  # settings by name: resolved at the edge first
        raise CbdmError("generate_samples takes sampling=cbdm_core.sampling.api.resolve_sampling(settings), got "
                        f"{type(sampling).__name__}")
    st = _job_settings(sampling.settings)
    out_dir = Path(out_dir)
    labels_np = np.asarray(list(labels), dtype=np.int64)
    num = int(labels_np.size)
    # An unconditional model (no classes) samples with the null label, index 0; for
    # bookkeeping (counts, grid rows) it counts as one class.
    C = max(run.num_classes, 1)
    check_request(run, labels_np, st, shard_size, C)
    how = checked_sampling(run, sampling)  # before any folder is made or any network call is spent
    chw = image_shape(run)
    counts = np.bincount(labels_np, minlength=C).tolist()
    spans = sh.shard_spans(num, shard_size)
    chosen = chosen_indices(indices, num, image_format)
    record = manifest_settings(run, st, how.settings, labels_np, counts, chw, shard_size, image_format)
    ctx = ctx if ctx is not None else DistContext()
    lock_folder(out_dir, record, overwrite, ctx, *([remedy] if remedy else []))
    try:
        return _generate_locked(run, labels_np, how, out_dir=out_dir, settings=record, spans=spans, counts=counts,
                                chw=chw, C=C, classes=st.classes, batch_size=st.batch_size,
                                grid_per_class=st.per_class, on_progress=on_progress, on_ready=on_ready,
                                chosen=chosen, ctx=ctx)
    finally:
        if ctx.is_main:
            locks.release(out_dir)


def _generate_locked(run: "LoadedRun", labels_np: np.ndarray, sampling: ResolvedSampling, *, out_dir: Path,
                     settings: dict[str, Any], spans: list, counts: list[int], chw: tuple[int, int, int], C: int,
                     classes: str, batch_size: int, grid_per_class: int, on_progress: Optional[ProgressFn],
                     on_ready: Optional[Callable[[int], None]], chosen: Optional[np.ndarray] = None,
                     ctx: Optional[DistContext] = None) -> SampleResult:
    """The part of :func:`generate_samples` that writes, run with the folder locked.

    Under torchrun every rank takes a contiguous range of the work (whole shards for npz,
    images for png); each image depends only on the seed and its index, so the images are
    the same for any number of processes.
    """
    ctx = ctx if ctx is not None else DistContext()
    num = settings["num"]
    manifest = new_manifest(run, labels_np, settings, spans, counts, C, classes, batch_size)
    dirs = manifest.get("class_dirs")
    result = SampleResult(out_dir, out_dir / sh.MANIFEST, out_dir / sh.GRID, [out_dir / s.name for s in spans])
    if dirs is not None:
        result.shards = []

    def plan() -> list[np.ndarray]:
        if ctx.is_main:
            sh.write_manifest(out_dir, manifest)
        return plan_work(out_dir, spans, labels_np, settings, dirs, chosen, check=ctx.is_main)

    work = ctx.main_first(plan)  # rank 0 checks the existing shards; then every rank plans the same
    ctx.barrier()  # no rank writes before every rank has planned from the same files
    todo = sum(len(w) for w in work)
    done = num - todo if chosen is None else 0
    total = num if chosen is None else todo
    if on_ready is not None:
        on_ready(done)
    error: Optional[str] = None
    try:
        write_my_part(run, labels_np, work, out_dir=out_dir, sampling=sampling, seed=settings["seed"], spans=spans,
                      dirs=dirs, chw=chw, batch_size=batch_size, done=done, total=total, on_progress=on_progress,
                      result=result, ctx=ctx)
    except CbdmError as exc:
        error = str(exc)
    # Every rank learns of a failure on any rank, so none waits at a barrier forever.
    (failed,) = ctx.any_flags(error is not None)
    if failed:
        raise CbdmError(error or "another sampling process failed (see its message); the complete files are kept")
    ctx.barrier()
    if dirs is None:
        result.skipped = [p for p in result.shards if p not in result.generated]
    if ctx.is_main:
        finish_folder(out_dir, manifest, labels_np, spans, dirs, chw, C, grid_per_class, counts, result.grid)
    ctx.barrier()
    return result
