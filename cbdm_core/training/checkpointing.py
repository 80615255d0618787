"""Writing a run's checkpoints: refuse non-finite weights, make room on a short disk, prune to ``keep_last``."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import torch

from ..checkpoint import Checkpoint, list_checkpoints, nonfinite_tensors, save_checkpoint
from ..errors import CbdmError
from ..run_folder import RunFolder

log = logging.getLogger("cbdm.train")


class CheckpointKeeper:
    """Saves checkpoints into the run folder's checkpoints and keeps the newest ``keep_last``.

    Args:
        folder: the run folder (its free space is asked when ``checkpoints`` does not exist yet).
        keep_last: how many checkpoints stay on disk.
        config: the run's configuration, as stored in every checkpoint.
        meta: the run metadata stored in every checkpoint (the logging window is added per save).
    """

    def __init__(self, folder: RunFolder, keep_last: int, config: dict, meta: dict):
        self.folder = folder
        self.ckpt_dir = folder.checkpoints
        self.keep_last = keep_last
        self.config = config
        self.meta = meta

    def save(self, step: int, model: torch.nn.Module, ema_model: torch.nn.Module,
             optimizer: torch.optim.Optimizer, window: dict[str, Any]) -> Path:
        """Write the checkpoint of ``step`` (never one with NaN/inf weights), then prune."""
        weights, averaged = model.state_dict(), ema_model.state_dict()
        bad_names = nonfinite_tensors(weights) + [f"ema/{k}" for k in nonfinite_tensors(averaged)]
        if bad_names:
            raise CbdmError(f"the weights hold NaN or inf at step {step} ({bad_names[0]}"
                            f"{' ...' if len(bad_names) > 1 else ''}); not saved (the last good "
                            f"checkpoint is kept in {self.ckpt_dir}); lower --lr or check the data")
        path = self.folder.checkpoint(step)
        self.make_room(self.keep_last, sum(t.numel() * t.element_size() for t in
                                           list(weights.values()) + list(averaged.values())) * 2)
        save_checkpoint(path, Checkpoint(step=step, config=self.config, model=weights, ema=averaged,
                                         optim=optimizer.state_dict(), meta={**self.meta, "log_window": window}))
        for _, old in list_checkpoints(self.ckpt_dir)[:-self.keep_last]:
            old.unlink(missing_ok=True)
        return path

    def make_room(self, keep_last: int, estimate: int) -> None:
        """When the disk is short of ``estimate`` bytes, delete now the checkpoints that keep_last
        would prune after this write anyway. With ``--keep-last 1`` that is the previous
        checkpoint: the user asked to keep only one."""
        existing = list_checkpoints(self.ckpt_dir)
        if existing:  # the previous checkpoint's size is the best guess for the next one
            estimate = existing[-1][1].stat().st_size
        prunable = existing[:max(len(existing) - (keep_last - 1), 0)]
        if not prunable:
            return
        try:
            free = shutil.disk_usage(self.ckpt_dir if self.ckpt_dir.is_dir() else self.folder.path).free
        except OSError:
            return
        if free >= estimate + (1 << 20):
            return
        for _, old in prunable:
            log.warning("disk nearly full (%d bytes free): removing %s before writing the next checkpoint "
                        "(keep_last %d)", free, old.name, keep_last)
            old.unlink(missing_ok=True)
