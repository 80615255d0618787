"""Where a run's checkpoint is: a run folder resolves to its latest checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Union

from .checkpoint import list_checkpoints
from .errors import CheckpointError

RUN_CONFIG = "config.yaml"  # written by `cbdm train` (and import-checkpoint) into every run folder


def resolve_checkpoint(path: Union[str, Path]) -> Path:
    """A run folder resolves to its latest checkpoint; a file is taken as is."""
    path = Path(path)
    if path.is_dir():
        found = list_checkpoints(path / "checkpoints") or list_checkpoints(path)
        if not found:
            if not (path / RUN_CONFIG).is_file():
                # e.g. `cbdm sample runs` for `cbdm sample runs/qs`: the folder above the run
                inside = sorted(str(p.parent) for p in path.glob(f"*/{RUN_CONFIG}"))
                more = ", ..." if len(inside) > 3 else ""
                hint = f" (runs inside it: {', '.join(inside[:3])}{more})" if inside else ""
                raise CheckpointError(f"{path} is not a run folder (no {RUN_CONFIG}); pass the folder that "
                                      f"`cbdm train --out` wrote{hint}")
            raise CheckpointError(f"no checkpoint found in {path}: the run has not saved one yet")
        return found[-1][1]
    if not path.exists():
        raise CheckpointError(f"no such run folder or checkpoint: {path}")
    return path
