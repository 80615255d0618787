"""One sampling-settings object for ``cbdm sample``, training previews, sweeps and the Python API."""

from __future__ import annotations

from typing import Any, Optional

from pydantic import BaseModel, ConfigDict, Field


MAX_SEED = 2**63 - 1  # torch generators take 64-bit seeds; larger ones overflow with a traceback
MAX_SAMPLES = 10_000_000  # images per sample set: 200x an FID-50k set; the labels alone are 80 MB


class SamplingSettings(BaseModel):
    """How images are sampled from a trained denoiser.

    Args:
        sampler: registered sampler name (``ddim``, ``ddpm``, ``heun``, ...).
        steps: sampling steps; None: the sampler's default capped at T.
        eta: DDIM noise (0 deterministic).
        guidance: guidance strength w >= 0 (0: plain conditional).
        guidance_method: registered guidance by name: ``cfg`` (classifier-free), ``none``, or a plugin's.
        guidance_options: options of that guidance (``cbdm sample -G KEY=VALUE``), checked
            against its options model.
        clip_denoised: clamp predicted x_0 to [-1, 1]; None: the sampler's default.
        sampler_options: sampler-specific options (``var_type``, ``spacing``, ``S_churn``, ...).
        seed: sample ``i`` draws its noise from ``sample_generators(seed, [i])``; None: the
            caller's default (0; the training seed for previews).
        num: images to sample (sweeps).
        classes: ``balanced``, ``train`` or class indices (how labels are planned; recorded).
        batch_size: images per network batch (does not change the images).
        ema: sample the EMA weights.
        per_class: images per class row of a grid (previews, ``grid.png``).
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    sampler: str = "ddim"
    # No range checks here: the sampler and sample() reject bad values with one-line errors.
    steps: Optional[int] = None
    eta: float = 0.0
    guidance: float = 0.0
    guidance_method: str = "cfg"
    guidance_options: dict[str, Any] = Field(default_factory=dict)
    clip_denoised: Optional[bool] = None
    sampler_options: dict[str, Any] = Field(default_factory=dict)
    seed: Optional[int] = Field(None, ge=0, le=MAX_SEED)
    num: int = Field(1000, le=MAX_SAMPLES)
    classes: str = "balanced"
    batch_size: int = 256
    ema: bool = True
    per_class: int = Field(10, ge=1, le=64)

    def sample_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of :func:`cbdm_core.sampling.sample` these settings give."""
        return {"sampler": self.sampler, "steps": self.steps, "eta": self.eta, "guidance": self.guidance,
                "guidance_method": self.guidance_method, "guidance_options": dict(self.guidance_options),
                "clip_denoised": self.clip_denoised,
                **self.sampler_options}
