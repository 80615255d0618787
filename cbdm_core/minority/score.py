"""The minority score of training images and its quantisation into levels (Um et al., ICLR 2024,
soobin-um/minority-guidance ``construct_ms_dataset.py``).

Score of an image x0: the mean over ``n_iter`` draws of ``d(x0, x0_hat)``, where x0_hat is the
Tweedie reconstruction (the model's predicted x_0, clipped to [-1, 1] as ``p_mean_variance``
does by default) from ``x_t = q_sample(x0, t)``. The authors fix a 100-step respacing of the
schedule and perturb at its index 60, i.e. training timestep ``round(60 (T - 1) / 99)``.
"""

from __future__ import annotations

from typing import Any, Optional

import torch

from ..errors import CbdmError
from ..images import to_float
from ..schedules import NoiseSchedule
from .distance import Distance

PERTURB_T, RESPACING, N_ITER, LEVELS = 60, 100, 5, 100  # construct_ms_dataset.py create_argparser


def respaced_timesteps(T: int, count: int) -> list[int]:
    """guided-diffusion's ``space_timesteps(T, str(count))`` (one section), ascending."""
    if not 1 <= count <= T:
        raise CbdmError(f"cannot respace {T} timesteps into {count}")
    stride = 1.0 if count <= 1 else (T - 1) / (count - 1)
    steps, cur = [], 0.0
    for _ in range(count):
        steps.append(round(cur))  # Python's round, as theirs
        cur += stride
    return sorted(set(steps))


def perturb_timestep(T: int, perturb_t: int = PERTURB_T, respacing: int = RESPACING) -> int:
    """The training timestep of index ``perturb_t`` in the ``respacing``-step respaced schedule."""
    steps = respaced_timesteps(T, min(respacing, T))
    if not 0 <= perturb_t < len(steps):
        raise CbdmError(f"--perturb-t must be in 0..{len(steps) - 1} (a {len(steps)}-step respacing), got {perturb_t}")
    return steps[perturb_t]


def tweedie_x0(eps_model: Any, schedule: NoiseSchedule, x_t: torch.Tensor, t: torch.Tensor, y: torch.Tensor,
               clip: bool) -> torch.Tensor:
    """``(x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)``, clipped to [-1, 1] if ``clip``."""
    ab = NoiseSchedule.gather(schedule.alphas_cumprod, t, x_t)
    eps = eps_model(x_t, t, y).to(x_t.dtype)
    x0 = (x_t - (1 - ab).sqrt() * eps) / ab.sqrt()
    return x0.clamp(-1.0, 1.0) if clip else x0


@torch.no_grad()
def minority_scores(eps_model: Any, schedule: NoiseSchedule, images_uint8: torch.Tensor, labels: torch.Tensor,
                    distance: Distance, *, t: int, n_iter: int = N_ITER, batch_size: int = 64, seed: int = 0,
                    device: str | torch.device = "cpu", clip: bool = True) -> torch.Tensor:
    """Minority score per image (float64 ``[N]``), in the dataset's order."""
    if n_iter < 1 or batch_size < 1:
        raise CbdmError(f"n_iter and batch size must be >= 1, got {n_iter} and {batch_size}")
    dev, gen = torch.device(device), torch.Generator().manual_seed(seed)
    out = []
    for i in range(0, images_uint8.shape[0], batch_size):
        x0 = to_float(images_uint8[i:i + batch_size]).to(dev)
        y = torch.as_tensor(labels[i:i + batch_size], dtype=torch.int64).to(dev)
        tt = torch.full((x0.shape[0],), int(t), dtype=torch.long, device=dev)
        total = torch.zeros(x0.shape[0], dtype=torch.float64, device=dev)
        for _ in range(n_iter):
            noise = torch.randn(x0.shape, generator=gen).to(dev)
            x_hat = tweedie_x0(eps_model, schedule, schedule.q_sample(x0, tt, noise), tt, y, clip)
            total += distance(x0, x_hat).double()
        out.append((total / n_iter).cpu())
    return torch.cat(out)


def quantise(scores: torch.Tensor, levels: int = LEVELS) -> tuple[torch.Tensor, torch.Tensor]:
    """``(level per score, thresholds)``: thresholds are the ``(i + 1) / L`` quantiles and a
    score gets the first level whose threshold it does not exceed (construct_ms_dataset.py
    lines 94-111), so level L - 1 holds the highest scores (the minority)."""
    if levels < 1:
        raise CbdmError(f"--levels must be >= 1, got {levels}")
    s = scores if scores.is_floating_point() else scores.double()
    # In the scores' own precision, as theirs (float32 scores, float32 thresholds).
    thresholds = torch.stack([torch.quantile(s, (i + 1) / levels) for i in range(levels)])
    return torch.searchsorted(thresholds, s, side="left").clamp(max=levels - 1), thresholds


def joint_labels(classes: torch.Tensor, levels: torch.Tensor, num_levels: int,
                 class_cond: bool) -> torch.Tensor:
    """The minority classifier's labels: ``class * L + level`` (class-conditional: its softmax
    restricted to one class's block is p(level | x_t, class)), or the level alone."""
    return classes.long() * num_levels + levels.long() if class_cond else levels.long()


def level_counts(levels: torch.Tensor, num_levels: int) -> list[int]:
    return torch.bincount(levels, minlength=num_levels).tolist()


def score_record(scores: torch.Tensor, levels: torch.Tensor, thresholds: torch.Tensor, *, t: int,
                 options: dict[str, Any], distance: dict[str, Any], class_cond: bool,
                 num_classes: Optional[int]) -> dict[str, Any]:
    """What a minority classifier file records about its labels."""
    return {"minority": {**options, **distance, "perturb_timestep": int(t), "class_cond": class_cond,
                         "model_classes": num_classes, "thresholds": thresholds.tolist(),
                         "level_counts": level_counts(levels, len(thresholds)),
                         "score_min": float(scores.min()), "score_max": float(scores.max())}}
