"""Issue 24 ("reliability round three"): a study continues after a crash before the first
checkpoint, every read of a file cbdm wrote is hash-checked, cache writes never abort an
evaluation, a damaged metrics.jsonl loses nothing on resume, identical weights hash alike.

Each test reproduces the reported failure; it failed before the fix.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from cbdm_core import locks
from cbdm_core.checkpoint import list_checkpoints
from cbdm_core.config import dump_config_yaml
from cbdm_core.data import dataset_options, load_dataset
from cbdm_core.evaluation.prepared import ReferenceRadii
from cbdm_core.experiments.compare import plan_study
from cbdm_core.experiments.protocol import parse_protocol
from cbdm_core.features import FeatureSet, cache_path, cached_features
from cbdm_core.features.auto_classifier import ensure_classifier
from cbdm_core.tensor_io import IntegrityError, load_tensors

from .helpers import TINY, cli_fails, cli_ok, invoke_cli
from .run_helpers import LockHolder, tiny_protocol, write_protocol, write_toy_run


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)


def _dead_pid() -> int:
    """The PID of a process that has exited (what a crashed run leaves in its lock file)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait(timeout=30)
    return proc.pid


# -- item 2: a study continues after a crash before a run's first checkpoint ---------------------------------


# In-process, and in worker processes (slow: each spawned worker imports torch).
@pytest.mark.parametrize("jobs", [1, pytest.param(2, marks=pytest.mark.slow)])
def test_compare_restarts_a_run_that_crashed_before_its_first_checkpoint(tmp_path, jobs):
    raw = tiny_protocol(tmp_path, seeds=[0], methods=[{"method": "ddpm"}], guidance={"fixed": 1.0})
    proto = write_protocol(tmp_path / "tiny.yaml", raw)
    out = tmp_path / "study"
    run = out / "runs" / "ddpm" / "seed-0"
    run.mkdir(parents=True)
    # What a run killed before its first checkpoint leaves: its config, some metrics, a lock file.
    cfg = plan_study(parse_protocol(raw), out).configs[("ddpm", 0)]
    (run / "config.yaml").write_text(dump_config_yaml(cfg))
    (run / "metrics.jsonl").write_text('{"step": 1, "loss": 9.0}\n{"step": 2, "loss": 9.0}\n')
    (run / "tensorboard").mkdir()
    (run / "tensorboard" / "events.out").write_bytes(b"old")
    # A live process holding the folder: never touched, one-line refusal.
    holder = LockHolder(run)
    try:
        before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file() and p.name != locks.LOCK_NAME}
        cli_fails("compare", proto, "--out", out, "--no-progress", "--jobs", jobs,
                  match="in use by another cbdm process")
        assert {p.name: p.read_bytes() for p in run.iterdir()
                if p.is_file() and p.name != locks.LOCK_NAME} == before
    finally:
        holder.kill()
    (run / locks.LOCK_NAME).write_text(f"{_dead_pid()}\n")  # stale: its holder is dead
    cli_ok("compare", proto, "--out", out, "--no-progress", "--jobs", jobs)
    steps = [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2] and (out / "compare.json").is_file()
    assert not (run / "tensorboard" / "events.out").exists()


# -- item 3: every read of a file cbdm wrote is hash-checked -------------------------------------------------


def _flip_data_byte(path: Path) -> None:
    """Flip one bit in the middle of the tensor data: the JSON header (and so the file's
    readability) stays intact, only the numbers change."""
    data = bytearray(path.read_bytes())
    start = 8 + struct.unpack("<Q", bytes(data[:8]))[0]
    data[(start + len(data)) // 2] ^= 0x40
    path.write_bytes(bytes(data))
    with pytest.raises(IntegrityError):
        load_tensors(path)


@pytest.fixture(scope="module")
def auto_classifier(tmp_path_factory) -> Path:
    """A digits classifier trained by the ``classifier: auto`` path (one epoch)."""
    return ensure_classifier(tmp_path_factory.mktemp("clf") / "classifier-digits.safetensors", "digits", None,
                             epochs=1)


@pytest.fixture(scope="module")
def digits_npz(tmp_path_factory) -> Path:
    ds = load_dataset("digits", dataset_options(split="test"))
    path = tmp_path_factory.mktemp("npz") / "s.npz"
    np.savez(path, images=ds.images[:120].permute(0, 2, 3, 1).numpy(), labels=ds.labels[:120].numpy())
    return path


def _eval_args(npz: Path, classifier: Path, cache: Path) -> list:
    return [npz, "--dataset", "digits", "--extractor", "classifier", "--classifier", classifier, "--device", "cpu",
            "--cache-dir", cache, "--metrics", "fid,precision_recall,density_coverage"]


def test_corrupt_feature_cache_is_recomputed(tmp_path):
    calls = []

    def compute() -> FeatureSet:
        calls.append(1)
        return FeatureSet(torch.arange(64.0).view(16, 4), None, None, "x")

    cached_features(tmp_path, "k", compute)
    _flip_data_byte(cache_path(tmp_path, "k"))
    with pytest.warns(UserWarning, match="content hash"):
        fs = cached_features(tmp_path, "k", compute)
    assert len(calls) == 2 and torch.equal(fs.features, torch.arange(64.0).view(16, 4))


def test_corrupt_radii_cache_is_recomputed_not_used(tmp_path):
    good = torch.linspace(0.5, 2.0, 64)
    calls = []

    def compute() -> torch.Tensor:
        calls.append(1)
        return good.clone()

    ReferenceRadii(tmp_path, "ref").get("k3", compute)
    (path,) = tmp_path.glob("*radii*.safetensors")
    _flip_data_byte(path)
    with pytest.warns(UserWarning, match="content hash"):
        radii = ReferenceRadii(tmp_path, "ref").get("k3", compute)
    assert len(calls) == 2 and torch.equal(radii, good)
    assert torch.equal(load_tensors(path)[0]["radii"], good)  # rewritten intact


def test_corrupt_radii_cache_does_not_change_eval_values(tmp_path, digits_npz, auto_classifier):
    """The reported case: precision 0.137 -> 1.0 and density 0.042 -> 100 from a damaged radii file."""
    args = _eval_args(digits_npz, auto_classifier, tmp_path / "cache")
    cli_ok("eval", *args, "--out", tmp_path / "a")
    radii = sorted((tmp_path / "cache" / "features").glob("*radii*.safetensors"))
    assert radii
    for path in radii:
        _flip_data_byte(path)
    res = cli_ok("eval", *args, "--out", tmp_path / "b")
    assert "radii cache" in res.output and "Traceback" not in res.output
    first, second = (json.loads((tmp_path / d / "metrics.json").read_text())["values"] for d in "ab")
    assert first == second


def test_corrupt_auto_classifier_is_trained_again(tmp_path, auto_classifier):
    path = tmp_path / "classifier-digits.safetensors"
    path.write_bytes(auto_classifier.read_bytes())
    assert ensure_classifier(path, "digits", None, epochs=1) == path  # intact: kept as is
    _flip_data_byte(path)
    with pytest.warns(UserWarning, match="content hash"):
        ensure_classifier(path, "digits", None, epochs=1)
    assert load_tensors(path)[0].keys() == load_tensors(auto_classifier)[0].keys()


def test_a_killed_writers_temporary_classifier_and_radii_files_are_removed(tmp_path, auto_classifier):
    """Found by tests/test_fault_injection_eval.py: the temporary file of a classifier or radii
    write cut short by SIGKILL stayed in the cache for good (nothing else removes it there)."""
    path = tmp_path / "classifier-digits.safetensors"
    path.write_bytes(auto_classifier.read_bytes())
    stale = tmp_path / ".classifier-digits.safetensors.k1ll3d.tmp"
    others = tmp_path / ".ckpt-00000001.safetensors.k1ll3d.tmp"  # not the classifier's: not ours to remove
    for p in (stale, others):
        p.write_bytes(b"half a file")
    assert ensure_classifier(path, "digits", None, epochs=1) == path
    assert not stale.exists() and others.exists()
    radii_tmp = tmp_path / "f" / ".ref-radii-k3-x.safetensors.k1ll3d.tmp"
    radii_tmp.parent.mkdir()
    radii_tmp.write_bytes(b"half a file")
    ReferenceRadii(tmp_path / "f", "ref").get("k3", lambda: torch.ones(8))
    assert not radii_tmp.exists() and [p.name for p in (tmp_path / "f").glob("*.tmp")] == []


def test_second_process_on_a_cold_classifier_waits_for_the_first_ones(tmp_path, auto_classifier, monkeypatch, caplog):
    import logging
    import threading
    import time

    from cbdm_core.features import auto_classifier as auto

    monkeypatch.setenv("CBDM_CACHE_WAIT", "30")
    trained = []
    monkeypatch.setattr(auto, "_train_into", lambda path, *a, **k: trained.append(path) or path)
    path = tmp_path / "classifier-digits.safetensors"
    holder = LockHolder(tmp_path)  # the first evaluation, training the classifier
    with caplog.at_level(logging.WARNING, logger="cbdm"):
        thread = threading.Thread(target=lambda: ensure_classifier(path, "digits", None, epochs=1))
        try:
            thread.start()
            time.sleep(0.6)
            assert thread.is_alive()  # waiting, not training
            path.write_bytes(auto_classifier.read_bytes())  # what the first one wrote
        finally:
            holder.proc.kill()
            holder.proc.wait(timeout=10)
        thread.join(timeout=20)
    assert not thread.is_alive() and not trained  # used the first one's classifier
    assert any(f"PID {holder.proc.pid}" in r.getMessage() for r in caplog.records if "waiting for the classifier" in
               r.getMessage())


@pytest.mark.parametrize("command", ["sample", "resume"])
def test_corrupt_checkpoint_is_a_one_line_refusal(tmp_path, command):
    run = write_toy_run(tmp_path / "run")
    ckpt = list_checkpoints(run / "checkpoints")[0][1]
    _flip_data_byte(ckpt)
    if command == "sample":
        args = ["sample", run, "--out", tmp_path / "s", "--steps", "2", "--no-progress"]
    else:  # the only checkpoint: nothing older to fall back on
        args = ["train", "--out", run, "--resume", "--no-progress"]
    line = cli_fails(*args, match=str(ckpt.name))
    assert "content hash" in line or "intact" in line


# -- item 4: an unwritable cache is a warning; an unwritable --out fails before any work -----------------------


@pytest.mark.parametrize("how", ["parent is a file", "disk full"])
def test_unwritable_cache_dir_is_a_warning_after_the_work(tmp_path, digits_npz, auto_classifier, monkeypatch, how):
    cache = tmp_path / "cache"
    if how == "parent is a file":  # fails for root too, unlike chmod
        (tmp_path / "file").write_text("x")
        cache = tmp_path / "file" / "cache"
    else:
        import cbdm_core.tensor_io as tensor_io

        def full(*_a, **_k):
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(tensor_io, "save_file", full)
    res = invoke_cli("eval", *_eval_args(digits_npz, auto_classifier, cache), "--out", tmp_path / "out")
    assert res.exit_code == 0, res.output
    assert "radii cache not written" in res.output and "feature cache not written" in res.output
    doc = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert doc["values"]["precision"] is not None


def test_unwritable_eval_out_fails_before_any_work(tmp_path, digits_npz, auto_classifier, monkeypatch):
    import cbdm_core.atomic as atomic
    import cbdm_core.evaluation as evaluation
    import cbdm_core.evaluation.prepared as prepared

    def no_work(*_a, **_k):
        raise AssertionError("evaluation started before --out was checked")

    monkeypatch.setattr(evaluation, "evaluate", no_work)
    monkeypatch.setattr(prepared, "prepare_reference", no_work)
    args = _eval_args(digits_npz, auto_classifier, tmp_path / "cache")
    (tmp_path / "file").write_text("x")
    cli_fails("eval", *args, "--out", tmp_path / "file" / "out", match="is a file")

    def full(_fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(atomic, "_probe_write", full)
    cli_fails("eval", *args, "--out", tmp_path / "new" / "out", match="No space left")
    assert not (tmp_path / "new").exists()  # nothing created by the check


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders (CI runs as root)")
def test_read_only_eval_out_and_cache(tmp_path, digits_npz, auto_classifier):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        cli_fails("eval", *_eval_args(digits_npz, auto_classifier, tmp_path / "cache"), "--out", ro / "out",
                  match="report folder")
        res = invoke_cli("eval", *_eval_args(digits_npz, auto_classifier, ro / "cache"), "--out", tmp_path / "o")
        assert res.exit_code == 0 and "cache not written" in res.output, res.output
    finally:
        ro.chmod(0o755)


# -- item 13: a damaged metrics.jsonl loses nothing on resume -------------------------------------------------------


@pytest.mark.parametrize("bad", ['{"step": 2, "loss": 0.1', '{"step": "x"}', '{"step": null}', '{"step": 1e400}',
                                 "not json", '["step", 2]'])
def test_resume_keeps_unreadable_metrics_lines_aside_and_cuts_only_at_the_resume_step(tmp_path, bad):
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({**TINY, "ckpt_every": 4, "keep_last": 10, "log_every": 1,
                                                     "optim": {**TINY["optim"], "steps": 6}}))
    run = tmp_path / "run"
    cli_ok("train", "--config", tmp_path / "c.yaml", "--out", run, "--no-progress")
    path = run / "metrics.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    lines[1] = bad + "\n"  # step 2's record damaged, in the middle of the file
    path.write_text("".join(lines))
    (run / "checkpoints" / "ckpt-00000006.safetensors").unlink()  # resume from step 4
    res = invoke_cli("train", "--out", run, "--resume", "--steps", "8", "--no-progress")
    assert res.exit_code == 0 and "Traceback" not in res.output, res.output
    steps = [json.loads(x)["step"] for x in path.read_text().splitlines()]
    assert steps == [1, 3, 4, 5, 6, 7, 8]  # only the steps after the checkpoint were cut (and redone)
    assert (run / "metrics.jsonl.corrupt").read_text() == bad + "\n"


# -- item 17: identical weights, identical files and identity ------------------------------------------------------


def test_same_tensors_and_metadata_give_identical_files(tmp_path):
    from cbdm_core.tensor_io import save_tensors

    tensors = {"w": torch.arange(6.0).view(2, 3), "b": torch.ones(3)}
    meta = {"format": "f", "options": "{}", "meta": '{"a": 1}', "dataset": "digits", "note": "é \n \"q\""}
    files = []
    for i in range(6):  # the writer's metadata order is random for every file it writes
        save_tensors(tmp_path / f"{i}.safetensors", tensors, meta)
        files.append((tmp_path / f"{i}.safetensors").read_bytes())
    assert all(f == files[0] for f in files)
    loaded, got = load_tensors(tmp_path / "0.safetensors")
    assert torch.equal(loaded["w"], tensors["w"]) and {k: got[k] for k in meta} == meta


def test_identical_classifier_weights_share_one_identity(tmp_path, auto_classifier):
    from cbdm_core.features import load_classifier, save_classifier
    from cbdm_core.features.classifier import ClassifierExtractor

    again = ensure_classifier(tmp_path / "again.safetensors", "digits", None, epochs=1)  # a study re-run
    assert again.read_bytes() == auto_classifier.read_bytes()
    model = load_classifier(auto_classifier)
    save_classifier(model, tmp_path / "renamed.safetensors", {"note": "other metadata, same weights"})
    keys = {ClassifierExtractor(p).cache_key for p in (auto_classifier, again, tmp_path / "renamed.safetensors")}
    assert len(keys) == 1
    with torch.no_grad():
        next(model.parameters()).add_(1e-3)
    save_classifier(model, tmp_path / "changed.safetensors")
    assert ClassifierExtractor(tmp_path / "changed.safetensors").cache_key not in keys
