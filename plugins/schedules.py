"""Built-in noise schedules, and the ``ddpm`` diffusion loss (epsilon prediction on the discrete
schedule), which stays here: the built-ins are found through the installed ``cbdm`` entry points,
and a new one (``losses``) would need every environment reinstalled first."""

from __future__ import annotations

from cbdm_core.hookspecs import hookimpl
from cbdm_core.objectives import EpsilonLoss
from cbdm_core.schedules import CosineSchedule, LinearSchedule


def _linear(num_timesteps: int, beta_1: float = 1e-4, beta_T: float = 0.02) -> LinearSchedule:
    return LinearSchedule(beta_1=beta_1, beta_T=beta_T, T=num_timesteps)


def _cosine(num_timesteps: int, **_: float) -> CosineSchedule:
    return CosineSchedule(T=num_timesteps)


@hookimpl
def register_components(register) -> None:
    register("noise_schedule", "linear", _linear, description="DDPM linear betas (beta_1 .. beta_T)")
    register("noise_schedule", "cosine", _cosine, description="cosine schedule (Nichol & Dhariwal)")
    register("diffusion_loss", "ddpm", EpsilonLoss, description="epsilon prediction on the discrete schedule (DDPM)")
