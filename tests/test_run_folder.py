"""RunFolder (the one owner of the run-folder layout, lock, resume point and metrics log) and
the training loop's events as a third-party subscriber sees them (issue 28 item 2)."""

from __future__ import annotations

import json

import pytest
import torch

from cbdm_core import locks
from cbdm_core.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from cbdm_core.config import TrainConfig, parse_train_config
from cbdm_core.errors import CbdmError
from cbdm_core.run_folder import RunFolder, resolve_checkpoint
from cbdm_core.training.events import (CheckpointDue, LogDue, PreviewDue, RunFinished, RunStarted,
                                       StepFinished)
from cbdm_core.training.trainer import Trainer
from tests.helpers import MONITOR_TINY
from tests.run_helpers import LockHolder, write_toy_run


def test_layout_is_the_one_old_runs_have(tmp_path):
    folder = RunFolder(tmp_path / "run")
    run = tmp_path / "run"
    # Runs written before RunFolder existed must still open: these names are on disk.
    assert folder.config == run / "config.yaml"
    assert folder.metrics == run / "metrics.jsonl"
    assert folder.checkpoint(12) == run / "checkpoints" / "ckpt-00000012.safetensors"
    assert folder.grid(7) == run / "samples" / "grid-00000007.png"
    assert (folder.tensorboard, folder.wandb) == (run / "tensorboard", run / "wandb")
    assert folder.lock_file == run / locks.LOCK_NAME
    # A checkpoint file names its run folder; a run folder resolves to its newest checkpoint.
    write_toy_run(run)
    ckpt = run / "checkpoints" / "ckpt-00000000.safetensors"
    assert RunFolder.of(ckpt).path == run and RunFolder.of(run).path == run
    assert resolve_checkpoint(run) == folder.checkpoint(0) == ckpt
    assert folder.list_checkpoints() == [(0, ckpt)] and folder.holds_run()


def test_a_folder_in_use_is_refused_in_one_line_and_left_as_it_was(tmp_path):
    run = tmp_path / "run"
    holder = LockHolder(run)
    try:
        folder = RunFolder(run)
        with pytest.raises(CbdmError, match="run folder .* is in use by another cbdm process") as exc:
            folder.open(TrainConfig())
        assert "\n" not in str(exc.value) and not folder.locked
        folder.release()  # nothing held: a no-op, the other process's lock file stays
        assert (run / locks.LOCK_NAME).exists()
    finally:
        holder.kill()


def test_a_refused_start_leaves_nothing_and_a_started_one_keeps_its_config(tmp_path):
    refused = RunFolder(tmp_path / "refused")
    refused.open(TrainConfig())
    assert locks.is_locked_here(refused.path) and refused.lock_file.exists()
    refused.release()
    assert not refused.path.exists()  # created by open() and still empty
    started = RunFolder(tmp_path / "started")
    started.open(TrainConfig())
    started.write_config(TrainConfig())
    started.release()
    assert started.config.is_file() and not started.lock_file.exists()
    again = RunFolder(started.path)
    with pytest.raises(CbdmError, match="already holds a run; use --resume"):
        again.open(TrainConfig())
    assert not again.locked and not locks.is_locked_here(started.path)  # a refused open holds nothing
    assert sorted(p.name for p in started.path.iterdir()) == ["config.yaml"]


def test_resume_point_is_the_newest_intact_checkpoint_and_the_log_is_cut_back_to_it(tmp_path):
    run = write_toy_run(tmp_path / "run")
    folder = RunFolder(run)
    first = load_checkpoint(folder.checkpoint(0))
    for step in (3, 5):
        save_checkpoint(folder.checkpoint(step), Checkpoint(step=step, config=first.config, model=first.model,
                                                            ema=first.ema, meta=first.meta))
    folder.checkpoint(5).write_bytes(b"torn")  # killed while writing the newest
    folder.metrics.write_text("".join(json.dumps({"step": s, "elapsed": 10.0 * s}) + "\n" for s in (2, 3, 4, 5)))
    start = folder.open(parse_train_config(first.config, "test"), resume=True)
    folder.release()
    assert start.checkpoint is not None and start.checkpoint.step == 3
    assert start.elapsed == 30.0  # the training clock carries on from the last line kept
    assert [json.loads(line)["step"] for line in folder.metrics.read_text().splitlines()] == [2, 3]
    assert [s for s, _ in folder.list_checkpoints()] == [0, 3]  # the torn one set aside, not deleted
    assert (folder.checkpoints / "ckpt-00000005.safetensors.corrupt").read_bytes() == b"torn"
    changed = parse_train_config({**first.config, "seed": first.config["seed"] + 1}, "test")
    with pytest.raises(CbdmError, match="--resume: the options differ .* in: seed"):
        folder.open(changed, resume=True)
    assert not folder.locked and not folder.lock_file.exists()


def test_a_subscriber_receives_the_events_of_a_run_in_order(tmp_path):
    cfg = TrainConfig.model_validate({**MONITOR_TINY, "ckpt_every": 2, "sample_every": 2, "ckpt_every_minutes": 0})
    folder = RunFolder(tmp_path / "run")
    seen: list[tuple] = []

    def subscriber(event) -> None:
        on_disk = None
        if isinstance(event, CheckpointDue):  # the built-in keeper has already written it
            on_disk = folder.checkpoint(event.step).is_file()
        elif isinstance(event, PreviewDue):
            on_disk = folder.grid(event.step).is_file()
        elif isinstance(event, StepFinished):
            assert set(event.terms) and all(torch.is_tensor(v) for v in event.terms.values())
        elif isinstance(event, LogDue):
            on_disk = len(folder.metrics.read_text().splitlines())  # the record is logged first
        elif isinstance(event, (RunStarted, RunFinished)):
            on_disk = getattr(event, "interrupted", None)
        seen.append((type(event).__name__, event.step, on_disk))

    trainer = Trainer(cfg, folder.path)
    trainer.subscribe(subscriber)
    result = trainer.run()
    assert seen == [("RunStarted", 0, None),
                    ("StepFinished", 1, None), ("StepFinished", 2, None), ("LogDue", 2, 1),
                    ("CheckpointDue", 2, True), ("PreviewDue", 2, True),
                    ("StepFinished", 3, None), ("StepFinished", 4, None), ("LogDue", 4, 2),
                    ("CheckpointDue", 4, True), ("PreviewDue", 4, True), ("RunFinished", 4, False)]
    assert result.checkpoint == folder.checkpoint(4) and result.grid == folder.grid(4)
    assert not folder.lock_file.exists()
