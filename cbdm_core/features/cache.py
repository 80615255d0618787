"""On-disk cache of feature sets (reference statistics of real data), as safetensors."""

from __future__ import annotations

import hashlib
import logging
import os
import re
import warnings
from pathlib import Path
from typing import Callable

import torch

from .. import locks
from ..atomic import remove_stale_temps
from ..errors import CbdmError
from ..tensor_io import IntegrityError, load_tensors, save_tensors
from .base import FeatureSet

log = logging.getLogger("cbdm.features")
ENV_CACHE_WAIT = "CBDM_CACHE_WAIT"
DEFAULT_CACHE_WAIT_S = 600.0


def reference_key(dataset: str, split: str, extractor_key: str) -> str:
    """Cache key of a dataset split's features under one extractor (``FeatureExtractor.cache_key``)."""
    return f"{dataset}-{split}-{extractor_key}"


def cache_path(cache_dir: str | os.PathLike, key: str) -> Path:
    """File for ``key``: a readable sanitised name plus a short hash of the exact key,
    so keys that sanitise alike never collide."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", key)[:120]
    digest = hashlib.sha256(key.encode()).hexdigest()[:8]
    return Path(cache_dir) / f"{safe}-{digest}.safetensors"


def save_feature_set(path: str | os.PathLike, fs: FeatureSet, key: str = "") -> None:
    """Write ``fs`` atomically (features, and labels / probs when present)."""
    tensors = {"features": fs.features}
    if fs.labels is not None:
        tensors["labels"] = fs.labels.to(torch.int64)
    if fs.probs is not None:
        tensors["probs"] = fs.probs
    save_tensors(path, tensors, {"format": "cbdm-features-v1", "extractor": fs.extractor, "key": key})


def load_feature_set(path: str | os.PathLike, key: str | None = None) -> FeatureSet:
    """Read a file written by :func:`save_feature_set`; with ``key``, check it matches."""
    try:
        tensors, meta = load_tensors(path)
    except IntegrityError:
        raise
    except CbdmError as e:
        raise CbdmError(f"feature file {path} is not readable ({e})") from None
    if meta.get("format") != "cbdm-features-v1" or "features" not in tensors:
        raise CbdmError(f"{path} is not a cbdm feature file")
    if key is not None and meta.get("key") != key:
        raise CbdmError(f"feature file {path} holds {meta.get('key')!r}, not {key!r}")
    return FeatureSet(tensors["features"], tensors.get("labels"), tensors.get("probs"), meta.get("extractor", ""))


def cached_features(cache_dir: str | os.PathLike, key: str,
                    compute_fn: Callable[[], FeatureSet]) -> FeatureSet:
    """The cached feature set for ``key``, or ``compute_fn()`` saved under it.

    An unreadable or corrupt cache file is recomputed and overwritten (with a warning)
    rather than failing the evaluation. Writing holds the cache folder's lock: while another
    process holds it, wait (one "waiting for the feature cache" line) and then read what it
    wrote; still busy after :func:`cache_wait_seconds`, compute uncached with a warning. A
    cache folder that cannot be written is a warning, and the features are used uncached.
    """
    path = cache_path(cache_dir, key)
    before = _stamp(path)
    fs = _load_cached(path, key)
    if fs is not None:
        return fs
    try:
        locked = locks.acquire_waiting(Path(cache_dir), "feature cache folder", cache_wait_seconds(),
                                       on_wait=lambda pid: log.warning(
                                           "waiting for the feature cache %s (PID %s) ...", cache_dir, pid))
    except CbdmError as e:
        _warn(f"feature cache not written ({e})")
        return compute_fn()
    if not locked:
        _warn(f"feature cache {cache_dir} still busy after {cache_wait_seconds():g} s; "
              "computing the features uncached")
        return compute_fn()
    try:
        # the process we waited for may have written it meanwhile
        fs = _load_cached(path, key) if _stamp(path) not in (None, before) else None
        if fs is not None:
            return fs
        remove_stale_temps(Path(cache_dir))  # left by a killed writer; nobody else writes now
        fs = compute_fn()
        try:
            save_feature_set(path, fs, key)
        except CbdmError as e:
            _warn(f"feature cache not written ({e})")
        return fs
    finally:
        locks.release(Path(cache_dir))


def cache_wait_seconds() -> float:
    """How long to wait for another process writing the cache folder (``CBDM_CACHE_WAIT``
    seconds; default 10 minutes) before computing uncached."""
    raw = os.environ.get(ENV_CACHE_WAIT, "").strip()
    try:
        return max(0.0, float(raw)) if raw else DEFAULT_CACHE_WAIT_S
    except ValueError:
        raise CbdmError(f"{ENV_CACHE_WAIT} must be a number of seconds, got {raw[:200]!r}") from None


def _stamp(path: Path) -> tuple[int, int, int] | None:
    """Identity of the file at ``path`` (inode, size, mtime), or ``None`` when there is none."""
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


def _load_cached(path: Path, key: str) -> FeatureSet | None:
    """The feature set cached at ``path``, or ``None`` (missing, or bad: warned, recomputed)."""
    if not path.is_file():
        return None
    try:
        fs = load_feature_set(path, key)
        log.info("loaded cached features %s from %s", key, path)
        return fs
    except CbdmError as e:
        _warn(f"ignoring bad feature cache file ({e}); recomputing")
        return None


def cache_warning(msg: str) -> None:
    """A cache that could not be read or written: logged and warned, never an error."""
    log.warning(msg)
    warnings.warn(msg, UserWarning, stacklevel=3)


_warn = cache_warning
