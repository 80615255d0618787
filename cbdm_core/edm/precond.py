"""EDM preconditioning (Karras et al., 2022) around any registered backbone.

``D(x; sigma, y) = c_skip x + c_out F(c_in x, c_noise, y)`` is the native denoiser
(:meth:`EDMPrecond.denoise`); ``forward(x_t, t, y)`` is the epsilon view on the
discrete schedule the model was built with, so every sampler of the project works
on EDM models unchanged.

The inner network F is any backbone ``F(x, t, y[, cond])``; its time input is
``C_NOISE_SCALE * c_noise = 250 ln(sigma)``, which spans about -1550..1100 for
sigma in [0.002, 80]: the same order as the 0..999 timesteps the sinusoidal
embeddings of the U-Net and the ViT were designed for (EDM's own networks scale
their embedding differently and take c_noise directly).
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from torch import nn

from ..errors import CbdmError
from ..interfaces import HasConvParts, HasFeatureTap, HasGeometry, missing_capabilities
from ..nets.tap import FeatureTap
from ..schedules import LinearSchedule, NoiseSchedule
from .sigmas import P_MEAN, P_STD, SIGMA_DATA, edm_coefficients, t_to_sigma

C_NOISE_SCALE = 1000.0  # inner time input = 1000 * ln(sigma) / 4


def _inner_spec(name: str):
    # Imported here: the registry loads every plugin, including the one importing this module.
    from ..registry import get_registry

    return get_registry().get("backbone", name).obj


class EDMOptions(BaseModel):
    """Options of the ``edm`` backbone.

    Args:
        inner: registered backbone used as F (``unet``, ``vit``, ...).
        inner_options: that backbone's options (validated with its options model).
        sigma_data: standard deviation of the data (0.5 for images in [-1, 1]).
        sigma_min, sigma_max: EDM's nominal sampling range (documentation; the
            ``heun`` sampler has its own options and clamps to the schedule).
        P_mean, P_std: training noise levels, ``ln sigma ~ N(P_mean, P_std^2)``.
        cond_dim: augmentation-conditioning size, handed to the inner backbone when it takes one.
    """

    model_config = ConfigDict(extra="forbid")

    inner: str = "unet"
    inner_options: dict[str, Any] = Field(default_factory=dict)
    sigma_data: float = Field(SIGMA_DATA, gt=0)
    sigma_min: float = Field(0.002, gt=0)
    sigma_max: float = Field(80.0, gt=0)
    P_mean: float = P_MEAN
    P_std: float = Field(P_STD, gt=0)
    cond_dim: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _check(self) -> "EDMOptions":
        if self.sigma_min >= self.sigma_max:
            raise ValueError(f"sigma_min ({self.sigma_min}) must be below sigma_max ({self.sigma_max})")
        if self.inner == "edm":
            raise ValueError("inner cannot be edm itself")
        spec = _inner_spec(self.inner)  # unknown names fail here, listing the choices
        try:
            spec.options_model.model_validate(inner_options_with_cond(self, spec))
        except ValidationError as exc:
            err = exc.errors()[0]
            loc = ".".join(str(p) for p in err["loc"]) or "(root)"
            msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
            raise ValueError(f"inner_options ({self.inner}): {loc}: {msg}") from None
        return self


def inner_options_with_cond(options: EDMOptions, spec) -> dict[str, Any]:
    """``inner_options`` plus ``cond_dim`` when the inner backbone takes one and it is not set."""
    out = dict(options.inner_options)
    fields = getattr(spec.options_model, "model_fields", {})
    if options.cond_dim and "cond_dim" in fields and "cond_dim" not in out:
        out["cond_dim"] = options.cond_dim
    return out


class EDMPrecond(nn.Module):
    """EDM-preconditioned denoiser over an inner network.

    Attributes:
        inner: the network F.
        sigma_data: data standard deviation of the preconditioning.
        schedule: the discrete VP schedule of the epsilon view.
    """

    def __init__(self, inner: nn.Module, schedule: NoiseSchedule, *, sigma_data: float = SIGMA_DATA,
                 sigma_min: float = 0.002, sigma_max: float = 80.0, P_mean: float = P_MEAN,
                 P_std: float = P_STD):
        super().__init__()
        if not isinstance(inner, HasGeometry):
            raise CbdmError(f"the edm inner network {type(inner).__name__} lacks "
                            f"{missing_capabilities(inner, (HasGeometry,))[0]}")
        self.inner = inner
        self.num_classes = int(inner.num_classes)
        self.channels = int(inner.channels)
        self.image_size = int(inner.image_size)
        self.sigma_data = float(sigma_data)
        self.sigma_min, self.sigma_max = float(sigma_min), float(sigma_max)
        self.P_mean, self.P_std = float(P_mean), float(P_std)
        # A plain attribute, not a buffer: the float64 tables must not follow .half() or the EMA.
        self.schedule = schedule

    def _inner(self, x: torch.Tensor, t: torch.Tensor, y: Optional[torch.Tensor],
               cond: Optional[torch.Tensor]) -> torch.Tensor:
        # Third-party backbones may take no cond argument.
        return self.inner(x, t, y) if cond is None else self.inner(x, t, y, cond)

    def denoise(self, x: torch.Tensor, sigma: torch.Tensor, y: Optional[torch.Tensor] = None,
                cond: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``D(x; sigma, y)``: the denoised image for ``x = x0 + sigma * n``; ``sigma`` is ``[B]`` or a scalar."""
        sigma = torch.as_tensor(sigma, device=x.device).float()
        if sigma.ndim == 0:
            sigma = sigma.expand(x.shape[0])
        c = edm_coefficients(sigma, self.sigma_data)
        view = (-1, *([1] * (x.ndim - 1)))
        xf = x.float()
        f = self._inner((c["c_in"].view(view) * xf).to(x.dtype), C_NOISE_SCALE * c["c_noise"], y, cond)
        return c["c_skip"].view(view) * xf + c["c_out"].view(view) * f.float()

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, y: Optional[torch.Tensor] = None,
                cond: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Epsilon prediction at timesteps ``t`` (int, or float: log-sigma interpolated) of the schedule."""
        sigma = t_to_sigma(torch.as_tensor(t, device=x_t.device).reshape(-1), self.schedule).float()
        if sigma.shape[0] == 1 and x_t.shape[0] != 1:
            sigma = sigma.expand(x_t.shape[0])
        s = sigma.view(-1, *([1] * (x_t.ndim - 1)))
        x = x_t.float() * (1.0 + s * s).sqrt()  # VP -> VE: x_t = x / sqrt(1 + sigma^2)
        d = self.denoise(x, sigma, y, cond)
        return ((x - d) / s).to(x_t.dtype)

    def feature_tap(self) -> FeatureTap:
        """The inner network's feature tap (a wrapper always offers the method: the inner may not)."""
        if not isinstance(self.inner, HasFeatureTap):
            raise CbdmError(f"the edm inner network {type(self.inner).__name__} has no feature_tap()")
        return self.inner.feature_tap()

    def conv_parts(self) -> dict[str, list[tuple[str, nn.Conv2d]]]:
        """The inner network's convolutions by part, named from this module (``inner.``)."""
        if not isinstance(self.inner, HasConvParts):
            raise CbdmError(f"the edm inner network {type(self.inner).__name__} has no conv_parts()")
        return {k: [(f"inner.{n}", c) for n, c in v] for k, v in self.inner.conv_parts().items()}


def build_edm(options: EDMOptions, *, image_size: int, channels: int, num_classes: int,
              schedule: Optional[NoiseSchedule] = None, **_: object) -> EDMPrecond:
    """Build the inner backbone through the registry and wrap it (default schedule: DDPM's linear)."""
    spec = _inner_spec(options.inner)
    inner_opts = spec.options_model.model_validate(inner_options_with_cond(options, spec))
    schedule = schedule if schedule is not None else LinearSchedule()
    inner = spec.build(inner_opts, image_size=image_size, channels=channels, num_classes=num_classes,
                       schedule=schedule)
    return EDMPrecond(inner, schedule, sigma_data=options.sigma_data, sigma_min=options.sigma_min,
                      sigma_max=options.sigma_max, P_mean=options.P_mean, P_std=options.P_std)
