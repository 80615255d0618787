"""``cbdm compare pack STUDY --out DIR``: a finished study shard's small outputs, ready to commit
or ship to the machine that merges (``cbdm compare merge``).

A shard folder holds checkpoints and sample images (hundreds of MB); the merge reads none of
them. The pack keeps what the merge and a reader need: the protocol, ``compare.json``/``.md``,
``heldout-real.json``, ``study-time.json``, the feature classifier file, the plots, every run's ``metrics.jsonl`` and
``config.yaml``, and each report/curve/selection sample folder's records, metrics, manifest,
timing and grid. Merging packs gives the same report as merging the shards themselves."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Callable, Iterator

from ..atomic import atomic_path, ensure_dir
from ..errors import CbdmError
from .compare_folder import PROTOCOL_JSON
from .heldout import HELDOUT_JSON
from .merge import SAMPLE_FILES, STUDY_SAMPLE_PREFIXES
from .study_time import STUDY_TIME_JSON

STUDY_FILES = (PROTOCOL_JSON, "compare.json", "compare.md", HELDOUT_JSON, STUDY_TIME_JSON)
RUN_FILES = ("metrics.jsonl", "config.yaml")
GRID = "grid.png"


def _finished(study: Path) -> dict:
    path = study / "compare.json"
    try:
        return json.loads(path.read_text())
    except OSError:
        raise CbdmError(f"{study} is no finished study (no compare.json): run `cbdm compare` to the end "
                        "first") from None
    except ValueError:
        raise CbdmError(f"{path} is not readable JSON") from None


def _files(study: Path, classifier_name: str | None) -> Iterator[Path]:
    """Every file of ``study`` the pack keeps, relative to it."""
    for name in STUDY_FILES + ((classifier_name,) if classifier_name else ()):
        if (study / name).is_file():
            yield Path(name)
    if (study / "plots").is_dir():
        yield from (p.relative_to(study) for p in sorted((study / "plots").rglob("*")) if p.is_file())
    for run in sorted((study / "runs").glob("*/seed-*")):
        yield from (p.relative_to(study) for name in RUN_FILES if (p := run / name).is_file())
        for folder in sorted(p for p in run.iterdir() if p.is_dir()
                             and p.name.split("-")[0] in STUDY_SAMPLE_PREFIXES):
            yield from (p.relative_to(study) for name in SAMPLE_FILES + (GRID,) if (p := folder / name).is_file())


def _copy(src: Path, dst: Path) -> None:
    ensure_dir(dst.parent, "pack folder")
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)


def pack_study(study: Path, out_dir: Path, status: Callable[[str], None] = lambda _m: None) -> list[Path]:
    """Copy ``study``'s small outputs into ``out_dir`` (new or empty); returns the relative paths."""
    study, out_dir = Path(study), Path(out_dir)
    doc = _finished(study)
    if out_dir.resolve() == study.resolve():
        raise CbdmError("--out must be another folder than the study itself")
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise CbdmError(f"{out_dir} exists and is not empty; give a new folder")
    classifier = (doc.get("classifier") or {}).get("file")
    name = Path(classifier).name if classifier else None
    if name and not (study / name).is_file():
        raise CbdmError(f"{study} lacks its feature classifier {name}: copy it into the study folder first "
                        "(the merge checks it)")
    files = list(_files(study, name))
    status(f"packing {len(files)} files of {study}")
    for rel in files:
        _copy(study / rel, out_dir / rel)
    return files
