"""Minority guidance (Um et al., ICLR 2024; soobin-um/minority-guidance ``classifier_sample.py``)
as the guidance plugins ``minority`` and ``cfg+minority``.

The minority classifier p(l | x_t, t[, c]) (``cbdm train-classifier --noisy RUN --minority``)
guides toward minority level ``l`` with scale w, exactly as classifier guidance does with its
class: ``eps' = eps - w sqrt(1 - abar_t) grad_x log p(l | x_t, t[, c])``. The class-conditional
classifier predicts (class, level) jointly; its softmax over one class's block of L logits is
p(l | x_t, c).

Deviations from the released code: the score form for every sampler (theirs: ``p_sample``'s
``condition_mean``, as classifier guidance here); the classifier reads x_t itself (theirs: the
features of a pretrained ImageNet classifier, a "cascaded" classifier); the minority score's
distance (see :mod:`.distance`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..errors import CbdmError
from ..guidance_classifier.guide import check_same_schedule, checked_shape, load_cached_classifier, sqrt_one_minus_abar
from ..interfaces import DenoiseFn
from ..sampling.guidance import cfg_denoiser
from ..schedules import NoiseSchedule


class MinorityGuidanceOptions(BaseModel):
    """Options of ``minority`` and ``cfg+minority`` (``cbdm sample -G KEY=VALUE``).

    Args:
        classifier: a minority classifier from ``cbdm train-classifier --noisy RUN --minority``.
        scale: w, the authors' ``--classifier_scale`` (default 1.0; their LSUN example: 3.5).
        level: the target minority level (``--manual_class_id``); default L - 1, the highest
            minority scores (their example: 99 of 100).
    """

    model_config = ConfigDict(extra="forbid")

    classifier: str
    scale: float = Field(1.0, ge=0.0)
    level: Optional[int] = Field(None, ge=0)

    @field_validator("classifier")
    @classmethod
    def _exists(cls, value: str) -> str:
        if not Path(value).is_file():
            raise ValueError(f"classifier file {value} does not exist "
                             "(train one with `cbdm train-classifier --noisy RUN --minority`)")
        return value


def level_log_prob_gradient(classifier: torch.nn.Module, x: torch.Tensor, t: torch.Tensor,
                            classes: Optional[torch.Tensor], level: int, num_levels: int) -> torch.Tensor:
    """``grad_x log p(level | x, t[, class])`` per row; ``classes=None`` for a level-only classifier."""
    dtype = next(classifier.parameters()).dtype
    with torch.enable_grad():
        x_in = x.detach().to(dtype).requires_grad_(True)
        logits = classifier(x_in, t)
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
        if classes is not None:  # the class's block of L logits
            logits = logits.view(x.shape[0], -1, num_levels)[torch.arange(x.shape[0], device=x.device), classes]
        chosen = F.log_softmax(logits, dim=-1)[:, level].sum()
        return torch.autograd.grad(chosen, x_in)[0].to(x.dtype)


def minority_term(inner: DenoiseFn, classifier: torch.nn.Module, schedule: NoiseSchedule, scale: float,
                  level: int, num_levels: int, class_cond: bool, null_label: Optional[int]) -> DenoiseFn:
    """``eps' = inner(x, t, y) - w sqrt(1 - abar_t) grad log p(level | x, t[, y])``; with a
    class-conditional classifier, rows with the null label keep ``inner``'s prediction."""
    w = float(scale)

    def denoise(x_t: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        eps = inner(x_t, t, y)
        if w == 0.0:
            return eps
        if next(classifier.parameters()).device != x_t.device:
            classifier.to(x_t.device)
        keep = torch.ones_like(y, dtype=torch.bool)
        if class_cond and null_label is not None:
            keep = y != null_label
        classes = torch.where(keep, y, torch.zeros_like(y)) if class_cond else None
        grad = level_log_prob_gradient(classifier, x_t, t, classes, level, num_levels)
        coef = sqrt_one_minus_abar(schedule, t, x_t) * keep.view(-1, *([1] * (x_t.ndim - 1))).to(x_t.dtype)
        return eps - w * coef * grad

    return denoise


def _load(model: Any, schedule: NoiseSchedule, path: str, level: Optional[int]) -> tuple[Any, dict[str, Any], int]:
    """The classifier, its minority record and the target level, checked against the model."""
    clf, clf_schedule = load_cached_classifier(path)
    info = clf.meta.get("minority")
    if not isinstance(info, dict):
        raise CbdmError(f"classifier {path} is not a minority classifier; train one with "
                        "`cbdm train-classifier --noisy RUN --minority`")
    check_same_schedule(f"classifier {path}", clf_schedule, schedule)
    L = int(info["levels"])
    k = getattr(model, "num_classes", None)
    if info["class_cond"] and k is not None and int(k) * L != clf.options.num_classes:
        raise CbdmError(f"minority classifier {path} is for {clf.options.num_classes // L} classes, the model has {int(k)}")
    lv = L - 1 if level is None else int(level)
    if lv >= L:
        raise CbdmError(f"minority level {lv} is out of range: classifier {path} has levels 0..{L - 1}")
    return clf, info, lv


_DEFAULT_SCALE = MinorityGuidanceOptions.model_fields["scale"].default


def build_minority_guidance(model: Any, w: float, null_label: Optional[int], /, *, schedule: NoiseSchedule,
                            classifier: str, scale: float = _DEFAULT_SCALE,
                            level: Optional[int] = None) -> DenoiseFn:
    """``minority``: the model's prediction plus the minority term; classifier-free w must be 0."""
    if float(w) != 0.0:
        raise CbdmError(f"guidance 'minority' takes its strength from -G scale=S, not --guidance {w:g} "
                        "(classifier-free w); use --guidance-method cfg+minority for both")
    clf, info, lv = _load(model, schedule, classifier, level)
    term = minority_term(model, clf, schedule, scale, lv, int(info["levels"]), bool(info["class_cond"]), null_label)
    return checked_shape(term, clf, f"minority classifier {classifier}")


def build_cfg_minority_guidance(model: Any, w: float, null_label: Optional[int], /, *, schedule: NoiseSchedule,
                                classifier: str, scale: float = _DEFAULT_SCALE,
                                level: Optional[int] = None) -> DenoiseFn:
    """``cfg+minority``: classifier-free guidance with weight w, then the minority term."""
    if null_label is None:
        raise CbdmError("cfg+minority needs a class-conditional model with a null label")
    clf, info, lv = _load(model, schedule, classifier, level)
    term = minority_term(cfg_denoiser(model, w, null_label), clf, schedule, scale, lv, int(info["levels"]),
                         bool(info["class_cond"]), null_label)
    return checked_shape(term, clf, f"minority classifier {classifier}")
