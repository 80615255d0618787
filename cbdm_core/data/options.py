"""Options shared by every dataset loader."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ..errors import ConfigError


class DatasetOptions(BaseModel):
    """How to load a dataset.

    Attributes:
        root: folder holding the data (not needed for the embedded ``digits``).
        split: ``train`` or ``test``; ``val`` for the datasets that have one (``imagenet-lt``,
            ``places-lt``, ``inat2018``).
        imb_factor: smallest/largest class size ratio of the long-tailed version, in
            ``(0, 1]``; ``None`` means the dataset's default (``0.01`` for ``*-lt``
            datasets, ``0.1`` for ``digits-lt``, ``1.0`` = no long tail otherwise).
        lt_profile: ``exp`` (exponential decay) or ``step`` (half head, half tail).
        lt_seed: seed choosing which images are kept per class.
        max_per_class: cap on the images of every class (applied before the long tail).
        download: fetch the official files into ``root`` when missing.
        strict: fail on an unreadable image instead of skipping it (``folder``).
        classes: class folders to use, in this order (``folder``); default: all, sorted.
        class_order: ``name`` (sorted, or the ``classes`` order) or ``count`` (most images
            first, in the train split, ties by name), so the long tail ranks head to tail by
            the folders' sizes (``folder``).
        resize: side of the square images every split is resized to (area averaging when
            shrinking, bilinear when growing), after the cap and long tail; ``None``: as stored
            (or the dataset's own size, e.g. 16 for ``mnist-lt-small``).
    """

    model_config = ConfigDict(extra="forbid")

    root: Optional[Path] = None
    split: Literal["train", "val", "test"] = "train"
    imb_factor: Optional[float] = None
    lt_profile: Literal["exp", "step"] = "exp"
    lt_seed: int = Field(0, ge=0, le=2**63 - 1)
    max_per_class: Optional[int] = None
    download: bool = False
    strict: bool = False
    classes: Optional[list[str]] = None
    class_order: Literal["name", "count"] = "name"
    resize: Optional[int] = Field(None, ge=1, le=4096)

    @field_validator("imb_factor")
    @classmethod
    def _check_imb_factor(cls, v: Optional[float]) -> Optional[float]:
        if v is not None and not (0.0 < v <= 1.0):
            raise ValueError(f"imb_factor must be in (0, 1] (1 = no long tail), got {v}")
        return v

    @field_validator("max_per_class")
    @classmethod
    def _check_max_per_class(cls, v: Optional[int]) -> Optional[int]:
        if v is not None and v <= 0:
            raise ValueError(f"max_per_class must be a positive number of images, got {v}")
        return v

    @field_validator("classes")
    @classmethod
    def _check_classes(cls, v: Optional[list[str]]) -> Optional[list[str]]:
        if v is not None:
            if not v:
                raise ValueError("classes must name at least one class folder")
            dup = sorted({c for c in v if v.count(c) > 1})
            if dup:
                raise ValueError(f"classes lists {', '.join(dup)} more than once")
        return v


def dataset_options(**kwargs: Any) -> DatasetOptions:
    """Build :class:`DatasetOptions`, turning a validation failure into one-line ``ConfigError``."""
    try:
        return DatasetOptions(**kwargs)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(p) for p in err.get("loc", ())) or "dataset options"
        msg = str(err.get("msg", "invalid value")).removeprefix("Value error, ")
        raise ConfigError(f"dataset option {where}: {msg}") from None
