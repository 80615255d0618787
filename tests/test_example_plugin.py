"""The example third-party package installs, shows up in `cbdm plugins`, and works in `cbdm train`."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "cbdm-tailheavy"


@pytest.fixture(scope="module")
def plugin_env(tmp_path_factory):
    from .helpers import install_copy

    # Installed from a copy into a separate target folder: the repository and the test environment stay as they were.
    return install_copy(EXAMPLE, tmp_path_factory.mktemp("site"))


def _cbdm(env, *args, cwd=None):
    return subprocess.run([sys.executable, "-m", "cbdm_cli", *map(str, args)], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=600)


def test_listed_by_cbdm_plugins(plugin_env):
    proc = _cbdm(plugin_env, "plugins", "--json")
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    mine = [r for r in rows if r["name"] == "inverse"]
    assert mine and mine[0]["kind"] == "label_distribution"
    assert mine[0]["plugin"].startswith("cbdm-tailheavy") and mine[0]["version"] == "0.1.0"


def test_usable_from_cbdm_train(plugin_env, tmp_path):
    cfg = {
        "model": {"options": {"ch": 8, "ch_mult": [1, 2], "attn": [1], "num_res_blocks": 1, "num_groups": 4}},
        "diffusion": {"T": 50},
        "optim": {"batch_size": 8, "steps": 2, "warmup": 1},
        "preview": {"steps": 2, "per_class": 1},
    }
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    proc = _cbdm(plugin_env, "train", "--config", tmp_path / "c.yaml", "--y-dist", "inverse",
                 "--out", tmp_path / "run", "--no-progress")
    assert proc.returncode == 0, proc.stderr
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["objective"]["methods"][0]["options"]["y_dist"] == "inverse"


def test_not_available_without_the_package(tmp_path):
    proc = _cbdm(dict(os.environ), "train", "--y-dist", "inverse", "--out", tmp_path / "run", "--no-progress")
    assert proc.returncode != 0
    assert "unknown label distribution 'inverse'" in proc.stderr
    assert "Traceback" not in proc.stderr
