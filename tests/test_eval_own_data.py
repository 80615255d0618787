"""``cbdm eval`` on a user's own folder data (issue 17, items 1, 5, 7): balanced references,
the user's reference folder or FID statistics, the dataset read from the run, the
classifier's hold-out split, and the Python API's conveniences. Tiny 8x8 PNG folders."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from cbdm_core.checkpoint import Checkpoint, save_checkpoint
from cbdm_core.evaluation import EvalOptions
from cbdm_core.sampling.shards import FORMAT, shard_name, write_manifest, write_shard

from .helpers import cli_fails, cli_ok, write_folder

COUNTS = {"a": 24, "b": 12, "c": 6}  # long-tailed
FAST = ["-O", "kid.subset_size=6", "-O", "kid.subsets=2"]


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("own")


@pytest.fixture(scope="module")
def data(work: Path) -> Path:
    return write_folder(work / "lt", COUNTS)


@pytest.fixture(scope="module")
def clf(work: Path, data: Path) -> tuple[Path, str]:
    """A classifier trained on the folder (no test split: a held-out part), and the command output."""
    path = work / "clf.safetensors"
    res = cli_ok("eval", "train-classifier", "--dataset", "folder", "--data-root", data, "--epochs", "1",
                 "--batch-size", "16", "--out", path, "--device", "cpu")
    return path, res.output


@pytest.fixture(scope="module")
def samples(work: Path) -> Path:
    rng = np.random.default_rng(3)
    path = work / "samples.npz"
    np.savez(path, images=rng.integers(0, 256, (12, 8, 8, 1), dtype=np.uint8), labels=np.repeat(np.arange(3), 4))
    return path


def _args(clf, work, *extra):
    return ["--extractor", "classifier", "--classifier", clf[0], "--device", "cpu", "--cache-dir",
            work / "cache", *extra]


def _doc(folder: Path) -> dict:
    return json.loads((folder / "metrics.json").read_text())


def test_train_classifier_holds_out_and_reports_accuracy(clf):
    path, output = clf
    assert path.is_file()
    accuracy = float(output.rsplit("test accuracy ", 1)[1].split()[0])
    assert 0.0 <= accuracy <= 1.0 and "held-out folder images" in output
    assert f"next: cbdm eval SAMPLES --extractor classifier --classifier {path}" in output


def test_classifier_default_name_differs_per_folder(tmp_path):
    from cbdm_cli.eval_cmd import default_classifier_path

    one = default_classifier_path("folder", tmp_path / "x" / "pets")
    two = default_classifier_path("folder", tmp_path / "y" / "pets")
    assert one != two and one.name.startswith("classifier-folder-pets-")
    assert default_classifier_path("cifar10", None).name == "classifier-cifar10.safetensors"


def test_balanced_subsample_of_long_tailed_folder(clf, samples, data, work):
    out = work / "bal"
    cli_ok("eval", samples, "--dataset", "folder", "--data-root", data, *_args(clf, work, "--metrics",
                                                                                 "fid,kid", *FAST, "--out", out))
    ref = _doc(out)["reference"]
    assert ref["class_counts"] == [6, 6, 6] and ref["balanced"] is True and ref["split"] == "train"
    assert "subsample" in ref["balance"] and "class-balanced" in ref["description"]


def test_held_out_test_folder_is_the_reference(clf, samples, work):
    root = work / "split"
    write_folder(root / "train", COUNTS)
    write_folder(root / "test", {"a": 5, "b": 3, "c": 4}, seed=1)
    out = work / "held"
    cli_ok("eval", samples, "--dataset", "folder", "--data-root", root, *_args(clf, work, "--metrics", "fid",
                                                                                 "--out", out))
    ref = _doc(out)["reference"]
    assert ref["split"] == "test" and ref["class_counts"] == [3, 3, 3]


def test_reference_folder_and_stats_agree(clf, samples, data, work):
    from cbdm_core.data import dataset_options, load_dataset
    from cbdm_core.features.classifier import ClassifierExtractor
    from cbdm_core.metrics.fid import feature_statistics

    own = write_folder(work / "own-ref", {"a": 4, "b": 4, "c": 2}, seed=7)
    out1, out2 = work / "ref-folder", work / "ref-stats"
    common = ["--dataset", "folder", "--data-root", data, *_args(clf, work, "--metrics", "fid")]
    cli_ok("eval", samples, *common, "--reference-folder", own, "--out", out1)
    doc1 = _doc(out1)
    assert doc1["reference"]["folder"] == str(own) and doc1["reference"]["class_counts"] == [4, 4, 2]
    assert "NOT class-balanced" in doc1["reference"]["description"]

    images = load_dataset("folder", dataset_options(root=own)).images
    mu, sigma = feature_statistics(ClassifierExtractor(str(clf[0])).extract(images).features, warn_rank=False)
    stats = work / "own.train.npz"
    np.savez(stats, mu=mu, sigma=sigma)
    cli_ok("eval", samples, *common, "--reference-stats", stats, "--out", out2)
    doc2 = _doc(out2)
    assert doc2["values"]["fid"] == pytest.approx(doc1["values"]["fid"], rel=1e-6)
    assert doc2["reference"]["fid_statistics"]["file"] == str(stats)
    assert "NOT" in doc2["reference"]["fid_statistics"]["note"] and doc2["comparable_to_published"] is False

    bad = work / "bad.npz"
    np.savez(bad, mean=mu)
    cli_fails("eval", samples, *common, "--reference-stats", bad, match="expected 'mu'")
    wrong_dim = work / "dim.npz"
    np.savez(wrong_dim, mu=np.zeros(5), sigma=np.eye(5))
    cli_fails("eval", samples, *common, "--reference-stats", wrong_dim, match="5-dimensional")


def test_dataset_and_root_from_the_run(clf, data, work):
    folder = work / "run-samples"
    folder.mkdir()
    ckpt = work / "run" / "ckpt-00000010.safetensors"
    config = {"data": {"dataset": "folder", "root": str(data), "class_order": "count"}}
    save_checkpoint(ckpt, Checkpoint(step=10, config=config, model={}, ema={},
                                     meta={"class_counts": [24, 12, 6], "num_classes": 3}))
    rng = np.random.default_rng(0)
    write_shard(folder / shard_name(0), rng.integers(0, 256, (9, 8, 8, 1), dtype=np.uint8), np.arange(9) % 3)
    write_manifest(folder, {"format": FORMAT, "complete": True, "settings": {"checkpoint": str(ckpt)},
                            "num_classes": 3, "num": 9, "shards": [{"file": shard_name(0), "start": 0, "count": 9}]})
    cli_ok("eval", folder, *_args(clf, work, "--metrics", "fid"))  # no --dataset, no --data-root
    doc = _doc(folder)
    assert doc["dataset"] == "folder" and doc["reference"]["class_counts"] == [6, 6, 6]
    cli_fails("eval", work / "samples.npz", *_args(clf, work), match="--dataset is needed")


def test_offline_inception_error_mentions_classifier():
    from cbdm_core.features.inception import _offline_help

    assert "--extractor classifier" in _offline_help()


def test_plot_axis_label_is_short(monkeypatch, tmp_path):
    from matplotlib.figure import Figure

    from cbdm_core.evaluation.engine import EvalResult, ExtractorInfo, MetricResult
    from cbdm_core.evaluation.report import plot_per_class_fid

    labels: list[str] = []
    original = Figure.savefig

    def spy(self, *args, **kwargs):
        labels.append(self.axes[0].get_xlabel())
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", spy)
    result = EvalResult("folder", {"count": 3}, {"count": 3}, ExtractorInfo("classifier", "k", False, "n"),
                        [MetricResult("per_class_fid", {"fid_class_0": 1.0, "fid_class_1": 2.0, "fid_class_2": 3.0})],
                        ["a", "b", "c"], class_counts=[30, 10, 2],
                        class_counts_source="checkpoint /very/long/run/checkpoints/ckpt-00300000.safetensors (meta)")
    assert plot_per_class_fid(result, tmp_path / "p.png") is not None
    assert labels == ["training images per class"]


def test_eval_options_metrics_string_and_load_run_trainable(tmp_path):
    assert EvalOptions("digits", metrics="fid, kid").metrics == ["fid", "kid"]
    assert EvalOptions("digits", metrics=["fid"]).metrics == ["fid"]

    from cbdm_core import load_run
    from cbdm_core.build import build_model
    from cbdm_core.config import TrainConfig

    opts = {"ch": 8, "ch_mult": [1, 2], "attn": [1], "num_res_blocks": 1, "num_groups": 4, "dropout": 0.0}
    cfg = TrainConfig.model_validate({"model": {"options": opts}, "diffusion": {"T": 50}})
    model = build_model(cfg, image_size=8, channels=1, num_classes=3)
    save_checkpoint(tmp_path / "c.safetensors", Checkpoint(
        step=1, config=cfg.model_dump(mode="json"), model=model.state_dict(), ema=model.state_dict(),
        meta={"num_classes": 3, "image_size": 8, "channels": 1, "class_counts": [3, 2, 1], "cond_dim": 0}))
    frozen = load_run(tmp_path / "c.safetensors").model
    assert not frozen.training and not any(p.requires_grad for p in frozen.parameters())
    live = load_run(tmp_path / "c.safetensors", trainable=True).model
    assert live.training and all(p.requires_grad for p in live.parameters())


def test_python_api_evaluates_by_name_as_the_cli_does(clf, samples, data, work):
    """``evaluate(samples, options)`` from users' code resolves the names itself; the result
    equals the one with components resolved at the edge, and the CLI's."""
    from cbdm_core.build_evaluation import resolve_evaluation
    from cbdm_core.evaluation import evaluate, prepare_reference

    opts = EvalOptions("folder", data_root=data, extractor="classifier", classifier=clf[0], device="cpu",
                       cache_dir=work / "cache", metrics=["fid", "precision_recall"])

    def values(result) -> dict:
        return {k: v for m in result.metrics for k, v in m.values.items()}

    by_name = values(evaluate(samples, opts))
    reference = prepare_reference(opts)
    resolved = values(evaluate(samples, opts, components=resolve_evaluation(opts), reference=reference))
    assert {"fid", "recall"} <= by_name.keys() and by_name == pytest.approx(resolved)
    out = work / "api-cli"
    cli_ok("eval", samples, "--dataset", "folder", "--data-root", data,
           *_args(clf, work, "--metrics", "fid,precision_recall", "--out", out))
    assert _doc(out)["values"]["fid"] == pytest.approx(by_name["fid"])
