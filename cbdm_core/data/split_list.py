"""ImageNet-LT and Places-LT from the OLTR split lists (``path label`` per line)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ..errors import CbdmError
from ..interfaces import LabeledImages
from .listed import class_names_from, data_root, load_listed
from .options import DatasetOptions
from .square_images import ImageEntry

OLTR_URL = "https://github.com/zhmiao/OpenLongTailRecognition-OLTR"


@dataclass(frozen=True)
class SplitListLayout:
    """One benchmark: its list-file prefix, the folders that may hold the lists, the images."""

    name: str
    prefix: str  # ImageNet_LT -> ImageNet_LT_train.txt
    list_dirs: tuple[str, ...]
    images_what: str
    images_url: str


LAYOUTS = {
    "imagenet-lt": SplitListLayout(
        "imagenet-lt", "ImageNet_LT", ("", "ImageNet_LT", "data_txt/ImageNet_LT"),
        "the ImageNet-2012 images (train/<wnid>/*.JPEG, val/<wnid>/*.JPEG)",
        "https://image-net.org (an account is needed)"),
    "places-lt": SplitListLayout(
        "places-lt", "Places_LT", ("", "Places_LT", "Places_LT_v2", "data_txt/Places_LT_v2"),
        "the Places365-Standard images at 256x256 as the lists name them",
        "http://places2.csail.mit.edu"),
}


def find_list(root: Path, layout: SplitListLayout, split: str) -> Path:
    """The split's list file in ``root`` or one of the layout's list folders."""
    fname = f"{layout.prefix}_{split}.txt"
    for sub in layout.list_dirs:
        p = root / sub / fname
        if p.is_file():
            return p
    where = ", ".join(str(root / s) for s in layout.list_dirs)
    raise CbdmError(f"dataset {layout.name}: {fname} not found in {where}; the split lists come from "
                    f"{OLTR_URL}, the images from {layout.images_url}")


def _image_path(root: Path, rel: str, where: str) -> Path:
    # Lists name paths relative to the data root (some with a leading '/'); never outside it.
    parts = PurePosixPath(rel.lstrip("/")).parts
    if not parts or ".." in parts:
        raise CbdmError(f"{where}: image path {rel!r} must stay inside the data root")
    return root.joinpath(*parts)


def parse_split_list(text: str, list_path: Path, root: Path) -> tuple[list[ImageEntry], dict[int, str]]:
    """Entries of an OLTR list and a name per label (the folder holding its first image).

    A bad line is one :class:`CbdmError` naming the file and line number.
    """
    entries: list[ImageEntry] = []
    names: dict[int, str] = {}
    for n, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line:
            continue
        where = f"{list_path.name} line {n}"
        fields = line.rsplit(None, 1)
        if len(fields) != 2 or not (fields[1].isascii() and fields[1].isdigit()):
            raise CbdmError(f"{list_path} line {n}: expected 'path label' (label a number >= 0), got {line[:80]!r}")
        rel, label = fields[0], int(fields[1])
        entries.append(ImageEntry(_image_path(root, rel, f"{list_path} line {n}"), label, f"{where}: {rel}"))
        parent = PurePosixPath(rel).parent.name
        names.setdefault(label, parent or str(label))
    return entries, names


def load_split_list(options: DatasetOptions | None = None, *, name: str = "imagenet-lt") -> LabeledImages:
    """ImageNet-LT (1000 classes) or Places-LT (365 classes) as uint8 ``[N, 3, s, s]``.

    ``s`` is ``resize`` (default 64): the centered square of each image, resized, decoded once
    and cached. The lists are already long-tailed, so no ``imb_factor`` applies by default.
    """
    options = options or DatasetOptions()
    layout = LAYOUTS[name]
    what = f"{layout.prefix}_{{train,val,test}}.txt and {layout.images_what}"
    root = data_root(options, name, what, f"the split lists from {OLTR_URL}, the images from {layout.images_url}")
    list_path = find_list(root, layout, options.split)
    raw = list_path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CbdmError(f"{list_path} is not a text file ({exc.reason} at byte {exc.start})") from None
    entries, names = parse_split_list(text, list_path, root)
    _, class_names = class_names_from([e.label for e in entries], names)
    return load_listed(name, root, entries, class_names, raw, options,
                       {"source": str(root), "list": str(list_path)})

