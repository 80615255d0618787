"""``cbdm eval --paper NAME``: the papers' evaluation settings, the deviation warnings and the
docs table. The CLI test runs Inception offline on a RANDOM weights file (never a real FID)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cbdm_core.errors import CbdmError
from cbdm_core.evaluation.paper_check import apply_paper, sample_deviations
from cbdm_core.evaluation.paper_settings import PAPERS, get_paper
from cbdm_core.evaluation.paper_table import render_table
from cbdm_core.features import ENV_WEIGHTS

from .helpers import cli_fails, cli_ok

DOCS = Path(__file__).resolve().parents[1] / "docs" / "evaluation.md"


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)
    yield


@pytest.fixture
def offline(monkeypatch):
    import urllib.error

    import torch_fidelity.feature_extractor_inceptionv3 as tfi

    def no_network(*args, **kwargs):
        raise urllib.error.URLError("no network in tests")

    monkeypatch.delenv(ENV_WEIGHTS, raising=False)
    monkeypatch.setattr(tfi, "load_state_dict_from_url", no_network)


def _tiny_folder(root: Path, rng: np.random.Generator) -> None:
    """3 classes of 8x8 RGB images, a train/ split and a smaller test/ split."""
    for split, n in (("train", 4), ("test", 2)):
        for c in range(3):
            (root / split / f"c{c}").mkdir(parents=True)
            for i in range(n):
                img = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
                Image.fromarray(img).save(root / split / f"c{c}" / f"{i}.png")


def test_paper_cbdm_warns_about_the_sample_count_and_records_it(random_inception_weights, offline, tmp_path):
    rng = np.random.default_rng(0)
    _tiny_folder(tmp_path / "data", rng)
    samples = tmp_path / "samples.npz"
    np.savez(samples, images=rng.integers(0, 256, (12, 8, 8, 3), dtype=np.uint8), labels=np.repeat(np.arange(3), 4))
    res = cli_ok("eval", samples, "--dataset", "folder", "--data-root", tmp_path / "data", "--device", "cpu",
                 "--cache-dir", tmp_path / "cache", "--batch-size", "12", "--paper", "cbdm",
                 "--inception-weights", random_inception_weights, "--out", tmp_path / "report",
                 "--metrics", "kid", "-O", "kid.subset_size=12", "-O", "kid.subsets=3")
    assert "FID at 12 samples is biased upward against the paper's 50,000" in res.output
    assert "the paper has no number for this dataset" in res.output  # a folder is not CIFAR
    doc = json.loads((tmp_path / "report" / "metrics.json").read_text())
    paper = doc["paper"]
    assert paper["name"] == "cbdm" and paper["settings"]["num_samples"] == 50_000
    samples_dev = [d for d in paper["deviations"] if d["field"] == "samples"]
    assert samples_dev and samples_dev[0]["yours"] == "12" and samples_dev[0]["fixable"]
    assert paper["matches"] is False
    # auto would take the folder's test/ split; the paper's is train (4 images a class, 12 in all)
    assert doc["reference"]["split"] == "train" and doc["reference"]["count"] == 12
    assert doc["extractor"]["name"] == "inception"
    assert any(d["field"] == "Inception weights" for d in paper["deviations"])  # random weights


def test_unknown_paper_is_a_one_line_error(tmp_path):
    line = cli_fails("eval", tmp_path / "none.npz", "--dataset", "folder", "--paper", "ddpm++", match="unknown paper")
    assert "cbdm, cm, coral, t2h" in line


def test_paper_fills_unset_options_and_names_each_difference():
    cbdm = get_paper("CBDM")
    same = apply_paper(cbdm, "cifar10-lt", None, "auto", None, Path("stats/cifar10.train.npz"), None)
    assert (same.extractor, same.reference_split, same.metrics) == ("inception", "train", "fid,is,prd,precision_recall")
    assert [d.field for d in same.deviations if d.fixable] == []
    assert [d.field for d in same.deviations] == ["resize"]  # torch-fidelity's resize, not an option
    other = apply_paper(cbdm, "cifar100-lt", "classifier", "test", "fid", Path("mine.npz"), None)
    assert [d.field for d in other.deviations] == ["reference split", "FID statistics", "extractor"]
    assert other.metrics == "fid"  # the user's metrics are kept
    no_stats = apply_paper(get_paper("t2h"), "cifar100", None, "auto", None, None, None)
    assert "--reference-stats cifar100.train.npz" in no_stats.deviations[0].effect


def test_sample_count_and_balance_deviations():
    coral = get_paper("coral")
    assert sample_deviations(coral, 50_000, [5000] * 10) == []
    few = sample_deviations(coral, 10_000, [1000] * 10)
    assert len(few) == 1 and "FID at 10,000 samples is biased upward against the paper's 50,000" in few[0].effect
    unbalanced = sample_deviations(coral, 50_000, [9000, 1000] + [5000] * 8)
    assert [d.field for d in unbalanced] == ["class balance"]


def test_every_paper_cites_a_source_for_every_setting_and_the_docs_hold_the_table():
    for paper in PAPERS.values():
        assert set(paper.sources) >= {"reference_split", "stats_file", "num_samples", "extractor", "resize",
                                      "metrics"}
    assert not PAPERS["cm"].confirmed and PAPERS["cbdm"].confirmed
    with pytest.raises(CbdmError, match="unknown paper"):
        get_paper("oc")
    assert render_table() in DOCS.read_text()
