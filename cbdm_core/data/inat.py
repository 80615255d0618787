"""iNaturalist 2018 from its COCO-style JSON annotations (``train2018.json``, ``val2018.json``)."""

from __future__ import annotations

import json
from pathlib import Path, PurePosixPath
from typing import Any

from ..errors import CbdmError
from ..interfaces import LabeledImages
from .listed import class_names_from, data_root, load_listed
from .options import DatasetOptions
from .square_images import ImageEntry

INAT_URL = "https://github.com/visipedia/inat_comp/tree/master/2018"
# The 2018 test set has no public labels; the long-tail literature reports on val2018.
SPLIT_FILES = {"train": "train2018.json", "val": "val2018.json", "test": "val2018.json"}
WHAT = "train2018.json, val2018.json and the train_val2018/ images they name"


def _read_json(path: Path) -> tuple[dict[str, Any], bytes]:
    if not path.is_file():
        raise CbdmError(f"dataset inat2018: {path} not found; the root must hold {WHAT} (get them from {INAT_URL})")
    raw = path.read_bytes()
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise CbdmError(f"{path} is not valid JSON ({exc})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("images"), list) \
            or not isinstance(doc.get("annotations"), list):
        raise CbdmError(f"{path}: expected an iNaturalist annotation file with 'images' and 'annotations' lists")
    return doc, raw


def _labels_by_image(doc: dict[str, Any], path: Path) -> dict[Any, int]:
    out: dict[Any, int] = {}
    for i, ann in enumerate(doc["annotations"]):
        cat = ann.get("category_id") if isinstance(ann, dict) else None
        if not isinstance(cat, int) or isinstance(cat, bool) or cat < 0 or "image_id" not in ann:
            raise CbdmError(f"{path}: annotations[{i}] needs 'image_id' and an integer 'category_id' >= 0")
        out[ann["image_id"]] = cat
    return out


def _category_names(doc: dict[str, Any]) -> dict[int, str]:
    cats = doc.get("categories")
    if not isinstance(cats, list):
        return {}
    return {c["id"]: str(c.get("name", c["id"])) for c in cats
            if isinstance(c, dict) and isinstance(c.get("id"), int)}


def parse_inat(doc: dict[str, Any], path: Path, root: Path) -> list[ImageEntry]:
    """One entry per image of ``doc`` with its annotation's category (one error line per problem)."""
    labels = _labels_by_image(doc, path)
    entries: list[ImageEntry] = []
    for i, img in enumerate(doc["images"]):
        fname = img.get("file_name") if isinstance(img, dict) else None
        if not isinstance(fname, str) or "id" not in img:
            raise CbdmError(f"{path}: images[{i}] needs 'id' and 'file_name'")
        parts = PurePosixPath(fname.lstrip("/")).parts
        if not parts or ".." in parts:
            raise CbdmError(f"{path}: images[{i}] file_name {fname!r} must stay inside the data root")
        if img["id"] not in labels:
            raise CbdmError(f"{path}: images[{i}] ({fname}) has no annotation")
        entries.append(ImageEntry(root.joinpath(*parts), labels[img["id"]], f"{path.name} images[{i}]: {fname}"))
    return entries


def load_inat(options: DatasetOptions | None = None) -> LabeledImages:
    """iNaturalist 2018 (8142 classes) as uint8 ``[N, 3, s, s]``, ``s`` = ``resize`` (default 64).

    ``val`` and ``test`` both read ``val2018.json`` (the test labels are not public). The class
    count is the largest category id + 1 over the categories (or the annotations).
    """
    options = options or DatasetOptions()
    root = data_root(options, "inat2018", WHAT, f"them from {INAT_URL}")
    path = root / SPLIT_FILES[options.split]
    doc, raw = _read_json(path)
    entries = parse_inat(doc, path, root)
    names = _category_names(doc)
    k, class_names = class_names_from([e.label for e in entries] + list(names), names)
    del doc  # train2018.json is large; the entries hold what is needed
    return load_listed("inat2018", root, entries, class_names, raw, options,
                       {"source": str(root), "list": str(path), "num_classes": k})
