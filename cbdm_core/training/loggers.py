"""Loggers beside metrics.jsonl (``--log tensorboard``, ``--log wandb``), behind one small interface.

Each logger gets every metrics record (``write``), every preview grid (``image``) and ``close``.
wandb is imported only when a run asks for it. Its run lives in ``<run>/wandb`` with the id kept
in ``<run>/wandb/run-id``, so a resumed training run continues the same W&B run.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any, Optional

from ..atomic import atomic_write_text
from ..run_folder import RunFolder
from .monitor import BOOKKEEPING, TensorBoardLog, check_loggers


def scalar_name(key: str) -> str:
    """``train/<term>``, ``run/<bookkeeping>`` or ``eval/<metric>``: the names TensorBoard uses too."""
    if key.startswith("eval_"):
        return "eval/" + key[len("eval_"):]
    return ("run/" if key in BOOKKEEPING else "train/") + key


class WandbLog:
    """Scalars of each record, preview grids as images and the run config, to Weights & Biases.

    Offline use: ``WANDB_MODE=offline`` (then ``wandb sync <run>/wandb/wandb/offline-run-*``).
    """

    def __init__(self, folder: Path, name: str, config: dict[str, Any]):
        check_loggers(["wandb"])
        import wandb  # lazy: seconds to import, and only --log wandb needs it

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        id_file = folder / "run-id"
        run_id = id_file.read_text().strip() if id_file.is_file() else secrets.token_hex(4)
        atomic_write_text(id_file, run_id + "\n")
        self._wandb = wandb
        self.run = wandb.init(project="cbdm", name=name, id=run_id, resume="allow",
                              dir=str(folder), config=config)

    def write(self, record: dict[str, Any]) -> None:
        values = {scalar_name(k): float(v) for k, v in record.items()
                  if k not in ("step", "time") and isinstance(v, (int, float)) and not isinstance(v, bool)}
        if values:
            self.run.log(values, step=int(record["step"]))

    def image(self, path: Path, step: int) -> None:
        self.run.log({"preview": self._wandb.Image(str(path), caption=f"step {step}")}, step=int(step))

    def close(self) -> None:
        self.run.finish()


class LoggerGroup:
    """The requested loggers, called together; an empty group does nothing."""

    def __init__(self, loggers: list[Any]):
        self.loggers = loggers

    def write(self, record: dict[str, Any]) -> None:
        for logger in self.loggers:
            logger.write(record)

    def image(self, path: Optional[Path], step: int) -> None:
        for logger in self.loggers:
            if path is not None and hasattr(logger, "image"):
                logger.image(path, step)

    def close(self) -> None:
        for logger in self.loggers:
            logger.close()


def open_loggers(folder: RunFolder, names: list[str], config: dict[str, Any]) -> LoggerGroup:
    """The loggers ``names`` (``tensorboard``, ``wandb``) for the run folder ``folder``."""
    check_loggers(names)
    made: list[Any] = []
    if "tensorboard" in names:
        made.append(TensorBoardLog(folder.tensorboard))
    if "wandb" in names:
        made.append(WandbLog(folder.wandb, folder.path.name, config))
    return LoggerGroup(made)
