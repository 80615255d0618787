"""``cbdm eval`` end to end on the embedded digits dataset (CPU, offline, tiny sets)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cbdm_core.checkpoint import Checkpoint, save_checkpoint
from cbdm_core.data import dataset_options, load_dataset
from cbdm_core.features import ENV_WEIGHTS
from cbdm_core.features.classifier import ClassifierExtractor
from cbdm_core.sampling.shards import FORMAT, shard_name, write_manifest, write_shard

from .helpers import cli_fails, cli_ok, invoke_cli

# Small KID subsets and a single quick PRD clustering keep each evaluation to about a second.
FAST_METRICS = ["-O", "kid.subset_size=50", "-O", "kid.subsets=5", "-O", "prd.num_runs=1",
                "-O", "prd.num_clusters=20"]


@pytest.fixture(scope="module", autouse=True)
def _one_thread_module():
    """One intra-op thread: on a shared 2-core machine, spinning OpenMP threads cost far more than they gain."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)  # after conftest's per-test setting
    yield


def _invoke(*args):
    return invoke_cli("eval", *args)


def _ok(*args):
    return cli_ok("eval", *args)


def _fails(*args, match: str):
    return cli_fails("eval", *args, match=match)


def _json(folder: Path) -> dict:
    return json.loads((folder / "metrics.json").read_text())


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("eval")


@pytest.fixture(scope="module")
def classifier(work: Path) -> Path:
    path = work / "clf.safetensors"
    res = _ok("train-classifier", "--dataset", "digits", "--epochs", "3", "--out", path, "--device", "cpu")
    assert "test accuracy" in res.output and path.is_file()
    accuracy = float(res.output.split("test accuracy")[1].split()[0])
    assert accuracy > 0.8
    return path


@pytest.fixture(scope="module")
def test_digits() -> tuple[np.ndarray, np.ndarray]:
    """Real digits test images (uint8 NHWC) and labels."""
    ds = load_dataset("digits", dataset_options(split="test"))
    return ds.images.permute(0, 2, 3, 1).numpy(), ds.labels.numpy()


@pytest.fixture(scope="module")
def npz(work: Path, test_digits) -> dict[str, Path]:
    images, labels = test_digits
    rng = np.random.default_rng(0)
    paths = {"real": work / "real.npz", "noise": work / "noise.npz", "few": work / "few.npz",
             "big": work / "big.npz", "rgb": work / "rgb.npz"}
    np.savez(paths["real"], images=images[:300], labels=labels[:300])
    np.savez(paths["noise"], images=rng.integers(0, 256, (300, 8, 8, 1), dtype=np.uint8), labels=labels[:300])
    np.savez(paths["few"], images=images[:4], labels=np.arange(4))
    big = images[:40].repeat(2, axis=1).repeat(2, axis=2)  # 16x16
    np.savez(paths["big"], images=big, labels=labels[:40])
    np.savez(paths["rgb"], images=images[:40].repeat(3, axis=3), labels=labels[:40])
    return paths


def _clf_args(classifier: Path, cache: Path) -> list:
    return ["--dataset", "digits", "--extractor", "classifier", "--classifier", classifier,
            "--device", "cpu", "--cache-dir", cache, *FAST_METRICS]


def test_help_shows_both_forms():
    res = _ok("--help")
    assert "eval SAMPLES [OPTIONS]" in res.output and "train-classifier" in res.output
    assert "--dataset NAME" not in res.output  # read from the run; not a required option
    assert "--reference-split" in res.output and "__default__" not in res.output


def test_digits_default_to_their_classifier_and_the_table_fits_80_columns(npz, work, monkeypatch):
    from cbdm_core.features import auto_classifier

    monkeypatch.setitem(auto_classifier.CLASSIFIER_DEFAULT, "digits", 2)  # epochs: seconds, not tens
    cache = work / "default-cache"
    res = _ok(npz["real"], "--dataset", "digits", "--device", "cpu", "--cache-dir", cache, *FAST_METRICS,
              "--out", work / "default-extractor")
    assert (cache / "classifiers" / "classifier-digits.safetensors").is_file()  # trained once, reused
    assert _json(work / "default-extractor")["extractor"]["name"] == "classifier"
    lines = res.output.splitlines()
    assert sum("features: classifier (" in ln for ln in lines) == 1  # named once, not on every row
    start = next(i for i, ln in enumerate(lines) if ln.startswith("digits: 300 samples"))
    table = lines[start:next(i for i, ln in enumerate(lines) if ln.startswith("per-class values"))]
    assert max(map(len, table)) <= 80 and len(table) < 25
    assert any(ln.split()[:1] == ["kid"] and "±" in ln for ln in table)  # the spread beside its value
    assert not any(ln.split()[:1] == ["pr_n"] for ln in table)  # counts stay in metrics.json
    assert "next: cbdm compare --list" in res.output  # not from a run: no sweep to suggest


def test_cifar_defaults_to_inception_and_a_chosen_extractor_wins(tmp_path):
    from cbdm_cli.eval_support import choose_extractor

    def no_status(_m: str) -> None:
        raise AssertionError("nothing is trained")

    assert choose_extractor(None, None, "cifar10-lt", None, tmp_path, "cpu", no_status) == ("inception", None)
    assert choose_extractor("inception", None, "digits", None, tmp_path, "cpu", no_status) == ("inception", None)
    clf = tmp_path / "c.safetensors"
    assert choose_extractor(None, clf, "cifar10", None, tmp_path, "cpu", no_status) == ("classifier", clf)
    assert not any(tmp_path.iterdir())


def test_real_beats_noise_and_reports(classifier, npz, work):
    cache = work / "cache"
    res = _ok(npz["real"], *_clf_args(classifier, cache), "--out", work / "real-out")
    assert "fid" in res.output and "classifier" in res.output
    noise = _ok(npz["noise"], *_clf_args(classifier, cache))  # default --out: <name>-eval/ next to the .npz
    real_doc, noise_doc = _json(work / "real-out"), _json(work / "noise-eval")
    assert "is" in noise.output and "not computed" not in noise.output
    r, n = real_doc["values"], noise_doc["values"]
    assert r["fid"] < n["fid"]
    assert r["precision"] > n["precision"] and r["recall"] > n["recall"]
    assert r["kid"] < n["kid"] and r["is"] > n["is"]
    for doc in (real_doc, noise_doc):
        assert doc["extractor"]["name"] == "classifier"
        assert doc["extractor"]["cache_key"].startswith("classifier-")
        assert doc["comparable_to_published"] is False and doc["not_comparable_reason"]
        assert doc["samples"]["count"] == 300 and doc["reference"]["split"] == "train"
        assert "class-balanced" in doc["reference"]["description"]
        assert set(doc["groups"]) == {"head", "medium", "tail"}
        assert all(doc["groups"][g]["fid"] is not None for g in doc["groups"])
        assert len(doc["per_class"]) == 10 and all(p["fid"] is not None for p in doc["per_class"])
        assert doc["class_counts"]["source"].startswith("digits training split")
        assert set(doc["metrics"]) == {"fid", "is", "kid", "precision_recall", "density_coverage", "prd",
                                       "per_class_fid", "per_class", "memorization"}
        v = doc["values"]
        assert v["pr_n"] == 300 and v["dc_n"] == 300 and v["prd_n"] == 300  # equal sizes, stated
        assert 0 <= v["memorization_pixels"] <= 1 and doc["training_set"]["count"] > 0
        assert doc["group_rule"] and doc["groups"]["tail"]["coverage"] is not None
        assert all({"kid", "recall", "coverage", "accuracy", "memorization_pixels"} <= set(p)
                   for p in doc["per_class"])
    assert r["coverage"] > n["coverage"] and r["accuracy"] > n["accuracy"]
    assert n["memorization_pixels"] == 0.0  # noise copies nothing
    assert noise_doc["reference"]["cache_hit"] is True  # same data, split and classifier
    assert (work / "real-out" / "per_class_fid.png").stat().st_size > 1000
    assert (work / "noise-eval" / "per_class_fid.png").is_file()


def test_metric_subset_and_cache_reuse(classifier, npz, work, monkeypatch):
    calls: list[int] = []
    original = ClassifierExtractor.extract

    def spy(self, images, *args, **kwargs):
        calls.append(int(images.shape[0]))
        return original(self, images, *args, **kwargs)

    monkeypatch.setattr(ClassifierExtractor, "extract", spy)
    cache = work / "fresh-cache"
    args = [npz["real"], *_clf_args(classifier, cache), "--metrics", "fid", "--out", work / "subset"]
    _ok(*args)
    assert sorted(calls) == [300, 1400]  # reference (digits train, 140 per class: balanced) and samples
    first = _json(work / "subset")
    assert list(first["values"]) == ["fid"] and list(first["metrics"]) == ["fid"]
    assert first["reference"]["cache_hit"] is False and Path(first["reference"]["cache_file"]).is_file()
    assert not (work / "subset" / "per_class_fid.png").exists()
    calls.clear()
    _ok(*args)
    assert calls == [300]  # the reference features came from the cache
    second = _json(work / "subset")
    assert second["reference"]["cache_hit"] is True
    assert second["values"]["fid"] == pytest.approx(first["values"]["fid"], rel=1e-5)


def test_sample_folder_uses_model_class_counts(classifier, test_digits, work):
    images, labels = test_digits
    folder = work / "samples-ddim"
    folder.mkdir()
    lt_counts = [500, 300, 200, 120, 80, 50, 30, 20, 12, 5]  # the model's (long-tailed) training counts
    ckpt = work / "run" / "checkpoints" / "ckpt-00000100.safetensors"
    save_checkpoint(ckpt, Checkpoint(step=100, config={}, model={}, ema={},
                                     meta={"class_counts": lt_counts, "num_classes": 10}))
    order = np.argsort(labels[:200], kind="stable")
    shards = []
    for k, start in enumerate(range(0, 200, 120)):
        idx = order[start:start + 120]
        write_shard(folder / shard_name(k), images[:200][idx], labels[:200][idx])
        shards.append({"file": shard_name(k), "start": start, "count": len(idx)})
    write_manifest(folder, {"format": FORMAT, "complete": True, "settings": {"checkpoint": str(ckpt)},
                            "num_classes": 10, "num": 200, "shards": shards})
    _ok(folder, *_clf_args(classifier, work / "cache"), "--metrics", "fid,per_class_fid")
    doc = _json(folder)  # default --out: the sample folder itself
    assert doc["samples"]["kind"] == "sample-folder" and doc["samples"]["count"] == 200
    assert doc["class_counts"]["values"] == lt_counts and "checkpoint" in doc["class_counts"]["source"]
    # > 100 / 20..100 / < 20 training images
    assert doc["groups"]["head"]["classes"] == [0, 1, 2, 3] and doc["groups"]["tail"]["classes"] == [8, 9]
    assert [p["train_count"] for p in doc["per_class"]] == lt_counts
    assert (folder / "per_class_fid.png").is_file()


def test_png_folders(classifier, test_digits, work):
    images, labels = test_digits
    labelled, flat = work / "pngs", work / "flat"
    for i in range(100):
        sub = labelled / str(labels[i])
        sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray(images[i, :, :, 0], mode="L").save(sub / f"{i:04d}.png")
    flat.mkdir()
    for i in range(30):
        Image.fromarray(images[i, :, :, 0], mode="L").save(flat / f"{i:04d}.png")
    args = _clf_args(classifier, work / "cache")
    _ok(labelled, *args, "--metrics", "fid,per_class_fid")
    doc = _json(labelled)
    assert doc["samples"]["kind"] == "image-folder" and doc["samples"]["labeled"] is True
    assert doc["samples"]["count"] == 100 and len(doc["per_class"]) == 10
    _ok(labelled, *args, "--metrics", "fid")  # the report files written there are not read as samples
    assert _json(labelled)["samples"]["count"] == 100

    _ok(flat, *args, "--metrics", "fid,precision_recall")
    doc = _json(flat)
    assert doc["samples"]["labeled"] is False and doc["values"]["precision"] is not None
    _fails(flat, *args, "--metrics", "per_class_fid", match="labelled samples")
    _ok(flat, *args)  # default metrics: per_class_fid is skipped, not an error
    doc = _json(flat)
    assert "per_class_fid" in doc["not_computed"] and doc["per_class"] is None


def test_too_few_samples_not_computed(classifier, npz, work):
    res = _ok(npz["few"], *_clf_args(classifier, work / "cache"), "--out", work / "few")
    assert "not computed" in res.output and "NOT COMPUTED" in res.output
    doc = _json(work / "few")
    values = doc["values"]
    assert values["fid"] is not None
    for key in ("is", "precision", "recall", "fid_class_mean"):
        assert values[key] is None, key
        assert key in doc["not_computed"]
    assert doc["metrics"]["is"]["computed"] is False and "NOT COMPUTED" in doc["metrics"]["is"]["not_computed_reason"]


def test_user_errors(classifier, npz, work):
    args = _clf_args(classifier, work / "cache")
    _fails(npz["big"], *args, match="16x16 instead of 8x8")
    _ok(npz["big"], *args, "--metrics", "fid", "--resize", "--out", work / "resized")
    assert "16x16" in _json(work / "resized")["samples"]["resized"].replace("1x16x16", "16x16")
    _fails(npz["rgb"], *args, match="3 channel(s) instead of 1")
    err = _fails(npz["real"], *args, "--metrics", "fid,bogus", match="unknown metric 'bogus'")
    assert "per_class_fid" in err and "precision_recall" in err
    _fails(npz["real"], "--dataset", "digits", "--extractor", "classifier", match="--classifier")
    empty = work / "empty"
    empty.mkdir()
    _fails(empty, *args, match="no samples found")
    _fails(work / "missing.npz", *args, match="does not exist")
    _fails(npz["real"], "--dataset", "cifar10", "--extractor", "classifier", "--classifier", classifier,
           "--cache-dir", work / "cache", match="needs --data-root")
    _fails(npz["real"], *args, "-O", "kid", match="METRIC.OPTION=VALUE")


# --- Inception, offline, with a RANDOM weights file: exercises the path, never a real FID ---------


@pytest.fixture
def offline(monkeypatch):
    import urllib.error

    import torch_fidelity.feature_extractor_inceptionv3 as tfi

    def no_network(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.delenv(ENV_WEIGHTS, raising=False)
    monkeypatch.setattr(tfi, "load_state_dict_from_url", no_network)


def test_inception_offline_random_weights_not_comparable(random_inception_weights, offline, work):
    rng = np.random.default_rng(1)
    root = work / "tiny-rgb"
    for c in range(3):
        (root / f"c{c}").mkdir(parents=True)
        for i in range(4):
            Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(root / f"c{c}" / f"{i}.png")
    samples = work / "rgb-samples.npz"
    np.savez(samples, images=rng.integers(0, 256, (12, 8, 8, 3), dtype=np.uint8), labels=np.repeat(np.arange(3), 4))
    common = [samples, "--dataset", "folder", "--data-root", root, "--device", "cpu", "--cache-dir", work / "cache",
              "--batch-size", "12", "--metrics", "is,kid,precision_recall",  # no FID: sqrtm of 2048x2048 is slow
              "-O", "kid.subset_size=12", "-O", "kid.subsets=3"]
    _fails(*common, match="could not download the Inception v3 weights")
    res = _ok(*common, "--inception-weights", random_inception_weights, "--out", work / "inception")
    assert "NOT comparable" in res.output
    doc = _json(work / "inception")
    assert doc["extractor"]["name"] == "inception" and doc["comparable_to_published"] is False
    assert "NOT the official" in doc["not_comparable_reason"]
    assert all(m["extractor"] == "inception" for m in doc["metrics"].values())
    assert doc["values"]["is"] is not None and doc["values"]["precision"] is not None
    assert any("not the official FID weights" in w for w in doc["warnings"])
    assert doc["reference"]["count"] == 12 and doc["samples"]["image_shape"] == [3, 8, 8]


@pytest.mark.slow
def test_two_gloo_ranks_extract_the_reference_like_one_process(classifier, npz, work):
    """Under torchrun each rank extracts an index range of the reference; the cached features
    and the report equal a single process's."""
    import os
    import subprocess
    import sys

    from cbdm_core.tensor_io import load_tensors

    one_cache, two_cache = work / "cache-one", work / "cache-two"
    _ok(npz["real"], *_clf_args(classifier, one_cache), "--out", work / "one")
    one = _json(work / "one")
    torchrun = Path(sys.executable).with_name("torchrun")
    cmd = [str(torchrun), "--standalone", "--nproc_per_node=2", "-m", "cbdm_cli", "eval", str(npz["real"]),
           *map(str, _clf_args(classifier, two_cache)), "--out", str(work / "two")]
    res = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stderr.count("reference features") == 1  # only rank 0 talks
    two = _json(work / "two")
    files = [sorted((c / "features").glob("*.safetensors")) for c in (one_cache, two_cache)]
    assert len(files[0]) == len(files[1]) >= 1
    for a, b in zip(*files):
        ta, tb = load_tensors(a)[0], load_tensors(b)[0]
        assert ta.keys() == tb.keys()
        for key in ta:
            assert torch.allclose(ta[key].float(), tb[key].float(), atol=1e-5), key
    for key, value in one["values"].items():
        if isinstance(value, float):
            assert two["values"][key] == pytest.approx(value, rel=1e-4, abs=1e-6), key
