"""``cbdm train --log wandb`` in offline mode: the records wandb writes hold our scalars, previews, config."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

pytest.importorskip("wandb", reason="wandb not installed (pip install 'cbdm[wandb]')")

TINY = {
    "model": {"backbone": "unet", "options": {"ch": 8, "ch_mult": [1, 2], "attn": [1], "num_res_blocks": 1,
                                              "dropout": 0.1, "num_groups": 4}},
    "diffusion": {"T": 100},
    "data": {"dataset": "digits-lt"},
    "optim": {"batch_size": 8, "steps": 4, "warmup": 1},
    "preview": {"sampler": "ddim", "steps": 2, "per_class": 1},
    "log_every": 2,
    "sample_every": 2,
}


def _records(run_dir):
    from .wandb_records import read_records

    files = list((run_dir / "wandb").rglob("offline-run-*/run-*.wandb"))
    assert len(files) == 1, files
    return read_records(files[0])


def test_train_log_wandb_offline(tmp_path):
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(TINY))
    env = {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_DIR": str(tmp_path / "wandb-dir"),
           "WANDB_CONFIG_DIR": str(tmp_path / "wandb-config"), "WANDB_CACHE_DIR": str(tmp_path / "wandb-cache"),
           "OMP_NUM_THREADS": "1"}
    import os

    # A subprocess: wandb starts a service process, and a hang (no network) must not hang the suite.
    res = subprocess.run([sys.executable, "-m", "cbdm_cli", "train", "--config", str(tmp_path / "tiny.yaml"),
                          "--out", str(tmp_path / "run"), "--no-progress", "--log", "wandb", "--log", "tensorboard"],
                         env={**os.environ, **env}, capture_output=True, text=True, timeout=180)
    assert res.returncode == 0, res.stderr
    run_dir = tmp_path / "run"
    records = _records(run_dir)
    history = [{i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item}
               for r in records if r.WhichOneof("record_type") == "history"]
    jsonl = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    logged = {h["_step"]: h for h in history if "train/total" in h}
    assert sorted(logged) == [r["step"] for r in jsonl] == [2, 4]
    for rec in jsonl:
        assert logged[rec["step"]]["train/total"] == pytest.approx(rec["total"])
        assert logged[rec["step"]]["train/diffusion"] == pytest.approx(rec["diffusion"])
        assert logged[rec["step"]]["run/lr"] == pytest.approx(rec["lr"])
    images = [h for h in history if h.get("preview/_type") == "image-file"]
    assert [h["_step"] for h in images] == [2, 4]
    assert all((next((run_dir / "wandb").rglob("offline-run-*")) / "files" / h["preview/path"]).is_file()
               for h in images)
    run_rec = next(r.run for r in records if r.WhichOneof("record_type") == "run")
    config = {i.key: json.loads(i.value_json) for i in run_rec.config.update}
    assert config["model"]["options"]["ch"] == 8 and config["diffusion"]["T"] == 100
    assert run_rec.run_id == (run_dir / "wandb" / "run-id").read_text().strip()
    assert (run_dir / "tensorboard").is_dir()  # --log is repeatable


def test_wandb_is_not_imported_at_cli_start():
    code = "import sys; from cbdm_cli.main import cli; import cbdm_core.training.loggers; print('wandb' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "False", out.stderr
