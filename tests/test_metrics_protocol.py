"""The fair-protocol metrics: equal-size precision/recall, density/coverage against the
authors' ``prdc`` package, memorisation, order-free IS, per-class scores, value directions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cbdm_core.errors import CbdmError
from cbdm_core.features.base import FeatureSet
from cbdm_core.interfaces import Direction, MetricSpec
from cbdm_core.metrics import (
    TrainingReference,
    density_coverage,
    inception_score,
    memorization,
    per_class_scores,
    precision_recall,
    precision_recall_n,
)
from cbdm_core.registry import build_registry


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def test_precision_recall_equalises_set_sizes():
    rng = _rng(1)
    real, fake = rng.normal(size=(3000, 8)), rng.normal(size=(300, 8))
    p, r, n = precision_recall_n(real, fake, k=5, seed=0)
    assert n == 300
    # same distribution at equal sizes: precision and recall agree; the unequal (biased)
    # computation would give recall well above precision (small real radii, large fake radii)
    assert abs(p - r) < 0.08
    idx = np.sort(np.random.default_rng(0).choice(3000, 300, replace=False))
    assert (p, r) == precision_recall(real[idx], fake, k=5)  # = the seeded subsample, explicitly
    assert precision_recall(real, fake, seed=0) == (p, r)  # deterministic
    assert precision_recall(real, fake, seed=1) != (p, r)  # and the seed matters
    assert precision_recall(fake, real)[::-1] == pytest.approx((r, p), abs=0.1)


def test_density_coverage_equals_prdc_package():
    prdc = pytest.importorskip("prdc")
    rng = _rng(2)
    for n_real, n_fake, shift in ((200, 200, 0.0), (150, 150, 0.7), (120, 120, 2.0)):
        real = rng.normal(size=(n_real, 6)).astype(np.float32)
        fake = (rng.normal(size=(n_fake, 6)) + shift).astype(np.float32)
        want = prdc.compute_prdc(real, fake, nearest_k=5)
        d, c = density_coverage(real, fake, k=5)
        assert d == pytest.approx(want["density"], rel=1e-6) and c == pytest.approx(want["coverage"], rel=1e-6)
    # unequal sizes: prdc on our seeded subsample of the larger (real) set gives the same
    real, fake = rng.normal(size=(500, 6)), rng.normal(size=(100, 6)) + 0.3
    idx = np.sort(np.random.default_rng(0).choice(500, 100, replace=False))
    want = prdc.compute_prdc(real[idx], fake, nearest_k=3)
    assert density_coverage(real, fake, k=3) == pytest.approx((want["density"], want["coverage"]), rel=1e-6)


def test_radii_cache_is_used_and_keyed():
    calls: list[str] = []

    class Cache:
        def __init__(self):
            self.store = {}

        def get(self, key, compute):
            calls.append(key)
            if key not in self.store:
                self.store[key] = compute()
            return self.store[key]

    rng = _rng(3)
    real, fake = rng.normal(size=(400, 4)), rng.normal(size=(100, 4))
    cache = Cache()
    plain = precision_recall(real, fake)
    assert precision_recall(real, fake, radii_cache=cache) == plain
    assert precision_recall(real, fake, radii_cache=cache) == plain
    assert density_coverage(real, fake, radii_cache=cache) == density_coverage(real, fake)
    assert len(cache.store) == 1 and calls[0] == "k5-n100-of400-seed0"
    precision_recall(real, fake, k=3, radii_cache=cache)
    assert len(cache.store) == 2


def test_memorization_flags_copies_not_fresh_samples():
    rng = _rng(4)
    train = rng.uniform(0, 255, size=(200, 64))
    copy = train[7]
    near = train[11] + rng.normal(scale=1.0, size=64)
    fresh = rng.uniform(0, 255, size=(5, 64))
    flags = memorization(np.vstack([copy, near, fresh]), train)
    assert flags.tolist() == [True, True, False, False, False, False, False]
    # a training image present twice (d1 = d2 = 0) is still a copy
    dup = np.vstack([train, train[:1]])
    assert memorization(train[:1], dup).tolist() == [True]
    # chunking does not change the answer
    assert (memorization(fresh, train, budget_bytes=64) == memorization(fresh, train)).all()
    with pytest.raises(CbdmError, match="threshold"):
        memorization(fresh, train, threshold=0)


def test_inception_score_independent_of_sample_order():
    rng = _rng(5)
    labels = np.repeat(np.arange(10), 50)  # class-sorted, as sample folders are
    logits = rng.normal(size=(500, 10)) + 4 * np.eye(10)[labels]
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    a = inception_score(probs)
    b = inception_score(probs[rng.permutation(500)])
    assert a == b
    # close to the one-split score (which no order can change), not the near-1 score of
    # consecutive splits over class-sorted samples
    assert a[0] == pytest.approx(inception_score(probs, splits=1)[0], rel=0.1) and a[0] > 3
    assert inception_score(probs, seed=1) != a


def test_per_class_scores():
    rng = _rng(6)
    real_labels = np.repeat(np.arange(3), 200)
    real = rng.normal(size=(600, 4)) + 3 * np.eye(4)[real_labels]
    fake_labels = np.repeat(np.arange(3), [60, 60, 3])
    fake = rng.normal(size=(123, 4)) + 3 * np.eye(4)[fake_labels]
    fake[60:120] = real[200] + 0.01 * rng.normal(size=(60, 4))  # class 1 collapsed onto one point
    probs = np.eye(3)[np.where(np.arange(123) < 30, (fake_labels + 1) % 3, fake_labels)]  # half of class 0 wrong
    with pytest.warns(UserWarning, match="at most 5 samples: 2"):
        out = per_class_scores(real, real_labels, fake, fake_labels, 3, fake_probs=probs)
    assert out["recall"][0] > 0.5 and out["recall"][1] < 0.1 and out["recall"][2] is None
    assert out["coverage"][0] > out["coverage"][1]
    assert out["kid"][1] > out["kid"][0] and out["kid"][2] is not None  # unbiased KID needs only 2 samples
    assert out["accuracy"] == {0: 0.5, 1: 1.0, 2: 1.0}


def _fs(x, labels=None, probs=None) -> FeatureSet:
    return FeatureSet(torch.as_tensor(x, dtype=torch.float32),
                      None if labels is None else torch.as_tensor(labels),
                      None if probs is None else torch.as_tensor(probs, dtype=torch.float32), "test")


@pytest.fixture(scope="module")
def specs():
    reg = build_registry()
    return {name: reg.get("metric", name).obj for name in reg.names("metric")}


def test_memorization_metric_rates_per_class_and_group(specs):
    rng = _rng(7)
    counts = [150, 150, 50, 50, 5, 5]  # head 0,1; medium 2,3; tail 4,5 (threshold rule)
    train_labels = np.repeat(np.arange(6), counts)
    train_images = torch.as_tensor(rng.integers(0, 256, size=(len(train_labels), 1, 4, 4)), dtype=torch.uint8)
    train_feats = torch.as_tensor(rng.normal(size=(len(train_labels), 3)), dtype=torch.float32)
    training = TrainingReference(train_images, train_feats, torch.as_tensor(train_labels))
    fake_labels = np.repeat(np.arange(6), 4)
    fake_images = torch.as_tensor(rng.integers(0, 256, size=(24, 1, 4, 4)), dtype=torch.uint8)
    tail_rows = np.flatnonzero(train_labels >= 4)
    fake_images[16:] = train_images[tail_rows[:8]]  # the tail samples copy tail training images
    fake = _fs(rng.normal(size=(24, 3)), fake_labels)
    out = specs["memorization"].compute(fake, fake, training=training, fake_images=fake_images,
                                        num_classes=6, class_counts=counts)
    assert out["memorization_pixels"] == pytest.approx(8 / 24)
    assert out["memorization_pixels_tail"] == 1.0 and out["memorization_pixels_head"] == 0.0
    assert out["memorization_pixels_class_5"] == 1.0 and out["memorization_train_n"] == len(train_labels)
    with pytest.raises(CbdmError, match="training set"):
        specs["memorization"].compute(fake, fake)


def test_every_builtin_metric_declares_its_values(specs):
    rng = _rng(8)
    labels = np.arange(120) % 3
    real = _fs(rng.normal(size=(120, 4)), labels)
    fake = _fs(rng.normal(size=(120, 4)), labels, np.eye(3)[labels])
    common = {"num_classes": 3, "class_counts": [100, 50, 10]}
    options = {"kid": {"subsets": 2, "subset_size": 50}, "prd": {"num_runs": 1, "num_clusters": 5},
               "is": {"splits": 2}, "per_class": {"kid_subsets": 2}}
    for name, spec in specs.items():
        if spec.needs_training_set:
            continue
        out = spec.compute(real, fake, **common, **options.get(name, {}))
        undeclared = [k for k in out if spec.direction(k) is None]
        assert not undeclared, (name, undeclared)
    assert specs["fid"].direction("fid") is Direction.LOWER
    assert specs["per_class"].direction("kid_class_7") is Direction.LOWER
    assert specs["per_class"].direction("coverage_tail") is Direction.HIGHER
    assert specs["memorization"].direction("memorization_features_head") is Direction.LOWER
    assert specs["memorization"].direction("memorization_train_n") is Direction.NEITHER
    assert specs["prd"].direction("f8") is Direction.HIGHER and specs["prd"].direction("fid") is None


def test_direction_exact_name_beats_pattern():
    spec = MetricSpec(lambda r, f: {}, values={"x_*": Direction.LOWER, "x_n": Direction.NEITHER})
    assert spec.direction("x_a") is Direction.LOWER and spec.direction("x_n") is Direction.NEITHER
    assert spec.direction("y") is None


def test_reference_radii_cached_on_disk(tmp_path):
    from cbdm_core.evaluation.prepared import ReferenceRadii

    rng = _rng(9)
    real, fake = rng.normal(size=(300, 4)), rng.normal(size=(50, 4))
    first = ReferenceRadii(tmp_path, "digits@abc-train-clf")
    want = precision_recall(real, fake, radii_cache=first)
    assert first.computed == 1 and len(list(tmp_path.glob("*.safetensors"))) == 1  # (and the folder's lock file)
    again = ReferenceRadii(tmp_path, "digits@abc-train-clf")  # a new process: read from disk
    assert precision_recall(real, fake, radii_cache=again) == want and again.computed == 0
    other = ReferenceRadii(tmp_path, "digits@abc-train-inception")  # another extractor: its own entry
    precision_recall(real, fake, radii_cache=other)
    assert other.computed == 1
