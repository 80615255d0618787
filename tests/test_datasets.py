"""Datasets, long-tail construction and re-sampling weights."""

from __future__ import annotations

import gzip
import io
import logging
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pydantic import ValidationError

from cbdm_core.data import (
    DatasetOptions,
    class_sampling_weights,
    dataset_options,
    format_class_counts,
    load_dataset,
    long_tail_counts,
    make_long_tailed,
)
from cbdm_core.data.cifar import load_cifar
from cbdm_core.data.download import safe_extract_tar
from cbdm_core.data.folder import load_folder
from cbdm_core.data.mnist import load_mnist
from cbdm_core.data.safe_pickle import safe_load
from cbdm_core.errors import CbdmError, ConfigError
from cbdm_core.interfaces import LabeledImages
from cbdm_core.registry import build_registry


def _shared_data() -> Path:
    env = os.environ.get("CBDM_SHARED_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"


MNIST_DIR = _shared_data() / "mnist"
CIFAR_JPEG_TRAIN = _shared_data() / "cifar10-jpeg" / "train"
DATASET_NAMES = ["digits", "digits-lt", "mnist", "mnist-lt", "mnist-lt-small", "cifar10", "cifar10-lt",
                 "cifar100", "cifar100-lt", "folder"]


# --------------------------------------------------------------------------- options

def test_options_validate_imb_factor_and_cap() -> None:
    with pytest.raises(ValidationError, match=r"imb_factor must be in \(0, 1\]"):
        DatasetOptions(imb_factor=0.0)
    with pytest.raises(ValidationError):
        DatasetOptions(imb_factor=1.5)
    with pytest.raises(ValidationError, match="max_per_class"):
        DatasetOptions(max_per_class=0)
    with pytest.raises(ValidationError):
        DatasetOptions(bogus=1)  # extra keys forbidden
    with pytest.raises(ConfigError, match="imb_factor"):
        dataset_options(imb_factor=2.0)
    assert dataset_options(imb_factor=1.0).imb_factor == 1.0


# --------------------------------------------------------------------------- long tail

def test_long_tail_counts_cifar10_exact() -> None:
    counts = long_tail_counts(5000, 10, 0.01)
    assert counts == [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
    assert sum(counts) == 12406


def test_long_tail_counts_cifar100_exact() -> None:
    expected = [int(500 * 0.01 ** (c / 99)) for c in range(100)]
    counts = long_tail_counts(500, 100, 0.01, "exp")
    assert counts == expected
    assert counts[0] == 500 and counts[-1] == 5
    assert sum(counts) == 10847


def test_long_tail_counts_step_and_edges() -> None:
    assert long_tail_counts(100, 4, 0.1, "step") == [100, 100, 10, 10]
    assert long_tail_counts(100, 1, 0.01) == [100]
    assert long_tail_counts(7, 3, 1.0) == [7, 7, 7]
    assert min(long_tail_counts(50, 5, 0.001)) == 1  # no class may vanish
    for bad in (0.0, -0.5, 1.01):
        with pytest.raises(CbdmError, match="imb_factor"):
            long_tail_counts(100, 10, bad)
    with pytest.raises(CbdmError, match="profile"):
        long_tail_counts(100, 10, 0.1, "linear")


def test_make_long_tailed_counts_and_seed() -> None:
    labels = torch.arange(3).repeat_interleave(50)
    images = torch.arange(150)  # the value identifies the source image
    counts = [50, 10, 3]
    xa, ya = make_long_tailed(images, labels, counts, seed=1)
    xb, yb = make_long_tailed(images, labels, counts, seed=1)
    xc, _ = make_long_tailed(images, labels, counts, seed=2)
    assert torch.bincount(ya).tolist() == counts
    assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert not torch.equal(xa, xc)
    assert torch.equal(labels[xa], ya)  # images still match their labels
    assert xa[ya == 1].tolist() != list(range(50, 60))  # a random subset, not the first n
    # Fewer images than requested: keep them all.
    x2, y2 = make_long_tailed(images, labels, [100, 100, 100], seed=0)
    assert len(x2) == 150


def test_make_long_tailed_empty_class_is_error() -> None:
    labels = torch.tensor([0, 0, 2, 2])
    with pytest.raises(CbdmError, match="class 1 has no images"):
        make_long_tailed(torch.zeros(4, 1, 2, 2), labels, [2, 2, 2], seed=0)


# --------------------------------------------------------------------------- digits

def test_digits_loader() -> None:
    train = load_dataset("digits")
    test = load_dataset("digits", DatasetOptions(split="test"))
    assert isinstance(train, LabeledImages)
    assert train.images.dtype == torch.uint8 and train.labels.dtype == torch.int64
    assert train.images.shape[1:] == (1, 8, 8)
    assert int(train.images.max()) == 255 and int(train.images.min()) == 0
    assert train.num_classes == 10 and len(train) + len(test) == 1797
    assert all(130 <= n <= 150 for n in train.class_counts.tolist())
    assert all(30 <= n <= 40 for n in test.class_counts.tolist())


def test_digits_lt_default_and_explicit_factor() -> None:
    lt = load_dataset("digits-lt")
    counts = lt.class_counts.tolist()
    assert lt.info["imb_factor"] == 0.1
    assert counts == sorted(counts, reverse=True) and counts[-1] == int(max(lt.info["source_counts"]) * 0.1)
    again = load_dataset("digits-lt")
    assert torch.equal(lt.images, again.images)
    other = load_dataset("digits-lt", DatasetOptions(lt_seed=5))
    assert other.class_counts.tolist() == counts and not torch.equal(other.images, lt.images)
    # Test split of an -lt dataset stays balanced unless asked otherwise.
    assert load_dataset("digits-lt", DatasetOptions(split="test")).info["imb_factor"] == 1.0
    capped = load_dataset("digits", DatasetOptions(max_per_class=20, imb_factor=0.5, lt_profile="step"))
    assert capped.class_counts.tolist() == [20] * 5 + [10] * 5


# --------------------------------------------------------------------------- MNIST

def _write_idx(path: Path, arr: np.ndarray, magic: int) -> None:
    header = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    data = header + arr.astype(np.uint8).tobytes()
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)


@pytest.mark.skipif(not MNIST_DIR.is_dir(), reason=f"shared MNIST not found at {MNIST_DIR}")
def test_mnist_real_counts() -> None:
    ds = load_dataset("mnist", DatasetOptions(root=MNIST_DIR))
    assert ds.class_counts.tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert ds.images.shape == (60000, 1, 32, 32) and ds.images.dtype == torch.uint8
    assert int(ds.images[:, :, :2].max()) == 0 and int(ds.images[:, :, :, -2:].max()) == 0  # padding
    # The parent folder works too (root/mnist is searched).
    test = load_dataset("mnist", DatasetOptions(root=MNIST_DIR.parent, split="test"))
    assert len(test) == 10000


def test_mnist_small_gz_and_unpadded(tmp_path: Path) -> None:
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    labels = np.arange(20) % 10
    _write_idx(raw / "train-images-idx3-ubyte.gz", rng.integers(0, 256, (20, 28, 28)), 2051)
    _write_idx(raw / "train-labels-idx1-ubyte.gz", labels, 2049)
    ds = load_mnist(DatasetOptions(root=tmp_path), pad_to_32=False)
    assert ds.images.shape == (20, 1, 28, 28) and ds.info["pad_to_32"] is False
    assert ds.labels.tolist() == labels.tolist()
    lt = load_dataset("mnist-lt", DatasetOptions(root=tmp_path))
    assert lt.images.shape[-1] == 32 and lt.class_counts.tolist() == [2] + [1] * 9


def test_mnist_bad_magic_and_truncated(tmp_path: Path) -> None:
    _write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((3, 28, 28)), 2050)
    _write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(3), 2049)
    with pytest.raises(CbdmError, match=r"train-images-idx3-ubyte.*magic number 2050, expected 2051"):
        load_mnist(DatasetOptions(root=tmp_path))
    _write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((3, 28, 28)), 2051)
    p = tmp_path / "train-images-idx3-ubyte"
    p.write_bytes(p.read_bytes()[:-5])
    with pytest.raises(CbdmError, match="truncated or corrupt"):
        load_mnist(DatasetOptions(root=tmp_path))


def test_missing_root_message() -> None:
    with pytest.raises(CbdmError, match="dataset mnist needs --data-root"):
        load_dataset("mnist")
    with pytest.raises(CbdmError, match="dataset cifar10-lt needs --data-root"):
        load_dataset("cifar10-lt")


# --------------------------------------------------------------------------- CIFAR

def _dump(path: Path, obj: object, protocol: int = pickle.DEFAULT_PROTOCOL) -> None:
    path.write_bytes(pickle.dumps(obj, protocol=protocol))


def _fake_cifar10(root: Path, per_batch: int = 20) -> Path:
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(1, 6):
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        # Protocol 2 as in the official (Python 2) files; labels as a plain list like the originals.
        _dump(d / f"data_batch_{i}", {b"data": data, b"labels": [j % 10 for j in range(per_batch)]}, protocol=2)
    _dump(d / "test_batch", {b"data": rng.integers(0, 256, (10, 3072), dtype=np.uint8),
                             b"labels": np.arange(10)})
    _dump(d / "batches.meta", {b"label_names": [f"c{i}".encode() for i in range(10)], b"num_vis": 3072})
    return d


def test_cifar10_pickles(tmp_path: Path) -> None:
    d = _fake_cifar10(tmp_path)
    ds = load_dataset("cifar10", DatasetOptions(root=tmp_path))
    assert ds.images.shape == (100, 3, 32, 32) and ds.images.dtype == torch.uint8
    assert ds.class_names == [f"c{i}" for i in range(10)]
    assert ds.class_counts.tolist() == [10] * 10
    # Channel-major rows: the first 1024 bytes are the red plane.
    first = safe_load(d / "data_batch_1")[b"data"][0]
    assert torch.equal(ds.images[0, 0].flatten(), torch.from_numpy(first[:1024].copy()))
    test = load_cifar(DatasetOptions(root=d, split="test"))  # root may be the folder itself
    assert len(test) == 10
    lt = load_dataset("cifar10-lt", DatasetOptions(root=tmp_path))
    assert lt.class_counts.tolist() == long_tail_counts(10, 10, 0.01)


def test_cifar100_pickles(tmp_path: Path) -> None:
    d = tmp_path / "cifar-100-python"
    d.mkdir()
    rng = np.random.default_rng(1)
    n = 300
    fine = [i % 100 for i in range(n)]
    _dump(d / "train", {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                        b"fine_labels": fine, b"coarse_labels": [f // 5 for f in fine]})
    _dump(d / "test", {b"data": rng.integers(0, 256, (100, 3072), dtype=np.uint8),
                       b"fine_labels": list(range(100)), b"coarse_labels": [0] * 100})
    _dump(d / "meta", {b"fine_label_names": [f"f{i}".encode() for i in range(100)],
                       b"coarse_label_names": [f"k{i}".encode() for i in range(20)]})
    ds = load_dataset("cifar100", DatasetOptions(root=tmp_path))
    assert ds.num_classes == 100 and ds.class_names[7] == "f7" and len(ds) == n
    lt = load_dataset("cifar100-lt", DatasetOptions(root=tmp_path, imb_factor=0.34))
    assert lt.class_counts.tolist() == long_tail_counts(3, 100, 0.34)


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_refused(tmp_path: Path) -> None:
    d = _fake_cifar10(tmp_path)
    marker = tmp_path / "pwned"
    _dump(d / "batches.meta", {b"label_names": _Evil(marker)})
    with pytest.raises(CbdmError, match="refusing to unpickle .*system"):
        load_dataset("cifar10", DatasetOptions(root=tmp_path))
    assert not marker.exists()
    _dump(d / "data_batch_1", {b"data": _Evil(marker)}, protocol=2)
    with pytest.raises(CbdmError, match="refusing to unpickle"):
        safe_load(d / "data_batch_1")
    (d / "test_batch").write_bytes(b"not a pickle at all")
    with pytest.raises(CbdmError, match="test_batch"):
        safe_load(d / "test_batch")
    assert not marker.exists()


def test_cifar_bad_shape(tmp_path: Path) -> None:
    d = _fake_cifar10(tmp_path)
    _dump(d / "data_batch_3", {b"data": np.zeros((4, 100), np.uint8), b"labels": [0] * 4})
    with pytest.raises(CbdmError, match=r"data_batch_3.*uint8 \[N, 3072\]"):
        load_dataset("cifar10", DatasetOptions(root=tmp_path))


def test_safe_extract_rejects_escaping_members(tmp_path: Path) -> None:
    for bad in ("../evil.txt", "/abs/evil.txt"):
        archive = tmp_path / "bad.tar.gz"
        with tarfile.open(archive, "w:gz") as tar:
            info = tarfile.TarInfo(bad)
            info.size = 4
            tar.addfile(info, io.BytesIO(b"evil"))
        with pytest.raises(CbdmError, match="refusing to extract"):
            safe_extract_tar(archive, tmp_path / "out")
    assert not (tmp_path / "evil.txt").exists()


# --------------------------------------------------------------------------- folder

@pytest.mark.skipif(not CIFAR_JPEG_TRAIN.is_dir(), reason=f"shared CIFAR-10 JPEGs not found at {CIFAR_JPEG_TRAIN}")
def test_folder_real_cifar_jpegs() -> None:
    ds = load_dataset("folder", DatasetOptions(root=CIFAR_JPEG_TRAIN, max_per_class=20))
    assert ds.num_classes == 10 and ds.class_names[0] == "airplane"
    assert ds.images.shape == (200, 3, 32, 32) and ds.images.dtype == torch.uint8
    assert ds.class_counts.tolist() == [20] * 10 and ds.info["skipped"] == 0
    # The train/test layout one level up is understood too.
    sub = load_folder(DatasetOptions(root=CIFAR_JPEG_TRAIN.parent, split="test", max_per_class=2,
                                     classes=["truck", "cat"]))
    assert sub.class_names == ["truck", "cat"] and len(sub) == 4


def _img(path: Path, value: int, size: int = 8, mode: str = "RGB") -> None:
    shape = (size, size, 3) if mode == "RGB" else (size, size)
    Image.fromarray(np.full(shape, value, np.uint8), mode=mode).save(path)


def _make_folder(root: Path) -> None:
    for c, n in (("b_cls", 6), ("a_cls", 3)):
        (root / c).mkdir(parents=True)
        for i in range(n):
            _img(root / c / f"{i}.png", 10 * i)
    (root / "a_cls" / "broken.jpg").write_bytes(b"this is not a jpeg")
    (root / "a_cls" / "notes.txt").write_text("ignored: not an image extension")


def test_folder_corrupt_file_skipped_or_strict(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    _make_folder(tmp_path)
    with caplog.at_level(logging.WARNING):
        ds = load_folder(DatasetOptions(root=tmp_path))
    assert ds.class_names == ["a_cls", "b_cls"]
    assert ds.class_counts.tolist() == [3, 6] and ds.info["skipped"] == 1
    assert ds.images.shape == (9, 3, 8, 8)
    assert "skipped 1 unreadable" in caplog.text
    with pytest.raises(CbdmError, match="broken.jpg"):
        load_folder(DatasetOptions(root=tmp_path, strict=True))
    ordered = load_folder(DatasetOptions(root=tmp_path, classes=["b_cls"]))
    assert ordered.class_names == ["b_cls"] and len(ordered) == 6
    with pytest.raises(CbdmError, match="no class folder 'zzz'"):
        load_folder(DatasetOptions(root=tmp_path, classes=["zzz"]))


def test_folder_unreadable_pick_is_replaced(tmp_path: Path) -> None:
    (tmp_path / "x").mkdir()
    _img(tmp_path / "x" / "good.png", 5)
    for i in range(5):
        (tmp_path / "x" / f"bad{i}.png").write_bytes(b"garbage")
    for seed in range(4):
        ds = load_folder(DatasetOptions(root=tmp_path, max_per_class=1, lt_seed=seed))
        assert len(ds) == 1 and int(ds.images.max()) == 5


def test_folder_empty_class_and_sizes(tmp_path: Path) -> None:
    _make_folder(tmp_path)
    (tmp_path / "c_empty").mkdir()
    with pytest.raises(CbdmError, match="c_empty has no images"):
        load_folder(DatasetOptions(root=tmp_path))
    (tmp_path / "c_empty" / "x.png").write_bytes(b"broken")
    with pytest.raises(CbdmError, match="c_empty has no readable image"):
        load_folder(DatasetOptions(root=tmp_path))
    _img(tmp_path / "c_empty" / "big.png", 1, size=16)
    with pytest.raises(CbdmError, match="big.png is 16x16 .* same size"):
        load_folder(DatasetOptions(root=tmp_path))


def test_folder_grayscale_and_long_tail(tmp_path: Path) -> None:
    for c in ("p", "q", "r"):
        (tmp_path / c).mkdir()
        for i in range(10):
            _img(tmp_path / c / f"{i}.png", i, mode="L")
    ds = load_folder(DatasetOptions(root=tmp_path))
    assert ds.images.shape == (30, 1, 8, 8)
    lt = load_folder(DatasetOptions(root=tmp_path, imb_factor=0.1))
    assert lt.class_counts.tolist() == [10, 3, 1]
    _img(tmp_path / "r" / "color.png", 200)  # one RGB image turns the set into RGB
    assert load_folder(DatasetOptions(root=tmp_path)).images.shape == (31, 3, 8, 8)
    with pytest.raises(CbdmError, match="split 'test'"):
        load_folder(DatasetOptions(root=tmp_path, split="test"))


# --------------------------------------------------------------------------- re-sampling

def test_class_sampling_weights_analytic() -> None:
    counts = [100, 25, 4]
    labels = torch.arange(3).repeat_interleave(torch.tensor(counts))
    labels = labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))]

    def class_mass(w: torch.Tensor) -> list[float]:
        return torch.zeros(3, dtype=torch.float64).index_add_(0, labels, w).tolist()

    for mode, expect in (("none", [100 / 129, 25 / 129, 4 / 129]),
                         ("balanced", [1 / 3] * 3),
                         ("sqrt", [10 / 17, 5 / 17, 2 / 17])):
        w = class_sampling_weights(labels, mode)
        assert w.shape == labels.shape and abs(float(w.sum()) - 1.0) < 1e-12
        assert class_mass(w) == pytest.approx(expect, rel=1e-12)
    with pytest.raises(CbdmError, match="re-sampling mode"):
        class_sampling_weights(labels, "cube")


def test_format_class_counts() -> None:
    ds = LabeledImages(torch.zeros(6, 1, 2, 2, dtype=torch.uint8), torch.tensor([0, 0, 0, 1, 1, 2]),
                       ["cat", "dog", "emu"], "toy")
    table = format_class_counts(ds)
    assert table.row_count == 3
    assert [c.header for c in table.columns][:3] == ["class", "name", "count"]
    assert list(table.columns[1].cells) == ["cat", "dog", "emu"]
    assert list(table.columns[2].cells) == ["3", "2", "1"]


# --------------------------------------------------------------------------- registry

def test_every_dataset_registered() -> None:
    registry = build_registry()
    names = registry.names("dataset")
    for name in DATASET_NAMES:
        assert name in names
        comp = registry.get("dataset", name)
        assert callable(comp.obj) and comp.description
