"""A class-conditional diffusers pipeline with classifier-free guidance, as CBDM samples.

This file is copied into every ``cbdm export --format diffusers`` folder as ``pipeline.py``;
it needs only torch and diffusers (not cbdm). Guidance is the CBDM/classifier-free form

    eps_hat = (1 + w) * eps(x, y) - w * eps(x, null)

with ``null = unet.config.num_class_embeds - 1`` (w = 0: plain conditional sampling).
"""

from __future__ import annotations

import inspect
from typing import Optional, Union

import torch
from diffusers import DiffusionPipeline, ImagePipelineOutput


class CBDMPipeline(DiffusionPipeline):
    """``pipe(class_labels=[0, 3], guidance_scale=w, num_inference_steps=100)`` -> images."""

    model_cpu_offload_seq = "unet"

    def __init__(self, unet, scheduler):
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler)

    @property
    def null_label(self) -> int:
        return int(self.unet.config.num_class_embeds) - 1

    def _eps(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, w: float) -> torch.Tensor:
        if w == 0.0:
            return self.unet(x, t, class_labels=y).sample
        null = torch.full_like(y, self.null_label)
        # One pass over [x, x] with labels [y, null], as cbdm's cfg does.
        eps = self.unet(torch.cat([x, x]), t, class_labels=torch.cat([y, null])).sample
        cond, uncond = eps.chunk(2)
        is_null = (y == self.null_label).view(-1, 1, 1, 1)
        return torch.where(is_null, uncond, (1.0 + w) * cond - w * uncond)

    @torch.no_grad()
    def __call__(self, class_labels: Union[int, list[int], torch.Tensor], guidance_scale: float = 0.0,
                 num_inference_steps: int = 100, generator: Optional[torch.Generator] = None,
                 latents: Optional[torch.Tensor] = None, eta: float = 0.0, output_type: str = "pil",
                 return_dict: bool = True):
        """Sample one image per label (``null_label`` for unconditional rows).

        ``latents``: the starting noise ``[B, C, H, W]`` (default: drawn with ``generator``).
        ``output_type``: ``"pil"``, ``"np"`` (HWC in [0, 1]) or ``"pt"`` (CHW in [0, 1]) or ``"latent"`` (the raw
        sample in [-1, 1] scale, unclamped, as ``cbdm_core.sampling.sample`` returns it).
        """
        device = self._execution_device
        y = torch.as_tensor(class_labels, dtype=torch.long).reshape(-1).to(device)
        if int(y.min()) < 0 or int(y.max()) > self.null_label:
            raise ValueError(f"class labels must lie in 0..{self.null_label} ({self.null_label} = unconditional)")
        w = float(guidance_scale)
        if not w >= 0.0:
            raise ValueError(f"guidance_scale must be >= 0, got {guidance_scale}")
        cfg = self.unet.config
        shape = (len(y), cfg.in_channels, cfg.sample_size, cfg.sample_size)
        if latents is None:
            latents = torch.randn(shape, generator=generator, dtype=self.unet.dtype).to(device)
        x = latents.to(device=device, dtype=self.unet.dtype) * self.scheduler.init_noise_sigma
        self.scheduler.set_timesteps(num_inference_steps)
        extra = {}
        params = inspect.signature(self.scheduler.step).parameters
        if "eta" in params:
            extra["eta"] = eta
        if "use_clipped_model_output" in params:  # cbdm recomputes eps from a clipped x_0
            extra["use_clipped_model_output"] = True
        for t in self.progress_bar(self.scheduler.timesteps):
            tt = torch.full((len(y) * (1 if w == 0.0 else 2),), int(t), dtype=torch.long, device=device)
            eps = self._eps(self.scheduler.scale_model_input(x, t), tt, y, w)
            x = self.scheduler.step(eps, t, x, generator=generator, **extra).prev_sample
        self.maybe_free_model_hooks()
        if output_type == "latent":  # the raw sample in the model's [-1, 1] scale, unclamped
            return ImagePipelineOutput(images=x) if return_dict else (x,)
        image = (x / 2 + 0.5).clamp(0, 1)
        if output_type == "pt":
            out = image
        else:
            out = image.cpu().permute(0, 2, 3, 1).float().numpy()
            if output_type == "pil":
                out = self.numpy_to_pil(out)
        return ImagePipelineOutput(images=out) if return_dict else (out,)
