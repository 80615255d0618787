"""Sampling settings, validated once where they are made.

Two models with one job each:

* :class:`SamplerSettings`: *how* images are sampled (sampler, steps, eta, clipping,
  guidance). Its numbers are constrained here, so nothing downstream re-checks them; the
  ``settings`` of a sample folder's manifest are its dump (:meth:`SamplerSettings.manifest_fields`).
* :class:`SampleJob`: *how many, which and where* (num, classes, seed, batch size, EMA
  weights, grid rows, output folder).

:class:`SamplingSettings` is both in one flat model: the ``preview:`` section of a
training config and the ``sampling:`` section of a protocol, whose keys stay as they were.
The ``cbdm sample``/``sweep`` options are generated from these models (``cli/sampling_options.py``),
so a field's ``description`` is its ``--help`` text.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal, Mapping, Optional

from pydantic import BaseModel, ConfigDict, Field


MAX_SEED = 2**63 - 1  # torch generators take 64-bit seeds; larger ones overflow with a traceback
MAX_SAMPLES = 10_000_000  # images per sample set: 200x an FID-50k set; the labels alone are 80 MB
# Far beyond any useful strength (the CBDM paper's guidance is below 10); larger values only
# overflow float32 in (1 + w) * eps and come out as NaN images after all the work.
MAX_GUIDANCE = 1000.0


class SamplerSettings(BaseModel):
    """How images are sampled from a trained denoiser (the numbers are checked here, once).

    A sampler's or guidance's *name* and *options* are checked against the registry once, at
    the edge (:func:`cbdm_core.sampling.api.resolve_sampling`, which gives the
    :class:`~cbdm_core.sampling.resolved.ResolvedSampling` the layers below receive), never by
    this model.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    sampler: str = Field("ddim", description="Registered sampler (ddim, ddpm, heun, ...).")
    steps: Optional[int] = Field(None, ge=1, description="Sampling steps (default: the sampler's, capped at T; "
                                                         "ddim 100, ddpm T).")
    eta: float = Field(0.0, ge=0.0, description="DDIM noise, 0 = deterministic (ddpm takes none).")
    guidance: float = Field(0.0, ge=0.0, le=MAX_GUIDANCE, description="Guidance strength w (0 = plain conditional).")
    guidance_method: str = Field("cfg", description="Registered guidance used when w > 0: cfg (classifier-free), "
                                                    "none, or a plugin's.")
    guidance_options: dict[str, Any] = Field(default_factory=dict, description=(
        "An option of the guidance method, e.g. -G scale=2 (repeatable; values read as YAML)."))
    clip_denoised: Optional[bool] = Field(None, description="Clamp predicted x_0 to [-1, 1] "
                                                            "(default: the sampler's).")
    sampler_options: dict[str, Any] = Field(default_factory=dict, description=(
        "Any option of the sampler, e.g. -S S_churn=10 for heun (repeatable; values read as YAML)."))
    precision: Literal["fp32", "bf16"] = Field("fp32", description=(
        "Network precision: fp32, or bf16 (bfloat16 autocast on the CPU or GPU: faster where the device has "
        "native bf16; images differ from fp32's by bf16 rounding)."))

    def names_key(self) -> str:
        """The sampler, the guidance and their options, as one string (a
        :class:`~cbdm_core.sampling.resolved.ResolvedSampling` holds settings with its names only)."""
        return json.dumps([self.sampler, self.sampler_options, self.guidance_method, self.guidance_options],
                          sort_keys=True, default=str)

    def sample_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of :func:`cbdm_core.sampling.sample` these settings give."""
        return {"sampler": self.sampler, "steps": self.steps, "eta": self.eta, "guidance": self.guidance,
                "guidance_method": self.guidance_method, "guidance_options": dict(self.guidance_options),
                "clip_denoised": self.clip_denoised, "precision": self.precision,
                **self.sampler_options}

    def with_guidance(self, guidance: float) -> "SamplerSettings":
        """A copy at strength ``guidance``, validated like the original (``model_copy`` alone is not)."""
        copy = self.model_copy()
        copy.guidance = guidance  # validate_assignment: the field's bounds apply
        return copy

    def sampler_settings(self) -> "SamplerSettings":
        """These settings as a plain :class:`SamplerSettings` (drops a :class:`SamplingSettings`' job)."""
        return SamplerSettings.model_validate(self.model_dump(include=set(SamplerSettings.model_fields)))

    def manifest_fields(self) -> dict[str, Any]:
        """The manifest's record of how its images were sampled (its keys as ever: a folder
        sampled before a setting existed has no key for it, and still resumes)."""
        out = {"sampler": self.sampler, "steps": self.steps, "eta": float(self.eta), "guidance": float(self.guidance),
               "clip_denoised": self.clip_denoised, "sampler_options": dict(self.sampler_options)}
        if self.guidance_method != "cfg":
            out["guidance_method"] = self.guidance_method
        if self.guidance_options:
            out["guidance_options"] = dict(self.guidance_options)
        if self.precision != "fp32":  # no key for fp32: folders sampled before the setting existed resume
            out["precision"] = self.precision
        return out

    @classmethod
    def from_manifest(cls, settings: Mapping[str, Any]) -> "SamplerSettings":
        """The settings a manifest's ``settings`` record (old manifests included)."""
        return cls.model_validate({k: settings[k] for k in cls.model_fields if k in settings})


class _JobFields(BaseModel):
    """How many images, of which classes, from which noise (shared by :class:`SampleJob` and
    :class:`SamplingSettings`)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    # seed None: the caller's default (0; the training seed for previews).
    seed: Optional[int] = Field(None, ge=0, le=MAX_SEED, description=(
        "Sampling seed: sample i draws its noise from (seed, i), whatever the batch size."))
    num: int = Field(1000, ge=1, le=MAX_SAMPLES, description="Number of images.")
    classes: str = Field("balanced", description="balanced (equal per class), train (training frequencies), "
                                                 "or class indices like 0,3,7.")
    batch_size: int = Field(256, ge=1, description="Images per network batch (does not change the images).")
    ema: bool = Field(True, description="Use the EMA weights.")
    per_class: int = Field(10, ge=1, le=64, description="Images per class row of a grid (previews, grid.png).")


class SampleJob(_JobFields):
    """How many images, which, and where: what ``cbdm sample`` does with a :class:`SamplerSettings`."""

    num: Optional[int] = Field(None, ge=1, le=MAX_SAMPLES, description="Number of images (None: the "
                                                                        "command's default, 10 per class).")
    out: Optional[Path] = Field(None, description="Sample folder.")


class SamplingSettings(_JobFields, SamplerSettings):
    """A :class:`SamplerSettings` and a job's numbers in one flat model: a training config's
    ``preview:`` and a protocol's ``sampling:`` (their keys unchanged). Field order (sampler
    first) is that of the model before the split, so dumps are unchanged too."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    @classmethod
    def of(cls, how: SamplerSettings, job: SampleJob, **changes: Any) -> "SamplingSettings":
        """``how`` and ``job`` (without ``out``) as one model, ``changes`` applied."""
        values = {**how.model_dump(include=set(SamplerSettings.model_fields)),
                  **job.model_dump(exclude={"out"}, exclude_none=True), **changes}
        return cls(**values)

    def job(self) -> SampleJob:
        """The job part (no ``out``: these settings have no folder)."""
        return SampleJob.model_validate(self.model_dump(include=set(_JobFields.model_fields)))
