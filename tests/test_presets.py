"""Every preset validates and starts (one step on tiny overrides, small CIFAR files written here)."""

import pickle

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from cbdm_cli.main import cli
from cbdm_core.build import check_components
from cbdm_core.config import parse_train_config
from cbdm_core.presets_registry import load_preset, preset_names

TINY_UNET = {"ch": 8, "ch_mult": [1, 2], "attn": [1], "num_res_blocks": 1, "num_groups": 4, "dropout": 0.1}
TINY_VIT = {"size": "custom", "patch_size": 4, "depth": 1, "width": 16, "heads": 2}
TINY_GENVIT = {"patch_size": 4, "depth": 1, "width": 16, "heads": 2}


def _dump(path, obj):
    path.write_bytes(pickle.dumps(obj, protocol=2))


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("cifar")
    rng = np.random.default_rng(0)
    d10 = root / "cifar-10-batches-py"
    d10.mkdir()
    for i in range(1, 6):
        _dump(d10 / f"data_batch_{i}", {b"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8),
                                        b"labels": [(4 * i + j) % 10 for j in range(4)]})
    _dump(d10 / "test_batch", {b"data": rng.integers(0, 256, (10, 3072), dtype=np.uint8), b"labels": list(range(10))})
    _dump(d10 / "batches.meta", {b"label_names": [f"c{i}".encode() for i in range(10)]})
    d100 = root / "cifar-100-python"
    d100.mkdir()
    _dump(d100 / "train", {b"data": rng.integers(0, 256, (200, 3072), dtype=np.uint8),
                           b"fine_labels": [i % 100 for i in range(200)]})
    _dump(d100 / "test", {b"data": rng.integers(0, 256, (100, 3072), dtype=np.uint8), b"fine_labels": list(range(100))})
    _dump(d100 / "meta", {b"fine_label_names": [f"f{i}".encode() for i in range(100)]})
    _oltr_tree(root, rng)
    return root


def _oltr_tree(root, rng) -> None:
    """A tiny ImageNet-LT: OLTR's train list naming 3 classes of 12x12 images (the lt64 presets)."""
    from PIL import Image

    lines = []
    for c, n in enumerate((3, 2, 1)):
        for i in range(n):
            rel = f"train/n{c:08d}/n{c:08d}_{i}.png"
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)).save(root / rel)
            lines.append(f"{rel} {c}")
    (root / "ImageNet_LT").mkdir()
    (root / "ImageNet_LT" / "ImageNet_LT_train.txt").write_text("\n".join(lines) + "\n")


def _tiny(name: str, root) -> dict:
    data = load_preset(name)
    backbone = data.get("model", {}).get("backbone", "unet")
    if backbone == "unet":
        data["model"]["options"] = dict(TINY_UNET)
    elif backbone == "edm":
        data["model"]["options"]["inner_options"] = dict(TINY_UNET)
    elif backbone == "vit":
        data["model"]["options"] = dict(TINY_VIT)
    elif backbone == "genvit":
        data["model"]["options"] = dict(TINY_GENVIT)
    data["data"]["root"] = str(root)
    if data["data"].get("resize"):
        data["data"]["resize"] = 8  # the 64x64 presets start on 8x8 images: the tiny U-Net's levels fit
    data["optim"].update(steps=1, batch_size=4, warmup=1)
    preview = data.get("preview", {})
    ddpm_preview = preview.get("sampler") == "ddpm"
    # The ddpm sampler runs all T steps (null); the others get 2.
    data["preview"] = {**preview, "steps": None if ddpm_preview else 2, "per_class": 1}
    data.update(log_every=1, sample_every=0, ckpt_every=0)
    # A ddpm preview walks every one of the T steps over one image per class (100 classes on
    # CIFAR-100): 200 s at T = 100, so those presets start on a 4-step chain.
    max_t = 4 if ddpm_preview else 100
    if data.get("diffusion", {}).get("T", 1000) > max_t:
        data["diffusion"]["T"] = max_t
    return data


@pytest.mark.parametrize("name", preset_names())
def test_preset_validates(name):
    cfg = parse_train_config(load_preset(name), f"preset {name}")
    check_components(cfg)


def test_paper_settings():
    cfg = parse_train_config(load_preset("t1-cifar100lt-cbdm"))
    assert cfg.optim.lr == 2e-4 and cfg.optim.warmup == 5000 and cfg.optim.ema_decay == 0.9999
    assert cfg.optim.steps == 300_000 and cfg.optim.grad_clip == 1.0 and cfg.optim.batch_size == 128
    assert cfg.model.options == {"ch": 128, "ch_mult": [1, 2, 2, 2], "attn": [1], "num_res_blocks": 2,
                                 "dropout": 0.1, "num_groups": 32}
    assert cfg.objective.methods[0].options == {"tau": 0.001, "gamma": 0.25, "y_dist": "train"}
    guidance = {n: parse_train_config(load_preset(n)).preview.guidance
                for n in ("t1-cifar100lt-cbdm", "t1-cifar100-cbdm", "t1-cifar10lt-cbdm", "t1-cifar10-cbdm")}
    assert guidance == {"t1-cifar100lt-cbdm": 1.6, "t1-cifar100-cbdm": 0.8, "t1-cifar10lt-cbdm": 1.0,
                        "t1-cifar10-cbdm": 0.8}
    assert parse_train_config(load_preset("t1-cifar100lt-ddpm")).objective.methods == []


def _train(tmp_path, name, root, *extra):
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(_tiny(name, root)))
    out = tmp_path / name
    res = CliRunner().invoke(cli, ["train", "--config", str(path), "--out", str(out), "--no-progress", *extra])
    assert res.exit_code == 0, f"{name}: {res.output}"
    return out


@pytest.fixture(scope="module")
def source_runs(tmp_path_factory, cifar_root):
    tmp = tmp_path_factory.mktemp("src")
    return {n: _train(tmp, n, cifar_root) for n in ("t1-cifar100lt-ddpm", "t1-cifar100-ddpm")}


NEEDS_INIT = {"t2-cifar100lt-finetune": "t1-cifar100lt-ddpm", "t2-cifar10lt-adapt": "t1-cifar100-ddpm"}


@pytest.mark.parametrize("name", [n for n in preset_names() if n != "quickstart"])
def test_preset_starts(name, tmp_path, cifar_root, source_runs):
    extra = ["--init-from", str(source_runs[NEEDS_INIT[name]])] if name in NEEDS_INIT else []
    out = _train(tmp_path, name, cifar_root, *extra)
    assert list((out / "checkpoints").glob("ckpt-*.safetensors"))
