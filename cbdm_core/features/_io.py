"""Small file helpers: content hashes of files; safetensors writes go through
:mod:`cbdm_core.tensor_io`."""

from __future__ import annotations

import hashlib
import os

import torch

from ..tensor_io import save_tensors


def atomic_save_safetensors(tensors: dict[str, torch.Tensor], path: str | os.PathLike,
                            metadata: dict[str, str] | None = None) -> None:
    """Kept for callers of the old name: :func:`cbdm_core.tensor_io.save_tensors`."""
    save_tensors(path, tensors, metadata)


def file_sha256(path: str | os.PathLike, chunk_bytes: int = 1 << 22) -> str:
    """Hex SHA-256 of a file's content, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk_bytes):
            h.update(block)
    return h.hexdigest()
