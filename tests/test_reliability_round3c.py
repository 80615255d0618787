"""Issue 24 ("reliability round three"), the last Low items: a second evaluation on a cold
feature cache waits for the first, hostile checkpoint metadata, logged loss windows across a
resume.

Each test reproduces the reported failure; it failed before the fix.
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
import time

import pytest
import torch
import yaml

from cbdm_core.features import FeatureSet, cache_path, cached_features
from cbdm_core.features.cache import save_feature_set

from .helpers import TINY, assert_same_final_checkpoint, cli_fails, cli_ok, snapshot
from .run_helpers import LockHolder, write_toy_run


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)


# -- 15. two evaluations on one cold cache ---------------------------------------------------------------


def test_second_evaluation_on_a_cold_cache_waits_and_reads_the_warm_cache(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("CBDM_CACHE_WAIT", "30")
    holder = LockHolder(tmp_path)  # the first evaluation, computing the reference features
    computed, result = [], {}

    def compute() -> FeatureSet:
        computed.append(1)
        return FeatureSet(torch.zeros(2, 3), None, None, "x")

    def second() -> None:
        result["fs"] = cached_features(tmp_path, "k", compute)

    with caplog.at_level(logging.WARNING, logger="cbdm"):
        thread = threading.Thread(target=second)
        try:
            thread.start()
            time.sleep(0.6)
            assert thread.is_alive()  # waiting, not failed
            save_feature_set(cache_path(tmp_path, "k"), FeatureSet(torch.full((2, 3), 7.0), None, None, "x"), "k")
        finally:
            holder.kill()  # the first evaluation finishes: its lock is gone
        thread.join(timeout=20)
    assert not thread.is_alive()
    assert not computed  # read the cache the first one wrote
    assert torch.equal(result["fs"].features, torch.full((2, 3), 7.0))
    waits = [r.getMessage() for r in caplog.records if "waiting for the feature cache" in r.getMessage()]
    assert len(waits) == 1 and f"PID {holder.proc.pid}" in waits[0]


# -- 11. hostile checkpoint metadata -------------------------------------------------------------------------


@pytest.mark.parametrize("over,match", [
    ({"meta_over": {"class_names": ["a"]}}, "class_names must list the model's 3 class names"),
    ({"meta_over": {"class_names": ["a", "x" * 10_000, "c"]}}, "class_names[1] = 'xxx"),
    ({"meta_over": {"class_names": ["a", "../b", "c"]}}, "class_names[1] = '../b'"),
    ({"meta_over": {"class_names": ["a", "b\0", "c"]}}, "class_names[1]"),
    ({"config_over": {"model.options.ch_mult": [1] * 5000}}, "ch_mult: List should have at most 16 items"),
])
def test_hostile_checkpoint_metadata_is_one_short_line(tmp_path, over, match):
    run = write_toy_run(tmp_path / "run", **over)
    before = snapshot(run)
    line = cli_fails("sample", run, "--out", tmp_path / "s", "--steps", "2", "--num", "3", "--format", "png",
                     "--no-progress", match=match)
    assert len(line) < 600
    assert snapshot(run) == before and not (tmp_path / "s").exists()


# -- 14. logged loss means across a resume inside a logging window -------------------------------------


def _loss_records(run) -> dict[int, dict]:
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    drop = ("time", "elapsed", "images_per_sec", "memory_gb")
    return {r["step"]: {k: v for k, v in r.items() if k not in drop} for r in records}


def test_resume_inside_a_logging_window_logs_the_uninterrupted_means(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({**TINY, "log_every": 4, "ckpt_every": 2,
                                   "optim": {**TINY["optim"], "steps": 8}}))
    straight, split = tmp_path / "straight", tmp_path / "split"
    cli_ok("train", "--config", cfg, "--out", straight, "--no-progress")
    # A run killed just after its step-6 checkpoint, in the middle of the 5..8 logging window.
    shutil.copytree(straight, split)
    (split / "checkpoints" / "ckpt-00000008.safetensors").unlink()
    cli_ok("train", "--out", split, "--no-progress", "--resume", "--steps", "8")
    assert_same_final_checkpoint(straight, split, 8)
    want, got = _loss_records(straight), _loss_records(split)
    assert sorted(got) == sorted(want) == [4, 8]
    assert "total" in want[8] and got[8] == want[8]
