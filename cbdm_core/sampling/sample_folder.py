"""A sample folder's bookkeeping: its manifest record, its lock, and whether its files may be kept.

The manifest's ``settings`` are everything that decides the images: a folder is reused (and
resumed) only when they match; other settings, other weights or another version of a
guidance file are refused unless ``overwrite``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

import numpy as np

from .. import locks
from ..atomic import remove_stale_temps
from ..device import DistContext
from ..errors import CbdmError
from . import shards as sh
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


def _labels_digest(labels: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(labels, dtype="<i8").tobytes()).hexdigest()[:16]


def manifest_settings(run: "LoadedRun", st: SamplingSettings, how: SamplerSettings, labels_np: np.ndarray,
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


def lock_folder(out_dir: Path, settings: dict[str, Any], overwrite: bool, ctx: DistContext,
                remedy: str = sh.WRITE_HINT) -> None:
    """Take the sample folder's lock and make it ready for ``settings`` (rank 0, for all ranks);
    ``remedy``: what a refusal suggests (the caller's options)."""

    def prepare() -> None:
        # One writer per sample folder for the whole call (rank 0 holds it for all ranks):
        # a second `cbdm sample` into it is refused. A refused start leaves no lock file, nor
        # the folder when it created it (acquire creates it).
        locks.acquire(out_dir, "sample folder")
        try:
            remove_stale_temps(out_dir)
            _prepare_folder(out_dir, settings, overwrite, remedy)
        except BaseException:
            locks.release(out_dir, discard=True)
            raise

    ctx.main_first(prepare, others=False)  # an error on rank 0 is raised on every rank


def new_manifest(run: "LoadedRun", labels_np: np.ndarray, settings: dict[str, Any], spans: list,
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


def guidance_file_digests(options: dict[str, Any]) -> dict[str, str]:
    """``{option: sha256}`` of every guidance option whose value names an existing file (a
    noise-aware or minority classifier): the manifest records the file by content."""
    from ..digests import file_digest

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


def _prepare_folder(out_dir: Path, settings: dict[str, Any], overwrite: bool, remedy: str = sh.WRITE_HINT) -> None:
    if overwrite:
        sh.clear_samples(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise CbdmError(f"--out {out_dir} is a file, not a folder")
    old = sh.read_manifest(out_dir, remedy)
    if old is not None:
        diff = sh.settings_difference(old.get("settings", {}), settings)
        if old.get("settings", {}).get("weights_sha256") != settings.get("weights_sha256"):
            raise CbdmError(f"{out_dir} holds samples of other model weights (the run was retrained, or "
                            "the folder predates weight hashes); " + remedy)
        changed = _changed_guidance_files(old.get("settings", {}), settings)
        if changed:
            raise CbdmError(f"{out_dir} holds samples guided by another version of {changed} (the file was "
                            "retrained, or the folder predates guidance file hashes); " + remedy)
        if diff:
            raise CbdmError(f"{out_dir} holds samples made with other settings ({'; '.join(diff[:3])}"
                            f"{'; ...' if len(diff) > 3 else ''}); {remedy}")
    elif out_dir.is_dir() and any(out_dir.glob(sh.SHARD_GLOB)):
        raise CbdmError(f"{out_dir} holds sample shards but no {sh.MANIFEST}; {remedy}")
    out_dir.mkdir(parents=True, exist_ok=True)
