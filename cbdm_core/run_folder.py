"""A run folder: the only module that knows its layout (config, metrics log, checkpoints,
preview grids, logger folders, lock), who may write it (the lock), where a run resumes from
and how its metrics log is kept. Every other module asks a :class:`RunFolder` for its paths.

Layout (unchanged since the first release, so old runs still open)::

    <run>/config.yaml                 the resolved configuration (written once training starts)
    <run>/metrics.jsonl               one JSON record per logging window or evaluation
    <run>/checkpoints/ckpt-<step:08d>.safetensors
    <run>/samples/grid-<step:08d>.png preview grids
    <run>/tensorboard/, <run>/wandb/  --log tensorboard / wandb
    <run>/eval-classifier.safetensors the training-time evaluation's classifier, when trained here
    <run>/.cbdm.lock                  held while a process trains the run
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

from . import locks
from .atomic import atomic_write_text, remove_stale_temps
from .checkpoint import Checkpoint, checkpoint_name, list_checkpoints, load_checkpoint, read_metadata
from .config import TrainConfig, dump_config_yaml, load_config_file, parse_train_config
from .errors import CbdmError, CheckpointError
from .run_files import append_line, newest_good_checkpoint, truncate_metrics

log = logging.getLogger("cbdm.train")

RUN_CONFIG = "config.yaml"  # written by `cbdm train` (and import-checkpoint) into every run folder

# Fields that may change when resuming a run.
RESUMABLE_CHANGES = {("optim", "steps"), ("log_every",), ("sample_every",), ("ckpt_every",), ("keep_last",),
                     ("ckpt_every_minutes",), ("log",), ("device",), ("preview",), ("on_nonfinite",), ("perf",),
                     ("evaluate",)}


@dataclass
class ResumePoint:
    """Where a training run starts: the checkpoint to continue (``None``: step 0) and the
    training seconds of the run before this process (carried on in ``elapsed``).
    ``replaces``: the folder holds a previous run that the new one replaces; the trainer
    removes it (:meth:`RunFolder.clear`) only once the new run's data, network and methods
    are built, so a new run refused for its config leaves the previous one whole."""

    checkpoint: Optional[Checkpoint] = None
    elapsed: float = 0.0
    replaces: bool = False


class RunFolder:
    """The folder ``path`` of one training run: its paths, its lock, its resume point, its metrics log."""

    CONFIG = RUN_CONFIG
    METRICS = "metrics.jsonl"
    CHECKPOINTS = "checkpoints"
    SAMPLES = "samples"
    TENSORBOARD = "tensorboard"
    WANDB = "wandb"
    CLASSIFIER = "eval-classifier.safetensors"  # trained here when evaluate.classifier names no file

    def __init__(self, path: Union[str, Path]):
        self.path = Path(path)
        self.locked = False  # this object holds the folder's lock
        self._created = False  # claim() made the folder (a refused start removes it again)
        self._config_written = False  # the run started: release() keeps the folder

    @classmethod
    def of(cls, path: Union[str, Path]) -> "RunFolder":
        """The run folder of a run folder or of a checkpoint file (``<run>/checkpoints/ckpt-*``)."""
        path = Path(path)
        if path.is_dir():
            return cls(path)
        parent = path.parent
        return cls(parent.parent if parent.name == cls.CHECKPOINTS else parent)

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    # -- paths -----------------------------------------------------------------------
    @property
    def config(self) -> Path:
        return self.path / self.CONFIG

    @property
    def metrics(self) -> Path:
        return self.path / self.METRICS

    @property
    def checkpoints(self) -> Path:
        return self.path / self.CHECKPOINTS

    @property
    def samples(self) -> Path:
        return self.path / self.SAMPLES

    @property
    def tensorboard(self) -> Path:
        return self.path / self.TENSORBOARD

    @property
    def wandb(self) -> Path:
        return self.path / self.WANDB

    @property
    def classifier(self) -> Path:
        return self.path / self.CLASSIFIER

    @property
    def lock_file(self) -> Path:
        return self.path / locks.LOCK_NAME

    def checkpoint(self, step: int) -> Path:
        """The file of the checkpoint of ``step``."""
        return self.checkpoints / checkpoint_name(step)

    def grid(self, step: int) -> Path:
        """The preview grid of ``step``."""
        return self.samples / f"grid-{step:08d}.png"

    def list_checkpoints(self) -> list[tuple[int, Path]]:
        """``(step, path)`` of the saved checkpoints, oldest first."""
        return list_checkpoints(self.checkpoints)

    def holds_run(self) -> bool:
        """Whether a run was started here (its config or a checkpoint is on disk)."""
        return self.config.exists() or bool(self.list_checkpoints())

    # -- the lock --------------------------------------------------------------------
    def claim(self) -> None:
        """Make the folder if needed, check it is writable and lock it for this process
        (one writer per run folder: another holder gives a one-line :class:`CbdmError`)."""
        self._created = not self.path.exists()
        self._config_written = False
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            probe = self.path / ".write-test"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise CbdmError(f"run folder {self.path} is not writable: {exc.strerror or exc}") from None
        locks.acquire(self.path, "run folder")
        self.locked = True
        # Temporary files of a write that was killed midway are never complete files; with the
        # lock held no other process is writing them.
        remove_stale_temps(self.path)
        remove_stale_temps(self.checkpoints)

    def release(self) -> None:
        """Unlock. A start refused before its config was written (folder in use, an existing run
        without --resume/--overwrite, bad data...) leaves no lock file or empty folder behind."""
        if not self.locked:
            return
        refused = not self._config_written
        locks.release(self.path, discard=refused)
        self.locked = False
        if refused and self._created:
            with contextlib.suppress(OSError):
                self.path.rmdir()  # only when empty

    def write_config(self, cfg: TrainConfig) -> None:
        """Write the run's ``config.yaml``: from here on the run exists and stays on release."""
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.config, dump_config_yaml(cfg))
        self._config_written = True

    # -- the resume point ------------------------------------------------------------
    def open(self, cfg: TrainConfig, *, resume: bool = False, overwrite: bool = False,
             restart_unsaved: bool = False) -> ResumePoint:
        """Claim the folder and decide where the run starts: the newest intact checkpoint with
        ``resume``, else step 0 (an existing run is replaced only with ``overwrite``, or with
        ``restart_unsaved`` when it was stopped before its first checkpoint: ``replaces`` says so,
        and nothing is removed yet). Returns with the lock held (:meth:`release` it), or raises
        holding nothing."""
        if resume and overwrite:
            raise CbdmError("--resume continues the run in the folder and --overwrite replaces it: give one of them")
        self.claim()
        try:
            return self._start_point(cfg, resume, overwrite, restart_unsaved)
        except BaseException:
            self.release()
            raise

    def _start_point(self, cfg: TrainConfig, resume: bool, overwrite: bool, restart_unsaved: bool) -> ResumePoint:
        existing = self.list_checkpoints()
        if resume:
            return self._resume(cfg, existing)
        if self.config.exists() or existing:
            if not existing and restart_unsaved:
                # Killed before its first checkpoint: nothing to continue. The lock is ours, so
                # no live process writes here; what the dead one left is only logs.
                log.warning("%s holds a run stopped before its first checkpoint; starting it over from step 0",
                            self.path)
                return ResumePoint(replaces=True)
            if not overwrite:
                raise CbdmError(f"{self.path} already holds a run; use --resume to continue it or --overwrite")
            return ResumePoint(replaces=True)
        return ResumePoint()

    def _resume(self, cfg: TrainConfig, existing: list[tuple[int, Path]]) -> ResumePoint:
        """The resume point of ``--resume``: the newest intact checkpoint, its config checked
        against ``cfg``; the metrics log cut back to its step."""
        raw = load_config_file(self.config) if self.config.exists() else {}
        # An emptied config.yaml is no configuration: the checkpoint's (below) is the run's.
        saved = parse_train_config(raw, str(self.config)) if raw else None
        ckpt = newest_good_checkpoint(self.checkpoints, existing)
        if ckpt is None:
            # Killed before its first checkpoint: nothing to continue, so start over at step 0.
            log.warning("--resume: no checkpoint in %s yet; starting the run from step 0", self.checkpoints)
            return ResumePoint(None, self.truncate_metrics(0) or 0.0)
        if ckpt.step > cfg.optim.steps:
            # Training to fewer steps would only rewrite its config and last checkpoint: nothing to continue.
            raise CbdmError(f"--resume: the run in {self.path} is at step {ckpt.step}, past --steps "
                            f"{cfg.optim.steps}; give --steps {ckpt.step} or more")
        saved = saved or parse_train_config(ckpt.config, "checkpoint config")
        diffs = [d for d in _diff_configs(saved.model_dump(mode="json"), cfg.model_dump(mode="json"))
                 if not any(d[:len(p)] == p for p in RESUMABLE_CHANGES)]
        if diffs:
            names = ", ".join(".".join(map(str, d)) for d in diffs[:6])
            raise CbdmError(f"--resume: the options differ from the run in {self.path} in: {names}")
        return ResumePoint(ckpt, self.truncate_metrics(ckpt.step) or 0.0)

    def differences_from(self, cfg: TrainConfig) -> list[str]:
        """The dotted keys in which the run in this folder (its ``config.yaml``, else its newest
        checkpoint's) differs from ``cfg``, besides what a resume may change (steps, logging);
        ``[]`` when the folder holds no run."""
        raw = load_config_file(self.config) if self.config.exists() else {}
        if not raw:
            found = self.list_checkpoints()
            if not found:
                return []
            try:  # the config alone, without the tensors
                raw = json.loads(read_metadata(found[-1][1])["config"])
            except (CbdmError, KeyError, ValueError):
                return []  # an unreadable checkpoint: the trainer's resume sets it aside
        saved = parse_train_config(raw, str(self.config))
        diffs = _diff_configs(saved.model_dump(mode="json"), cfg.model_dump(mode="json"))
        return [".".join(map(str, d)) for d in diffs if not any(d[:len(p)] == p for p in RESUMABLE_CHANGES)]

    def latest_checkpoint(self) -> Optional[Checkpoint]:
        """The newest checkpoint, loaded with its optimizer state (the other ranks of a resumed
        distributed run: rank 0 has already checked and repaired the folder)."""
        found = self.list_checkpoints()
        return load_checkpoint(found[-1][1], with_optim=True) if found else None

    def clear(self, keep_classifier: Optional[Union[str, Path]] = None) -> None:
        """Remove the previous run's checkpoints, logs, config and outputs (``--overwrite``, a restart)."""
        shutil.rmtree(self.checkpoints, ignore_errors=True)
        shutil.rmtree(self.tensorboard, ignore_errors=True)  # its events would mix with the new run's
        shutil.rmtree(self.wandb, ignore_errors=True)  # a new run gets a new W&B run id
        self.metrics.unlink(missing_ok=True)
        self.config.unlink(missing_ok=True)
        gone = [p.name for p in remove_outputs_of_run(self.path) if p.parent == self.path]  # not grids
        if gone:  # the old model's samples and sweeps: the new one must not be served them
            log.warning("removed the previous run's sample and sweep folders: %s", ", ".join(gone))
        # The old run's evaluation classifier may come from other data; keep it only when named.
        if keep_classifier is None or Path(keep_classifier).expanduser().resolve() != self.classifier.resolve():
            self.classifier.unlink(missing_ok=True)

    # -- the metrics log -------------------------------------------------------------
    def append_metrics(self, record: dict[str, Any]) -> None:
        """Append one record to ``metrics.jsonl`` (a whole line or nothing)."""
        append_line(self.metrics, json.dumps(record))

    def truncate_metrics(self, step: int) -> Optional[float]:
        """Drop the metrics lines after ``step``; the training seconds of the last line kept
        (see :func:`~cbdm_core.run_files.truncate_metrics`)."""
        return truncate_metrics(self.metrics, step)


def _diff_configs(a: dict, b: dict, prefix: tuple = ()) -> list[tuple]:
    out = []
    for key in sorted(set(a) | set(b)):
        path = prefix + (key,)
        va, vb = a.get(key), b.get(key)
        if isinstance(va, dict) and isinstance(vb, dict):
            out.extend(_diff_configs(va, vb, path))
        elif va != vb:
            out.append(path)
    return out


def resolve_checkpoint(path: Union[str, Path]) -> Path:
    """A run folder resolves to its latest checkpoint; a file is taken as is."""
    path = Path(path)
    if path.is_dir():
        found = RunFolder(path).list_checkpoints() or list_checkpoints(path)
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
    folder = RunFolder(run_dir)
    out = sorted(folder.samples.glob("grid-*.png"))
    ckpts = folder.checkpoints.resolve()
    for sub in sorted(folder.path.glob("samples-*")):
        if _sampled_from(sub / "manifest.json", ckpts):
            out.append(sub)
    for sub in sorted(folder.path.glob("sweep-*")):
        if any(_sampled_from(m, ckpts) for m in sub.glob("*/manifest.json")):
            out.append(sub)
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
