"""Issue 16, adversarial cases: locked folders, hostile metadata, non-finite values, full
disks, integrity, recovery, silent wrong data, one-line errors, file modes.

Each test asserts the exit status / error, that the message is one line, and that what
was already written is still there and intact.
"""

from __future__ import annotations

import errno
import gzip
import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from safetensors import SafetensorError
from safetensors.torch import save_file

from cbdm_core import locks
from cbdm_core.checkpoint import list_checkpoints, load_checkpoint
from cbdm_core.config import TrainConfig
from cbdm_core.data.folder import load_folder
from cbdm_core.data.mnist import IMAGES_MAGIC, read_idx
from cbdm_core.data.options import DatasetOptions
from cbdm_core.data.safe_pickle import safe_load
from cbdm_core.errors import CbdmError, CheckpointError
from cbdm_core.features import FeatureSet, cache_path, cached_features
from cbdm_core.importers.reference_ddpm import _step_of
from cbdm_core.label_distributions import pow_distribution
from cbdm_core.metrics.kid import kid
from cbdm_core.run import load_run
from cbdm_core.tensor_io import IntegrityError, load_tensors, save_tensors
from cbdm_core.training.trainer import Trainer, append_line

from .helpers import TINY, cli_fails, cli_ok, invoke_cli, snapshot
from .run_helpers import LockHolder, nan_registry, write_toy_run  # noqa: F401 - nan_registry is a fixture



def _temps(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.name.endswith(".tmp") or p.name.startswith(".tmp")]


def _flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x10  # the last bytes are tensor data, never the JSON header
    path.write_bytes(bytes(data))


# -- 1. concurrent writers ---------------------------------------------------------------------------------


def test_second_writer_of_a_run_folder_is_refused_with_the_holders_pid(tmp_path):
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(TINY))
    run = tmp_path / "run"
    holder = LockHolder(run)
    try:
        line = cli_fails("train", "--config", tmp_path / "c.yaml", "--out", run, "--no-progress",
                         match=f"PID {holder.proc.pid}")
        assert "in use" in line
        assert not (run / "config.yaml").exists() and not (run / "checkpoints").exists()
    finally:
        holder.kill()
    # The kernel dropped the killed holder's lock: the folder is usable at once.
    cli_ok("train", "--config", tmp_path / "c.yaml", "--out", run, "--no-progress", "--steps", "1")


def test_second_writer_of_a_sample_folder_is_refused(tmp_path):
    run = write_toy_run(tmp_path / "run")
    out = tmp_path / "samples"
    cli_ok("sample", run, "--out", out, "--steps", "2", "--num", "3", "--no-progress", "--seed", "3")
    before = snapshot(out)
    holder = LockHolder(out)
    try:
        cli_fails("sample", run, "--out", out, "--steps", "2", "--num", "3", "--no-progress", "--seed", "4",
                  "--overwrite", match=f"PID {holder.proc.pid}")
    finally:
        holder.kill()
    after = snapshot(out)
    assert {k: v for k, v in after.items() if k != locks.LOCK_NAME} == \
        {k: v for k, v in before.items() if k != locks.LOCK_NAME}


def test_feature_cache_busy_past_the_wait_is_computed_uncached(tmp_path, monkeypatch):
    monkeypatch.setenv("CBDM_CACHE_WAIT", "0.4")  # issue 24 #15: wait, then fall back (never fail)
    holder = LockHolder(tmp_path)
    try:
        t0 = time.monotonic()
        with pytest.warns(UserWarning, match="still busy after 0.4 s"):
            fs = cached_features(tmp_path, "k", lambda: FeatureSet(torch.ones(2, 3), None, None, "x"))
        assert time.monotonic() - t0 >= 0.4
    finally:
        holder.kill()
    assert torch.equal(fs.features, torch.ones(2, 3))
    assert not cache_path(tmp_path, "k").exists()


# -- 2. hostile sizes ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("over,match", [
    ({"config_over": {"diffusion.T": 10 ** 9}}, "diffusion.T"),
    ({"meta_over": {"image_size": 10 ** 9}}, "image_size"),
    ({"meta_over": {"num_classes": -1}}, "num_classes"),
    ({"config_over": {"model.options.ch": 4096}}, "wrong shapes"),
])
def test_hostile_checkpoint_sizes_are_refused_before_allocating(tmp_path, over, match):
    run = write_toy_run(tmp_path / "run", **over)
    before = snapshot(run)
    cli_fails("sample", run, "--out", tmp_path / "s", "--steps", "2", "--no-progress", match=match)
    assert snapshot(run) == before and not (tmp_path / "s").exists()


def test_mnist_gz_bomb_is_refused_without_expanding(tmp_path):
    huge = tmp_path / "huge.gz"
    with gzip.open(huge, "wb") as f:  # the header claims 2 GB; the body is not there at all
        f.write(IMAGES_MAGIC.to_bytes(4, "big") + (20000).to_bytes(4, "big") + (1000).to_bytes(4, "big")
                + (100).to_bytes(4, "big"))
    with pytest.raises(CbdmError, match="more than"):
        read_idx(huge, IMAGES_MAGIC)
    long = tmp_path / "long.gz"
    with gzip.open(long, "wb") as f:  # a small header, then far more data than it announces
        f.write(IMAGES_MAGIC.to_bytes(4, "big") + b"\0\0\0\1" + b"\0\0\0\x1c" * 2 + bytes(4 << 20))
    with pytest.raises(CbdmError, match="truncated or corrupt"):
        read_idx(long, IMAGES_MAGIC)


class _HugeBytes:
    def __reduce__(self):
        return (bytes, (10 ** 12,))


def test_pickle_cannot_allocate_huge_bytes(tmp_path):
    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps({b"data": _HugeBytes()}, protocol=2))
    with pytest.raises(CbdmError, match="allowed") as exc:
        safe_load(path)
    assert "\n" not in str(exc.value)


# -- 3. non-finite values --------------------------------------------------------------------------------------


@pytest.mark.parametrize("args,match", [
    (["train", "--lr", "inf"], "--lr"),
    (["train", "--lr", "1e38"], "optim.lr"),
    (["train", "--y-dist", "pow:nan"], "finite"),
])
def test_nonfinite_training_options_are_refused(tmp_path, args, match):
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({k: v for k, v in TINY.items()}))
    cli_fails(*args, "--config", tmp_path / "c.yaml", "--out", tmp_path / "run", "--no-progress", match=match)
    assert not list_checkpoints(tmp_path / "run" / "checkpoints")


def test_pow_nan_message_says_what_is_wrong():
    with pytest.raises(CbdmError, match="finite"):
        pow_distribution(torch.tensor([3.0, 1.0]), "nan")


def test_nan_weights_are_never_checkpointed(tmp_path, monkeypatch):
    import cbdm_core.training.trainer as trainer_mod

    real = trainer_mod.build_train_step

    class Poisoned:
        """The real step, except that the second one leaves NaN weights behind a finite loss."""

        def __init__(self, step, model):
            self.step, self.model, self.optimizer = step, model, step.optimizer

        def __call__(self, i, *args, **kw):
            out = self.step(i, *args, **kw)
            if i == 1:
                with torch.no_grad():
                    next(self.model.parameters()).fill_(float("nan"))
            return out

    def poisoned(model, *a, **k):
        return Poisoned(real(model, *a, **k), model)

    monkeypatch.setattr(trainer_mod, "build_train_step", poisoned)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({**TINY, "ckpt_every": 1, "log_every": 10}))
    cli_fails("train", "--config", tmp_path / "c.yaml", "--out", tmp_path / "run", "--no-progress",
              match="NaN or inf")
    ckpts = list_checkpoints(tmp_path / "run" / "checkpoints")
    assert [s for s, _ in ckpts] == [1]
    assert all(torch.isfinite(v).all() for v in load_checkpoint(ckpts[0][1]).model.values())


def test_sampling_refuses_nan_weights_and_nonfinite_guidance(tmp_path):
    cli_fails("sample", write_toy_run(tmp_path / "nan", ema_fill=float("nan")), "--out", tmp_path / "s1",
              "--steps", "2", "--no-progress", match="NaN or inf")
    cli_fails("sample", write_toy_run(tmp_path / "ok"), "--out", tmp_path / "s2", "--guidance", "inf", "--steps", "2",
              "--no-progress", match="--guidance")
    assert not (tmp_path / "s1").exists() and not (tmp_path / "s2").exists()


def test_nonfinite_batch_stops_sampling_and_keeps_complete_shards(tmp_path, monkeypatch):
    import cbdm_core.sampling.batches as batches

    real, calls = batches.sample_resolved, []

    def second_batch_nan(*a, **k):
        calls.append(1)
        x = real(*a, **k)
        return x * float("nan") if len(calls) == 2 else x  # the batches' calls only (not the preflight's)

    monkeypatch.setattr(batches, "sample_resolved", second_batch_nan)
    out = tmp_path / "s"
    cli_fails("sample", write_toy_run(tmp_path / "run"), "--out", out, "--num", "4", "--shard-size", "2",
              "--batch-size", "2", "--steps", "2", "--no-progress", match="NaN or inf")
    assert (out / "shard-00000.npz").exists() and not (out / "shard-00001.npz").exists()
    assert json.loads((out / "manifest.json").read_text())["complete"] is False


def test_skip_mode_still_logs_and_checkpoints_on_schedule(tmp_path, nan_registry):  # noqa: F811
    cfg = {**TINY, "objective": {"methods": [{"name": "nan-third"}]}, "log_every": 1, "ckpt_every": 1,
           "keep_last": 10}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    cli_ok("train", "--config", tmp_path / "c.yaml", "--out", tmp_path / "run", "--no-progress",
           "--set", "on_nonfinite=skip")
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6]
    assert records[2]["skipped_steps"] == 1 and "skipped_steps" not in records[1]
    assert [s for s, _ in list_checkpoints(tmp_path / "run" / "checkpoints")] == [1, 2, 3, 4, 5, 6]


# -- 4. full disk --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("error", [OSError(errno.ENOSPC, "No space left on device"),
                                   SafetensorError("No space left on device (os error 28)")])
def test_full_disk_on_a_safetensors_write_is_one_line_and_loses_nothing(tmp_path, monkeypatch, error):
    path = tmp_path / "f.safetensors"
    save_tensors(path, {"w": torch.arange(4.0)}, {"format": "x"})
    before = path.read_bytes()

    def full(*a, **k):
        raise error

    monkeypatch.setattr("cbdm_core.tensor_io.save_file", full)
    with pytest.raises(CbdmError, match="No space left") as exc:
        save_tensors(path, {"w": torch.zeros(4)})
    assert "\n" not in str(exc.value)
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["f.safetensors"]


def test_full_disk_during_training_keeps_the_checkpoints_already_written(tmp_path, monkeypatch):
    import cbdm_core.tensor_io as tio

    real, calls = tio.save_file, []

    def fills_up(*a, **k):
        calls.append(1)
        if len(calls) >= 3:
            raise SafetensorError("No space left on device (os error 28)")
        return real(*a, **k)

    monkeypatch.setattr(tio, "save_file", fills_up)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({**TINY, "ckpt_every": 1, "keep_last": 5}))
    run = tmp_path / "run"
    cli_fails("train", "--config", tmp_path / "c.yaml", "--out", run, "--no-progress", match="No space left")
    assert [s for s, _ in list_checkpoints(run / "checkpoints")] == [1, 2]
    for _, p in list_checkpoints(run / "checkpoints"):
        load_checkpoint(p, with_optim=True)
    assert not _temps(run)


def test_metrics_line_is_written_whole_or_not_at_all(tmp_path, monkeypatch):
    path = tmp_path / "metrics.jsonl"
    append_line(path, json.dumps({"step": 1}))
    before = path.read_bytes()
    real_write = os.write

    def half_then_full(fd, data):
        real_write(fd, data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", half_then_full)
    with pytest.raises(CbdmError, match="No space left") as exc:
        append_line(path, json.dumps({"step": 2, "loss": 0.5}))
    monkeypatch.undo()
    assert "\n" not in str(exc.value)
    assert path.read_bytes() == before


def test_short_disk_prunes_before_writing_only_what_keep_last_would_prune(tmp_path, monkeypatch):
    import cbdm_core.training.checkpointing as keeper_mod

    ckdir = tmp_path / "run" / "checkpoints"
    ckdir.mkdir(parents=True)
    for s in (1, 2, 3):
        (ckdir / f"ckpt-{s:08d}.safetensors").write_bytes(b"x" * 1000)
    trainer = Trainer(TrainConfig(), tmp_path / "run")
    free = {"bytes": 10 ** 12}
    monkeypatch.setattr(keeper_mod.shutil, "disk_usage", lambda p: type("U", (), {"free": free["bytes"]})())
    trainer._make_room(keep_last=2, estimate=1000)
    assert [s for s, _ in list_checkpoints(ckdir)] == [1, 2, 3]  # room enough: nothing removed early
    free["bytes"] = 10
    trainer._make_room(keep_last=2, estimate=1000)
    assert [s for s, _ in list_checkpoints(ckdir)] == [3]  # keep_last 2: the newest stays beside the new one
    trainer._make_room(keep_last=1, estimate=1000)
    assert list_checkpoints(ckdir) == []  # --keep-last 1 asks for exactly this


# -- 5. integrity --------------------------------------------------------------------------------------------------


def test_flipped_bit_in_a_checkpoint_is_named(tmp_path, monkeypatch):
    run = write_toy_run(tmp_path / "run")
    ckpt = list_checkpoints(run / "checkpoints")[0][1]
    _flip_last_byte(ckpt)
    line = cli_fails("sample", run, "--out", tmp_path / "s", "--steps", "2", "--no-progress", match=str(ckpt))
    assert "content hash" in line
    monkeypatch.setenv("CBDM_VERIFY", "0")  # the opt-out loads it anyway
    load_checkpoint(ckpt)


def test_checkpoint_without_a_hash_still_loads(tmp_path):
    run = write_toy_run(tmp_path / "run")
    ckpt = list_checkpoints(run / "checkpoints")[0][1]
    tensors, meta = load_tensors(ckpt)
    meta.pop("cbdm_sha256")
    save_file(tensors, str(ckpt), metadata=meta)  # as an older cbdm wrote it
    assert load_run(run).step == 0


def test_flipped_bit_in_a_feature_cache_is_recomputed(tmp_path):
    calls = []

    def compute():
        calls.append(1)
        return FeatureSet(torch.arange(12.0).view(4, 3), None, None, "x")

    cached_features(tmp_path, "k", compute)
    _flip_last_byte(cache_path(tmp_path, "k"))
    with pytest.warns(UserWarning, match="content hash"):
        fs = cached_features(tmp_path, "k", compute)
    assert len(calls) == 2 and torch.equal(fs.features, torch.arange(12.0).view(4, 3))
    with pytest.raises(IntegrityError):
        _flip_last_byte(cache_path(tmp_path, "k"))
        load_tensors(cache_path(tmp_path, "k"))


# -- 6. recovery ------------------------------------------------------------------------------------------------------


def test_resume_recovers_from_corrupt_checkpoints_temps_and_duplicate_metrics(tmp_path):
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({**TINY, "ckpt_every": 1, "keep_last": 10, "log_every": 1,
                                                     "optim": {**TINY["optim"], "steps": 4}}))
    run = tmp_path / "run"
    cli_ok("train", "--config", tmp_path / "c.yaml", "--out", run, "--no-progress")
    newest = list_checkpoints(run / "checkpoints")[-1][1]
    _flip_last_byte(newest)
    (run / "checkpoints" / ".tmpab12cd").write_bytes(b"x" * 100)  # left by a killed writer
    (run / "checkpoints" / ".ckpt-00000005.safetensors.x1.tmp").write_bytes(b"x")
    res = invoke_cli("train", "--out", run, "--resume", "--steps", "6", "--no-progress")
    assert res.exit_code == 0, res.output
    assert "older checkpoint" in res.output and "Traceback" not in res.output
    assert newest.with_name(newest.name + ".corrupt").exists()  # set aside, not deleted
    assert not _temps(run)
    steps = [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_resume_of_a_run_killed_before_its_first_checkpoint_starts_at_step_0(tmp_path):
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(TINY))
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"step": 2}\n{"step"')  # a torn line from the killed run
    cli_ok("train", "--config", tmp_path / "c.yaml", "--out", run, "--resume", "--no-progress")
    assert [s for s, _ in list_checkpoints(run / "checkpoints")] == [6]
    steps = [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [2, 4, 6]


# -- 7. silent wrong data ----------------------------------------------------------------------------------------------


def test_non_square_folder_images_are_refused(tmp_path):
    for c in ("a", "b"):
        (tmp_path / c).mkdir()
        Image.new("L", (12, 8)).save(tmp_path / c / "0.png")
    with pytest.raises(CbdmError, match="square") as exc:
        load_folder(DatasetOptions(root=tmp_path))
    assert "\n" not in str(exc.value)


def test_16_bit_png_is_scaled_not_saturated(tmp_path):
    for c, level in (("a", 128 * 257), ("b", 65535)):
        (tmp_path / c).mkdir()
        Image.fromarray(np.full((4, 4), level, dtype=np.uint16)).save(tmp_path / c / "0.png")
    ds = load_folder(DatasetOptions(root=tmp_path))
    assert sorted(int(ds.images[i].max()) for i in range(2)) == [128, 255]


# -- 8. one line, not a traceback -------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [float("nan"), float("inf"), torch.tensor(float("nan"))])
def test_nonfinite_step_in_an_imported_checkpoint(value, tmp_path):
    with pytest.raises(CheckpointError, match="step") as exc:
        _step_of(value, tmp_path / "ref.pt")
    assert "\n" not in str(exc.value)


def test_malformed_optimizer_metadata_on_resume(tmp_path):
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({**TINY, "optim": {**TINY["optim"], "steps": 2}}))
    run = tmp_path / "run"
    cli_ok("train", "--config", tmp_path / "c.yaml", "--out", run, "--no-progress")
    ckpt = list_checkpoints(run / "checkpoints")[-1][1]
    tensors, meta = load_tensors(ckpt)
    meta["optim"] = '{"param_groups": 5, "scalars": {"x": 1}}'
    save_tensors(ckpt, tensors, meta)
    before = ckpt.read_bytes()
    cli_fails("train", "--out", run, "--resume", "--steps", "3", "--no-progress", match="optimizer state")
    assert list_checkpoints(run / "checkpoints")[-1][1] == ckpt
    assert ckpt.read_bytes() == before


def test_unwritable_sample_and_classifier_outputs(tmp_path):
    run = write_toy_run(tmp_path / "run")
    (tmp_path / "file").write_text("x")
    cli_fails("sample", run, "--out", tmp_path / "file" / "s", "--steps", "2", "--no-progress", match="sample folder")
    start = time.perf_counter()
    line = cli_fails("eval", "train-classifier", "--dataset", "digits", "--epochs", "50",
                     "--out", tmp_path / "file" / "c.safetensors", match="classifier file")
    assert time.perf_counter() - start < 20 and "epoch" not in line


def test_unwritable_feature_cache_is_a_warning(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.warns(UserWarning, match="feature cache not written"):
        fs = cached_features(tmp_path / "file" / "cache", "k", lambda: FeatureSet(torch.ones(2, 2), None, None, "x"))
    assert torch.equal(fs.features, torch.ones(2, 2))


def test_kid_subset_size_must_be_at_least_two():
    with pytest.raises(CbdmError, match="subset_size"):
        kid(np.random.rand(5, 3), np.random.rand(5, 3), subset_size=0)


def test_sigint_during_start_up_is_quiet(tmp_path):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "cbdm_cli", "train", "--out", str(tmp_path / "run"),
                             "--no-progress"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(0.5)  # inside the imports
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert len([ln for ln in err.splitlines() if ln.startswith("Error:")]) == 1


# -- 9. file modes -------------------------------------------------------------------------------------------------------


def test_run_files_follow_the_umask(tmp_path):
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({**TINY, "optim": {**TINY["optim"], "steps": 1}}))
    old = os.umask(0o022)
    try:
        cli_ok("train", "--config", tmp_path / "c.yaml", "--out", tmp_path / "run", "--no-progress")
    finally:
        os.umask(old)
    run = tmp_path / "run"
    for path in (run / "config.yaml", list_checkpoints(run / "checkpoints")[0][1], run / "metrics.jsonl"):
        assert path.stat().st_mode & 0o777 == 0o644, path
