"""Discrete-time noise schedules (DDPM): betas and the quantities derived from them."""

from __future__ import annotations

import math

import torch

from .errors import CbdmError


class NoiseSchedule:
    """A discrete variance-preserving schedule with ``T`` steps, indexed 0..T-1.

    Derived buffers are float64 on the CPU; :meth:`gather` moves the requested
    entries to the caller's device and dtype.
    """

    def __init__(self, betas: torch.Tensor, name: str = "custom"):
        betas = betas.to(torch.float64)
        if betas.ndim != 1 or len(betas) < 1:
            raise CbdmError("a noise schedule needs a 1-D tensor of betas")
        if not bool(((betas > 0) & (betas < 1)).all()):
            raise CbdmError("noise schedule betas must lie in (0, 1)")
        self.name = name
        self.betas = betas
        self.alphas = 1.0 - betas
        self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)
        self.alphas_cumprod_prev = torch.cat([torch.ones(1, dtype=torch.float64), self.alphas_cumprod[:-1]])
        self.sqrt_alphas_cumprod = self.alphas_cumprod.sqrt()
        self.sqrt_one_minus_alphas_cumprod = (1.0 - self.alphas_cumprod).sqrt()
        # q(x_{t-1} | x_t, x_0)
        self.posterior_variance = betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)

    @property
    def num_timesteps(self) -> int:
        return int(self.betas.shape[0])

    T = num_timesteps

    @staticmethod
    def gather(values: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """``values[t]`` shaped ``[B, 1, 1, 1]`` on ``like``'s device and dtype."""
        out = values.to(like.device)[t.to(like.device).long()]
        return out.to(like.dtype).view(-1, *([1] * (like.ndim - 1)))

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Sample ``x_t ~ q(x_t | x_0)`` with the given noise."""
        return (self.gather(self.sqrt_alphas_cumprod, t, x0) * x0
                + self.gather(self.sqrt_one_minus_alphas_cumprod, t, x0) * noise)

    def predict_x0(self, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        ab = self.gather(self.alphas_cumprod, t, x_t)
        return (x_t - (1 - ab).sqrt() * eps) / ab.sqrt()

    def snr(self) -> torch.Tensor:
        return self.alphas_cumprod / (1 - self.alphas_cumprod)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, T={self.num_timesteps})"


class LinearSchedule(NoiseSchedule):
    """DDPM's linear schedule: betas evenly spaced from ``beta_1`` to ``beta_T``.

    Args:
        beta_1: first beta (1e-4 in DDPM and CBDM).
        beta_T: last beta (0.02).
        T: number of diffusion steps (1000).
    """

    def __init__(self, beta_1: float = 1e-4, beta_T: float = 0.02, T: int = 1000):
        if T < 1:
            raise CbdmError(f"T must be a positive number of steps, got {T}")
        if not 0 < beta_1 <= beta_T < 1:
            raise CbdmError(f"need 0 < beta_1 <= beta_T < 1, got beta_1={beta_1}, beta_T={beta_T}")
        super().__init__(torch.linspace(beta_1, beta_T, T, dtype=torch.float64), name="linear")
        self.beta_1, self.beta_T = beta_1, beta_T


class CosineSchedule(NoiseSchedule):
    """The cosine schedule of Nichol & Dhariwal (2021), betas clipped at 0.999.

    Args:
        T: number of diffusion steps.
        s: small offset keeping beta_1 away from zero.
    """

    def __init__(self, T: int = 1000, s: float = 0.008):
        if T < 1:
            raise CbdmError(f"T must be a positive number of steps, got {T}")
        steps = torch.arange(T + 1, dtype=torch.float64) / T
        f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
        ab = f / f[0]
        betas = (1 - ab[1:] / ab[:-1]).clamp(min=1e-8, max=0.999)
        super().__init__(betas, name="cosine")
