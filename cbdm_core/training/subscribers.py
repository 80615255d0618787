"""The built-in subscribers of the loop's events: the metrics log, the training-time
evaluation, the checkpoint keeper and the preview grid (see ``training/events.py``).

Each handles its own kinds of event and ignores the others; what they write, and in which
order, is what the loop wrote when it called them directly.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from ..device import DistContext
from ..run_folder import RunFolder
from .checkpointing import CheckpointKeeper
from .evaluation import TrainingEvaluator
from .events import CheckpointDue, EvaluationDue, LogDue, LoopEvent, PreviewDue, RunStarted, StepFinished
from .loggers import LoggerGroup


class StepCallback:
    """Calls ``on_step(step)`` after every step (the progress display; no device sync)."""

    def __init__(self, on_step: Callable[[int], None]):
        self.on_step = on_step

    def __call__(self, event: LoopEvent) -> None:
        if isinstance(event, StepFinished):
            self.on_step(event.step)


class MetricsLogger:
    """Each logging window and evaluation as one record: in ``metrics.jsonl``, the loggers
    (TensorBoard, W&B) and ``on_log``. Records carry ``time`` (wall clock, Unix seconds) and
    ``elapsed`` (training seconds since step 0, across resumes: ``elapsed_before`` is the
    resumed run's)."""

    def __init__(self, folder: RunFolder, loggers: LoggerGroup, on_log: Optional[Callable[[dict], None]] = None,
                 elapsed_before: float = 0.0):
        self.folder, self.loggers, self.on_log = folder, loggers, on_log
        self.elapsed_before = elapsed_before
        self.started = time.perf_counter()

    def __call__(self, event: LoopEvent) -> None:
        if isinstance(event, RunStarted):
            self.started = time.perf_counter()  # the training clock starts with the first step
        elif isinstance(event, LogDue):
            self._write(self._window_record(event))

    def _stamp(self, step: int) -> dict[str, Any]:
        return {"step": step, "time": round(time.time(), 3),
                "elapsed": round(self.elapsed_before + time.perf_counter() - self.started, 3)}

    def _window_record(self, event: LogDue) -> dict[str, Any]:
        record = {**self._stamp(event.step), **{k: float(v) / max(event.steps, 1) for k, v in event.sums.items()},
                  "lr": event.lr, "images_per_sec": event.images_per_sec, "memory_gb": round(event.memory_gb, 3)}
        if event.skipped:
            record["skipped_steps"] = event.skipped
        return record

    def write_evaluation(self, step: int, values: dict[str, Any]) -> None:
        """An evaluation record (``eval_*`` values) of ``step``."""
        self._write({**self._stamp(step), **values})

    def _write(self, record: dict[str, Any]) -> None:
        self.folder.append_metrics(record)
        self.loggers.write(record)
        if self.on_log:
            self.on_log(record)


class EvaluationRunner:
    """:class:`EvaluationDue` -> the evaluator on rank 0 (the others wait), its values recorded.

    Args:
        network: the network to evaluate, as sampling will see it (the EMA model).
        record: called with the step and the values (:meth:`MetricsLogger.write_evaluation`).
    """

    def __init__(self, ctx: DistContext, evaluator: TrainingEvaluator, network: Callable[[], torch.nn.Module],
                 schedule: Any, record: Callable[[int, dict[str, Any]], None]):
        self.ctx, self.evaluator, self.network, self.schedule, self.record = ctx, evaluator, network, schedule, record

    def __call__(self, event: LoopEvent) -> None:
        if not isinstance(event, EvaluationDue):
            return

        def on_main() -> None:
            self.record(event.step, self.evaluator.run(self.network(), self.schedule, event.step))

        self.ctx.main_first(on_main, others=False)  # its broadcast holds the other ranks back
        self.ctx.barrier()


class CheckpointWriter:
    """:class:`CheckpointDue` -> the checkpoint written by the keeper on rank 0 (the others
    wait); ``last``: its path (``None`` on the other ranks, or before the first)."""

    def __init__(self, ctx: DistContext, keeper: CheckpointKeeper, model: torch.nn.Module,
                 ema_model: torch.nn.Module, optimizer: torch.optim.Optimizer):
        self.ctx, self.keeper = ctx, keeper
        self.model, self.ema_model, self.optimizer = model, ema_model, optimizer
        self.last: Optional[Path] = None

    def __call__(self, event: LoopEvent) -> None:
        if not isinstance(event, CheckpointDue):
            return
        path = None
        if self.ctx.is_main:
            path = self.keeper.save(event.step, self.model, self.ema_model, self.optimizer, dict(event.window))
        self.ctx.barrier()
        self.last = path


class PreviewWriter:
    """:class:`PreviewDue` -> the grid rendered on rank 0 and shown to the loggers (the others
    wait); ``last``: its path (``None`` on the other ranks, or before the first)."""

    def __init__(self, ctx: DistContext, render: Callable[[int], Path], loggers: LoggerGroup):
        self.ctx, self.render, self.loggers = ctx, render, loggers
        self.last: Optional[Path] = None

    def __call__(self, event: LoopEvent) -> None:
        if not isinstance(event, PreviewDue):
            return
        path = self.render(event.step) if self.ctx.is_main else None
        self.loggers.image(path, event.step)
        self.ctx.barrier()
        self.last = path
