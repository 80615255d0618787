"""The step loop of a training run and the events it raises between steps.

Each step reads straight through the data path: batch -> augmentation -> objective(model)
-> optimizer/EMA (one :class:`~cbdm_core.training.step.TrainStep` call). After it, in this
order, whichever is due: the logging window, the training-time evaluation, the checkpoint and
the preview grid, each an event (``training/events.py``) that its subscribers handle.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch

from ..checkpoint import Checkpoint
from ..config import TrainConfig
from ..device import DistContext
from ..errors import CbdmError
from ..images import to_float
from ..run_folder import RunFolder
from .batch_source import BatchSource
from .batches import step_seed
from .events import (CheckpointDue, EvaluationDue, LogDue, LoopEvent, PreviewDue, RunFinished, RunStarted,
                     StepFinished, Subscribers)
from .monitor import logged_terms, memory_gb, restore_window, window_state
from .precision import Precision


@dataclass
class RunParts:
    """What one training run is made of, built once before its first step."""

    data: Any  # the training data (images, labels, class counts, names)
    schedule: Any
    augmentation: Callable
    model: torch.nn.Module
    ema_model: torch.nn.Module
    methods: list
    source: BatchSource
    train_step: Any  # TrainStep: objective, backward, optimizer and EMA update
    lr_at: Callable[[int], float]  # warm-up factor of the learning rate at a step
    precision: Precision
    meta: dict  # run metadata stored in every checkpoint
    step: int  # the first step to train (the checkpoint's when resuming)
    start_ckpt: Optional[Checkpoint]


class TrainLoop:
    """Runs the steps of one run from ``parts.step`` to the configured number of steps and
    raises the events of ``training/events.py`` to ``subscribers``.

    Its state is what the loop carries between steps: the step, the logging window (loss sums,
    steps, the part carried over from before a resume), the skipped steps and the
    non-finite flag, and the wall-time checkpoint clock. ``stop``: set to stop at the next step
    (Ctrl-C, SIGTERM); ``folder``: the run folder, named when a non-finite step stops the run.
    """

    def __init__(self, cfg: TrainConfig, ctx: DistContext, parts: RunParts, subscribers: Subscribers,
                 stop: threading.Event, folder: RunFolder):
        self.cfg, self.ctx, self.parts, self.subscribers = cfg, ctx, parts, subscribers
        self.stop, self.folder, self.device = stop, folder, ctx.device
        self.step = parts.step
        self.bad = torch.zeros((), dtype=torch.bool, device=self.device)  # any non-finite step since start
        self.sums: dict[str, torch.Tensor] = {}
        self.carried = 0  # steps of the current window before this process (resumed mid-window)
        if parts.start_ckpt is not None:
            self.sums, self.carried = restore_window(parts.start_ckpt.meta.log_window, self.device)
        self.skipped = 0
        self.window_start, self.window_steps = time.perf_counter(), 0
        self.ckpt_clock = time.monotonic()
        self.ckpt_seconds = self.cfg.ckpt_every_minutes * 60
        self.skip_mode = self.cfg.on_nonfinite == "skip"

    def emit(self, event: LoopEvent) -> None:
        self.subscribers.emit(event)

    def run(self) -> bool:
        """Train to the last step (or a stop request), save, preview; whether it was interrupted."""
        ctx, steps = self.ctx, self.cfg.optim.steps
        self.emit(RunStarted(self.step))
        self.parts.model.train()
        # Every rank must agree to stop, or one would wait for the others' gradients forever.
        while self.step < steps:
            # The clock is rank 0's; every rank must agree to stop or to save together.
            due = ctx.is_main and self.ckpt_seconds > 0 and time.monotonic() - self.ckpt_clock >= self.ckpt_seconds
            stop, due = ctx.any_flags(self.stop.is_set(), due)
            if stop:
                break
            if due and self.step > 0:
                self._checkpoint()
            self._train_step()
            self._scheduled_work()
        interrupted = self.stop.is_set() or self.step < steps
        self.save(self.step, final=True)
        if not interrupted:
            self.emit(PreviewDue(self.step, final=True))
        self.emit(RunFinished(self.step, interrupted))
        return interrupted

    def _train_step(self) -> None:
        """One optimisation step on the batch of ``self.step`` (seeded by the step: resumable)."""
        p, cfg, step = self.parts, self.cfg, self.step
        torch.manual_seed(step_seed(cfg.seed, step))
        images, labels = p.source.batch(step)
        x0 = to_float(images)
        g = torch.Generator(device=self.device).manual_seed(step_seed(cfg.seed, step, stream=3))
        x0, cond = p.augmentation(x0, g)
        if p.precision.channels_last:
            x0 = x0.contiguous(memory_format=torch.channels_last)
        out = p.train_step(step, x0, labels, cond, lr=cfg.optim.lr * p.lr_at(step), skip_nonfinite=self.skip_mode)
        self.step += 1
        if out.applied:
            self.bad = self.bad | ~out.finite
            self.window_steps += 1
            for k, v in logged_terms(out.terms).items():
                self.sums[k] = self.sums.get(k, 0.0) + v
            if out.grad_norm is not None:
                self.sums["grad_norm"] = self.sums.get("grad_norm", 0.0) + out.grad_norm
        else:
            self.skipped += 1  # still logs and checkpoints on schedule
        self.emit(StepFinished(self.step, out.terms, out.applied))

    def _scheduled_work(self) -> None:
        """After a step: raise the logging window, evaluation, checkpoint and preview when each is due."""
        cfg, step, steps = self.cfg, self.step, self.cfg.optim.steps
        if step % cfg.log_every == 0 or step == steps:
            self._log_window()
        # Before the checkpoint of the same step: one killed while evaluating resumes
        # from the step before and evaluates again.
        every = cfg.evaluate.every
        if every > 0 and step % every == 0:
            self.window_start += self._evaluate(step)  # images/s counts training time only
        if cfg.ckpt_every and step % cfg.ckpt_every == 0 and step < steps:
            self._checkpoint()
        if cfg.sample_every and step % cfg.sample_every == 0 and step < steps:
            self.emit(PreviewDue(step))
            self.parts.model.train()

    def _log_window(self) -> None:
        """Raise the window's terms (averaged over ranks) on rank 0 and start a new window."""
        self.check_finite()
        sums = dict(zip(self.sums, self.ctx.mean(list(self.sums.values()))))
        if self.ctx.is_main:
            o = self.cfg.optim
            images_per_sec = self.window_steps * o.batch_size / max(time.perf_counter() - self.window_start, 1e-9)
            self.emit(LogDue(self.step, sums, self.window_steps + self.carried,
                             self.parts.train_step.optimizer.param_groups[0]["lr"], images_per_sec,
                             self.skipped, memory_gb(self.device)))
        self.sums, self.window_start, self.window_steps, self.carried = {}, time.perf_counter(), 0, 0

    def check_finite(self) -> None:
        """Stop (without saving) when any rank saw a non-finite loss or gradient."""
        if bool(self.ctx.any_device(self.bad)):
            kept = self.folder.list_checkpoints()  # claim a kept checkpoint only when there is one
            where = (f"the last good checkpoint, step {kept[-1][0]}, is kept in {self.folder.checkpoints}" if kept
                     else "no checkpoint was written yet")
            raise CbdmError(f"non-finite loss or gradient before step {self.step}; stopped without saving "
                            f"({where}; --set on_nonfinite=skip skips such steps instead)")

    def _checkpoint(self) -> None:
        """A scheduled checkpoint; the wall-time clock restarts from it."""
        self.save(self.step)
        self.ckpt_clock = time.monotonic()

    def save(self, at_step: int, final: bool = False) -> None:
        """Raise the checkpoint of ``at_step`` (after checking every rank's steps were finite)."""
        self.check_finite()
        # The logging window not yet logged (averaged over ranks like a log record):
        # a resume from this checkpoint logs what an uninterrupted run would.
        window = window_state(dict(zip(self.sums, self.ctx.mean(list(self.sums.values())))),
                              self.window_steps + self.carried)
        self.emit(CheckpointDue(at_step, window, final))

    def _evaluate(self, at_step: int) -> float:
        """Raise the evaluation of ``at_step``; the seconds it took (not training time)."""
        started = time.perf_counter()
        self.emit(EvaluationDue(at_step))
        self.parts.model.train()
        return time.perf_counter() - started
