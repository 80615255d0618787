"""Images in class folders: ``root/<class>/*.{png,jpg,jpeg,bmp,webp}``."""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..errors import CbdmError
from ..interfaces import LabeledImages
from .common import apply_resize, check_labeled, require_root, select_indices
from .options import DatasetOptions

log = logging.getLogger(__name__)

IMAGE_EXTS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".webp"})
GRAY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "F"})
WIDE_GRAY_MODES = frozenset({"I;16", "I;16B", "I;16L", "I"})  # PNG 16-bit gray loads as one of these
SPLITS = ("train", "test")
WHAT = "one sub-folder of images per class (root/<class>/*.png|jpg|jpeg|bmp|webp)"
_CHUNK = 256  # files per thread task: keeps the pool overhead small for 50k tiny JPEGs


def _subdirs(path: Path) -> list[str]:
    with os.scandir(path) as it:
        return sorted(e.name for e in it if e.is_dir() and not e.name.startswith("."))


def _image_files(path: Path) -> list[Path]:
    with os.scandir(path) as it:
        names = sorted(
            e.name for e in it
            if e.is_file() and not e.name.startswith(".") and os.path.splitext(e.name)[1].lower() in IMAGE_EXTS
        )
    return [path / n for n in names]


def resolve_split_dir(root: Path, split: str) -> Path:
    """``root/<split>`` when root holds only ``train``/``test`` folders, else ``root`` (train only)."""
    subs = _subdirs(root)
    if subs and set(subs) <= set(SPLITS):
        d = root / split
        if not d.is_dir():
            raise CbdmError(f"dataset folder: {root} has no {split}/ sub-folder")
        return d
    if split != "train":
        raise CbdmError(
            f"dataset folder: split {split!r} needs {root}/{split}/<class>/...; {root} holds class folders only"
        )
    return root


def list_class_files(base: Path, classes: list[str] | None) -> tuple[list[str], list[list[Path]]]:
    """Class names (sorted, or the ``classes`` order/subset) and each class's image files."""
    found = _subdirs(base)
    if classes is None:
        names = found
    else:
        missing = [c for c in classes if c not in found]
        if missing:
            raise CbdmError(
                f"dataset folder: no class folder {missing[0]!r} in {base}; found: {', '.join(found) or 'none'}"
            )
        names = list(classes)
    if not names:
        raise CbdmError(f"dataset folder: {base} has no class folders; expected {WHAT}")
    files = []
    for n in names:
        f = _image_files(base / n)
        if not f:
            raise CbdmError(f"dataset folder: class folder {base / n} has no images ({', '.join(sorted(IMAGE_EXTS))})")
        files.append(f)
    return names, files


def class_names(options: DatasetOptions) -> list[str]:
    """The folder dataset's classes in label order, without decoding an image.

    ``class_order="count"`` ranks by the image files of the **train** split (most first, ties
    by name), so the train and test splits share one label order.
    """
    root = require_root(options, "folder", WHAT)
    names, _ = list_class_files(resolve_split_dir(root, options.split), options.classes)
    if options.split != "train" and options.classes is None:
        # A label is an index into the names: another split with other classes would score class c's
        # samples against another class's images.
        train = _subdirs(resolve_split_dir(root, "train"))
        if names != train:
            only = sorted(set(names) ^ set(train))
            raise CbdmError(f"dataset folder: {options.split}/ and train/ hold other classes ({', '.join(only[:4])} "
                            f"in one only); the splits must have the same class folders")
    if options.class_order == "count":
        _, train_files = list_class_files(resolve_split_dir(root, "train"), names)
        sizes = {n: len(f) for n, f in zip(names, train_files)}
        names = sorted(names, key=lambda n: (-sizes[n], n))
    return names


_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".bmp": "BMP", ".webp": "WEBP"}


# The largest side a model takes (checkpoint image_size is bounded alike, see cbdm_core/run.py):
# a larger image is refused from its header, before PIL decodes it.
MAX_SIDE = 4096


class _Refused(CbdmError):
    """An image refused from its header (too large, not square, another size): never decoded."""


def _open(path: Path) -> Image.Image:
    """The image, lazily: PIL reads only the header until ``load``."""
    # Trying the extension's format first skips PIL's probing of every plugin.
    fmt = _FORMATS.get(path.suffix.lower())
    try:
        return Image.open(path, formats=[fmt] if fmt else None)
    except Image.UnidentifiedImageError:
        return Image.open(path)  # misnamed file: let PIL identify it


def _check_header(path: Path, size: tuple[int, int], ref: tuple[Path, tuple[int, int]] | None,
                  square: bool = True) -> None:
    """Refuse ``path`` of ``size`` (w, h) before decoding it: a decompression bomb (a few MB of
    PNG that decode to GBs) must not be decoded just to find it has the wrong size."""
    w, h = size
    if max(w, h) > MAX_SIDE:
        raise _Refused(f"dataset folder: image {path} is {w}x{h}; images larger than {MAX_SIDE}x{MAX_SIDE} "
                       "are refused (resize them first)")
    if ref is None:
        if square and w != h:
            raise _Refused(f"dataset folder: image {path} is {w}x{h}; the models need square images "
                           "(crop or pad them first)")
    elif (w, h) != ref[1]:
        raise _Refused(f"dataset folder: image {path} is {w}x{h} but {ref[0]} is {ref[1][0]}x{ref[1][1]}; "
                       "all images must have the same size")


def reference_size(paths: list[Path], square: bool = True) -> tuple[Path, tuple[int, int]] | None:
    """``(path, (w, h))`` of the first image whose header reads, checked (square, at most
    :data:`MAX_SIDE`); every other image must have its size. None when no header reads."""
    for path in paths:
        try:
            with _open(path) as im:
                size = im.size
        except Exception:  # noqa: BLE001 - unreadable: counted when its turn to decode comes
            continue
        _check_header(path, size, None, square)
        return path, size
    return None


def _decode(path: Path, ref: tuple[Path, tuple[int, int]] | None = None) -> np.ndarray | Exception:
    """``uint8 [H, W]`` (grayscale) or ``[H, W, 3]``, or the exception that made it unreadable
    (a :class:`_Refused` one for an image refused from its header, see :func:`_check_header`)."""
    try:
        with _open(path) as im:
            _check_header(path, im.size, ref)
            im.load()
            if im.mode in WIDE_GRAY_MODES:
                # 16-bit gray: scale 0..65535 onto 0..255 (PIL's convert("L") would clip at 255).
                wide = np.asarray(im).astype(np.float64)
                return np.clip(np.rint(wide / 257.0), 0, 255).astype(np.uint8)
            target = "L" if im.mode in GRAY_MODES else "RGB"
            if im.mode != target:
                im = im.convert(target)
            return np.asarray(im, dtype=np.uint8)
    except Exception as e:  # PIL raises many types for bad files (OSError, SyntaxError, ...)
        return e


def _decode_many(paths: list[Path], workers: int,
                 ref: tuple[Path, tuple[int, int]] | None = None) -> list[np.ndarray | Exception]:
    if len(paths) <= _CHUNK or workers <= 1:
        return [_decode(p, ref) for p in paths]
    chunks = [paths[i:i + _CHUNK] for i in range(0, len(paths), _CHUNK)]
    # PIL releases the GIL inside its C decoders: large images gain most, tiny JPEGs little.
    with ThreadPoolExecutor(max_workers=workers) as pool:
        out: list[np.ndarray | Exception] = []
        for part in pool.map(lambda ch: [_decode(p, ref) for p in ch], chunks):
            out.extend(part)
    return out


def _candidates(files: list[list[Path]], keep: torch.Tensor | None,
                lt_seed: int) -> tuple[list[list[Path]], list[int]]:
    """Candidate files per class (the chosen ones first, then the rest in seeded order as
    spares) and how many of each class are wanted."""
    gen = torch.Generator().manual_seed(lt_seed)
    offsets = np.cumsum([0] + [len(f) for f in files]).tolist()
    candidates: list[list[Path]] = []
    want: list[int] = []
    chosen = None if keep is None else set(keep.tolist())
    for c, f in enumerate(files):
        if chosen is None:
            candidates.append(f)
            want.append(len(f))
            continue
        picked = [i for i in range(len(f)) if offsets[c] + i in chosen]
        rest = [i for i in range(len(f)) if offsets[c] + i not in chosen]
        rest = [rest[j] for j in torch.randperm(len(rest), generator=gen).tolist()]
        candidates.append([f[i] for i in picked + rest])
        want.append(len(picked))
    return candidates, want


def _decode_wanted(candidates: list[list[Path]], want: list[int], workers: int, strict: bool
                   ) -> tuple[list[list[tuple[Path, np.ndarray]]], list[tuple[Path, Exception]]]:
    """Decode ``want[c]`` images per class, replacing an unreadable pick by the next spare.

    Returns the decoded ``(path, array)`` per class and the skipped ``(path, error)``.
    """
    ref = reference_size([p for c in candidates for p in c])  # headers only: nothing decoded yet
    got: list[list[tuple[Path, np.ndarray]]] = [[] for _ in candidates]
    tried = [0] * len(candidates)
    skipped: list[tuple[Path, Exception]] = []
    while True:
        batch: list[tuple[int, Path]] = []
        for c in range(len(candidates)):
            n = min(want[c] - len(got[c]), len(candidates[c]) - tried[c])
            batch += [(c, p) for p in candidates[c][tried[c]:tried[c] + n]]
            tried[c] += max(n, 0)
        if not batch:
            break
        for (c, p), res in zip(batch, _decode_many([p for _, p in batch], workers, ref)):
            if isinstance(res, _Refused):
                raise res
            if isinstance(res, Exception):
                if strict:
                    raise CbdmError(f"dataset folder: cannot read image {p}: {type(res).__name__}: {res}")
                skipped.append((p, res))
            else:
                got[c].append((p, res))
    return got, skipped


def _stack_same_size(got: list[list[tuple[Path, np.ndarray]]]) -> tuple[np.ndarray, list[int]]:
    """uint8 ``[N, C, H, W]`` and the labels; every image must share one square size."""
    # No silent resizing: name the first offender.
    ref_path, ref = got[0][0]
    ref_hw = ref.shape[:2]
    if ref_hw[0] != ref_hw[1]:
        raise CbdmError(f"dataset folder: image {ref_path} is {ref_hw[1]}x{ref_hw[0]}; the models need square "
                        "images (crop or pad them first)")
    arrays: list[np.ndarray] = []
    out_labels: list[int] = []
    for c, g in enumerate(got):
        for p, a in g:
            if a.shape[:2] != ref_hw:
                raise CbdmError(
                    f"dataset folder: image {p} is {a.shape[1]}x{a.shape[0]} but {ref_path} is "
                    f"{ref_hw[1]}x{ref_hw[0]}; all images must have the same size"
                )
            arrays.append(a)
            out_labels.append(c)
    if all(a.ndim == 2 for a in arrays):
        images = np.stack(arrays)[:, None]
    else:
        images = np.stack([np.repeat(a[..., None], 3, axis=2) if a.ndim == 2 else a for a in arrays])
        images = images.transpose(0, 3, 1, 2)
    return images, out_labels


def load_folder(options: DatasetOptions | None = None, *, workers: int | None = None) -> LabeledImages:
    """Decode a class-folder dataset into uint8 ``[N, C, H, W]`` (C = 1 if every image is grayscale).

    ``max_per_class`` and the long tail pick files (seeded by ``lt_seed``) before decoding;
    an unreadable pick is replaced by another file of its class when one is left. Unreadable
    files are skipped and counted in ``info['skipped']`` unless ``strict``.
    """
    options = options or DatasetOptions()
    root = require_root(options, "folder", WHAT)
    base = resolve_split_dir(root, options.split)
    names, files = list_class_files(base, class_names(options))
    labels = torch.cat([torch.full((len(f),), c, dtype=torch.long) for c, f in enumerate(files)])
    keep, sel_info = select_indices(labels, len(names), options, 1.0)
    # Tiny JPEGs decode mostly under the GIL, so more threads than cores only add contention.
    workers = workers or min(8, os.cpu_count() or 1)
    candidates, want = _candidates(files, keep, options.lt_seed)
    got, skipped = _decode_wanted(candidates, want, workers, options.strict)
    if skipped:
        log.warning("dataset folder: skipped %d unreadable image(s), e.g. %s (%s)",
                    len(skipped), skipped[0][0], skipped[0][1])
    for c, g in enumerate(got):
        if not g:
            raise CbdmError(f"dataset folder: class folder {base / names[c]} has no readable image")
    images, out_labels = _stack_same_size(got)
    info = {
        "split": options.split,
        "source": str(base),
        "skipped": len(skipped),
        "class_order": options.class_order,
        **sel_info,
    }
    ds = LabeledImages(
        apply_resize(torch.from_numpy(np.ascontiguousarray(images)), options, info),
        torch.tensor(out_labels, dtype=torch.long),
        names,
        "folder",
        info,
    )
    return check_labeled(ds)
