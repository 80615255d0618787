"""A small labelled sample set in memory (training-time evaluation), drawn exactly as
``cbdm sample`` draws it: sample ``i`` takes its noise from ``sample_generators(seed, [i])``."""

from __future__ import annotations

from typing import Any, Sequence

import torch

from ..errors import CbdmError
from ..images import to_uint8
from .api import sample
from .noise import randn_like_per_sample, sample_generators


@torch.no_grad()
def sample_images(model: Any, schedule: Any, labels: Sequence[int], *, chw: tuple[int, int, int], seed: int,
                  batch_size: int, **sample_kwargs: Any) -> torch.Tensor:
    """``uint8 [N, C, H, W]`` images (on the CPU) of ``labels`` from ``model`` (in eval mode), in
    batches of at most ``batch_size``; the images do not depend on the batch size.
    ``sample_kwargs`` go to :func:`cbdm_core.sampling.sample` (sampler, steps, eta, guidance, ...).
    Non-finite samples raise :class:`CbdmError`."""
    device = next(model.parameters()).device
    y_all = torch.as_tensor(list(labels), dtype=torch.long)
    out = []
    for start in range(0, len(y_all), batch_size):
        rows = list(range(start, min(start + batch_size, len(y_all))))
        gens = sample_generators(seed, rows)
        x_T = randn_like_per_sample(chw, gens, device=device)
        x0 = sample(model, schedule, x_T, y_all[rows].to(device), generator=gens, **sample_kwargs)
        if not bool(torch.isfinite(x0).all()):
            raise CbdmError(f"samples {rows[0]}..{rows[-1]} came out NaN or inf")
        out.append(to_uint8(x0).cpu())
    return torch.cat(out)
