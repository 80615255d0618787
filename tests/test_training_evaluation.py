"""FID/KID every N training steps (issue 17, ``evaluate.every``): records, unchanged training,
resume, and one-line errors."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

from cbdm_core.config import parse_train_config
from cbdm_core.training.monitor import evaluation_line

from .helpers import MONITOR_OVERRIDES, assert_same_final_checkpoint, cli_fails, cli_ok

# The tiny config of this file's runs: the monitoring tests' smaller net (with dropout) and a cheap
# evaluation: 20 samples, 2 DDIM steps, a one-epoch classifier.
EVAL = {**MONITOR_OVERRIDES, "model.options.dropout": 0.1, "evaluate": {"num": 20, "steps": 2, "classifier_epochs": 1}}


@pytest.fixture(scope="module", autouse=True)
def _own_cache(tmp_path_factory):
    # Reference features stay out of the user's cache, and are shared by this file's runs:
    # their one-epoch classifiers are trained alike, so the features are computed once.
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CBDM_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield


@pytest.fixture(scope="module")
def classifier(tmp_path_factory, _own_cache) -> Path:
    """A one-epoch digits classifier file, shared by the tests that do not test training one."""
    from cbdm_core.features.auto_classifier import ensure_classifier

    return ensure_classifier(tmp_path_factory.mktemp("clf") / "clf.safetensors", "digits-lt", None, epochs=1)


def _records(run: Path) -> tuple[list[dict], list[dict]]:
    """(training records, evaluation records) of a run's metrics.jsonl."""
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r for r in records if "eval_seconds" not in r], [r for r in records if "eval_seconds" in r]


def test_evaluation_records_at_their_steps(tmp_path, tiny_config):
    cfg = tiny_config.write(tmp_path, EVAL, optim={"steps": 6})
    out = tmp_path / "run"
    tb = ["--log", "tensorboard"] if importlib.util.find_spec("tensorboard") else []
    res = cli_ok("train", "--config", cfg, "--out", out, "--no-progress", "--evaluate-every", 3, *tb)
    train, evals = _records(out)
    assert [r["step"] for r in train] == [2, 4, 6]  # the loss intervals are unchanged
    assert [r["step"] for r in evals] == [3, 6]
    for r in evals:
        assert set(r) == {"step", "time", "elapsed", "eval_fid", "eval_kid", "eval_seconds", "eval_num"}
        assert math.isfinite(r["eval_fid"]) and math.isfinite(r["eval_kid"]) and r["eval_fid"] >= 0
        assert r["eval_num"] == 20 and r["eval_seconds"] > 0
    assert "eval step 3: fid " in res.output and "eval step 6: fid " in res.output
    assert (out / "eval-classifier.safetensors").is_file()  # trained once into the run folder
    assert res.output.count("training the digits-lt feature classifier") == 1
    if tb:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        acc = EventAccumulator(str(out / "tensorboard"))
        acc.Reload()
        assert [e.step for e in acc.Scalars("eval/fid")] == [3, 6]
        assert {"eval/kid", "eval/seconds", "train/total"} <= set(acc.Tags()["scalars"])


def test_evaluation_leaves_training_unchanged(tmp_path, classifier, tiny_config):
    cfg = tiny_config.write(tmp_path, EVAL)
    with_eval, without = tmp_path / "with", tmp_path / "without"
    cli_ok("train", "--config", cfg, "--out", with_eval, "--no-progress", "--evaluate-every", 2,
           "--evaluate-classifier", classifier)
    cli_ok("train", "--config", cfg, "--out", without, "--no-progress")
    assert [r["step"] for r in _records(with_eval)[1]] == [2, 4] and not _records(without)[1]
    assert_same_final_checkpoint(with_eval, without, 4)


def test_evaluation_keeps_rng(tmp_path, classifier, tiny_config):
    from cbdm_core.schedules import LinearSchedule
    from cbdm_core.training.evaluation import TrainingEvaluator

    from .helpers import tiny_unet

    cfg = parse_train_config(tiny_config(EVAL, evaluate={"every": 1, "classifier": str(classifier)}))
    evaluator = TrainingEvaluator(cfg, tmp_path, num_classes=10, chw=(1, 8, 8), device=torch.device("cpu"))
    evaluator.prepare()
    net = tiny_unet(num_classes=10).eval()
    torch.manual_seed(123)
    state = torch.get_rng_state()
    first = evaluator.run(net, LinearSchedule(T=20), 1)
    assert torch.equal(torch.get_rng_state(), state)
    second = evaluator.run(net, LinearSchedule(T=20), 2)
    # Fixed labels and noise: the same weights give the same numbers.
    assert first["eval_fid"] == second["eval_fid"] and first["eval_kid"] == second["eval_kid"]


def test_resume_evaluates_at_the_same_steps(tmp_path, classifier, tiny_config):
    cfg = tiny_config.write(tmp_path, EVAL)  # 4 steps; the split run stops at 3 and resumes
    straight, split = tmp_path / "straight", tmp_path / "split"
    cli_ok("train", "--config", cfg, "--out", straight, "--no-progress", "--evaluate-every", 2,
           "--evaluate-classifier", classifier)
    cli_ok("train", "--config", cfg, "--out", split, "--no-progress", "--evaluate-every", 2,
           "--evaluate-classifier", classifier, "--steps", 3)
    res = cli_ok("train", "--out", split, "--no-progress", "--resume", "--steps", 4)
    assert "eval step 4:" in res.output and "eval step 2:" not in res.output
    a, b = _records(straight)[1], _records(split)[1]
    assert [r["step"] for r in b] == [2, 4]
    # The same weights at every step, the same samples: the same numbers.
    assert [(r["eval_fid"], r["eval_kid"]) for r in a] == [(r["eval_fid"], r["eval_kid"]) for r in b]


@pytest.mark.parametrize("args, needle", [
    (["--evaluate-every", "-1"], "evaluate.every"),
    (["--evaluate-every", "2", "--evaluate-num", "1"], "evaluate.num"),
    (["--evaluate-every", "2", "--set", "evaluate.metrics=[fid,is]"], "evaluate.metrics"),
    (["--evaluate-every", "2", "--set", "evaluate.metrics=[fid,fid]"], "list each metric once"),
    (["--evaluate-every", "2", "--set", "evaluate.typo=1"], "evaluate.typo: unknown key"),
    (["--evaluate-every", "2", "--evaluate-classifier", "/nonexistent/clf.safetensors"], "does not exist"),
    (["--evaluate-every", "2", "--dataset", "folder", "--data-root", "/nonexistent/folder"],
     "needs a classifier file for a folder dataset"),
    (["--evaluate-every", "2", "--set", "evaluate.sampler=nope"], "evaluate: unknown sampler 'nope'"),
    (["--evaluate-every", "2", "--set", "evaluate.steps=50"], "evaluate: "),
    (["--evaluate-every", "2", "--set", "evaluate.guidance=1", "--p-uncond", "0"], "label dropout"),
])
def test_bad_evaluation_settings_are_one_line(tmp_path, args, needle, tiny_config):
    out = tmp_path / "r"
    cfg = tiny_config.write(tmp_path, EVAL)
    cli_fails("train", "--config", cfg, "--out", out, "--no-progress", *args, match=needle)
    assert not out.exists()  # refused before the run folder is made


def test_wrong_classifier_is_refused_before_training(tmp_path, tiny_config):
    from cbdm_core.features import save_classifier, train_classifier

    path = tmp_path / "rgb.safetensors"  # a classifier of 3-channel 8x8 images; digits are grayscale
    images = torch.randint(0, 256, (8, 3, 8, 8), dtype=torch.uint8)
    save_classifier(train_classifier(images, torch.arange(8) % 2, 2, epochs=1, batch_size=4), path)
    out = tmp_path / "r"
    cfg = tiny_config.write(tmp_path, EVAL)
    cli_fails("train", "--config", cfg, "--out", out, "--no-progress", "--evaluate-every", 2,
              "--evaluate-classifier", path, match="classifier")
    assert not (out / "config.yaml").exists()  # nothing that looks like a run: a re-run needs no --overwrite


def test_evaluation_line():
    line = evaluation_line({"step": 400, "time": 1.0, "elapsed": 2.0, "eval_fid": 12.345, "eval_kid": None,
                            "eval_seconds": 8.21, "eval_num": 500})
    assert line == "eval step 400: fid 12.35  kid --  (500 samples, 8.2 s)"
