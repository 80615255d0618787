"""ImageNet-LT / Places-LT (OLTR lists), iNaturalist 2018 (JSON) and EDM's dataset format,
on tiny synthetic trees."""

from __future__ import annotations

import json
import logging
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cbdm_core.data import DatasetOptions, load_dataset
from cbdm_core.data.image_cache import CACHE_DIRNAME, CACHE_ENV
from cbdm_core.errors import CbdmError
from cbdm_core.registry import build_registry

COLORS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (200, 200, 40)]


@pytest.fixture(autouse=True)
def _no_cache_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(CACHE_ENV, raising=False)


def _solid(path: Path, color: tuple[int, int, int], size: tuple[int, int] = (12, 10)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)


def _imagenet_tree(root: Path, counts: tuple[int, ...] = (3, 2, 1, 1)) -> list[str]:
    """``root/train/n0000000c/*.png`` (non-square) and the OLTR list naming them."""
    lines = []
    for c, n in enumerate(counts):
        for i in range(n):
            rel = f"train/n{c:08d}/n{c:08d}_{i}.{'JPEG' if i == 1 else 'png'}"
            _solid(root / rel, COLORS[c])
            lines.append(f"{rel} {c}")
    (root / "ImageNet_LT").mkdir()
    (root / "ImageNet_LT" / "ImageNet_LT_train.txt").write_text("\n".join(lines) + "\n")
    return lines


def _caches(root: Path) -> list[Path]:
    return sorted((root / CACHE_DIRNAME).glob("*.safetensors"))


def test_imagenet_lt_loads_resizes_and_caches(tmp_path: Path) -> None:
    _imagenet_tree(tmp_path)
    opts = DatasetOptions(root=tmp_path, resize=8)
    ds = load_dataset("imagenet-lt", opts)
    assert ds.images.shape == (7, 3, 8, 8) and ds.images.dtype == torch.uint8
    assert ds.labels.tolist() == [0, 0, 0, 1, 1, 2, 3]
    assert ds.class_names == [f"n{c:08d}" for c in range(4)]
    assert ds.info["from_cache"] is False and ds.info["size"] == 8
    # Solid colors survive the crop and resize (the JPEG one within its loss).
    for img, y in zip(ds.images, ds.labels.tolist()):
        assert (img.float().mean((1, 2)) - torch.tensor(COLORS[y], dtype=torch.float)).abs().max() < 6
    assert len(_caches(tmp_path)) == 1
    again = load_dataset("imagenet-lt", opts)
    assert again.info["from_cache"] is True
    assert torch.equal(again.images, ds.images) and torch.equal(again.labels, ds.labels)
    # Another size is another cache entry; the default is 64.
    assert load_dataset("imagenet-lt", DatasetOptions(root=tmp_path)).images.shape[-1] == 64
    assert len(_caches(tmp_path)) == 2


def test_center_crop_keeps_the_middle(tmp_path: Path) -> None:
    img = np.zeros((8, 16, 3), np.uint8)
    img[:, :4] = (255, 0, 0)
    img[:, 4:12] = (0, 255, 0)
    img[:, 12:] = (0, 0, 255)
    (tmp_path / "train" / "a").mkdir(parents=True)
    Image.fromarray(img).save(tmp_path / "train" / "a" / "x.png")
    (tmp_path / "ImageNet_LT_train.txt").write_text("train/a/x.png 0\n")
    ds = load_dataset("imagenet-lt", DatasetOptions(root=tmp_path, resize=4))
    assert ds.images[0, 1].eq(255).all() and ds.images[0, 0].eq(0).all() and ds.images[0, 2].eq(0).all()


def test_corrupt_cache_is_recomputed_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    _imagenet_tree(tmp_path)
    opts = DatasetOptions(root=tmp_path, resize=8)
    first = load_dataset("imagenet-lt", opts)
    cache = _caches(tmp_path)[0]
    raw = bytearray(cache.read_bytes())
    raw[-5] ^= 0xFF  # one pixel byte: only the content hash can tell
    cache.write_bytes(bytes(raw))
    with caplog.at_level(logging.WARNING):
        second = load_dataset("imagenet-lt", opts)
    assert "corrupt" in caplog.text and second.info["from_cache"] is False
    assert torch.equal(second.images, first.images)
    assert load_dataset("imagenet-lt", opts).info["from_cache"] is True  # rewritten whole


def test_cache_folder_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = tmp_path / "data"
    _imagenet_tree(data)
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    load_dataset("imagenet-lt", DatasetOptions(root=data, resize=8))
    assert not (data / CACHE_DIRNAME).exists() and len(list((tmp_path / "cache").iterdir())) == 1


def test_read_only_root_uses_the_project_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import cbdm_core.data.image_cache as image_cache
    _imagenet_tree(tmp_path / "data")
    monkeypatch.setenv("CBDM_CACHE", str(tmp_path / "user"))
    monkeypatch.setattr(image_cache.os, "access", lambda *a, **k: False)  # root runs tests: fake read-only
    load_dataset("imagenet-lt", DatasetOptions(root=tmp_path / "data", resize=8))
    assert len(list((tmp_path / "user" / "data").glob("*.safetensors"))) == 1


def test_unwritable_cache_only_warns(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                     caplog: pytest.LogCaptureFixture) -> None:
    _imagenet_tree(tmp_path / "data")
    (tmp_path / "a-file").write_text("")
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "a-file" / "cache"))
    with caplog.at_level(logging.WARNING):
        ds = load_dataset("imagenet-lt", DatasetOptions(root=tmp_path / "data", resize=8))
    assert len(ds.labels) == 7 and "cannot write the image cache" in caplog.text


def test_split_list_errors_name_file_and_line(tmp_path: Path) -> None:
    lines = _imagenet_tree(tmp_path)
    lst = tmp_path / "ImageNet_LT" / "ImageNet_LT_train.txt"
    lst.write_text("\n".join(lines[:2] + ["train/n00000000/z.png zero"] + lines[2:]))
    with pytest.raises(CbdmError, match=r"ImageNet_LT_train\.txt line 3: expected 'path label'"):
        load_dataset("imagenet-lt", DatasetOptions(root=tmp_path, resize=8))
    lst.write_text("\n".join(lines + ["train/n00000000/missing.png 0"]))
    with pytest.raises(CbdmError, match=r"ImageNet_LT_train\.txt line 8: train/n00000000/missing\.png: image file "
                                        r"not found"):
        load_dataset("imagenet-lt", DatasetOptions(root=tmp_path, resize=8))
    lst.write_text("../outside.png 0\n")
    with pytest.raises(CbdmError, match="inside the data root"):
        load_dataset("imagenet-lt", DatasetOptions(root=tmp_path, resize=8))


def test_missing_root_and_lists_give_the_urls(tmp_path: Path) -> None:
    with pytest.raises(CbdmError, match=r"image-net\.org.*"):
        load_dataset("imagenet-lt", DatasetOptions(root=tmp_path / "nope"))
    with pytest.raises(CbdmError, match=r"Places_LT_train\.txt not found.*OpenLongTailRecognition-OLTR.*places2"):
        load_dataset("places-lt", DatasetOptions(root=tmp_path))
    with pytest.raises(CbdmError, match=r"visipedia/inat_comp"):
        load_dataset("inat2018", DatasetOptions(root=tmp_path))
    with pytest.raises(CbdmError, match="cannot be downloaded"):
        load_dataset("imagenet-lt", DatasetOptions(root=tmp_path, download=True))


def test_places_lt_val_split_with_leading_slashes(tmp_path: Path) -> None:
    lines = []
    for c, scene in enumerate(["airfield", "alley", "arch"]):
        rel = f"data_256/a/{scene}/0000000{c}.jpg"
        _solid(tmp_path / rel, COLORS[c], (10, 10))
        lines.append(f"/{rel} {c}")
    (tmp_path / "Places_LT_v2").mkdir()
    (tmp_path / "Places_LT_v2" / "Places_LT_val.txt").write_text("\n".join(lines))
    ds = load_dataset("places-lt", DatasetOptions(root=tmp_path, split="val", resize=8))
    assert ds.class_names == ["airfield", "alley", "arch"] and ds.images.shape == (3, 3, 8, 8)
    with pytest.raises(CbdmError, match="Places_LT_test.txt not found"):
        load_dataset("places-lt", DatasetOptions(root=tmp_path, split="test"))
    # Datasets without a val split refuse it instead of reading another split.
    with pytest.raises(CbdmError, match="cifar10 has no val split"):
        load_dataset("cifar10", DatasetOptions(root=tmp_path, split="val"))


def _inat_tree(root: Path, name: str = "train2018.json") -> dict:
    images, anns = [], []
    for i, c in enumerate([0, 0, 1, 2, 2, 2]):
        fname = f"train_val2018/Plantae/{c}/img{i}.jpg"
        _solid(root / fname, COLORS[c], (16, 12))
        images.append({"id": 100 + i, "file_name": fname, "width": 16, "height": 12})
        anns.append({"id": i, "image_id": 100 + i, "category_id": c})
    cats = [{"id": c, "name": f"species {c}", "supercategory": "Plantae"} for c in range(3)]
    doc = {"images": images, "annotations": anns, "categories": cats}
    (root / name).write_text(json.dumps(doc))
    return doc


def test_inat2018_from_json_with_cache(tmp_path: Path) -> None:
    doc = _inat_tree(tmp_path)
    ds = load_dataset("inat2018", DatasetOptions(root=tmp_path, resize=4))
    assert ds.images.shape == (6, 3, 4, 4) and ds.labels.tolist() == [0, 0, 1, 2, 2, 2]
    assert ds.class_names == ["species 0", "species 1", "species 2"] and not ds.info["from_cache"]
    assert load_dataset("inat2018", DatasetOptions(root=tmp_path, resize=4)).info["from_cache"]
    (tmp_path / "val2018.json").write_text(json.dumps(doc))
    assert load_dataset("inat2018", DatasetOptions(root=tmp_path, split="test", resize=4)).info["list"].endswith(
        "val2018.json")
    assert load_dataset("inat2018", DatasetOptions(root=tmp_path, split="val", resize=4)).info["from_cache"]
    doc["annotations"][3]["category_id"] = "two"
    (tmp_path / "train2018.json").write_text(json.dumps(doc))
    with pytest.raises(CbdmError, match=r"train2018\.json: annotations\[3\] needs"):
        load_dataset("inat2018", DatasetOptions(root=tmp_path, resize=4))
    (tmp_path / "train2018.json").write_text("{not json")
    with pytest.raises(CbdmError, match="not valid JSON"):
        load_dataset("inat2018", DatasetOptions(root=tmp_path))


def _edm_files(labels: list[int], gray: bool = False) -> dict[str, bytes]:
    import io
    files: dict[str, bytes] = {}
    for i, c in enumerate(labels):
        buf = io.BytesIO()
        img = Image.new("L", (8, 8), 40 * c) if gray else Image.new("RGB", (8, 8), COLORS[c])
        img.save(buf, format="PNG")
        files[f"00000/img{i:08d}.png"] = buf.getvalue()
    files["dataset.json"] = json.dumps(
        {"labels": [[f"00000/img{i:08d}.png", c] for i, c in enumerate(labels)]}).encode()
    return files


def test_edm_folder_and_zip_agree(tmp_path: Path) -> None:
    files = _edm_files([2, 0, 1, 1, 0])
    folder = tmp_path / "ds"
    for name, data in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    with zipfile.ZipFile(tmp_path / "ds.zip", "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    a = load_dataset("edm", DatasetOptions(root=folder))
    b = load_dataset("edm", DatasetOptions(root=tmp_path / "ds.zip"))
    assert a.images.shape == (5, 3, 8, 8) and a.labels.tolist() == [2, 0, 1, 1, 0] and a.num_classes == 3
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert a.images[0, 2].eq(255).all()  # image 0 is class 2, blue
    assert load_dataset("edm", DatasetOptions(root=folder, resize=4)).images.shape == (5, 3, 4, 4)


def test_edm_errors(tmp_path: Path) -> None:
    gray = _edm_files([0, 1], gray=True)
    with zipfile.ZipFile(tmp_path / "g.zip", "w") as zf:
        for name, data in gray.items():
            zf.writestr(name, data)
    assert load_dataset("edm", DatasetOptions(root=tmp_path / "g.zip")).images.shape == (2, 1, 8, 8)
    files = _edm_files([0, 1])
    files["dataset.json"] = json.dumps({"labels": None}).encode()
    with zipfile.ZipFile(tmp_path / "u.zip", "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    with pytest.raises(CbdmError, match="null.*class-conditional models need"):
        load_dataset("edm", DatasetOptions(root=tmp_path / "u.zip"))
    files["dataset.json"] = json.dumps({"labels": [["00000/img00000000.png", 0]]}).encode()
    with zipfile.ZipFile(tmp_path / "m.zip", "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    with pytest.raises(CbdmError, match=r"img00000001\.png has no label in dataset\.json"):
        load_dataset("edm", DatasetOptions(root=tmp_path / "m.zip"))
    (tmp_path / "bad.zip").write_bytes(b"not a zip")
    with pytest.raises(CbdmError, match="neither a folder nor a readable zip"):
        load_dataset("edm", DatasetOptions(root=tmp_path / "bad.zip"))
    with pytest.raises(CbdmError, match="one split"):
        load_dataset("edm", DatasetOptions(root=tmp_path / "g.zip", split="test"))


def test_registered_with_descriptions() -> None:
    registry = build_registry()
    for name in ("imagenet-lt", "places-lt", "inat2018", "edm"):
        assert registry.get("dataset", name).description
