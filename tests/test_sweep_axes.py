"""``cbdm sweep RUN --axis NAME=VALUES``: sweeps over a sampling-time method's option
(classifier guidance scale, Boost-and-Skip gamma / skip), one axis or a grid of two, on an
untrained digits-lt run; and the one-line errors of a bad axis."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from cbdm_core.build import build_schedule
from cbdm_core.config import TrainConfig
from cbdm_core.features.classifier_net import ClassifierOptions, SmallClassifier, save_classifier
from cbdm_core.guidance_classifier.net import NoisyClassifier, NoisyClassifierOptions, save_noisy_classifier

from .helpers import cli_fails, cli_ok
from .run_helpers import write_digits_run


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)
    yield


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("axes")
    torch.manual_seed(0)  # an untrained feature network: the sweep's numbers only need to differ by point
    features = SmallClassifier(ClassifierOptions(in_channels=1, num_classes=10, image_size=8, width=4)).eval()
    save_classifier(features, root / "features.safetensors", {"dataset": "digits", "class_names": list("0123456789")})
    run = write_digits_run(root / "run", p_uncond=0.1)
    cfg = TrainConfig.model_validate(json.loads(json.dumps(_run_config(run))))
    torch.manual_seed(1)  # an untrained noise-aware classifier: its gradient is all the sweep needs
    clf = NoisyClassifier(NoisyClassifierOptions(in_channels=1, num_classes=10, image_size=8, width=8, levels=1,
                                                 emb_dim=8))
    save_noisy_classifier(clf, build_schedule(cfg), root / "noisy.safetensors", {})
    return root


def _run_config(run: Path) -> dict:
    from cbdm_core.checkpoint import list_checkpoints, load_checkpoint

    return load_checkpoint(list_checkpoints(run / "checkpoints")[-1][1]).config


def _common(work: Path, out: Path) -> list:
    return ["--num", "20", "--batch-size", "20", "--metrics", "fid", "--out", out, "--extractor", "classifier",
            "--classifier", work / "features.safetensors", "--cache-dir", work / "cache", "--device", "cpu"]


def _manifest(folder: str) -> dict:
    return json.loads((Path(folder) / "manifest.json").read_text())["settings"]


def test_classifier_scale_sweep_one_point_per_value(work):
    out = work / "clf-sweep"
    args = ["sweep", work / "run", "--axis", "classifier.scale=0,100", "-G", f"classifier={work / 'noisy.safetensors'}",
            "--steps", "2", *_common(work, out)]
    res = cli_ok(*args)
    doc = json.loads((out / "sweep.json").read_text())
    assert doc["parameter"] == "classifier.scale" and doc["parameters"] == ["classifier.scale"]
    assert [p["value"] for p in doc["points"]] == [0, 100]
    for p in doc["points"]:  # each point a `cbdm sample` folder whose manifest records the value
        settings = _manifest(p["samples"])
        assert settings["guidance_method"] == "classifier"  # adopted from the axis name
        assert settings["guidance_options"]["scale"] == p["value"] and "classifier" in settings["guidance_files_sha256"]
        assert Path(p["samples"]).name == f"classifier.scale={p['value']:g}"
        assert json.loads((Path(p["samples"]) / "metrics.json").read_text())["values"]["fid"] == p["metrics"]["fid"]
    assert doc["points"][0]["metrics"]["fid"] != doc["points"][1]["metrics"]["fid"]  # the scale changes the images
    assert "best classifier.scale:" in res.output and (out / "sweep.png").stat().st_size > 1000
    shard = Path(doc["points"][1]["samples"]) / "shard-00000.npz"
    before = shard.stat().st_mtime_ns
    cli_ok(*args)  # a re-run keeps every finished point
    assert shard.stat().st_mtime_ns == before


def test_boost_gamma_sweep_on_ddpm_and_a_grid_of_two(work):
    out = work / "bns"
    cli_ok("sweep", work / "run", "--axis", "ddpm.boost_gamma=1,3", *_common(work, out))
    doc = json.loads((out / "sweep.json").read_text())
    assert doc["parameter"] == "ddpm.boost_gamma" and [p["value"] for p in doc["points"]] == [1, 3]
    for p in doc["points"]:
        settings = _manifest(p["samples"])
        assert settings["sampler"] == "ddpm" and settings["steps"] == 50  # the axis picked ddpm and its T steps
        assert settings["sampler_options"]["boost_gamma"] == p["value"]
    grid = work / "bns-grid"
    res = cli_ok("sweep", work / "run", "--sampler", "ddim", "--steps", "3", "--axis", "sampler.skip=0,1",
                 "--grid", "0,1", *_common(work, grid))
    doc = json.loads((grid / "sweep.json").read_text())
    assert doc["parameters"] == ["ddim.skip", "guidance"]
    assert [tuple(p["values"].values()) for p in doc["points"]] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    for p in doc["points"]:
        settings = _manifest(p["samples"])
        assert settings["sampler_options"]["skip"] == p["values"]["ddim.skip"]
        assert settings["guidance"] == p["values"]["guidance"]
    assert Path(doc["points"][3]["samples"]).name == "ddim.skip=1_w1"
    assert "best ddim.skip x guidance: ddim.skip = " in res.output


@pytest.mark.parametrize("args, match", [
    (["--axis", "classifier.scal=1"], "guidance 'classifier' has no option 'scal'; its options: classifier, scale"),
    (["--guidance-method", "cfg", "--axis", "classifier.scale=1"], "but the sweep samples with guidance 'cfg'"),
    (["--axis", "classifier.scale=0,1", "--axis", "minority.scale=0,1"], "with guidance 'classifier' (--guidance-method"),
    (["--axis", "cfg.scale=1"], "has no options (sweep its strength w with --grid)"),
    (["--sampler", "ddim", "--axis", "ddpm.boost_gamma=2"], "but the sweep samples with sampler 'ddim'"),
    (["--axis", "ddpm.var_type=1"], "not a number; only numeric options"),
    (["--axis", "nope.scale=1"], "'nope' is neither a guidance"),
    (["--axis", "scale=1"], "--axis scale: name w"),
    (["--axis", "ddim.skip=0.5"], "takes whole numbers"),
    (["--axis", "ddim.skip=0,9", "--steps", "3"], "sweep point ddim.skip = 9: skip must lie in 0..2"),
    (["--axis", "ddim.boost_gamma=0,1"], "sweep point ddim.boost_gamma = 0: invalid option boost_gamma"),
    (["--axis", "classifier.scale=-1,1", "-G", "classifier=NOISY"], "sweep point classifier.scale = -1: invalid option"),
    (["--axis", "classifier.scale=1", "--grid", "1", "-G", "classifier=NOISY"], "cfg+classifier"),
    (["--axis", "classifier.scale=1", "-G", "classifier=NOISY", "-G", "scale=2"], "do not also give -G scale"),
    (["--axis", "ddim.skip=0,1", "--axis", "ddim.boost_gamma=1,2", "--grid", "0,1"], "at most 2 settings"),
    (["--axis", "w=0,1", "--grid", "0,1"], "--grid or --axis w="),
    (["--axis", "classifier.scale"], "--axis takes NAME=VALUES"),
])
def test_axis_errors_are_one_line_before_any_sampling(work, args, match):
    out = work / "never"
    args = [f"classifier={work / 'noisy.safetensors'}" if a == "classifier=NOISY" else a for a in args]
    cli_fails("sweep", work / "run", *args, *_common(work, out), match=match)
    assert not out.exists()


def test_training_sweeps_take_the_sampling_flags_and_check_them_before_training(work):
    out = work / "never-trained"
    cli_fails("sweep", "tau", "--values", "0", "--guidance-method", "nope", *_common(work, out),
              match="unknown guidance 'nope'")
    cli_fails("sweep", "option", "cbdm.tau", "--values", "0.001", "--guidance-method", "classifier", "-G", "scal=1",
              "-G", f"classifier={work / 'noisy.safetensors'}",
              *_common(work, out), match="unknown option 'scal'")
    assert not out.exists()
