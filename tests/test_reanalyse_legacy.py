"""benchmarks/reanalyse_legacy.py on the committed legacy studies: the counts it reconstructs
agree with the per-class rates, its intervals are scipy's t-intervals, and it reproduces the
numbers issue 23 quotes."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

ROOT = Path(__file__).resolve().parents[1]


def _module():
    spec = importlib.util.spec_from_file_location("reanalyse_legacy", ROOT / "benchmarks" / "reanalyse_legacy.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


RL = _module()


@pytest.fixture(scope="module")
def result():
    return RL.reanalyse(RL.RESULTS, resamples=200)


def _comparison(result, key):
    return next(c for c in result["comparisons"] if c["key"] == key)


def _endpoint(comp, value):
    return next(e for e in comp["endpoints"] if e["value"] == value)


def test_reconstructed_counts_match_the_per_class_rates():
    cmp1 = json.loads((RL.RESULTS / "digits-lt-compare" / "compare.json").read_text())
    for label in ("ddpm", "cbdm"):
        for seed, s in RL.arm_from_compare(cmp1, label).items():
            for stem in ("memorization_pixels", "accuracy"):
                counts = RL.reconstruct_counts(s, stem, RL.TAIL)
                assert sorted(counts) == RL.TAIL
                rows = {r["class"]: r for r in s.per_class}
                for c, (k, n) in counts.items():
                    assert n == rows[c]["samples"] == 50
                    assert k / n == pytest.approx(rows[c][stem], abs=1e-12)
                # the group value is the mean of its (equal-sized) classes
                k_all = sum(k for k, _ in counts.values())
                n_all = sum(n for _, n in counts.values())
                assert k_all / n_all == pytest.approx(s.values[f"{stem}_tail"], abs=1e-9)


def test_a_rate_that_is_not_a_count_is_refused():
    s = RL.SampleSet({}, [{"class": 6, "samples": 50, "memorization_pixels": 0.013}])
    with pytest.raises(ValueError):
        RL.reconstruct_counts(s, "memorization_pixels", [6])


def test_t_interval_is_scipys_on_the_per_seed_differences(result):
    for comp in result["comparisons"]:
        for e in comp["endpoints"]:
            diffs = [d for d in e["diff_per_seed"] if d is not None]
            assert diffs == pytest.approx([m - b for m, b in zip(e["method_per_seed"], e["baseline_per_seed"])
                                           if m is not None and b is not None])
            if len(diffs) < 2 or np.std(diffs) == 0:
                continue
            low, high = stats.t.interval(0.95, len(diffs) - 1, loc=np.mean(diffs), scale=stats.sem(diffs))
            assert e["t_interval"] == pytest.approx([low, high], abs=1e-12)


def test_the_numbers_the_issue_quotes(result):
    w0 = _comparison(result, "compare-w0")
    mem = _endpoint(w0, "memorization_pixels_tail")
    assert mem["t_interval"] == pytest.approx([-0.080, -0.023], abs=5e-4)
    assert mem["image_level"]["pooled"] == "44/600 vs 13/600"
    assert mem["image_level"]["p_image"] < 1e-4
    assert mem["image_level"]["p_image_continuity_corrected"] == pytest.approx(3e-5, abs=5e-6)
    cov = _endpoint(w0, "coverage_tail")
    assert cov["t_interval"][0] == pytest.approx(0.0002, abs=1e-4) and cov["t_interval"][1] == pytest.approx(0.090, abs=5e-4)
    assert cov["image_level"] is None  # coverage is not a rate over images: no CMH
    assert mem["legacy_interval"] == pytest.approx([min(mem["diff_per_seed"]), max(mem["diff_per_seed"])])
    w1 = _endpoint(_comparison(result, "compare-w1"), "memorization_pixels_tail")
    assert w1["image_level"]["pooled"] == "64/600 vs 60/600"
    assert w1["image_level"]["p_image_continuity_corrected"] == pytest.approx(0.77, abs=0.005)
    assert w1["image_level"]["p_image"] > 0.5


def test_markdown_labels_its_intervals(result):
    md = RL.render_markdown(result)
    assert "95% paired t-interval" in md and "reconstructed" in md and "[min, max]" in md
    assert "[-0.0804, -0.0230]" in md
