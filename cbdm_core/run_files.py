"""Reading and repairing a run's files: the newest intact checkpoint, the metrics log cut
back to a step, a line appended whole or not at all.

These helpers take paths; which paths a run folder holds is :class:`~cbdm_core.run_folder.RunFolder`'s.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Optional

from .atomic import atomic_write_text
from .checkpoint import Checkpoint, load_checkpoint
from .errors import CbdmError

log = logging.getLogger("cbdm.train")


def newest_good_checkpoint(ckpt_dir: Path, existing: list[tuple[int, Path]]) -> Optional[Checkpoint]:
    """The newest checkpoint of ``existing`` that loads and verifies; corrupt newer ones are set
    aside (renamed ``*.corrupt``, never deleted) with a warning."""
    bad: list[tuple[Path, CbdmError]] = []
    for _, path in reversed(existing):
        try:
            ckpt = load_checkpoint(path, with_optim=True)
        except CbdmError as exc:
            bad.append((path, exc))
            continue
        for bad_path, exc in bad:  # only once a good one is found: never leave a run with none
            log.warning("--resume: %s; set aside as %s.corrupt", exc, bad_path.name)
            os.replace(bad_path, bad_path.with_name(bad_path.name + ".corrupt"))
        if bad:
            log.warning("--resume: continuing from the older checkpoint %s (step %d)", path.name, ckpt.step)
        return ckpt
    first_error = bad[0][1] if bad else None
    if first_error is not None:
        raise CbdmError(f"--resume: no checkpoint in {ckpt_dir} is intact ({first_error}); "
                        "use --overwrite to start over")
    return None


def truncate_metrics(path: Path, step: int) -> Optional[float]:
    """Drop the lines of the metrics log ``path`` after ``step``, so a resumed run does not log
    the same steps twice; the training seconds of the last line kept (``None``: no line kept,
    ``0.0``: a kept line without a finite ``elapsed``). Lines that cannot be read (torn, not
    JSON, no integer step) are moved, never deleted, to ``metrics.jsonl.corrupt``; the
    readable lines around them are kept."""
    if not path.exists():
        return None
    try:
        lines = path.read_bytes().decode("utf-8", errors="replace").splitlines(keepends=True)
    except OSError as exc:
        raise CbdmError(f"cannot read {path}: {exc.strerror or exc}") from None
    keep, bad = [], []
    for line in lines:
        record_step = _record_step(line)
        if record_step is None:
            bad.append(line if line.endswith("\n") else line + "\n")
        elif record_step <= step:
            keep.append(line)
    if bad:
        log.warning("%s: %d unreadable line(s) moved to %s.corrupt", path, len(bad), path.name)
        corrupt = path.with_name(path.name + ".corrupt")
        for line in bad:  # appended: earlier resumes' findings are kept too
            append_line(corrupt, line)
    if len(keep) != len(lines):
        atomic_write_text(path, "".join(keep))
    if not keep:
        return None
    elapsed = json.loads(keep[-1]).get("elapsed")  # elapsed time carries on across a resume
    return float(elapsed) if _finite_number(elapsed) else 0.0


def _finite_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _record_step(line: str) -> Optional[int]:
    """The step of a whole metrics line, or ``None`` when the line cannot be read: torn (no
    newline), not a JSON object, or a step that is not a non-negative integer."""
    if not line.endswith("\n"):
        return None
    try:
        record = json.loads(line)
    except ValueError:
        return None
    value = record.get("step") if isinstance(record, dict) else None
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        return None
    return value


def append_line(path: Path, line: str) -> None:
    """Append ``line`` and a newline in one write; on failure cut the file back to its old
    size, so it never holds a partial line, and raise a one-line :class:`CbdmError`."""
    data = (line.rstrip("\n") + "\n").encode()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    except OSError as exc:
        raise CbdmError(f"cannot write {path}: {exc.strerror or exc}") from None
    try:
        size = os.fstat(fd).st_size
        try:
            written = os.write(fd, data)
            if written != len(data):
                raise OSError(28, "No space left on device (short write)")
        except OSError as exc:
            try:
                os.ftruncate(fd, size)
            except OSError:
                pass
            raise CbdmError(f"cannot append to {path}: {exc.strerror or exc}; training stopped, "
                            "the checkpoints already written are kept") from None
    finally:
        os.close(fd)
