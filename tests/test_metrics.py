"""Metrics against closed forms and constructed point clouds (CPU, seconds)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cbdm_core.errors import CbdmError
from cbdm_core.features.base import FeatureSet
from cbdm_core.metrics import (
    MetricWarning,
    feature_statistics,
    fid_from_features,
    frechet_distance,
    frequency_groups,
    group_by_frequency,
    group_rule,
    inception_score,
    kid,
    per_class_fid,
    prd_fbeta,
    precision_recall,
)
from cbdm_core.registry import build_registry


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


# --- Fréchet distance -------------------------------------------------------------------

def test_frechet_diagonal_closed_form():
    rng = _rng()
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    s1, s2 = rng.uniform(0.1, 3, size=6), rng.uniform(0.1, 3, size=6)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(s1 + s2 - 2 * np.sqrt(s1 * s2))
    assert frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2)) == pytest.approx(expected, rel=1e-9)


def test_frechet_commuting_full_covariances():
    rng = _rng(1)
    q, _ = np.linalg.qr(rng.normal(size=(5, 5)))
    a, b = rng.uniform(0.2, 2, size=5), rng.uniform(0.2, 2, size=5)
    s1, s2 = q @ np.diag(a) @ q.T, q @ np.diag(b) @ q.T
    mu1, mu2 = np.zeros(5), np.ones(5)
    expected = 5.0 + np.sum(a + b - 2 * np.sqrt(a * b))
    # torch inputs are accepted too
    got = frechet_distance(torch.tensor(mu1), torch.tensor(s1), torch.tensor(mu2), torch.tensor(s2))
    assert got == pytest.approx(expected, rel=1e-8)


def test_frechet_singular_covariances():
    # Rank-1 covariances: the product is singular; the distance is still exact.
    v = np.array([[1.0, 2.0, 0.0, 0.0]])
    s = v.T @ v
    d = frechet_distance(np.zeros(4), s, np.ones(4), s)
    assert d == pytest.approx(4.0, abs=1e-9)
    with pytest.raises(CbdmError, match="not finite"):
        frechet_distance(np.zeros(4), s * np.nan, np.ones(4), s)


def test_frechet_matches_general_matrix_sqrt_on_non_commuting_covariances():
    import scipy.linalg

    rng = _rng(7)
    a, b = rng.normal(size=(200, 30)), rng.normal(size=(150, 30)) @ rng.normal(size=(30, 30))
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    mu1, mu2 = a.mean(0), b.mean(0)
    root = scipy.linalg.sqrtm(s1 @ s2).real  # the textbook formula, as pytorch-fid computes it
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(root)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-9)


def test_frechet_shape_mismatch_is_user_error():
    with pytest.raises(CbdmError, match="do not match"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


def test_fid_self_zero_and_monotone_in_noise():
    rng = _rng(2)
    x = rng.normal(size=(400, 8)) @ rng.normal(size=(8, 8))
    noise = rng.normal(size=x.shape)
    assert fid_from_features(x, x) == pytest.approx(0.0, abs=1e-6)
    values = [fid_from_features(x, x + s * noise) for s in (0.1, 0.3, 1.0, 3.0)]
    assert all(a < b for a, b in zip(values, values[1:])), values


def test_feature_statistics_checks_sample_count():
    mu, sigma = feature_statistics(torch.arange(12, dtype=torch.float32).view(4, 3))
    assert mu.dtype == np.float64 and sigma.shape == (3, 3)
    with pytest.raises(CbdmError, match="at least 2"):
        feature_statistics(np.zeros((1, 3)))
    with pytest.warns(MetricWarning, match="rank-deficient"):
        feature_statistics(_rng().normal(size=(5, 10)))


# --- Inception score --------------------------------------------------------------------

def test_inception_score_uniform_and_one_hot():
    assert inception_score(np.full((100, 10), 0.1), splits=10) == pytest.approx((1.0, 0.0), abs=1e-9)
    one_hot = np.eye(10)[np.arange(100) % 10]  # one split holding every class equally often
    mean, std = inception_score(torch.tensor(one_hot), splits=1)
    assert mean == pytest.approx(10.0) and std == pytest.approx(0.0, abs=1e-9)
    mean, _ = inception_score(np.eye(10)[np.arange(5000) % 10], splits=10)  # random splits: close to 10
    assert 9.8 < mean <= 10.0


def test_inception_score_rejects_logits_and_too_few():
    with pytest.raises(CbdmError, match="not logits"):
        inception_score(_rng().normal(size=(20, 5)), splits=2)
    with pytest.raises(CbdmError, match="at least"):
        inception_score(np.full((5, 4), 0.25), splits=10)


# --- KID ---------------------------------------------------------------------------------

def test_kid_same_distribution_near_zero_shifted_positive():
    rng = _rng(3)
    a, b = rng.normal(size=(300, 16)), rng.normal(size=(300, 16))
    same, _ = kid(a, b, subsets=20, subset_size=1000)  # subset size clipped to 300
    shifted, _ = kid(a, b + 1.0, subsets=20, subset_size=200)
    assert abs(same) < 0.02
    assert shifted > 0.3 and shifted > 20 * abs(same)


# --- improved precision / recall ----------------------------------------------------------

def test_precision_recall_identical_and_disjoint():
    x = _rng(4).normal(size=(200, 4))
    assert precision_recall(x, x, k=3) == (1.0, 1.0)
    assert precision_recall(x, x + 1000.0, k=3) == (0.0, 0.0)


def test_precision_recall_subset_of_dense_cluster():
    real = _rng(5).normal(size=(500, 2))
    fake = real[real[:, 0] < -0.5]  # a subset: every fake point lies on the real manifold
    p, r = precision_recall(real, fake, k=5)
    assert p == 1.0
    assert r < 0.7


def test_precision_recall_hand_computed_1d():
    # k=1 radii. real [0,1,3,7] -> [1,1,2,4]; fake [0.5,2.2,16,24] -> [1.7,1.7,8,8].
    # precision: 0.5 (in ball of 0) and 2.2 (ball of 3) yes, 16 and 24 no -> 2/4.
    # recall: 0, 1, 3 covered by the balls of 0.5 / 2.2; 7 is 9 from 16 (> 8) -> 3/4.
    real = torch.tensor([[0.0], [1.0], [3.0], [7.0]])
    fake = torch.tensor([[0.5], [2.2], [16.0], [24.0]])
    assert precision_recall(real, fake, k=1) == (0.5, 0.75)


def test_precision_recall_chunking_matches():
    rng = _rng(6)
    real, fake = rng.normal(size=(150, 3)), rng.normal(size=(120, 3)) + 0.5
    full = precision_recall(real, fake, k=4)
    # ~7-row chunks exercise the chunk boundaries
    assert precision_recall(real, fake, k=4, budget_bytes=7 * 150 * 8) == full


def test_precision_recall_too_few_raises():
    with pytest.raises(CbdmError, match="at least 6"):
        precision_recall(np.zeros((5, 2)), np.zeros((50, 2)), k=5)


# --- PRD -------------------------------------------------------------------------------------

def _modes(n_per: int, modes: list[int], seed: int) -> np.ndarray:
    rng = _rng(seed)
    centers = np.eye(10)[modes] * 20.0
    return np.concatenate([c + rng.normal(size=(n_per, 10)) for c in centers])


def test_prd_identical_disjoint_and_mode_dropping():
    real = _modes(60, list(range(10)), 7)
    same = _modes(60, list(range(10)), 8)
    f8, f1_8 = prd_fbeta(real, same, num_clusters=20, num_runs=2)
    assert 0.9 < f8 <= 1.0 and 0.9 < f1_8 <= 1.0

    f8, f1_8 = prd_fbeta(real, real + 500.0, num_clusters=20, num_runs=1)
    assert f8 == pytest.approx(0.0, abs=1e-6) and f1_8 == pytest.approx(0.0, abs=1e-6)

    dropped = _modes(200, [0, 1, 2], 9)  # covers 3 of 10 modes, same size as real
    f8, f1_8 = prd_fbeta(real, dropped, num_clusters=20, num_runs=2)
    assert 0.0 <= f8 < f1_8 <= 1.0
    assert f8 < 0.5 and f1_8 > 0.9


# --- per class --------------------------------------------------------------------------------

def test_per_class_fid_and_missing_classes():
    rng = _rng(10)
    real = rng.normal(size=(300, 3))
    labels = np.arange(300) % 3
    fake = real.copy()
    fake[labels == 2] += 2.0  # only class 2 differs, by 2 in each of 3 dims -> FID 12
    with pytest.warns(MetricWarning, match="fewer than 2"):
        values = per_class_fid(real, labels, fake, labels, num_classes=4)
    assert values[0] == pytest.approx(0.0, abs=1e-6) and values[1] == pytest.approx(0.0, abs=1e-6)
    assert values[2] == pytest.approx(12.0, rel=1e-6)
    assert values[3] is None


def test_frequency_groups_thresholds_else_thirds():
    counts = [5, 500, 50, 100, 1, 20, 300, 10, 200, 2]  # every threshold group has classes: thresholds
    assert frequency_groups(counts) == {"head": [1, 6, 8], "medium": [3, 2, 5], "tail": [7, 0, 9, 4]}
    assert group_rule(counts) == "thresholds"
    thirds = [5000, 3000, 2000, 1500, 900, 600, 400, 300, 200, 150]  # all > 100: thirds
    assert frequency_groups(thirds) == {"head": [0, 1, 2], "medium": [3, 4, 5, 6], "tail": [7, 8, 9]}
    assert group_rule(thirds) == "thirds"
    # the edges: 101 is head, 100 and 20 medium, 19 tail
    assert frequency_groups([101, 100, 20, 19]) == {"head": [0], "medium": [1, 2], "tail": [3]}
    sizes = {k: tuple(len(frequency_groups(np.arange(k, 0, -1) + 1000)[x]) for x in ("head", "medium", "tail"))
             for k in (3, 10, 11, 12, 100)}
    assert sizes == {3: (1, 1, 1), 10: (3, 4, 3), 11: (4, 3, 4), 12: (4, 4, 4), 100: (33, 34, 33)}


def test_group_by_frequency_averages_and_skips_none():
    counts = torch.tensor([100, 90, 80, 50, 40, 30, 3, 2, 1])
    values = {0: 1.0, 1: 2.0, 2: 3.0, 3: 10.0, 4: None, 5: 20.0, 6: None, 7: None, 8: None}
    assert group_by_frequency(values, counts) == {"head": 2.0, "medium": 15.0, "tail": None}


# --- plugins -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def metrics():
    reg = build_registry()
    return {name: reg.get("metric", name).obj for name in reg.names("metric")}


def test_registry_has_metrics(metrics):
    assert {"fid", "is", "kid", "precision_recall", "density_coverage", "prd", "per_class_fid", "per_class",
            "memorization"} <= set(metrics)
    assert metrics["is"].needs_logits and not metrics["fid"].needs_logits


def _fs(x, labels=None, probs=None) -> FeatureSet:
    return FeatureSet(torch.as_tensor(x, dtype=torch.float32),
                      None if labels is None else torch.as_tensor(labels),
                      None if probs is None else torch.as_tensor(probs, dtype=torch.float32), "test")


def test_plugins_report_none_with_warning_when_too_few(metrics):
    few, many = _fs(np.zeros((3, 4))), _fs(_rng().normal(size=(50, 4)))
    with pytest.warns(MetricWarning, match="NOT COMPUTED"):
        assert metrics["precision_recall"].compute(many, few) == {"precision": None, "recall": None, "pr_n": None}
    with pytest.warns(MetricWarning, match="NOT COMPUTED"):
        assert metrics["fid"].compute(_fs(np.zeros((1, 4))), many) == {"fid": None}
    with pytest.warns(MetricWarning, match="NOT COMPUTED"):
        assert metrics["kid"].compute(_fs(np.zeros((1, 4))), many) == {"kid": None, "kid_std": None}


def test_plugins_compute_values(metrics):
    rng = _rng(11)
    labels = np.arange(240) % 3
    real = _fs(rng.normal(size=(240, 4)), labels)
    fake = _fs(rng.normal(size=(240, 4)) + 0.3, labels, np.eye(3)[labels])
    common = {"device": "cpu", "num_classes": 3, "class_counts": [100, 50, 10]}
    assert metrics["fid"].compute(real, fake, **common)["fid"] > 0
    out = metrics["is"].compute(real, fake, splits=4, **common)
    assert 2.5 < out["is"] <= 3.0 + 1e-9
    out = metrics["precision_recall"].compute(real, fake, k=3, **common)
    assert set(out) == {"precision", "recall", "pr_n"} and 0 < out["precision"] <= 1 and out["pr_n"] == 240
    out = metrics["kid"].compute(real, fake, subsets=5, subset_size=100, **common)
    assert out["kid"] > 0
    out = metrics["prd"].compute(real, fake, num_runs=1, num_clusters=5, **common)
    assert set(out) == {"f8", "f1_8", "prd_n"} and all(0 <= out[v] <= 1 for v in ("f8", "f1_8"))
    with pytest.warns(MetricWarning) as record:
        out = metrics["per_class_fid"].compute(real, _fs(real.features[:5] + 1, labels[:5]), **common)
    messages = " | ".join(str(w.message) for w in record)
    assert "fewer than 2 samples: 2 (80 real, 1 fake)" in messages and "rank-deficient" in messages
    assert out["fid_class_2"] is None and out["fid_class_0"] > 0 and out["fid_tail"] is None
    assert out["fid_head"] == out["fid_class_0"] and out["fid_class_mean"] > 0


def test_plugins_reject_bad_input(metrics):
    x = _fs(np.zeros((10, 4)))
    with pytest.raises(CbdmError, match="unknown option"):
        metrics["fid"].compute(x, x, splits=3)
    with pytest.raises(CbdmError, match="class probabilities"):
        metrics["is"].compute(x, x)
    with pytest.raises(CbdmError, match="labels"):
        metrics["per_class_fid"].compute(x, x)
    other = FeatureSet(torch.zeros(10, 4), extractor="other")
    with pytest.raises(CbdmError, match="come from"):
        metrics["fid"].compute(x, other)
    with pytest.raises(CbdmError, match="different dimensions"):
        metrics["fid"].compute(x, _fs(np.zeros((10, 5))))
