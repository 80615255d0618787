"""Per-sample records (``records.csv``): one row per generated image, aggregating exactly to the
per-class rates in ``metrics.json``; columns a run did not compute are left empty."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from cbdm_core.data import dataset_options, load_dataset
from cbdm_core.evaluation import RECORD_COLUMNS, read_records_csv
from cbdm_core.features import save_classifier, train_classifier

from .helpers import cli_ok


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict[str, Path]:
    """A 1-epoch digits classifier and 120 'generated' images: copies of training images and noise."""
    work = tmp_path_factory.mktemp("records")
    train = load_dataset("digits", dataset_options(split="train"))
    model = train_classifier(train.images[:400], train.labels[:400], 10, epochs=1, seed=0)
    save_classifier(model, work / "clf.safetensors")
    rng = np.random.default_rng(0)
    copies = train.images[:60].permute(0, 2, 3, 1).numpy()
    noise = rng.integers(0, 256, (60, 8, 8, 1), dtype=np.uint8)
    labels = np.concatenate([train.labels[:60].numpy(), rng.integers(0, 10, 60)])
    np.savez(work / "s.npz", images=np.concatenate([copies, noise]), labels=labels)
    return {"work": work, "clf": work / "clf.safetensors", "npz": work / "s.npz"}


def test_eval_writes_records_that_aggregate_to_the_reported_rates(setup):
    out = setup["work"] / "out"
    cli_ok("eval", setup["npz"], "--dataset", "digits", "--extractor", "classifier", "--classifier", setup["clf"],
           "--device", "cpu", "--cache-dir", setup["work"] / "cache", "--metrics", "per_class,memorization",
           "--out", out)
    doc = json.loads((out / "metrics.json").read_text())
    rec = read_records_csv(out / "records.csv")
    assert list(rec) == list(RECORD_COLUMNS) and len(rec["index"]) == 120
    req = np.array(rec["requested_class"])
    pred = np.array(rec["predicted_class"])
    for space in ("pixels", "features"):
        flags = np.array(rec[f"memorized_{space}"])
        assert flags.mean() == pytest.approx(doc["values"][f"memorization_{space}"])
        for row in doc["per_class"]:
            c = row["class"]
            assert flags[req == c].mean() == pytest.approx(row[f"memorization_{space}"])
        d1, d2 = np.array(rec[f"d1_{space}"]), np.array(rec[f"d2_{space}"])
        assert np.all(d1 <= d2) and np.array_equal(flags == 1, (d1 < d2 / 3) | (d1 == 0))
    for row in doc["per_class"]:
        c = row["class"]
        assert (pred[req == c] == c).mean() == pytest.approx(row["accuracy"])
    assert (pred == req).mean() == pytest.approx(doc["values"]["accuracy"])
    assert np.all((np.array(rec["confidence"]) > 0) & (np.array(rec["confidence"]) <= 1))
    # the copies' nearest training image is the one copied, at distance 0
    train = load_dataset("digits", dataset_options(split="train"))
    assert np.all(np.array(rec["d1_pixels"][:60]) == 0)
    nn = np.array(rec["nn_train_index_pixels"][:60], dtype=int)
    assert torch.equal(train.images[nn], train.images[:60])  # the training set is the digits train split


def test_columns_not_computed_are_empty(setup):
    out = setup["work"] / "fid-only"
    cli_ok("eval", setup["npz"], "--dataset", "digits", "--extractor", "classifier", "--classifier", setup["clf"],
           "--device", "cpu", "--cache-dir", setup["work"] / "cache", "--metrics", "fid", "--out", out)
    rec = read_records_csv(out / "records.csv")
    assert rec["index"] == [float(i) for i in range(120)] and None not in rec["requested_class"]
    for name in RECORD_COLUMNS[2:]:
        assert rec[name] == [None] * 120, name


def test_eval_reports_the_heldout_real_row_next_to_memorisation(setup):
    """`cbdm eval` with memorization writes heldout-real.json: the metric on real images that are not
    in the training set (every flag a false positive), per frequency group, and prints the row."""
    from cbdm_core.data import DatasetOptions, load_dataset

    out = setup["work"] / "out-heldout"
    res = cli_ok("eval", setup["npz"], "--dataset", "digits", "--extractor", "classifier", "--classifier",
                 setup["clf"], "--device", "cpu", "--cache-dir", setup["work"] / "cache", "--metrics",
                 "per_class,memorization", "--out", out)
    assert "held-out real images (false positives)" in res.output
    doc = json.loads((out / "heldout-real.json").read_text())
    train = load_dataset("digits", DatasetOptions(split="train"))
    assert doc["train_labels"] == train.labels.tolist()  # against the samples' training set
    labels = np.array(doc["labels"])
    assert len(labels) == doc["count"] > 0 and np.bincount(labels, minlength=10).max() <= doc["per_class_cap"]
    for space in ("pixels", "features"):
        cols = doc["spaces"][space]
        flags, d1, d2 = (np.array(cols[k]) for k in ("memorized", "d1", "d2"))
        assert np.array_equal(flags == 1, (d1 < d2 / 3) | (d1 == 0))  # the samples' rule
        assert doc["rows"][space]["all"] == pytest.approx(flags.mean())
    assert doc["spaces"]["pixels"]["d1"] and min(doc["spaces"]["pixels"]["d1"]) > 0  # none is a training image
