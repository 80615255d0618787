"""The events a training loop raises, and the list of subscribers they go to.

:class:`~cbdm_core.training.loop.TrainLoop` decides *when* something is due (a step finished,
the logging window is full, an evaluation, a checkpoint or a preview is due, the run ended);
the subscribers decide *what* happens: the metrics log, the evaluator, the checkpoint keeper
and the preview grid are subscribers like any other (see ``training/subscribers.py``). A
subscriber is any callable taking one event; it picks the kinds it wants with ``isinstance``.

Subscribers are called in the order they subscribed, synchronously, on every rank of a
distributed run (except :class:`LogDue`, rank 0 only); an exception stops the run as if the
loop had raised it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Union


@dataclass(frozen=True)
class RunStarted:
    """The loop is about to train its first step ``step`` (0, or the resumed checkpoint's)."""

    step: int


@dataclass(frozen=True)
class StepFinished:
    """Step ``step`` was trained (``step`` counts the steps done: 1 after the first).

    ``terms``: the named loss terms of the step, as tensors on the device (reading one waits for
    the device); ``applied``: ``False`` when a non-finite step was skipped (``on_nonfinite=skip``).
    """

    step: int
    terms: Mapping[str, Any]
    applied: bool


@dataclass(frozen=True)
class LogDue:
    """The logging window ending at ``step`` is complete (rank 0 only).

    ``sums``: the window's summed terms (tensors), averaged over ranks; ``steps``: the steps
    they sum (those before a resume included), so a term's mean is ``float(sums[k]) / steps``;
    ``skipped``: non-finite steps skipped since the start.
    """

    step: int
    sums: Mapping[str, Any]
    steps: int
    lr: float
    images_per_sec: float
    skipped: int
    memory_gb: float


@dataclass(frozen=True)
class EvaluationDue:
    """The training-time evaluation of ``step`` is due (raised before that step's checkpoint)."""

    step: int


@dataclass(frozen=True)
class CheckpointDue:
    """A checkpoint of ``step`` is due; ``window``: the logging window not yet logged (stored so
    a resume logs what an uninterrupted run would); ``final``: the run's last save."""

    step: int
    window: Mapping[str, Any]
    final: bool = False


@dataclass(frozen=True)
class PreviewDue:
    """A preview grid of ``step`` is due; ``final``: the run's closing grid."""

    step: int
    final: bool = False


@dataclass(frozen=True)
class RunFinished:
    """The loop stopped at ``step``, its last checkpoint (and grid, unless interrupted) written."""

    step: int
    interrupted: bool


LoopEvent = Union[RunStarted, StepFinished, LogDue, EvaluationDue, CheckpointDue, PreviewDue, RunFinished]
Subscriber = Callable[[LoopEvent], None]


class Subscribers:
    """The subscribers of one loop, called in order with each event."""

    def __init__(self, subscribers: tuple[Subscriber, ...] = ()):
        self._subscribers: list[Subscriber] = list(subscribers)

    def subscribe(self, subscriber: Subscriber) -> None:
        """Add ``subscriber``; it is called after those already there."""
        self._subscribers.append(subscriber)

    def emit(self, event: LoopEvent) -> None:
        """Hand ``event`` to every subscriber, in order."""
        for subscriber in self._subscribers:
            subscriber(event)
