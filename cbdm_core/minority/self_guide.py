"""Self-guided minority generation (Um & Ye; soobin-um/sg-minority, ``gaussian_diffusion.py``
``compute_mg_grad``, flags ``--use_ms_grad --mg_scale --inter_rate``) as the guidance plugins
``self-minority`` and ``cfg+self-minority``: no extra network, the gradient of the model's own
minority score.

At a guided step (``t % inter_rate == 0`` and ``t > T * t_mid``):

    x0     = Tweedie(x_t, t)                    (unclipped: --mg_clip_denoised False)
    x0_hat = Tweedie(q_sample(x0, t_p), t_p)    (t_p = int(T * p_ratio), no gradient)
    g      = grad_{x_t} mean_mc d(x0, x0_hat),  divided by max|g| per image (--use_normed_grad)
    eps'   = eps - mg_scale * sqrt(1 - abar_t) * g

Deviations: the score form for every sampler (theirs: ``p_sample`` adds ``variance * mg_scale
* g`` to the mean, ``--mg_scale_type var``, ddpm only); ``t`` is the training timestep (theirs:
the index in a respaced schedule; equal for ddpm over all T steps); the distance (theirs:
LPIPS-AlexNet, or the pixel norm with ``--use_lpips False``, see :mod:`.distance`); the q_sample
noise of each image is seeded by its x_t and t, so an image does not depend on its batch.
"""

from __future__ import annotations

import hashlib
from typing import Any, Callable, Literal, Optional

import torch
from pydantic import BaseModel, ConfigDict, Field

from ..errors import CbdmError
from ..guidance_classifier.guide import sqrt_one_minus_abar
from ..interfaces import DenoiseFn
from ..sampling.guidance import cfg_denoiser
from ..schedules import NoiseSchedule
from .distance import Distance, make_distance

NoiseFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x_t, like) -> noise shaped like


class SelfMinorityOptions(BaseModel):
    """Options of ``self-minority`` (``-G KEY=VALUE``); defaults: image_sample.py create_argparser.

    Args:
        scale: ``--mg_scale`` (1.0; their ImageNet-64 example 0.2 with inter_rate 2).
        inter_rate: guide at timesteps divisible by it (``--inter_rate``, 5).
        p_ratio: re-noising timestep t_p = int(T * p_ratio) (``--p_ratio``, 0.8).
        mc_samples: draws of the re-noising (``--num_mc_samples``, 1).
        t_mid: guide only at t > T * t_mid (``--t_mid``, -1: always).
        normed_grad: divide g by its max |g| per image (``--use_normed_grad``, True).
        clip_denoised: clip both Tweedie estimates (``--mg_clip_denoised``, False).
        norm: p of the pixel distance (``--norm_for_mg``, 2.0).
        distance: auto (feature classifier if available, else pixel), classifier, pixel, lpips.
        feature_classifier: file for ``distance=classifier`` (default: the dataset's cached one).
        lpips_net: LPIPS backbone (theirs: alex).
        seed: seeds the re-noising draws.
    """

    model_config = ConfigDict(extra="forbid")

    scale: float = Field(1.0, ge=0.0)
    inter_rate: int = Field(5, ge=1)
    p_ratio: float = Field(0.8, gt=0.0, lt=1.0)
    mc_samples: int = Field(1, ge=1)
    t_mid: float = -1.0
    normed_grad: bool = True
    clip_denoised: bool = False
    norm: float = Field(2.0, gt=0.0)
    distance: Literal["auto", "classifier", "pixel", "lpips"] = "auto"
    feature_classifier: Optional[str] = None
    lpips_net: Literal["vgg", "alex"] = "alex"
    seed: int = 0


def abar(schedule: NoiseSchedule, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``abar_t`` shaped ``[B, 1, ...]`` (float t interpolated, as for classifier guidance)."""
    return 1.0 - sqrt_one_minus_abar(schedule, t, like) ** 2


def tweedie(model: Any, schedule: NoiseSchedule, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor,
            clip: bool) -> torch.Tensor:
    """The predicted x_0 of ``model`` (an eps predictor) at ``(x, t)``."""
    ab = abar(schedule, t, x)
    x0 = (x - (1 - ab).sqrt() * model(x, t, y).to(x.dtype)) / ab.sqrt()
    return x0.clamp(-1.0, 1.0) if clip else x0


def row_seeded_noise(seed: int) -> NoiseFn:
    """Standard normal noise per row, seeded by the row's x_t bytes and ``seed``."""

    def noise(x_t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        rows = []
        for row in x_t.detach().cpu():
            key = hashlib.blake2b(row.to(torch.float64).numpy().tobytes(), digest_size=8, key=str(seed).encode()).digest()
            gen = torch.Generator().manual_seed(int.from_bytes(key, "little") >> 1)
            rows.append(torch.randn(like.shape[1:], generator=gen, dtype=torch.float64))
        return torch.stack(rows).to(like.device, like.dtype)

    return noise


def minority_score_gradient(model: Any, schedule: NoiseSchedule, x_t: torch.Tensor, t: torch.Tensor,
                            y: torch.Tensor, distance: Distance, noise: NoiseFn, *, p_ratio: float,
                            mc_samples: int, clip: bool, normed: bool) -> torch.Tensor:
    """``grad_{x_t}`` of the mean minority score over ``mc_samples`` re-noisings (compute_mg_grad)."""
    tp = torch.full_like(t, int(schedule.num_timesteps * p_ratio), dtype=torch.long)
    with torch.enable_grad():
        x_in = x_t.detach().requires_grad_(True)
        x0 = tweedie(model, schedule, x_in, t, y, clip)
        total = torch.zeros(x_t.shape[0], dtype=x0.dtype, device=x0.device)
        for _ in range(mc_samples):
            with torch.no_grad():  # x0_hat is detached in theirs
                x0_hat = tweedie(model, schedule, schedule.q_sample(x0.detach(), tp, noise(x_t, x0)), tp, y, clip)
            total = total + distance(x0, x0_hat)
        grad = torch.autograd.grad((total / mc_samples).sum(), x_in)[0]
    if normed:
        grad = grad / grad.abs().amax(dim=tuple(range(1, grad.ndim)), keepdim=True)
    return grad


def self_minority_term(inner: DenoiseFn, model: Any, schedule: NoiseSchedule, distance: Distance, noise: NoiseFn,
                       opts: SelfMinorityOptions) -> DenoiseFn:
    """``eps' = inner(x, t, y) - scale sqrt(1 - abar_t) g`` at the guided timesteps."""
    T = schedule.num_timesteps

    def denoise(x_t: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        eps = inner(x_t, t, y)
        t_now = int(torch.round(t.flatten()[0].float()).item())  # one timestep per call (as theirs: t[0])
        if opts.scale == 0.0 or t_now <= T * opts.t_mid or t_now % opts.inter_rate != 0:
            return eps
        g = minority_score_gradient(model, schedule, x_t, t, y, distance, noise, p_ratio=opts.p_ratio,
                                    mc_samples=opts.mc_samples, clip=opts.clip_denoised, normed=opts.normed_grad)
        return eps - opts.scale * sqrt_one_minus_abar(schedule, t, x_t) * g

    return denoise


def _distance(opts: SelfMinorityOptions) -> Distance:
    """pixel (with ``norm``) unless a feature classifier or LPIPS is asked for: a guidance does
    not know the run's dataset, so ``auto`` uses a feature classifier only when one is given."""
    if opts.distance == "pixel" or (opts.distance == "auto" and opts.feature_classifier is None):
        p = opts.norm
        return lambda a, b: (a - b).flatten(1).norm(p=p, dim=1)
    return make_distance(opts.distance, feature_classifier=opts.feature_classifier, lpips_net=opts.lpips_net)[0]


def build_self_minority_guidance(model: Any, w: float, null_label: Optional[int], /, *, schedule: NoiseSchedule,
                                 **options: Any) -> DenoiseFn:
    """``self-minority``: the model's prediction plus the self-guidance term; cfg w must be 0."""
    if float(w) != 0.0:
        raise CbdmError(f"guidance 'self-minority' takes its strength from -G scale=S, not --guidance {w:g}; "
                        "use --guidance-method cfg+self-minority for both")
    opts = SelfMinorityOptions(**options)
    return self_minority_term(model, model, schedule, _distance(opts), row_seeded_noise(opts.seed), opts)


def build_cfg_self_minority_guidance(model: Any, w: float, null_label: Optional[int], /, *,
                                     schedule: NoiseSchedule, **options: Any) -> DenoiseFn:
    """``cfg+self-minority``: classifier-free guidance with weight w, then the self-guidance term
    (its minority score uses the conditional model, as theirs)."""
    if null_label is None:
        raise CbdmError("cfg+self-minority needs a class-conditional model with a null label")
    opts = SelfMinorityOptions(**options)
    return self_minority_term(cfg_denoiser(model, w, null_label), model, schedule, _distance(opts),
                              row_seeded_noise(opts.seed), opts)
