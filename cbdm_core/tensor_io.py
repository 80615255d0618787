"""The one safetensors reader/writer: checkpoints, feature caches and classifiers use it.

Writes go through :func:`cbdm_core.atomic.atomic_path` (temporary file in the same
folder, fsync, rename, folder fsync), and every file carries a content hash of its
tensors in the metadata (``cbdm_sha256``), checked on load. Files written before the
hash existed still load, unchecked. ``CBDM_VERIFY=0`` skips the check (huge files).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Mapping, Optional, Union

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .atomic import atomic_path
from .errors import CbdmError

HASH_KEY = "cbdm_sha256"
VERIFY_ENV = "CBDM_VERIFY"
PathLike = Union[str, os.PathLike]


class IntegrityError(CbdmError):
    """A file whose tensors do not match the content hash stored with them."""


def verify_default() -> bool:
    """Whether loads check the content hash (``CBDM_VERIFY=0`` turns it off)."""
    return os.environ.get(VERIFY_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def tensors_digest(tensors: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 over every tensor's name, dtype, shape and bytes, in name order."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(json.dumps([name, str(t.dtype), list(t.shape)]).encode())
        if t.numel():
            # A byte view works for every dtype (bf16 has no numpy equivalent).
            h.update(t.reshape(-1).view(torch.uint8).numpy().data)
    return h.hexdigest()


def _prepare(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CPU, contiguous, and no two tensors sharing storage (safetensors refuses shared storage)."""
    out: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for k, v in tensors.items():
        v = v.detach().cpu().contiguous()
        storage = v.untyped_storage()
        ptr = storage.data_ptr()
        if v.numel() and (ptr in seen or v.storage_offset() or v.numel() * v.element_size() != storage.nbytes()):
            v = v.clone()
        if v.numel():
            seen.add(v.untyped_storage().data_ptr())
        out[k] = v
    return out


def save_tensors(path: PathLike, tensors: Mapping[str, torch.Tensor],
                 metadata: Optional[Mapping[str, str]] = None) -> None:
    """Write ``tensors`` (and string ``metadata``, plus the content hash) atomically to ``path``.

    Any failure (full disk, read-only folder) is a one-line :class:`CbdmError`; the previous
    ``path`` is untouched and no temporary file is left.
    """
    path = Path(path)
    prepared = _prepare(tensors)
    meta = {str(k): str(v) for k, v in (metadata or {}).items()}
    meta[HASH_KEY] = tensors_digest(prepared)
    with atomic_path(path) as tmp:
        try:
            save_file(prepared, str(tmp), metadata=dict(sorted(meta.items())))
        except SafetensorError as exc:  # the Rust writer reports I/O errors as its own type
            raise OSError(str(exc).splitlines()[0] if str(exc) else "write failed") from None
        _sort_metadata(tmp)


def _sort_metadata(path: Path) -> None:
    """Rewrite the header of a just-written file with its metadata in key order.

    The Rust writer emits metadata in hash-map (random) order, so the same tensors and
    metadata gave different file bytes on every save. The sorted header has the same
    length (same keys and values), so it is written in place; the tensor data is untouched.
    """
    with open(path, "rb+") as f:
        size = int.from_bytes(f.read(8), "little")
        raw = f.read(size)
        try:
            header = json.loads(raw)
        except ValueError:
            return  # not expected from the writer; leave the (valid) file as it is
        meta = header.pop("__metadata__", None)
        ordered = ({"__metadata__": dict(sorted(meta.items()))} if meta is not None else {}) | header
        text = json.dumps(ordered, separators=(",", ":"), ensure_ascii=False).encode()
        if len(text) > size:
            return  # a different escaping than the writer's; keep its header
        f.seek(8)
        f.write(text + b" " * (size - len(text)))  # the format pads headers with spaces


def read_tensor_metadata(path: PathLike) -> dict[str, str]:
    """The metadata of a safetensors file, or a one-line :class:`CbdmError` naming it."""
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            return dict(f.metadata() or {})
    except (SafetensorError, OSError, ValueError) as exc:
        raise CbdmError(f"{path} is not a readable safetensors file ({_first_line(exc)})") from None


def load_tensors(path: PathLike, *, verify: Optional[bool] = None) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """``(tensors, metadata)`` of a safetensors file (on the CPU).

    With ``verify`` (default: on unless ``CBDM_VERIFY=0``) the stored content hash is checked;
    a mismatch raises :class:`IntegrityError` naming the file. A file without a hash loads
    unchecked.
    """
    path = Path(path)
    if not path.is_file():
        raise CbdmError(f"file not found: {path}")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CbdmError(f"{path} is not a readable safetensors file ({_first_line(exc)})") from None
    want = meta.get(HASH_KEY)
    if (verify_default() if verify is None else verify) and want is not None and tensors_digest(tensors) != want:
        raise IntegrityError(f"{path} is corrupt: its tensors do not match the content hash stored with them "
                             f"(set {VERIFY_ENV}=0 to load it anyway)")
    return tensors, meta


def load_format_file(path: PathLike, fmt: str, *, kind: str, make_hint: str,
                     foreign: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of a project file whose ``format`` metadata must be ``fmt``.

    A missing, unreadable or foreign file is one :class:`CbdmError` line: ``kind`` names the
    file (``"classifier file"``), ``make_hint`` says how to make one, ``foreign`` what a file
    of another format is not (``"a cbdm classifier file"``). A failed content hash stays an
    ``IntegrityError`` (callers treating caches recompute on it).
    """
    path = Path(path)
    if not path.is_file():
        raise CbdmError(f"{kind} {path} does not exist ({make_hint})")
    try:
        state, metadata = load_tensors(path)
    except IntegrityError:
        raise
    except CbdmError as e:
        raise CbdmError(f"{kind} {e}") from None  # e names the file already
    if metadata.get("format") != fmt:
        raise CbdmError(f"{path} is not {foreign} (format {metadata.get('format')!r}, expected {fmt!r})")
    return state, metadata


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
