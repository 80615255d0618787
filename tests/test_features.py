"""Feature extractors and the feature cache (CPU, offline, seconds)."""

from __future__ import annotations

import urllib.error

import numpy as np
import pytest
import torch

from cbdm_core.errors import CbdmError
from cbdm_core.features import (
    ENV_WEIGHTS,
    FeatureSet,
    build_classifier_extractor,
    build_inception,
    cache_path,
    cached_features,
    classifier_accuracy,
    inception_weights_url,
    load_classifier,
    save_classifier,
    train_classifier,
)
from cbdm_core.features.classifier_training import _epoch_order
from cbdm_core.registry import build_registry

# --- Inception (offline) -----------------------------------------------------------------------


def test_inception_loads_local_weights_and_extracts(random_inception_weights, monkeypatch):
    monkeypatch.delenv(ENV_WEIGHTS, raising=False)
    with pytest.warns(UserWarning, match="not the official FID weights"):
        extractor = build_inception(weights_path=random_inception_weights)
    assert extractor.name == "inception" and extractor.cache_key.startswith("inception-v3-tf2015-")
    rgb = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    fs = extractor.extract(rgb, batch_size=1)
    assert fs.features.shape == (2, 2048) and fs.probs.shape == (2, 1008)
    assert torch.isfinite(fs.features).all()
    assert torch.allclose(fs.probs.sum(dim=1), torch.ones(2))
    assert fs.labels is None and fs.extractor == extractor.cache_key
    # grayscale is repeated to 3 channels: same features as the explicit RGB copy
    gray = rgb[:1, :1]
    assert torch.allclose(extractor.extract(gray).features, extractor.extract(gray.repeat(1, 3, 1, 1)).features)
    with pytest.raises(CbdmError, match="uint8"):
        extractor.extract(rgb.float())


def test_inception_weights_from_env_var(random_inception_weights, monkeypatch):
    monkeypatch.setenv(ENV_WEIGHTS, str(random_inception_weights))
    with pytest.warns(UserWarning, match="not the official"):
        assert build_inception().weights_path == random_inception_weights


def test_inception_offline_without_weights_is_clear_error(monkeypatch):
    import torch_fidelity.feature_extractor_inceptionv3 as tfi

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.delenv(ENV_WEIGHTS, raising=False)
    monkeypatch.setattr(tfi, "load_state_dict_from_url", offline)
    with pytest.raises(CbdmError) as err:
        build_inception()
    msg = str(err.value)
    assert "\n" not in msg
    assert "could not download" in msg and inception_weights_url() in msg and "--inception-weights" in msg


def test_inception_bad_weights_files(tmp_path, monkeypatch):
    monkeypatch.delenv(ENV_WEIGHTS, raising=False)
    with pytest.raises(CbdmError, match="does not exist"):
        build_inception(weights_path=tmp_path / "missing.pth")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(CbdmError, match="not a PyTorch state dict"):
        build_inception(weights_path=junk)
    other = tmp_path / "other.pth"
    torch.save({"weight": torch.zeros(2)}, other)
    with pytest.raises(CbdmError, match="not a torch-fidelity Inception"):
        build_inception(weights_path=other)
    with pytest.raises(CbdmError, match="unknown option"):
        build_inception(weights=str(other))


# --- classifier --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    images = torch.from_numpy(np.round(d.data / 16.0 * 255.0).astype(np.uint8)).view(-1, 1, 8, 8)
    labels = torch.from_numpy(d.target).long()
    perm = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
    train, test = perm[:1400], perm[1400:]
    return images[train], labels[train], images[test], labels[test]


@pytest.fixture(scope="module")
def trained(digits):
    x, y, _, _ = digits
    return train_classifier(x, y, 10, epochs=5, batch_size=64, lr=3e-3, width=16, feature_dim=32,
                            balanced=True, seed=0)


def test_classifier_learns_digits(trained, digits):
    _, _, x_test, y_test = digits
    assert classifier_accuracy(trained, x_test, y_test) > 0.8


def test_classifier_round_trip_and_extractor(trained, digits, tmp_path):
    _, _, x_test, _ = digits
    path = tmp_path / "sub" / "clf.safetensors"
    save_classifier(trained, path, {"dataset": "digits"})
    assert [p.name for p in path.parent.iterdir()] == ["clf.safetensors"]  # no temp file left behind
    loaded = load_classifier(path)
    assert loaded.options == trained.options and loaded.meta["dataset"] == "digits"
    with torch.no_grad():
        assert torch.equal(loaded.features(x_test), trained.features(x_test))

    extractor = build_registry().get("feature_extractor", "classifier").obj(classifier_path=str(path))
    fs = extractor.extract(x_test, batch_size=100)
    assert fs.features.shape == (len(x_test), 32) and fs.probs.shape == (len(x_test), 10)
    assert torch.allclose(fs.probs.sum(dim=1), torch.ones(len(x_test)))
    assert extractor.cache_key.startswith("classifier-") and fs.extractor == extractor.cache_key
    with pytest.raises(CbdmError, match="channel"):
        extractor.extract(x_test.repeat(1, 3, 1, 1))
    with pytest.raises(CbdmError, match="8x8"):
        extractor.extract(torch.zeros(2, 1, 16, 16, dtype=torch.uint8))


def test_classifier_bad_files(tmp_path):
    with pytest.raises(CbdmError, match="does not exist"):
        load_classifier(tmp_path / "none.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 64)
    with pytest.raises(CbdmError, match="not a readable"):
        load_classifier(bad)
    with pytest.raises(CbdmError, match="classifier_path"):
        build_classifier_extractor()


def test_balanced_sampling_evens_out_classes():
    labels = torch.tensor([0] * 900 + [1] * 90 + [2] * 10)
    order = _epoch_order(labels, 3, balanced=True, gen=torch.Generator().manual_seed(0))
    freq = torch.bincount(labels[order], minlength=3).float() / len(order)
    assert torch.all((freq - 1 / 3).abs() < 0.05)
    plain = _epoch_order(labels, 3, balanced=False, gen=torch.Generator().manual_seed(0))
    assert sorted(plain.tolist()) == list(range(1000))


# --- cache / registry ----------------------------------------------------------------------------


def test_cached_features_round_trip_and_recovery(tmp_path):
    calls = []

    def compute() -> FeatureSet:
        calls.append(1)
        return FeatureSet(torch.randn(6, 4), torch.arange(6), torch.full((6, 3), 1 / 3), "ext-1")

    key = "cifar10-lt/train/ext-1"
    first = cached_features(tmp_path, key, compute)
    second = cached_features(tmp_path, key, compute)
    assert len(calls) == 1
    assert torch.equal(first.features, second.features) and torch.equal(first.labels, second.labels)
    assert torch.equal(first.probs, second.probs) and second.extractor == "ext-1"
    cache_path(tmp_path, key).write_bytes(b"garbage")
    with pytest.warns(UserWarning, match="bad feature cache"):
        cached_features(tmp_path, key, compute)
    assert len(calls) == 2
    assert cache_path(tmp_path, "a/b") != cache_path(tmp_path, "a_b")


def test_feature_set_validation():
    with pytest.raises(CbdmError, match="float"):
        FeatureSet(torch.zeros(3, 2, dtype=torch.long))
    with pytest.raises(CbdmError, match="labels"):
        FeatureSet(torch.zeros(3, 2), torch.zeros(2, dtype=torch.long))
    fs = FeatureSet(torch.zeros(3, 2)).with_labels([0, 1, 1])
    assert len(fs) == 3 and fs.dim == 2 and fs.labels.dtype == torch.int64


def test_registry_has_feature_extractors():
    assert {"inception", "classifier"} <= set(build_registry().names("feature_extractor"))
