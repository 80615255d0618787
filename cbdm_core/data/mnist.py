"""MNIST from the official idx files (optionally gzipped)."""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np
import torch

from ..errors import CbdmError
from ..interfaces import LabeledImages
from .common import finish, require_root
from .download import download_file
from .options import DatasetOptions

IMAGES_MAGIC = 2051  # 0x00000803: unsigned byte, 3 dimensions
LABELS_MAGIC = 2049  # 0x00000801: unsigned byte, 1 dimension
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
MIRRORS = ("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/")
MNIST_LT_DEFAULT = 0.01
WHAT = "the MNIST idx files (train-images-idx3-ubyte, ...; .gz accepted)"


def candidate_dirs(root: Path) -> list[Path]:
    """Folders searched for the idx files, in order."""
    return [root, root / "mnist", root / "MNIST" / "raw"]


def find_idx(root: Path, base: str) -> Path | None:
    """The first ``base`` or ``base.gz`` found under the candidate folders."""
    for d in candidate_dirs(root):
        for name in (base, base + ".gz"):
            if (d / name).is_file():
                return d / name
    return None


MAX_IDX_BYTES = 1 << 30  # 1.3 million 28x28 images; a header claiming more is refused unread


def read_idx(path: Path, expect_magic: int, max_bytes: int = MAX_IDX_BYTES) -> np.ndarray:
    """Parse an idx file of unsigned bytes whose magic number must be ``expect_magic``.

    The file (gzipped or not) is streamed: the header is checked first, then exactly the
    size it announces is read (at most ``max_bytes``), so a small ``.gz`` that expands to
    gigabytes is refused without being expanded.
    """
    ndim = {IMAGES_MAGIC: 3, LABELS_MAGIC: 1}[expect_magic]
    header = 4 * (1 + ndim)
    try:
        with (gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")) as f:
            head = f.read(header)
            if len(head) < header:
                raise CbdmError(f"{path} is not an MNIST idx file: {len(head)} bytes, shorter than its header")
            magic = int.from_bytes(head[:4], "big")
            if magic != expect_magic:
                raise CbdmError(f"{path} is not an MNIST idx file: magic number {magic}, expected {expect_magic}")
            dims = [int.from_bytes(head[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
            size = int(np.prod(dims, dtype=object))
            if size > max_bytes:
                raise CbdmError(f"{path}: header says {'x'.join(map(str, dims))} ({size} bytes), more than the "
                                f"{max_bytes} bytes an idx file may hold here")
            body = f.read(size + 1)  # one byte more tells a longer file apart
    except (OSError, EOFError, zlib.error) as e:
        raise CbdmError(f"cannot read MNIST file {path}: {e}") from None
    if len(body) != size:
        raise CbdmError(
            f"{path} is truncated or corrupt: header says {'x'.join(map(str, dims))} "
            f"({header + size} bytes) but the file has {'more' if len(body) > size else header + len(body)} bytes"
        )
    return np.frombuffer(body, dtype=np.uint8).reshape(dims)


def _download(root: Path) -> None:
    dest = root / "mnist"
    for base in FILES["train"] + FILES["test"]:
        if find_idx(root, base) is not None:
            continue
        last: CbdmError | None = None
        for mirror in MIRRORS:
            try:
                download_file(mirror + base + ".gz", dest / (base + ".gz"))
                last = None
                break
            except CbdmError as e:
                last = e
        if last is not None:
            raise CbdmError(f"MNIST download failed (offline?): {last}")


def load_mnist(
    options: DatasetOptions | None = None, *, long_tail: bool = False, pad_to_32: bool = True,
    name: str | None = None, lt_default: float = MNIST_LT_DEFAULT,
) -> LabeledImages:
    """MNIST as uint8 ``[N, 1, 32, 32]`` (or ``28x28`` with ``pad_to_32=False``).

    The 28x28 digits get 2 zero pixels on each side by default because the U-Nets
    downsample by powers of 2; ``info['pad_to_32']`` records the choice.
    """
    options = options or DatasetOptions()
    name = name or ("mnist-lt" if long_tail else "mnist")
    root = require_root(options, name, WHAT)
    img_base, lbl_base = FILES[options.split]
    if options.download and (find_idx(root, img_base) is None or find_idx(root, lbl_base) is None):
        _download(root)
    paths = []
    for base in (img_base, lbl_base):
        p = find_idx(root, base)
        if p is None:
            where = ", ".join(str(d) for d in candidate_dirs(root))
            raise CbdmError(f"dataset {name}: {base} (or {base}.gz) not found in {where}")
        paths.append(p)
    images = read_idx(paths[0], IMAGES_MAGIC)
    labels = read_idx(paths[1], LABELS_MAGIC).astype(np.int64)
    if len(images) != len(labels):
        raise CbdmError(f"dataset {name}: {paths[0]} has {len(images)} images but {paths[1]} has {len(labels)} labels")
    if labels.size and labels.max() > 9:
        raise CbdmError(f"dataset {name}: {paths[1]} has label {int(labels.max())}, expected 0..9")
    x = torch.from_numpy(images.copy())[:, None]
    if pad_to_32:
        x = torch.nn.functional.pad(x, (2, 2, 2, 2))
    return finish(
        x,
        torch.from_numpy(labels),
        [str(c) for c in range(10)],
        name,
        options,
        lt_default if long_tail else 1.0,
        {"source": str(paths[0].parent), "pad_to_32": pad_to_32, "original_size": 28},
    )


# mnist-lt-small: MNIST with digits-lt's long tail (147, 99, 67, 45, 30, 20, 14, 9, 6, 4 images at
# imbalance 0.03) at 16x16, a CPU-sized dataset with writer variation that 8x8 digits lacks.
SMALL_SIZE = 16  # the padded 32x32 averaged over 2x2 blocks
SMALL_HEAD = 147  # digits-lt's n_max (its class 0 holds only 143 of the 147 it asks for)
SMALL_LT_DEFAULT = 0.03


def load_mnist_lt_small(options: DatasetOptions | None = None) -> LabeledImages:
    """MNIST at 16x16 (every split); its train split long-tailed like digits-lt: capped at 147
    images per class, then the exp profile at imbalance 0.03 (147 ... 4). The cap applies only
    where a long tail does (``imb_factor`` 1 gives all of MNIST at 16x16, as the evaluation's
    reference and the auto classifier's pool need); ``resize`` and ``max_per_class`` override."""
    from .common import effective_imb_factor

    options = options or DatasetOptions()
    update: dict[str, int] = {}
    if options.resize is None:
        update["resize"] = SMALL_SIZE
    if options.max_per_class is None and effective_imb_factor(options, SMALL_LT_DEFAULT) < 1.0:
        update["max_per_class"] = SMALL_HEAD
    return load_mnist(options.model_copy(update=update), long_tail=True, name="mnist-lt-small",
                      lt_default=SMALL_LT_DEFAULT)
