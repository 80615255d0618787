"""Train several runs at once, each in its own process (``cbdm compare --jobs N``).

Why: the small networks of CPU protocols do not keep two cores busy. On the 2-vCPU machines this
project is developed on, two 1-thread digits-lt runs side by side train 1.4x (DDPM) to 1.9x
(CBDM) the images per second of one 2-thread run (``benchmarks/parallel_runs.py``,
docs/benchmarks.md). A run trained in a worker is the same run the study would train
in-process: the same configuration, folder, checkpoints and resume rules; only the thread
count (and so float rounding) may differ.

Each worker is a fresh (spawned) process that builds its own :class:`Trainer`; the parent only
schedules, reports progress from each run's ``metrics.jsonl`` and forwards Ctrl-C, after which
every worker saves its checkpoint and the study can be re-run to continue.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing as mp
import os
import queue
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional

from ..config import TrainConfig
from ..errors import CbdmError
from ..run_folder import RunFolder

POLL_SECONDS = 1.0
ORPHAN_GRACE_SECONDS = 30.0  # time an orphaned worker has to save its checkpoint and stop
ORPHAN_EXIT_CODE = 75


@dataclass
class TrainJob:
    """One run to train: its configuration and folder."""

    config: TrainConfig
    folder: Path
    resume: bool
    restart_unsaved: bool = False  # see Trainer: a folder with no checkpoint starts over


@dataclass
class JobResult:
    """What a worker reports: the step it stopped at, and whether it was interrupted."""

    folder: Path
    step: int
    interrupted: bool


def die_with_parent(parent_pid: int, sig: int = signal.SIGTERM, grace_seconds: float = ORPHAN_GRACE_SECONDS) -> None:
    """Have ``sig`` sent to this process when its parent ``parent_pid`` dies, and end it
    ``grace_seconds`` later if it is still running.

    A worker of a SIGKILLed ``cbdm compare`` otherwise trains on under PID 1, holding its run
    folder, and the re-run is refused until it finishes. SIGTERM lets the trainer save a
    checkpoint and stop, so the re-run resumes. Two mechanisms, because one was seen to fail
    on a CI machine (a worker still alive 60 s after its parent): ``prctl(PR_SET_PDEATHSIG)``
    on Linux, and everywhere a daemon thread that polls ``getppid``, sends ``sig`` itself and,
    should the worker still be running after the grace period (a stop that hangs), exits it
    with ``os._exit``. Checkpoints are written atomically, so that exit loses at most the
    steps since the last one.
    """
    if os.getppid() != parent_pid:  # already orphaned
        os.kill(os.getpid(), sig)
    elif _set_pdeathsig(sig) and os.getppid() != parent_pid:  # died between the check and prctl
        os.kill(os.getpid(), sig)
    import threading

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(POLL_SECONDS)
        os.kill(os.getpid(), sig)  # a second signal is harmless: the trainer only sets a flag
        time.sleep(grace_seconds)
        os._exit(ORPHAN_EXIT_CODE)

    threading.Thread(target=watch, name="cbdm-parent-watch", daemon=True).start()


def orphaned(parent_pid: Optional[int]) -> bool:
    """True when this worker's parent ``parent_pid`` is gone (nobody reads its results)."""
    return parent_pid is not None and os.getppid() != parent_pid


def _set_pdeathsig(sig: int) -> bool:
    """``prctl(PR_SET_PDEATHSIG, sig)`` through libc; False where it is not available."""
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
        return libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _worker(job: TrainJob, threads: int, results, parent_pid: Optional[int] = None) -> None:
    """Entry point of a worker process: train one run, report the outcome or the error."""
    if parent_pid is not None:
        die_with_parent(parent_pid)
    import torch

    from ..training.trainer import Trainer

    torch.set_num_threads(threads)
    try:
        outcome = Trainer(job.config, job.folder, resume=job.resume, restart_unsaved=job.restart_unsaved).run()
        message = ("done", str(job.folder), outcome.step, bool(outcome.interrupted))
    except CbdmError as exc:
        message = ("error", str(job.folder), str(exc), "")
    except KeyboardInterrupt:  # stopped before the trainer had installed its handler
        message = ("done", str(job.folder), 0, True)
    except BaseException as exc:  # noqa: BLE001 - a bug: carry its traceback to the parent
        import traceback

        message = ("crash", str(job.folder), f"{type(exc).__name__}: {exc}", traceback.format_exc())
    if orphaned(parent_pid):
        # Nobody reads the queue; skip multiprocessing's exit machinery (its queue and
        # resource-tracker finalizers), which has nothing left to deliver to.
        os._exit(ORPHAN_EXIT_CODE)
    results.put(message)


def last_logged_step(folder: Path) -> int:
    """The step of the last complete line of ``folder/metrics.jsonl`` (0 when none)."""
    path = RunFolder(folder).metrics
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 4096))
            lines = fh.read().decode(errors="replace").splitlines()
    except OSError:
        return 0
    for line in reversed(lines):
        try:
            return int(json.loads(line)["step"])
        except (ValueError, KeyError, TypeError, OverflowError):
            continue
    return 0


@contextlib.contextmanager
def pool_threads(workers: int, cores: Optional[int] = None) -> Iterator[int]:
    """For the block, this process's torch threads raised to what ``workers`` training workers
    used together (each gets this process's threads split between them, at least one), but not
    past the ``cores`` this process may run on (default: its CPU affinity).

    Why: work done here after a parallel phase (a study's sampling and evaluation) should use the
    cores the workers used; under ``OMP_NUM_THREADS=1`` this process has one thread while
    ``--jobs 2`` workers had one each. More threads than cores would spin against each other,
    hence the cap. Never lowers the count; restored afterwards."""
    import torch

    if cores is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    before = torch.get_num_threads()
    total = max(before, min(cores, workers * max(1, before // max(1, workers))))
    torch.set_num_threads(total)
    try:
        yield total
    finally:
        torch.set_num_threads(before)


def train_in_parallel(jobs: list[TrainJob], workers: int, *, threads: Optional[int] = None,
                      on_progress: Optional[Callable[[int, int], None]] = None,
                      on_finished: Optional[Callable[[JobResult], None]] = None) -> list[JobResult]:
    """Train ``jobs`` with at most ``workers`` processes at a time, each with ``threads`` torch
    threads (default: this process's threads split between the workers, at least one).

    ``on_progress(steps_done, steps_total)`` sums the logged steps over all jobs. On Ctrl-C (or
    SIGTERM to this process) every running worker is asked to stop; no new job starts; the
    results then say which runs were interrupted. A worker's error is raised here as a one-line
    :class:`CbdmError` once the other workers have stopped (their checkpoints are saved)."""
    import torch

    if workers < 1:
        raise CbdmError("--jobs must be at least 1")
    threads = threads or max(1, torch.get_num_threads() // min(workers, max(1, len(jobs))))
    pool = _WorkerPool(jobs, workers, threads, on_progress, on_finished)
    previous_term = signal.getsignal(signal.SIGTERM)
    in_main = _in_main_thread()
    if in_main:
        signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        pool.run()
    finally:
        if in_main:
            signal.signal(signal.SIGTERM, previous_term)
        pool.join_all()
    if pool.failure is not None:
        folder, message, trace = pool.failure
        if trace:
            raise RuntimeError(f"training {folder} failed: {message}\n{trace}")
        raise CbdmError(f"training {folder}: {message}")
    return pool.results


class _WorkerPool:
    """The jobs waiting, the worker processes running, and what the finished ones reported."""

    def __init__(self, jobs: list[TrainJob], workers: int, threads: int,
                 on_progress: Optional[Callable[[int, int], None]],
                 on_finished: Optional[Callable[[JobResult], None]]):
        self.workers, self.threads = workers, threads
        self.on_progress, self.on_finished = on_progress, on_finished
        self.ctx = mp.get_context("spawn")
        self.results_q = self.ctx.Queue()
        self.waiting = list(jobs)
        self.running: dict[str, tuple[mp.process.BaseProcess, TrainJob]] = {}
        self.results: list[JobResult] = []
        self.failure: Optional[tuple[str, str, str]] = None
        self.stopping = False
        self.total = sum(j.config.optim.steps for j in jobs)

    def run(self) -> None:
        """Start, poll and reap workers until every job is done or the pool was stopped."""
        while self.waiting or self.running:
            try:
                self._start_waiting()
                time.sleep(POLL_SECONDS)
                self.drain()
                self._reap()
                self._report_progress()
            except KeyboardInterrupt:
                self.stop_all()  # a second Ctrl-C re-sends the request; workers save and stop

    def _start_waiting(self) -> None:
        while self.waiting and len(self.running) < self.workers and not self.stopping:
            job = self.waiting.pop(0)
            proc = self.ctx.Process(target=_worker, args=(job, self.threads, self.results_q, os.getpid()),
                                    daemon=False)
            proc.start()
            self.running[str(job.folder)] = (proc, job)

    def _reap(self) -> None:
        """Join the workers that ended; one that died without reporting is a failure."""
        for key, (proc, job) in list(self.running.items()):
            if not proc.is_alive():
                proc.join()
                self.drain()
                del self.running[key]
                if proc.exitcode not in (0, None) and not any(r.folder == job.folder for r in self.results) \
                        and self.failure is None:
                    self.failure = (key, f"the training process exited with code {proc.exitcode}", "")
                    self.stop_all()

    def _report_progress(self) -> None:
        if self.on_progress is None:
            return
        finished = {r.folder for r in self.results}
        done = sum(r.step for r in self.results) + sum(last_logged_step(j.folder) for _, j in self.running.values()
                                                       if j.folder not in finished)
        self.on_progress(min(done, self.total), self.total)

    def stop_all(self) -> None:
        """Ask every running worker to save and stop; start no new job."""
        self.stopping = True
        self.waiting.clear()
        for proc, _ in self.running.values():
            if proc.is_alive():
                os.kill(proc.pid, signal.SIGINT)

    def drain(self) -> None:
        """Take the workers' reports off the queue; the first error stops the others."""
        while True:
            try:
                kind, folder, a, b = self.results_q.get_nowait()
            except queue.Empty:
                return
            if kind == "done":
                res = JobResult(Path(folder), int(a), bool(b))
                self.results.append(res)
                if self.on_finished is not None:
                    self.on_finished(res)
            elif self.failure is None:
                self.failure = (folder, a, b)
                self.stop_all()

    def join_all(self) -> None:
        """Wait for the workers still running (only after an unexpected error in :meth:`run`)."""
        for proc, _ in self.running.values():
            proc.join()
        self.drain()


def _raise_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def _in_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()
