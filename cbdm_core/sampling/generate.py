"""Generate many samples from a loaded run into a resumable folder of shards.

:func:`generate_samples` is what ``cbdm sample`` runs; evaluation and sweeps can
call it directly. Sample ``i`` (its position in the label list) draws ``x_T``
and its step noise from its own generator ``sample_generators(seed, [i])``, so
the images do not depend on the batch size, and a resumed run gives the same
images as an uninterrupted one.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Optional, Sequence

import numpy as np
import torch

from .. import locks
from ..atomic import remove_stale_temps
from ..device import DistContext
from ..errors import CbdmError
from ..images import as_numpy_nhwc, class_rows, grid_image, save_png, to_uint8
from . import shards as sh
from .api import sample
from .guidance import resolve_names
from .noise import randn_like_per_sample, sample_generators
from .settings import SamplerSettings, SamplingSettings

if TYPE_CHECKING:
    from ..run import LoadedRun

ProgressFn = Callable[[float, int], None]
"""``on_progress(images_done, total)``; ``images_done`` is fractional within a batch."""


@dataclass
class SampleResult:
    out_dir: Path
    manifest: Path
    grid: Path
    shards: list[Path]
    generated: list[Path] = field(default_factory=list)  # shards written by this call
    skipped: list[Path] = field(default_factory=list)  # complete shards found and kept


def resolve_steps(sampler: str, steps: Optional[int], T: int) -> int:
    """The step count actually used: ``steps``, or the sampler's default capped at ``T``.

    A sampler whose default is ``None`` (``ddpm``) runs all ``T`` steps.
    """
    if steps is not None:
        return int(steps)
    from ..registry import lookup

    default = lookup("sampler", sampler).default_steps
    return int(T) if default is None else min(int(default), int(T))


class _NullDenoiser:
    """Stands in for the network in :func:`preflight`: predicts zero noise."""

    def __init__(self, num_classes: int):
        self.num_classes = num_classes

    def __call__(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(x)


def preflight(run: "LoadedRun", *, sampler: str, steps: int, eta: float, guidance: float,
              clip_denoised: Optional[bool], sampler_options: Mapping[str, Any],
              guidance_method: str = "cfg", guidance_options: Optional[Mapping[str, Any]] = None) -> None:
    """Run the sampler once on one image with a dummy denoiser.

    The sampler itself then rejects bad settings (unknown sampler or option,
    ``steps > T``, ddpm with ``steps != T`` or an eta, ...) before any folder is
    made or any network call is spent.
    """
    # The run's image shape, not one pixel: a guidance with its own network (a classifier) checks it.
    # A stand-in without a model or metadata (training's evaluation check) gets one pixel.
    known = getattr(run, "meta", None) or getattr(run, "model", None) is not None
    x = torch.zeros(1, *(_image_shape(run) if known else (1, 1, 1)))
    sample(_NullDenoiser(run.num_classes), run.schedule, x, torch.zeros(1, dtype=torch.long), sampler=sampler,
           steps=steps, eta=eta, guidance=guidance, guidance_method=guidance_method,
           guidance_options=guidance_options, clip_denoised=clip_denoised,
           generator=sample_generators(0, [0]), **dict(sampler_options))


def estimate_output_bytes(num: int, image_shape: Sequence[int]) -> int:
    """Bytes the shards of ``num`` images of ``image_shape`` take (uint8, uncompressed)."""
    return int(num) * int(np.prod([int(s) for s in image_shape])) + 8 * int(num)


def _labels_digest(labels: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(labels, dtype="<i8").tobytes()).hexdigest()[:16]


def _image_shape(run: "LoadedRun") -> tuple[int, int, int]:
    """``(C, H, W)`` from the checkpoint metadata (the model as fallback)."""
    meta = run.meta
    if meta.channels is not None and meta.image_size is not None:
        return meta.channels, meta.image_size, meta.image_size
    return int(run.model.channels), int(run.model.image_size), int(run.model.image_size)


def _check_request(run: "LoadedRun", labels_np: np.ndarray, st: SamplingSettings, shard_size: int,
                   C: int) -> None:
    """Refuse a request that cannot be sampled, before anything is run (the settings' own
    numbers, batch size, eta and guidance included, were checked when they were made)."""
    if run.num_classes == 0 and float(st.guidance) != 0:
        raise CbdmError("guidance needs a class-conditional model; this one is unconditional")
    if int(labels_np.size) <= 0:
        raise CbdmError("the number of samples must be positive")
    if shard_size <= 0:
        raise CbdmError(f"shard size must be positive, got {shard_size}")
    bad = (labels_np < 0) | (labels_np >= C)
    if bad.any():
        raise CbdmError(f"class index {int(labels_np[bad][0])} is out of range: the model has {C} classes "
                        f"(0..{C - 1})")


def _chosen_indices(indices: Optional[Sequence[int]], num: int, image_format: str) -> Optional[np.ndarray]:
    """The sorted unique sample indices to (re)make, or ``None`` for all missing ones."""
    if image_format not in ("npz", "png"):
        raise CbdmError(f"unknown image format {image_format!r}; choose npz or png")
    chosen = None if indices is None else np.unique(np.asarray(list(indices), dtype=np.int64))
    if chosen is not None and (chosen.size == 0 or chosen[0] < 0 or chosen[-1] >= num):
        raise CbdmError(f"the chosen sample indices must lie in 0..{num - 1}"
                        + (f", got {int(chosen[-1])}" if chosen is not None and chosen.size else ""))
    return chosen


def _checked_sampler(run: "LoadedRun", st: SamplerSettings) -> SamplerSettings:
    """How to sample, resolved (the sampler and guidance against the registry, unless the
    caller did; steps) and checked by the sampler itself on a dummy denoiser."""
    how = resolve_names(st).sampler_settings()
    how.steps = resolve_steps(st.sampler, st.steps, run.schedule.num_timesteps)
    preflight(run, sampler=how.sampler, steps=how.steps, eta=how.eta, guidance=how.guidance,
              clip_denoised=how.clip_denoised, sampler_options=how.sampler_options,
              guidance_method=how.guidance_method, guidance_options=how.guidance_options)
    return how


def _manifest_settings(run: "LoadedRun", st: SamplingSettings, how: SamplerSettings, labels_np: np.ndarray,
                       counts: list[int], chw: tuple[int, int, int], shard_size: int,
                       image_format: str) -> dict[str, Any]:
    """The manifest's ``settings``: everything that decides the images (a folder is reused
    only when they match): ``how``'s dump, and the job's numbers."""
    settings = {
        "checkpoint": str(Path(run.checkpoint).resolve()), "step": int(run.step), "ema": st.ema,
        **how.manifest_fields(),
        "seed": int(st.seed or 0), "num": int(labels_np.size),
        "counts_per_class": counts, "labels_sha256": _labels_digest(labels_np), "shard_size": int(shard_size),
        "image_shape": [chw[1], chw[2], chw[0]],
        # The model itself: a retrained run has the same checkpoint path and step.
        "weights_sha256": getattr(run, "weights_sha256", "") or None,
    }
    # guidance_method / guidance_options sit after weights_sha256, as they always did
    for key in ("guidance_method", "guidance_options"):
        if key in settings:
            settings[key] = settings.pop(key)
    if how.guidance_options:  # other options are other images, so a folder is not reused for them
        files = guidance_file_digests(how.guidance_options)
        if files:  # a guidance classifier by content: a retrained file has the same path
            settings["guidance_files_sha256"] = files
    if image_format != "npz":  # only then, so folders sampled before this setting existed still resume
        settings["format"] = image_format
    return settings


def _lock_folder(out_dir: Path, settings: dict[str, Any], overwrite: bool, ctx: DistContext) -> None:
    """Take the sample folder's lock and make it ready for ``settings`` (rank 0, for all ranks)."""

    def prepare() -> None:
        # One writer per sample folder for the whole call (rank 0 holds it for all ranks):
        # a second `cbdm sample` into it is refused. A refused start leaves no lock file, nor
        # the folder when it created it (acquire creates it).
        locks.acquire(out_dir, "sample folder")
        try:
            remove_stale_temps(out_dir)
            _prepare_folder(out_dir, settings, overwrite)
        except BaseException:
            locks.release(out_dir, discard=True)
            raise

    ctx.main_first(prepare, others=False)  # an error on rank 0 is raised on every rank


def generate_samples(run: "LoadedRun", labels: Sequence[int], *, out_dir: Path,
                     settings: Optional[SamplingSettings] = None, shard_size: int = 5000, overwrite: bool = False,
                     on_progress: Optional[ProgressFn] = None,
                     on_ready: Optional[Callable[[int], None]] = None, image_format: str = "npz",
                     indices: Optional[Sequence[int]] = None, ctx: Optional[DistContext] = None) -> SampleResult:
    """Sample ``len(labels)`` images from ``run`` into shards under ``out_dir``.

    Args:
        run: from :func:`cbdm_core.run.load_run`; sampling runs on its model's device.
        labels: class of every sample (``0..C-1``); keep it sorted by class for a
            tidy folder (:func:`cbdm_core.sampling.plan.plan_labels` does).
        out_dir: sample folder. Complete shards already there are checked and kept
            when the settings match its manifest; other settings raise
            :class:`CbdmError` unless ``overwrite`` (which first removes the
            shards, manifest and grid, nothing else).
        settings: how to sample (:class:`~cbdm_core.sampling.settings.SamplingSettings`;
            ``num`` is ignored here: ``labels`` says how many). Sample ``i`` uses
            ``sample_generators(seed, [i])``; ``classes`` and ``ema`` are recorded in the
            manifest; ``per_class`` images per class row of ``grid.png``.
        shard_size: images per shard file.
        on_progress: ``on_progress(images_done, total)`` as sampling advances;
            ``images_done`` counts the kept shards first, then the new images.
        on_ready: ``on_ready(images_already_done)`` once the plan is checked,
            before the first network call.
        image_format: ``npz`` (shards) or ``png`` (one PNG per image in class folders).
        indices: (re)generate only these sample indices (``--seeds A-B``), even if present.
        ctx: under torchrun (:func:`~cbdm_core.training.distributed.setup_distributed`) each
            process makes a contiguous range of the work; the images do not depend on it.
    """
    st = settings if settings is not None else SamplingSettings()
    out_dir = Path(out_dir)
    labels_np = np.asarray(list(labels), dtype=np.int64)
    num = int(labels_np.size)
    # An unconditional model (no classes) samples with the null label, index 0; for
    # bookkeeping (counts, grid rows) it counts as one class.
    C = max(run.num_classes, 1)
    _check_request(run, labels_np, st, shard_size, C)
    how = _checked_sampler(run, st)  # before any folder is made or any network call is spent
    chw = _image_shape(run)
    counts = np.bincount(labels_np, minlength=C).tolist()
    spans = sh.shard_spans(num, shard_size)
    chosen = _chosen_indices(indices, num, image_format)
    record = _manifest_settings(run, st, how, labels_np, counts, chw, shard_size, image_format)
    ctx = ctx if ctx is not None else DistContext()
    _lock_folder(out_dir, record, overwrite, ctx)
    try:
        return _generate_locked(run, labels_np, out_dir=out_dir, settings=record, spans=spans, counts=counts,
                                chw=chw, C=C, classes=st.classes, batch_size=st.batch_size,
                                grid_per_class=st.per_class, on_progress=on_progress, on_ready=on_ready,
                                chosen=chosen, ctx=ctx)
    finally:
        if ctx.is_main:
            locks.release(out_dir)


def _plan_work(out_dir: Path, spans: list, labels_np: np.ndarray, settings: dict[str, Any],
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


def _new_manifest(run: "LoadedRun", labels_np: np.ndarray, settings: dict[str, Any], spans: list,
                  counts: list[int], C: int, classes: str, batch_size: int) -> dict[str, Any]:
    """The folder's manifest, not yet complete (png: with its class folders and labels)."""
    num, shard_size = settings["num"], settings["shard_size"]
    class_names = list(run.meta.class_names or
                       (["unconditional"] if run.num_classes == 0 else [str(k) for k in range(C)]))
    manifest = {
        "format": sh.FORMAT, "complete": False, "settings": settings, "classes": classes, "num_classes": C,
        "class_names": class_names, "counts_per_class": counts, "num": num, "shard_size": int(shard_size),
        "shards": [{"file": s.name, "start": s.start, "count": s.count} for s in spans],
        "grid": sh.GRID, "batch_size": int(batch_size),
    }
    if settings.get("format") == "png":
        manifest.update(images="png", class_dirs=sh.class_dirs(class_names), labels=sh.encode_labels(labels_np))
    return manifest


def _write_my_part(run: "LoadedRun", labels_np: np.ndarray, work: list[np.ndarray], *, out_dir: Path,
                   settings: dict[str, Any], spans: list, dirs: Optional[list[str]], chw: tuple[int, int, int],
                   batch_size: int, done: int, total: int, on_progress: Optional[ProgressFn],
                   result: SampleResult, ctx: DistContext) -> None:
    """Sample and write this rank's part of the work (whole shard files, or one PNG per image)."""
    own = 0
    for span, idx in _my_part(spans, work, ctx.rank, ctx.world, dirs is not None):
        images = _sample_indices(run, idx, labels_np, settings=settings, batch_size=batch_size, chw=chw,
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


def _finish_folder(out_dir: Path, manifest: dict[str, Any], labels_np: np.ndarray, spans: list,
                   dirs: Optional[list[str]], chw: tuple[int, int, int], C: int, grid_per_class: int,
                   counts: list[int], grid: Path) -> None:
    """Rank 0, after every rank wrote: the grid, and the manifest marked complete when it is."""
    settings = manifest["settings"]
    complete = all(len(w) == 0 for w in _plan_work(out_dir, spans, labels_np, settings, dirs, None, False))
    _save_grid(grid, _grid_images(out_dir, manifest, spans, C, grid_per_class, counts), C,
               max(1, min(int(grid_per_class), max(counts))), chw, _row_names(manifest, C))
    manifest["complete"] = complete
    sh.write_manifest(out_dir, manifest)


def _generate_locked(run: "LoadedRun", labels_np: np.ndarray, *, out_dir: Path, settings: dict[str, Any],
                     spans: list, counts: list[int], chw: tuple[int, int, int], C: int, classes: str,
                     batch_size: int, grid_per_class: int, on_progress: Optional[ProgressFn],
                     on_ready: Optional[Callable[[int], None]], chosen: Optional[np.ndarray] = None,
                     ctx: Optional[DistContext] = None) -> SampleResult:
    """The part of :func:`generate_samples` that writes, run with the folder locked.

    Under torchrun every rank takes a contiguous range of the work (whole shards for npz,
    images for png); each image depends only on the seed and its index, so the images are
    the same for any number of processes.
    """
    ctx = ctx if ctx is not None else DistContext()
    num = settings["num"]
    manifest = _new_manifest(run, labels_np, settings, spans, counts, C, classes, batch_size)
    dirs = manifest.get("class_dirs")
    result = SampleResult(out_dir, out_dir / sh.MANIFEST, out_dir / sh.GRID, [out_dir / s.name for s in spans])
    if dirs is not None:
        result.shards = []

    def plan() -> list[np.ndarray]:
        if ctx.is_main:
            sh.write_manifest(out_dir, manifest)
        return _plan_work(out_dir, spans, labels_np, settings, dirs, chosen, check=ctx.is_main)

    work = ctx.main_first(plan)  # rank 0 checks the existing shards; then every rank plans the same
    ctx.barrier()  # no rank writes before every rank has planned from the same files
    todo = sum(len(w) for w in work)
    done = num - todo if chosen is None else 0
    total = num if chosen is None else todo
    if on_ready is not None:
        on_ready(done)
    error: Optional[str] = None
    try:
        _write_my_part(run, labels_np, work, out_dir=out_dir, settings=settings, spans=spans, dirs=dirs, chw=chw,
                       batch_size=batch_size, done=done, total=total, on_progress=on_progress, result=result,
                       ctx=ctx)
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
        _finish_folder(out_dir, manifest, labels_np, spans, dirs, chw, C, grid_per_class, counts, result.grid)
    ctx.barrier()
    return result


def _my_part(spans: list, work: list[np.ndarray], rank: int, world: int, png: bool) -> list[tuple[Any, np.ndarray]]:
    """This rank's contiguous range of the work: of the images (png) or of the shards (npz)."""
    if png:
        flat = np.concatenate(work) if work else np.zeros(0, np.int64)
        part = np.array_split(flat, world)[rank]
        return [(None, part)] if part.size else []
    units = [(span, idx) for span, idx in zip(spans, work) if idx.size]
    lo, hi = rank * len(units) // world, (rank + 1) * len(units) // world
    return units[lo:hi]


def _grid_images(out_dir: Path, manifest: dict[str, Any], spans: list, C: int, grid_per_class: int,
                 counts: list[int]) -> dict[int, list[np.ndarray]]:
    """The first images of each class, read back from the files (whichever rank wrote them)."""
    per_class = max(1, min(int(grid_per_class), max(counts)))
    grid: dict[int, list[np.ndarray]] = {k: [] for k in range(C)}
    png = manifest.get("images") == "png"
    for span in spans:
        if all(len(grid[k]) >= min(per_class, counts[k]) for k in range(C)):
            break
        try:
            if png:
                images, labels = sh.read_png_span(out_dir, manifest, span.start, span.count)
            else:
                images, labels = sh.read_shard(out_dir / span.name)
        except CbdmError:
            continue  # missing (a --seeds run on a new folder): the grid shows what exists
        for k in np.unique(labels).tolist():
            need = per_class - len(grid[k])
            if need > 0:
                grid[k].extend(images[labels == k][:need])
    return grid


def guidance_file_digests(options: dict[str, Any]) -> dict[str, str]:
    """``{option: sha256}`` of every guidance option whose value names an existing file (a
    noise-aware or minority classifier): the manifest records the file by content."""
    from ..experiments.provenance import file_digest

    out = {}
    for key, value in sorted(options.items()):
        if isinstance(value, str) and value and Path(value).is_file():
            out[key] = file_digest(Path(value))
    return out


def _changed_guidance_files(old: dict[str, Any], new: dict[str, Any]) -> Optional[str]:
    """The first guidance file (``option FILE``) whose recorded digest differs, else ``None``;
    only for the same options (other options are reported as other settings)."""
    if old.get("guidance_options") != new.get("guidance_options"):
        return None
    was, now = old.get("guidance_files_sha256") or {}, new.get("guidance_files_sha256") or {}
    for key in sorted(set(was) | set(now)):
        if was.get(key) != now.get(key):
            return f"{key} {new.get('guidance_options', {}).get(key)}"
    return None


def _prepare_folder(out_dir: Path, settings: dict[str, Any], overwrite: bool) -> None:
    if overwrite:
        sh.clear_samples(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise CbdmError(f"--out {out_dir} is a file, not a folder")
    old = sh.read_manifest(out_dir)
    if old is not None:
        diff = sh.settings_difference(old.get("settings", {}), settings)
        if old.get("settings", {}).get("weights_sha256") != settings.get("weights_sha256"):
            raise CbdmError(f"{out_dir} holds samples of other model weights (the run was retrained, or "
                            "the folder predates weight hashes); use a new --out or --overwrite")
        changed = _changed_guidance_files(old.get("settings", {}), settings)
        if changed:
            raise CbdmError(f"{out_dir} holds samples guided by another version of {changed} (the file was "
                            "retrained, or the folder predates guidance file hashes); use a new --out or --overwrite")
        if diff:
            raise CbdmError(f"{out_dir} holds samples made with other settings ({'; '.join(diff[:3])}"
                            f"{'; ...' if len(diff) > 3 else ''}); use a new --out or --overwrite")
    elif out_dir.is_dir() and any(out_dir.glob(sh.SHARD_GLOB)):
        raise CbdmError(f"{out_dir} holds sample shards but no {sh.MANIFEST}; use a new --out or --overwrite")
    out_dir.mkdir(parents=True, exist_ok=True)


def _sample_indices(run: "LoadedRun", idx: np.ndarray, labels: np.ndarray, *, settings: dict[str, Any],
                    batch_size: int, chw: tuple[int, int, int], done: float, total: int, scale: int,
                    on_progress: Optional[ProgressFn]) -> np.ndarray:
    """uint8 NHWC images of samples ``idx``, in batches of at most ``batch_size``; sample ``i``
    draws its noise from ``sample_generators(seed, [i])`` alone."""
    device = next(run.model.parameters()).device
    out = np.empty((len(idx), chw[1], chw[2], chw[0]), dtype=np.uint8)
    for b0 in range(0, len(idx), batch_size):
        rows = idx[b0:b0 + batch_size]
        gens = sample_generators(settings["seed"], rows.tolist())
        x_T = randn_like_per_sample(chw, gens, device=device)
        y = torch.from_numpy(labels[rows]).to(device)
        base, n = done + b0 * scale, len(rows) * scale

        def step_cb(i: int, steps: int, x: torch.Tensor, _base: float = base, _n: int = n) -> None:
            if on_progress is not None:
                on_progress(min(_base + _n * (i + 1) / steps, total), total)

        x0 = sample(run.model, run.schedule, x_T, y, sampler=settings["sampler"], steps=settings["steps"],
                    eta=settings["eta"], guidance=settings["guidance"],
                    guidance_method=settings.get("guidance_method", "cfg"),
                    guidance_options=settings.get("guidance_options"), clip_denoised=settings["clip_denoised"],
                    generator=gens, callback=step_cb, **settings["sampler_options"])
        if not bool(torch.isfinite(x0).all()):
            raise CbdmError(f"samples {int(rows[0])}..{int(rows[-1])} came out NaN or inf (non-finite weights, or "
                            "a guidance strength too large?); stopped; the complete files before them are kept")
        out[b0:b0 + len(rows)] = as_numpy_nhwc(to_uint8(x0))
    return out


def _row_names(manifest: dict[str, Any], num_classes: int) -> list[str]:
    """The grid's row labels (one row per class): the run's class names, else the indices."""
    names = list(manifest.get("class_names") or [])
    return [str(names[k]) if k < len(names) else str(k) for k in range(num_classes)]


def _save_grid(path: Path, grid_imgs: dict[int, list[np.ndarray]], num_classes: int, per_class: int,
               chw: tuple[int, int, int], row_labels: Optional[list[str]] = None) -> None:
    imgs = [im for k in range(num_classes) for im in grid_imgs[k]]
    labs = [k for k in range(num_classes) for _ in grid_imgs[k]]
    if imgs:
        images = torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2)
    else:
        images = torch.zeros((0, *chw), dtype=torch.uint8)
    rows = class_rows(images, torch.tensor(labs, dtype=torch.long), num_classes, per_class)
    save_png(grid_image(rows, nrow=per_class, row_labels=row_labels), path)
