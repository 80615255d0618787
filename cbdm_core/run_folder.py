"""Where a run's checkpoint is: a run folder resolves to its latest checkpoint; what in a run
folder came from its model (removed with the run by ``cbdm train --overwrite``)."""

from __future__ import annotations

import json
import shutil
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


def _sampled_from(manifest: Path, ckpts: Path) -> bool:
    """Whether the sample manifest ``manifest`` names a checkpoint in the folder ``ckpts``."""
    try:
        source = json.loads(manifest.read_text())["settings"]["checkpoint"]
    except (OSError, ValueError, KeyError, TypeError):
        return False  # not a sample folder cbdm wrote: not ours to remove
    return isinstance(source, str) and Path(source).parent == ckpts


def outputs_of_run(run_dir: Path) -> list[Path]:
    """What the run in ``run_dir`` produced besides its checkpoints and logs: the preview grids
    (``samples/grid-*.png``), the ``samples-*`` folders `cbdm sample` made from its checkpoints
    (with any `cbdm eval` report inside) and the ``sweep-*`` folders of `cbdm sweep` whose
    sample sets came from them. Folders of other runs are not listed."""
    run_dir = Path(run_dir)
    out = sorted((run_dir / "samples").glob("grid-*.png"))
    ckpts = (run_dir / "checkpoints").resolve()
    for folder in sorted(run_dir.glob("samples-*")):
        if _sampled_from(folder / "manifest.json", ckpts):
            out.append(folder)
    for folder in sorted(run_dir.glob("sweep-*")):
        if any(_sampled_from(m, ckpts) for m in folder.glob("*/manifest.json")):
            out.append(folder)
    return out


def remove_outputs_of_run(run_dir: Path) -> list[Path]:
    """Remove :func:`outputs_of_run` (a retrained model must not be served the old samples)."""
    found = outputs_of_run(run_dir)
    for path in found:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    return found
