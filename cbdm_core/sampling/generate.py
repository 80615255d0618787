"""Generate many samples from a loaded run into a resumable folder of shards.

:func:`generate_samples` is what ``cbdm sample`` runs; evaluation and sweeps can
call it directly. Sample ``i`` (its position in the label list) draws ``x_T``
and its step noise from its own generator ``sample_generators(seed, [i])``, so
the images do not depend on the batch size, and a resumed run gives the same
images as an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Optional, Sequence

import numpy as np
import torch

from .. import locks
from ..atomic import ensure_dir, remove_stale_temps
from ..errors import CbdmError
from ..images import as_numpy_nhwc, class_rows, grid_image, save_png, to_uint8
from . import shards as sh
from .api import sample
from .noise import randn_like_per_sample, sample_generators
from .settings import SamplingSettings

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
              guidance_method: str = "cfg") -> None:
    """Run the sampler once on a 1-pixel image with a dummy denoiser.

    The sampler itself then rejects bad settings (unknown sampler or option,
    ``steps > T``, ddpm with ``steps != T`` or an eta, ...) before any folder is
    made or any network call is spent.
    """
    x = torch.zeros(1, 1, 1, 1)
    sample(_NullDenoiser(run.num_classes), run.schedule, x, torch.zeros(1, dtype=torch.long), sampler=sampler,
           steps=steps, eta=eta, guidance=guidance, guidance_method=guidance_method, clip_denoised=clip_denoised,
           generator=sample_generators(0, [0]), **dict(sampler_options))


def estimate_output_bytes(num: int, image_shape: Sequence[int]) -> int:
    """Bytes the shards of ``num`` images of ``image_shape`` take (uint8, uncompressed)."""
    return int(num) * int(np.prod([int(s) for s in image_shape])) + 8 * int(num)


def _labels_digest(labels: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(labels, dtype="<i8").tobytes()).hexdigest()[:16]


def _image_shape(run: "LoadedRun") -> tuple[int, int, int]:
    """``(C, H, W)`` from the checkpoint metadata (the model as fallback)."""
    meta = run.meta or {}
    try:
        return int(meta["channels"]), int(meta["image_size"]), int(meta["image_size"])
    except (KeyError, TypeError, ValueError):
        return int(run.model.channels), int(run.model.image_size), int(run.model.image_size)


def generate_samples(run: "LoadedRun", labels: Sequence[int], *, out_dir: Path,
                     settings: Optional[SamplingSettings] = None, shard_size: int = 5000, overwrite: bool = False,
                     on_progress: Optional[ProgressFn] = None,
                     on_ready: Optional[Callable[[int], None]] = None) -> SampleResult:
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
    """
    st = settings if settings is not None else SamplingSettings()
    sampler, steps, eta, guidance, guidance_method = st.sampler, st.steps, st.eta, st.guidance, st.guidance_method
    seed, batch_size, clip_denoised, sampler_options = st.seed or 0, st.batch_size, st.clip_denoised, st.sampler_options
    classes, ema, grid_per_class = st.classes, st.ema, st.per_class
    out_dir = Path(out_dir)
    labels_np = np.asarray(list(labels), dtype=np.int64)
    num = int(labels_np.size)
    # An unconditional model (no classes) samples with the null label, index 0; for
    # bookkeeping (counts, grid rows) it counts as one class.
    C = max(run.num_classes, 1)
    if run.num_classes == 0 and float(guidance) != 0:
        raise CbdmError("guidance needs a class-conditional model; this one is unconditional")
    if num <= 0:
        raise CbdmError("the number of samples must be positive")
    if batch_size <= 0:
        raise CbdmError(f"batch size must be positive, got {batch_size}")
    if shard_size <= 0:
        raise CbdmError(f"shard size must be positive, got {shard_size}")
    bad = (labels_np < 0) | (labels_np >= C)
    if bad.any():
        raise CbdmError(f"class index {int(labels_np[bad][0])} is out of range: the model has {C} classes "
                        f"(0..{C - 1})")
    for name, value in (("guidance", guidance), ("eta", eta)):
        if not math.isfinite(float(value)):
            raise CbdmError(f"{name} must be a finite number, got {value}")
    options = dict(sampler_options or {})
    T = run.schedule.num_timesteps
    steps = resolve_steps(sampler, steps, T)
    eta, guidance = float(eta), float(guidance)
    preflight(run, sampler=sampler, steps=steps, eta=eta, guidance=guidance, clip_denoised=clip_denoised,
              sampler_options=options, guidance_method=guidance_method)

    chw = _image_shape(run)
    counts = np.bincount(labels_np, minlength=C).tolist()
    spans = sh.shard_spans(num, shard_size)
    settings = {
        "checkpoint": str(Path(run.checkpoint).resolve()), "step": int(run.step), "ema": ema,
        "sampler": sampler, "steps": steps, "eta": eta, "guidance": guidance, "clip_denoised": clip_denoised,
        "sampler_options": options, "seed": int(seed), "num": num,
        "counts_per_class": counts, "labels_sha256": _labels_digest(labels_np), "shard_size": int(shard_size),
        "image_shape": [chw[1], chw[2], chw[0]],
    }
    if guidance_method != "cfg":  # only then, so folders sampled before this setting existed still resume
        settings["guidance_method"] = guidance_method
    # One writer per sample folder for the whole call: a second `cbdm sample` into it is refused.
    ensure_dir(out_dir, "sample folder")
    with locks.folder_lock(out_dir, "sample folder"):
        remove_stale_temps(out_dir)
        _prepare_folder(out_dir, settings, overwrite)
        return _generate_locked(run, labels_np, out_dir=out_dir, settings=settings, spans=spans, counts=counts,
                                chw=chw, C=C, classes=classes, batch_size=batch_size, grid_per_class=grid_per_class,
                                on_progress=on_progress, on_ready=on_ready)


def _generate_locked(run: "LoadedRun", labels_np: np.ndarray, *, out_dir: Path, settings: dict[str, Any],
                     spans: list, counts: list[int], chw: tuple[int, int, int], C: int, classes: str,
                     batch_size: int, grid_per_class: int, on_progress: Optional[ProgressFn],
                     on_ready: Optional[Callable[[int], None]]) -> SampleResult:
    """The part of :func:`generate_samples` that writes, run with the folder locked."""
    num, shard_size, seed = settings["num"], settings["shard_size"], settings["seed"]
    sampler, steps, eta, guidance = settings["sampler"], settings["steps"], settings["eta"], settings["guidance"]
    clip_denoised, options = settings["clip_denoised"], settings["sampler_options"]
    guidance_method = settings.get("guidance_method", "cfg")
    class_names = list((run.meta or {}).get("class_names") or
                       (["unconditional"] if run.num_classes == 0 else [str(k) for k in range(C)]))
    manifest = {
        "format": sh.FORMAT, "complete": False, "settings": settings, "classes": classes, "num_classes": C,
        "class_names": class_names, "counts_per_class": counts, "num": num, "shard_size": int(shard_size),
        "shards": [{"file": s.name, "start": s.start, "count": s.count} for s in spans],
        "grid": sh.GRID, "batch_size": int(batch_size),
    }
    manifest_path = sh.write_manifest(out_dir, manifest)

    # Progress counts the complete shards found first, then the images made here.
    done = sum(s.count for s in spans if (out_dir / s.name).exists())
    if on_ready is not None:
        on_ready(done)
    per_class = max(1, min(int(grid_per_class), max(counts)))
    grid_imgs: dict[int, list[np.ndarray]] = {k: [] for k in range(C)}
    result = SampleResult(out_dir, manifest_path, out_dir / sh.GRID, [out_dir / s.name for s in spans])
    for span in spans:
        path = out_dir / span.name
        want = labels_np[span.start:span.stop]
        if path.exists():
            images, got = sh.read_shard(path)
            if len(got) != span.count or not np.array_equal(got, want) or tuple(images.shape[1:]) != tuple(
                    settings["image_shape"]):
                raise CbdmError(f"{path} does not match the planned samples (count, labels or image size); "
                                "use a new --out or --overwrite")
            result.skipped.append(path)
        else:
            images = _sample_span(run, span, labels_np, sampler=sampler, steps=steps, eta=eta,
                                  guidance=guidance, guidance_method=guidance_method, seed=seed,
                                  batch_size=batch_size, chw=chw,
                                  clip_denoised=clip_denoised, options=options, done=done, num=num,
                                  on_progress=on_progress)
            sh.write_shard(path, images, want)
            result.generated.append(path)
            done += span.count
            if on_progress is not None:
                on_progress(float(done), num)
        for k in np.unique(want).tolist():
            need = per_class - len(grid_imgs[k])
            if need > 0:
                grid_imgs[k].extend(images[want == k][:need])

    _save_grid(result.grid, grid_imgs, C, per_class, chw)
    manifest["complete"] = True
    sh.write_manifest(out_dir, manifest)
    return result


def _prepare_folder(out_dir: Path, settings: dict[str, Any], overwrite: bool) -> None:
    if overwrite:
        sh.clear_samples(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise CbdmError(f"--out {out_dir} is a file, not a folder")
    old = sh.read_manifest(out_dir)
    if old is not None:
        diff = sh.settings_difference(old.get("settings", {}), settings)
        if diff:
            raise CbdmError(f"{out_dir} holds samples made with other settings ({'; '.join(diff[:3])}"
                            f"{'; ...' if len(diff) > 3 else ''}); use a new --out or --overwrite")
    elif out_dir.is_dir() and any(out_dir.glob(sh.SHARD_GLOB)):
        raise CbdmError(f"{out_dir} holds sample shards but no {sh.MANIFEST}; use a new --out or --overwrite")
    out_dir.mkdir(parents=True, exist_ok=True)


def _sample_span(run: "LoadedRun", span: sh.ShardSpan, labels: np.ndarray, *, sampler: str, steps: int,
                 eta: float, guidance: float, guidance_method: str, seed: int, batch_size: int, chw: tuple[int, int, int],
                 clip_denoised: Optional[bool], options: dict[str, Any], done: int, num: int,
                 on_progress: Optional[ProgressFn]) -> np.ndarray:
    """uint8 NHWC images of one shard, in batches of at most ``batch_size``."""
    device = next(run.model.parameters()).device
    out = np.empty((span.count, chw[1], chw[2], chw[0]), dtype=np.uint8)
    for b0 in range(span.start, span.stop, batch_size):
        b1 = min(b0 + batch_size, span.stop)
        gens = sample_generators(seed, range(b0, b1))
        x_T = randn_like_per_sample(chw, gens, device=device)
        y = torch.from_numpy(labels[b0:b1]).to(device)
        base, n = done + (b0 - span.start), b1 - b0

        def step_cb(i: int, total: int, x: torch.Tensor, _base: int = base, _n: int = n) -> None:
            if on_progress is not None:
                on_progress(_base + _n * (i + 1) / total, num)

        x0 = sample(run.model, run.schedule, x_T, y, sampler=sampler, steps=steps, eta=eta, guidance=guidance,
                    guidance_method=guidance_method, clip_denoised=clip_denoised, generator=gens, callback=step_cb, **options)
        if not bool(torch.isfinite(x0).all()):
            raise CbdmError(f"samples {b0}..{b1 - 1} came out NaN or inf (non-finite weights, or a guidance "
                            f"strength too large?); stopped; the complete shards before them are kept")
        out[b0 - span.start:b1 - span.start] = as_numpy_nhwc(to_uint8(x0))
    return out


def _save_grid(path: Path, grid_imgs: dict[int, list[np.ndarray]], num_classes: int, per_class: int,
               chw: tuple[int, int, int]) -> None:
    imgs = [im for k in range(num_classes) for im in grid_imgs[k]]
    labs = [k for k in range(num_classes) for _ in grid_imgs[k]]
    if imgs:
        images = torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2)
    else:
        images = torch.zeros((0, *chw), dtype=torch.uint8)
    rows = class_rows(images, torch.tensor(labs, dtype=torch.long), num_classes, per_class)
    save_png(grid_image(rows, nrow=per_class), path)
