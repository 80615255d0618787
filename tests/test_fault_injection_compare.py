"""SIGKILL `cbdm compare --jobs 2` and its training workers at seeded-random moments, re-running
the study after each kill: the final ``compare.json`` equals an uninterrupted study's in every
number (issue #24, acceptance).

A killed worker fails the study (its run restarts from its last checkpoint, or from step 0
when it had none); a killed parent leaves its workers to save a checkpoint and stop
(``die_with_parent``), and the test waits for them before re-running, as a user would have to.
Every re-run must then continue the study; resumed training is bit-identical, so the report
values must be equal exactly, not approximately.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional

import pytest

from cbdm_core import locks
from cbdm_core.experiments.parallel_training import ORPHAN_GRACE_SECONDS

from .helpers import alive
from .kill_harness import HARNESS
from .run_helpers import tiny_protocol, write_protocol

pytestmark = pytest.mark.slow

METHODS = ("ddpm", "cbdm")
STEPS = 20  # about 2 s of training per worker (after ~10 s of start-up): kills land in it
# The parent inside the write of the study's classifier (before any worker), a worker (its run has
# no checkpoint yet: it restarts from step 0), the parent while its workers train (they save and
# stop; the re-run resumes them), then the parent at a random moment once training is over
# (sampling, evaluating, writing the reports).
KILLS = ("parent-classifier-write", "worker", "parent-training", "parent-reporting")
CLASSIFIER_WRITE = {"H_TARGET": r"/classifier-[^/]*\.safetensors$", "H_MODE": "torn"}


def _study(root: Path) -> Path:
    """The tiny study's protocol under ``root`` (its feature cache in ``root/cache``)."""
    raw = tiny_protocol(root, seeds=[0], guidance={"fixed": 0.0})
    raw["training"]["steps"] = STEPS  # no ckpt_every: a worker killed before its stop saved nothing
    return write_protocol(root / "p.yaml", raw)


def _start(root: Path, log: Path, **harness: str) -> subprocess.Popen:
    """The study under the kill harness (in the parent only: workers are spawned afresh)."""
    # The same thread count in every process: bitwise equal runs.
    env = dict(os.environ, OMP_NUM_THREADS="1", H_LOG=str(log.with_suffix(".writes")), **harness)
    with open(log, "ab") as fh:
        return subprocess.Popen([sys.executable, "-c", HARNESS, "compare", str(root / "p.yaml"), "--out",
                                 str(root / "study"), "--jobs", "2", "--no-progress"], stdout=fh,
                                stderr=subprocess.STDOUT, env=env, start_new_session=True)


def _ppid(pid: int) -> Optional[int]:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def _children(pid: int) -> list[int]:
    """Living processes whose parent is ``pid`` (workers, multiprocessing's helpers)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and _ppid(int(entry.name)) == pid and alive(int(entry.name)):
            found.append(int(entry.name))
    return found


def _workers(root: Path, parent: int) -> dict[int, int]:
    """The training workers of ``parent``, as {PID: index of its method}: PIDs in the run folders'
    lock files that are its children (a SIGKILLed worker leaves a stale PID in its lock file)."""
    pids = {}
    for i, method in enumerate(METHODS):
        try:
            text = (root / "study" / "runs" / method / "seed-0" / locks.LOCK_NAME).read_text().split()
        except OSError:
            continue
        if text and text[0].isdigit() and _ppid(int(text[0])) == parent and alive(int(text[0])):
            pids[int(text[0])] = i
    return pids


def _wait_for_workers(root: Path, proc: subprocess.Popen) -> dict[int, int]:
    """The workers once one is training; none when the study ends first (nothing left to train)."""
    deadline = time.monotonic() + 180
    while not (found := _workers(root, proc.pid)) and proc.poll() is None:
        assert time.monotonic() < deadline, "no worker started training"
        time.sleep(0.05)
    return found


def _wait_for_step(root: Path, proc: subprocess.Popen, worker: int, run: int, step: int) -> None:
    """Until run ``run`` has logged a new step (its worker is past start-up: a resume cutting
    ``metrics.jsonl`` back or a restart clearing it does not count) and reached ``step``, or
    its worker or the study has ended."""
    previous, moved, deadline = _steps(root)[run], False, time.monotonic() + 120
    while proc.poll() is None and alive(worker):
        current = _steps(root)[run]
        moved = moved or current > previous
        if moved and current >= step:
            return
        previous = current
        assert time.monotonic() < deadline, "the worker never trained a step"
        time.sleep(0.01)


def _kill(target: str, root: Path, rng: random.Random, log: Path) -> str:
    """One attempt: start the study and SIGKILL ``target``; what happened, for the record."""
    started, orphans = time.monotonic(), []
    proc = _start(root, log, **(CLASSIFIER_WRITE if target == "parent-classifier-write" else {}))
    try:
        if target == "parent-classifier-write":  # the harness kills it
            code = proc.wait(timeout=120)
            assert code == -signal.SIGKILL, f"{target}: exit {code}:\n{log.read_text()}"
            return f"{target}: killed parent after {time.monotonic() - started:.1f} s"
        if target == "parent-reporting":
            while proc.poll() is None and not _trained(root):
                time.sleep(0.05)
            time.sleep(rng.uniform(0.0, 4.0))
            victim = proc.pid
        else:  # at a seeded step of a seeded run, whatever the machine's speed
            workers = _wait_for_workers(root, proc)
            worker = rng.choice(sorted(workers))
            _wait_for_step(root, proc, worker, workers[worker], rng.randint(1, STEPS - 4))
            victim = worker if target == "worker" and alive(worker) else proc.pid  # (it may have finished)
        if proc.poll() is not None:
            return f"{target}: finished first ({proc.returncode})"
        orphans = _children(proc.pid)
        said = (log.read_text().splitlines() or [""])[-1][:60]  # what the study was doing
        with contextlib.suppress(ProcessLookupError):  # a worker may have finished meanwhile
            os.kill(victim, signal.SIGKILL)
        code = proc.wait(timeout=120)  # a killed worker fails the study (its partner saves and stops)
        deadline = time.monotonic() + ORPHAN_GRACE_SECONDS + 30
        while any(alive(pid) for pid in orphans) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(alive(pid) for pid in orphans), f"workers outlived their parent: {orphans}"
        return (f"{target}: killed {'parent' if victim == proc.pid else 'worker'} {victim} after "
                f"{time.monotonic() - started:.1f} s (parent exit {code}, steps {_steps(root)}, last said {said!r})")
    finally:  # only when an assertion failed: leave nothing of this test running
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pid in orphans:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


def _trained(root: Path) -> bool:
    """Whether every run holds its final checkpoint."""
    from cbdm_core.checkpoint import list_checkpoints

    saved = [list_checkpoints(root / "study" / "runs" / m / "seed-0" / "checkpoints") for m in METHODS]
    return all(s and s[-1][0] >= STEPS for s in saved)


def _steps(root: Path) -> list[int]:
    from cbdm_core.experiments.parallel_training import last_logged_step

    return [last_logged_step(root / "study" / "runs" / m / "seed-0") for m in METHODS]


def _normalized(root: Path) -> dict[str, Any]:
    """``compare.json`` with the study's own folder spelled ``<root>`` and the creation time and the
    measured wall times (sampling, the study's phases) dropped (the only fields that depend on where
    and when the study ran; a killed set's time is not counted, so they differ by design)."""
    text = (root / "study" / "compare.json").read_text().replace(str(root), "<root>")
    doc = json.loads(text)
    doc.pop("created")
    doc.pop("study_time", None)
    for entry in doc.get("methods", {}).values():
        if isinstance(entry, dict):
            entry.pop("sampling_cost", None)
    return doc


def _first_difference(a: Any, b: Any, where: str = "") -> Optional[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b), key=str):
            if (diff := _first_difference(a.get(key), b.get(key), f"{where}/{key}")) is not None:
                return diff
        return None
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b)):
            if (diff := _first_difference(x, y, f"{where}/{i}")) is not None:
                return diff
        return None
    same = json.dumps(a) == json.dumps(b)  # NaN equals NaN here, as in the file
    return None if same else f"{where}: {a!r} != {b!r}"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_random_sigkills_of_compare_and_its_workers_then_reruns_give_the_uninterrupted_study(tmp_path):
    straight, killed = tmp_path / "a", tmp_path / "b"
    for root in (straight, killed):
        root.mkdir()
        _study(root)
    log = tmp_path / "log.txt"
    proc = _start(straight, log)
    assert proc.wait(timeout=400) == 0, log.read_text()
    seed = 24
    rng = random.Random(seed)
    record = [_kill(target, killed, rng, log) for target in KILLS]
    proc = _start(killed, log)
    assert proc.wait(timeout=400) == 0, log.read_text()
    context = f"seed {seed}; " + "; ".join(record)
    print(context)
    assert sum("killed worker" in r for r in record) >= 1 and sum("killed parent" in r for r in record) >= 2, context
    a, b = _normalized(straight), _normalized(killed)
    assert a["methods"].keys() == set(METHODS), context
    assert _first_difference(a, b) is None, f"{_first_difference(a, b)} ({context})"
    leftovers = [p for p in killed.rglob("*") if p.name.endswith(".tmp")]
    assert not leftovers, f"temporary files left behind: {leftovers} ({context})"
