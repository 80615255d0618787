"""Where a run's checkpoint is: a run folder resolves to its latest checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Union

from .checkpoint import list_checkpoints
from .errors import CheckpointError


def resolve_checkpoint(path: Union[str, Path]) -> Path:
    """A run folder resolves to its latest checkpoint; a file is taken as is."""
    path = Path(path)
    if path.is_dir():
        found = list_checkpoints(path / "checkpoints") or list_checkpoints(path)
        if not found:
            raise CheckpointError(f"no checkpoint found in {path}")
        return found[-1][1]
    if not path.exists():
        raise CheckpointError(f"no such run folder or checkpoint: {path}")
    return path
