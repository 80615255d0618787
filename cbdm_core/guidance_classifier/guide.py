"""Classifier guidance (Dhariwal & Nichol, 2021) as a guidance plugin.

The guided noise prediction is guided-diffusion's ``condition_score`` (Song et al., 2021):

    eps' = eps - s * sqrt(1 - abar_t) * grad_x log p(y | x_t, t)

with ``abar_t`` read from the sampling schedule at the integer timestep the sampler passes.
``cfg+classifier`` first forms classifier-free guidance's ``(1 + w) eps(x, y) - w eps(x, null)``
and then subtracts the same classifier term.

Deviation from the released code: guided-diffusion's ancestral sampler (``p_sample``) uses
``condition_mean`` (the mean shifted by variance * gradient); here every sampler uses the
score form, because a guidance only changes the noise prediction the sampler receives.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..errors import CbdmError
from ..interfaces import DenoiseFn
from ..sampling.guidance import cfg_denoiser
from ..schedules import NoiseSchedule
from .net import NoisyClassifier, load_noisy_classifier



class ClassifierGuidanceOptions(BaseModel):
    """Options of ``classifier`` and ``cfg+classifier`` (``cbdm sample -G KEY=VALUE``).

    Args:
        classifier: a noise-aware classifier file from ``cbdm train-classifier --noisy RUN``.
        scale: the classifier scale s (guided-diffusion's ``--classifier_scale``, default 1.0).
    """

    model_config = ConfigDict(extra="forbid")

    classifier: str
    scale: float = Field(1.0, ge=0.0)

    @field_validator("classifier")
    @classmethod
    def _exists(cls, value: str) -> str:
        if not Path(value).is_file():
            raise ValueError(f"classifier file {value} does not exist (train one with `cbdm train-classifier --noisy RUN`)")
        return value


_CACHE: dict[tuple[str, int, int], tuple[NoisyClassifier, NoiseSchedule]] = {}


def _load_cached(path: str) -> tuple[NoisyClassifier, NoiseSchedule]:
    """One load per file version: ``sample()`` builds the guidance once per batch."""
    st = Path(path).stat()
    key = (str(Path(path).resolve()), st.st_mtime_ns, st.st_size)
    if key not in _CACHE:
        _CACHE.clear()  # keep one classifier in memory
        model, schedule = load_noisy_classifier(path)
        _CACHE[key] = (model.requires_grad_(False), schedule)
    return _CACHE[key]


def log_prob_gradient(classifier: torch.nn.Module, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``grad_x log p(y | x, t)`` per row, computed with gradients on even under ``no_grad``
    sampling (as guided-diffusion's ``cond_fn`` does)."""
    dtype = next(classifier.parameters()).dtype  # the classifier's own precision (x may be half)
    with torch.enable_grad():
        x_in = x.detach().to(dtype).requires_grad_(True)
        logits = classifier(x_in, t)
        # At least float32 for the softmax (autocast may give half), float64 kept as is.
        log_probs = F.log_softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), dim=-1)
        chosen = log_probs.gather(1, y.view(-1, 1)).sum()
        return torch.autograd.grad(chosen, x_in)[0].to(x.dtype)


def _check_match(clf: NoisyClassifier, clf_schedule: NoiseSchedule, model: Any, schedule: NoiseSchedule) -> None:
    meta = clf.meta
    where = f"classifier {meta.get('path', '')}".strip()
    k = getattr(model, "num_classes", None)
    if k is not None and int(k) != clf.options.num_classes:
        raise CbdmError(f"{where} has {clf.options.num_classes} classes, the model {int(k)}")
    check_same_schedule(where, clf_schedule, schedule)


def check_same_schedule(where: str, clf_schedule: NoiseSchedule, schedule: NoiseSchedule) -> None:
    """Refuse a classifier trained on x_t of another schedule than the model samples with."""
    same = (clf_schedule.num_timesteps == schedule.num_timesteps
            and torch.allclose(clf_schedule.alphas_cumprod, schedule.alphas_cumprod, rtol=1e-6, atol=1e-9))
    if not same:
        raise CbdmError(f"{where} was trained with another noise schedule ({clf_schedule.name}, "
                        f"T={clf_schedule.num_timesteps}) than the model samples with ({schedule.name}, "
                        f"T={schedule.num_timesteps}); train it with `cbdm train-classifier --noisy RUN`")


def sqrt_one_minus_abar(schedule: NoiseSchedule, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``sqrt(1 - abar_t)`` shaped ``[B, 1, ...]``: exact at integer timesteps (ddpm, ddim); a float
    ``t`` (the heun sampler's interpolated timesteps) interpolates linearly between neighbours."""
    table = schedule.sqrt_one_minus_alphas_cumprod
    if not t.is_floating_point():
        return NoiseSchedule.gather(table, t, like)
    tf = t.detach().double().cpu().clamp(0, schedule.num_timesteps - 1)
    lo = tf.floor().long()
    hi = (lo + 1).clamp(max=schedule.num_timesteps - 1)
    frac = tf - lo.double()
    value = table[lo] * (1 - frac) + table[hi] * frac
    return value.to(like.device, like.dtype).view(-1, *([1] * (like.ndim - 1)))


def classifier_term(inner: DenoiseFn, classifier: torch.nn.Module, schedule: NoiseSchedule, scale: float,
                    null_label: Optional[int]) -> DenoiseFn:
    """``eps' = inner(x, t, y) - s sqrt(1 - abar_t) grad log p(y | x, t)``; rows with the null
    label (no class to guide to) keep ``inner``'s prediction."""
    s = float(scale)

    def denoise(x_t: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        eps = inner(x_t, t, y)
        if s == 0.0:
            return eps
        dev = next(classifier.parameters()).device
        if dev != x_t.device:
            classifier.to(x_t.device)
        keep = y != null_label if null_label is not None else torch.ones_like(y, dtype=torch.bool)
        y_safe = torch.where(keep, y, torch.zeros_like(y))
        grad = log_prob_gradient(classifier, x_t, t, y_safe)
        coef = sqrt_one_minus_abar(schedule, t, x_t) * keep.view(-1, *([1] * (x_t.ndim - 1))).to(x_t.dtype)
        return eps - s * coef * grad

    return denoise


def _classifier_for(model: Any, schedule: NoiseSchedule, classifier: str) -> NoisyClassifier:
    clf, clf_schedule = _load_cached(classifier)
    clf.meta = {**clf.meta, "path": classifier}
    _check_match(clf, clf_schedule, model, schedule)
    return clf


def checked_shape(denoise: DenoiseFn, clf: NoisyClassifier, what: Optional[str] = None) -> DenoiseFn:
    """Refuse images of another shape than the classifier was trained on (one line, no
    traceback); ``what`` names it in the message (default: ``classifier PATH``)."""
    o = clf.options
    want = (o.in_channels, o.image_size, o.image_size)
    name = what or f"classifier {clf.meta.get('path')}"

    def call(x_t: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if tuple(x_t.shape[1:]) != want:
            raise CbdmError(f"{name} takes images {want[0]}x{want[1]}x{want[2]}, "
                            f"got {'x'.join(map(str, x_t.shape[1:]))}")
        return denoise(x_t, t, y)

    return call


_DEFAULT_SCALE = ClassifierGuidanceOptions.model_fields["scale"].default


def build_classifier_guidance(model: Any, w: float, null_label: Optional[int], /, *, schedule: NoiseSchedule,
                              classifier: str, scale: float = _DEFAULT_SCALE) -> DenoiseFn:
    """``classifier``: the model's conditional prediction plus the classifier term. Its
    strength is the ``scale`` option; the guidance weight w (classifier-free) must be 0."""
    if float(w) != 0.0:
        raise CbdmError(f"guidance 'classifier' takes its strength from -G scale=S, not --guidance {w:g} "
                        "(classifier-free w); use --guidance-method cfg+classifier for both")
    clf = _classifier_for(model, schedule, classifier)
    return checked_shape(classifier_term(model, clf, schedule, scale, null_label), clf)


def build_cfg_classifier_guidance(model: Any, w: float, null_label: Optional[int], /, *,
                                  schedule: NoiseSchedule, classifier: str,
                                  scale: float = _DEFAULT_SCALE) -> DenoiseFn:
    """``cfg+classifier``: classifier-free guidance with weight w, then the classifier term."""
    if null_label is None:
        raise CbdmError("cfg+classifier needs a class-conditional model with a null label")
    clf = _classifier_for(model, schedule, classifier)
    return checked_shape(classifier_term(cfg_denoiser(model, w, null_label), clf, schedule, scale, null_label), clf)


load_cached_classifier = _load_cached  # for other classifier-based guidances (minority guidance)
