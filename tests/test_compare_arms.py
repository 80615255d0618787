"""Sampling arms in ``cbdm compare``: an entry that trains nothing and samples an earlier
method's runs with other sampling (Boost-and-Skip here), its rows in compare.json with the
difference to the baseline, shards with arms merged, per-run file placeholders, bad arms."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from cbdm_core.experiments.compare import plan_study
from cbdm_core.experiments.protocol import parse_protocol

from .helpers import cli_fails, cli_ok
from .run_helpers import TrainerSpy, tiny_protocol, write_protocol

BNS = {"label": "ddpm-bns", "sample_from": "ddpm", "sampling": {"sampler_options": {"boost_gamma": 2.0, "skip": 1}}}


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)


def _arm_protocol(work: Path, seeds: list[int], methods: list[dict] | None = None) -> dict:
    return tiny_protocol(work, seeds=seeds, guidance={"fixed": 1.0},
                         methods=methods or [{"method": "ddpm"}, BNS])


def _images(folder: Path) -> np.ndarray:
    from cbdm_core.sampling.shards import SHARD_GLOB, read_shard

    return np.concatenate([read_shard(f)[0] for f in sorted(folder.glob(SHARD_GLOB))])


def _check_arm(out: Path, seeds: list[int], images: bool = True) -> dict:
    """The arm of study ``out``: the base run's weights, other samples, its cost recorded."""
    doc = json.loads((out / "compare.json").read_text())
    arm = doc["methods"]["ddpm-bns"]
    assert arm["sampling_arm"] == {"sample_from": "ddpm", "sampling": BNS["sampling"]}
    assert not (out / "runs" / "ddpm-bns" / f"seed-{seeds[0]}" / "checkpoints").exists()
    for run, base in zip(arm["runs"], doc["methods"]["ddpm"]["runs"]):
        assert run["run"] == base["run"]  # the same weights ...
        manifest = json.loads((Path(run["report"]["samples"]) / "manifest.json").read_text())
        base_manifest = json.loads((Path(base["report"]["samples"]) / "manifest.json").read_text())
        assert manifest["settings"]["weights_sha256"] == base_manifest["settings"]["weights_sha256"]
        assert manifest["settings"]["sampler_options"] == {"boost_gamma": 2.0, "skip": 1}
        assert manifest["settings"]["seed"] == base_manifest["settings"]["seed"]  # paired noise
        # ... other samples (a merged study keeps the records, not the images)
        assert not images or not np.array_equal(_images(Path(run["report"]["samples"])), _images(Path(base["report"]["samples"])))
    timing = json.loads((Path(arm["runs"][0]["report"]["samples"]) / "sampling-time.json").read_text())
    cost = arm["sampling_cost"]["seconds_per_1000_images"]
    assert cost["per_seed"][str(seeds[0])] == pytest.approx(1000 * timing["seconds"] / 40) and timing["complete"]
    return doc


def test_arm_reuses_weights_is_reported_and_merges(tmp_path, monkeypatch):
    spy = TrainerSpy(monkeypatch)
    a, b = tmp_path / "a", tmp_path / "b"
    for folder, seeds in ((a, [0]), (b, [1])):
        proto = write_protocol(tmp_path / f"{folder.name}.yaml", _arm_protocol(tmp_path, seeds))
        cli_ok("compare", proto, "--out", folder, "--no-progress")
    assert spy.runs == [a / "runs" / "ddpm" / "seed-0", b / "runs" / "ddpm" / "seed-1"]  # the arm trained nothing
    res = cli_ok("compare", proto, "--out", b, "--dry-run")
    assert "sampling arm ddpm-bns: samples ddpm's runs (trains nothing)" in res.output and "1 runs" in res.output
    shard = _check_arm(a, [0])["methods"]["ddpm-bns"]
    merged = tmp_path / "merged"
    cli_ok("compare", "merge", a, b, "--out", merged)
    doc = _check_arm(merged, [0, 1], images=False)
    arm = doc["methods"]["ddpm-bns"]
    assert [r["seed"] for r in arm["runs"]] == [0, 1]
    assert arm["summary"]["fid"]["per_seed"]["0"] == shard["summary"]["fid"]["per_seed"]["0"]
    diff = arm["difference_to_baseline"]["memorization_pixels_tail"]
    assert len(diff["per_seed"]) == 2 and "p_holm" in diff
    assert {t["method"] for t in doc["primary_tests"]} == {"ddpm-bns"}
    assert arm["sampling_cost"]["seconds_per_1000_images"]["n"] == 2  # the timings travel with the records
    md = (merged / "compare.md").read_text()
    assert "## Sampling cost" in md and "| ddpm-bns | ddpm's runs |" in md


def test_per_run_placeholders_resolve_to_the_sampled_run(tmp_path):
    arm = {"label": "clf", "sample_from": "ddpm",
           "sampling": {"guidance_method": "cfg+classifier",
                        "guidance_options": {"classifier": "{run}/clf-{seed}.safetensors", "scale": 2}}}
    proto = parse_protocol(_arm_protocol(tmp_path, [0, 3], [{"method": "ddpm"}, arm]))
    plan = plan_study(proto, tmp_path / "s")  # the files are made after training: not refused yet
    settings = plan.sampling_for("clf", 3)
    assert settings.guidance_options == {"classifier": f"{tmp_path / 's' / 'runs' / 'ddpm' / 'seed-3'}/clf-3.safetensors",
                                         "scale": 2}
    assert settings.guidance_method == "cfg+classifier" and plan.model_dir("clf", 3) == plan.run_dir("ddpm", 3)
    assert [p.kind for p in plan.parts() if p.method == "clf"] == ["report", "report"]


@pytest.mark.parametrize("arm, match", [
    ({"label": "x", "sample_from": "nope", "sampling": {"sampler_options": {"skip": 1}}},
     "sample_from 'nope' must name a trained method listed before it"),
    ({"label": "x", "sample_from": "ddpm", "method": "cbdm", "sampling": {}}, "trains nothing: remove method"),
    ({"label": "x", "sample_from": "ddpm", "steps": 3, "sampling": {}}, "trains nothing: remove steps"),
    ({"sample_from": "ddpm", "sampling": {}}, "needs a label"),
    ({"label": "x", "sample_from": "ddpm"}, "needs sampling:"),
    ({"label": "x", "method": "ddpm", "sampling": {"eta": 1}}, "only for a sampling arm"),
    ({"label": "x", "sample_from": "ddpm", "sampling": {"seed": 1}}, "seed"),
    ({"label": "x", "sample_from": "ddpm", "sampling": {"sampler_options": {"skip": 99}}}, "sampling arm x"),
    ({"label": "x", "sample_from": "ddpm", "sampling": {"sampler_options": {"boost_gama": 2}}}, "boost_gama"),
    ({"label": "x", "sample_from": "ddpm", "sampling": {"guidance_method": "cfg+minority",
                                                         "guidance_options": {"classifier": "no/such.safetensors"}}},
     "does not exist"),
    ({"label": "x", "sample_from": "ddpm", "sampling": {"guidance_method": "cfg+minority",
                                                         "guidance_options": {"classifier": "{run}/m.st", "lvl": 3}}},
     "unknown option 'lvl'"),
    ({"label": "x", "sample_from": "ddpm", "sampling": {"guidance_options": {"classifier": "{runs}/m"}}},
     "names {runs}"),
    ({"label": "x", "method": "ddpm", "train_classifier": {"minority": True}}, "train_classifier: is only for a sampling arm"),
    ({"label": "x", "sample_from": "ddpm", "train_classifier": {"epochs": 1},
      "sampling": {"guidance_method": "cfg+minority", "guidance_options": {"classifier": "m.st"}}},
     "train_classifier needs sampling.guidance_options.classifier naming a per-run file"),
    ({"label": "x", "sample_from": "ddpm", "train_classifier": {"epoch": 1},
      "sampling": {"guidance_options": {"classifier": "{run}/m.st"}}}, "epoch"),
])
def test_bad_arms_give_one_line_errors(tmp_path, arm, match):
    proto = write_protocol(tmp_path / "bad.yaml", _arm_protocol(tmp_path, [0], [{"method": "ddpm"}, arm]))
    cli_fails("compare", proto, "--dry-run", match=match)


def test_missing_per_run_file_stops_the_arm_in_one_line(tmp_path):
    arm = {"label": "clf", "sample_from": "ddpm",
           "sampling": {"guidance_method": "cfg+classifier", "guidance_options": {"classifier": "{run}/clf.st"}}}
    proto = write_protocol(tmp_path / "p.yaml", _arm_protocol(tmp_path, [0], [{"method": "ddpm"}, arm]))
    line = cli_fails("compare", proto, "--out", tmp_path / "s", "--no-progress", match="sampling arm clf seed 0:")
    assert "seed-0/clf.st does not exist" in line and "cbdm train-classifier --noisy" in line
    assert (tmp_path / "s" / "runs" / "ddpm" / "seed-0" / "report-w1" / "metrics.json").is_file()  # kept


def test_arm_trains_its_per_run_classifier_as_a_part_and_keeps_it(tmp_path):
    """train_classifier: the study makes the arm's minority classifier from the sampled run (the
    train-classifier code path), samples with it (recorded by content), and keeps it on resume."""
    from cbdm_core.experiments.provenance import file_digest
    from cbdm_core.guidance_classifier.net import load_noisy_classifier

    arm = {"label": "min", "sample_from": "ddpm",
           "train_classifier": {"minority": True, "levels": 2, "epochs": 1, "n_iter": 1, "distance": "pixel",
                                "respacing": 10, "perturb_t": 5,
                                "width": 4, "bins": 2},
           "sampling": {"guidance_method": "cfg+minority",
                        "guidance_options": {"classifier": "{run}/m-{seed}.safetensors", "scale": 1.0}}}
    proto = _arm_protocol(tmp_path, [0], [{"method": "ddpm"}, arm])
    proto["evaluation"]["metrics"] = ["per_class"]
    proto["primary"] = ["coverage_tail"]
    path = write_protocol(tmp_path / "p.yaml", proto)
    assert "1 arm classifiers" in cli_ok("compare", path, "--out", tmp_path / "s", "--dry-run").output
    cli_ok("compare", path, "--out", tmp_path / "s", "--no-progress")
    clf = tmp_path / "s" / "runs" / "ddpm" / "seed-0" / "m-0.safetensors"
    model, _ = load_noisy_classifier(clf)
    assert model.meta["minority"]["levels"] == 2 and model.meta["source"] == str(clf.parent)
    assert len(model.meta["accuracy_by_t"]) == 2
    doc = json.loads((tmp_path / "s" / "compare.json").read_text())
    assert doc["methods"]["min"]["sampling_arm"]["train_classifier"]["minority"] is True
    samples = Path(doc["methods"]["min"]["runs"][0]["report"]["samples"])
    settings = json.loads((samples / "manifest.json").read_text())["settings"]
    assert settings["guidance_files_sha256"] == {"classifier": file_digest(clf)}
    before = (clf.read_bytes(), clf.stat().st_mtime_ns)
    (samples / "metrics.json").unlink()  # the arm's report is redone; its classifier is not
    cli_ok("compare", path, "--out", tmp_path / "s", "--no-progress")
    assert (clf.read_bytes(), clf.stat().st_mtime_ns) == before


def _noisy_classifier(run: Path, path: Path, seed: int) -> str:
    """An untrained noise-aware classifier on the run's schedule (seed: other weights, other file)."""
    import yaml

    from cbdm_core.build import build_schedule
    from cbdm_core.config import TrainConfig
    from cbdm_core.guidance_classifier.net import NoisyClassifier, NoisyClassifierOptions, save_noisy_classifier

    cfg = TrainConfig.model_validate(yaml.safe_load((run / "config.yaml").read_text()))
    torch.manual_seed(seed)
    clf = NoisyClassifier(NoisyClassifierOptions(in_channels=1, num_classes=10, image_size=8, width=4, levels=1,
                                                 emb_dim=8))
    save_noisy_classifier(clf, build_schedule(cfg), path, {})
    from cbdm_core.experiments.provenance import file_digest

    return file_digest(path)


def test_a_finished_arm_set_whose_classifier_changed_is_refused_then_regenerated(tmp_path):
    """A finished set is not kept blindly: its manifest's classifier sha256 is checked (as `cbdm
    sample` checks a kept folder); --overwrite regenerates only that set."""
    arm = {"label": "clf", "sample_from": "ddpm",
           "sampling": {"guidance_method": "cfg+classifier",
                        "guidance_options": {"classifier": "{run}/clf.st", "scale": 50}}}
    proto = _arm_protocol(tmp_path, [0], [{"method": "ddpm"}, arm])
    proto["evaluation"]["metrics"] = ["per_class"]
    proto["primary"] = ["coverage_tail"]
    path, out = write_protocol(tmp_path / "p.yaml", proto), tmp_path / "s"
    cli_fails("compare", path, "--out", out, "--no-progress", match="clf.st does not exist")  # ddpm is done
    run, arm_set = out / "runs" / "ddpm" / "seed-0", out / "runs" / "clf" / "seed-0" / "report-w1"
    first = _noisy_classifier(run, run / "clf.st", seed=1)
    cli_ok("compare", path, "--out", out, "--no-progress")
    assert json.loads((arm_set / "manifest.json").read_text())["settings"]["guidance_files_sha256"] == {"classifier": first}
    base = run / "report-w1" / "shard-00000.npz"
    kept = (base.stat().st_mtime_ns, (arm_set / "shard-00000.npz").stat().st_mtime_ns)
    cli_ok("compare", path, "--out", out, "--no-progress")  # unchanged: everything kept
    assert (base.stat().st_mtime_ns, (arm_set / "shard-00000.npz").stat().st_mtime_ns) == kept
    images = _images(arm_set)
    second = _noisy_classifier(run, run / "clf.st", seed=2)  # "retrained" at the same path
    line = cli_fails("compare", path, "--out", out, "--no-progress", match=f"sample set {arm_set} was guided by")
    assert f"classifier {run / 'clf.st'}" in line and "--overwrite" in line
    cli_ok("compare", path, "--out", out, "--no-progress", "--overwrite")
    settings = json.loads((arm_set / "manifest.json").read_text())["settings"]
    assert settings["guidance_files_sha256"] == {"classifier": second} and second != first
    assert not np.array_equal(_images(arm_set), images)  # regenerated with the new classifier
    assert base.stat().st_mtime_ns == kept[0]  # the baseline's set (no classifier) is kept
    manifest = json.loads((arm_set / "manifest.json").read_text())
    del manifest["settings"]["guidance_files_sha256"]  # a set sampled before the hashes existed
    (arm_set / "manifest.json").write_text(json.dumps(manifest))
    cli_fails("compare", path, "--out", out, "--no-progress", match="predates guidance file hashes")
