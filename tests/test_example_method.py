"""The example third-party METHOD package (examples/cbdm-tailweight: one module and an entry
point) installs and runs through `cbdm train --method ... -M ...`, `cbdm sample` and `cbdm eval`
without any cbdm file edited."""

import json
import os
from pathlib import Path

import pytest
import yaml
from .helpers import cbdm_subprocess, install_copy

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "cbdm-tailweight"


@pytest.fixture(scope="module")
def method_env(tmp_path_factory):
    return install_copy(EXAMPLE, tmp_path_factory.mktemp("tailweight"))


def test_the_example_is_one_module_and_an_entry_point():
    files = sorted(p.name for p in EXAMPLE.iterdir())
    assert files == ["cbdm_tailweight.py", "pyproject.toml"]


def test_listed_by_cbdm_methods(method_env):
    proc = cbdm_subprocess(method_env, "methods", "--json")
    assert proc.returncode == 0, proc.stderr
    mine = [r for r in json.loads(proc.stdout) if r["name"] == "tail-weight"]
    assert mine and mine[0]["plugin"].startswith("cbdm-tailweight")
    assert [o["name"] for o in mine[0]["options"]] == ["strength", "power"]


def test_train_sample_eval(method_env, tmp_path):
    cfg = {"model": {"options": {"ch": 8, "ch_mult": [1, 2], "attn": [1], "num_res_blocks": 1, "num_groups": 4}},
           "diffusion": {"T": 50}, "data": {"dataset": "digits-lt"},
           "optim": {"batch_size": 8, "steps": 2, "warmup": 1}, "preview": {"steps": 2, "per_class": 1},
           "log_every": 1}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    run = tmp_path / "run"
    proc = cbdm_subprocess(method_env, "train", "--config", tmp_path / "c.yaml", "--method", "tail-weight",
                 "-M", "power=1", "--out", run, "--no-progress")
    assert proc.returncode == 0, proc.stderr
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["objective"]["methods"] == [{"name": "tail-weight", "options": {"power": 1}}]
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert all(r["tail_weighted"] > 0 for r in records)
    assert all(abs(r["total"] - r["diffusion"] - r["tail_weighted"]) < 1e-4 for r in records)

    proc = cbdm_subprocess(method_env, "sample", run, "-n", "30", "--steps", "2", "--out", tmp_path / "samples")
    assert proc.returncode == 0, proc.stderr
    clf = tmp_path / "clf.safetensors"
    proc = cbdm_subprocess(method_env, "eval", "train-classifier", "--dataset", "digits", "--epochs", "1", "--out", clf,
                 "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    proc = cbdm_subprocess(method_env, "eval", tmp_path / "samples", "--dataset", "digits", "--extractor", "classifier",
                 "--classifier", clf, "--metrics", "fid", "--device", "cpu", "--out", tmp_path / "eval")
    assert proc.returncode == 0, proc.stderr
    values = json.loads((tmp_path / "eval" / "metrics.json").read_text())["values"]
    assert values["fid"] is not None and values["fid"] >= 0

    # Without the plugin, sampling and resuming the run name the package that is missing.
    plain = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    for args in (("sample", run, "-n", "2", "--steps", "2", "--out", tmp_path / "s2"),
                 ("train", "--out", run, "--resume", "--steps", "3", "--no-progress")):
        proc = cbdm_subprocess(plain, *args)
        assert proc.returncode != 0 and "Traceback" not in proc.stderr
        assert "method 'tail-weight' is not installed" in proc.stderr
        assert "plugin cbdm-tailweight 0.1.0 (pip install cbdm-tailweight)" in proc.stderr


def test_bad_option_is_one_line(method_env, tmp_path):
    proc = cbdm_subprocess(method_env, "train", "--method", "tail-weight", "-M", "powr=1", "--out", tmp_path / "r")
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "method 'tail-weight' has no option 'powr'; options: strength, power" in proc.stderr
