"""EDM (Karras et al., 2022) in one place: noise levels, the loss, the backbone, the sampler.

* :mod:`.sigmas`: the sigma view of a discrete schedule (``t_to_sigma``, ``sigma_to_t``, ...)
  and the preconditioning coefficients;
* :mod:`.loss`: :class:`EDMLoss` (kind ``diffusion_loss``, name ``edm``);
* :mod:`.precond`: :class:`EDMPrecond`, the ``edm`` backbone around any other backbone;
* :mod:`.heun`: EDM's second-order Heun sampler (kind ``sampler``, name ``heun``).

``plugins/edm.py`` registers them. The noise-level functions and the loss are importable
from ``cbdm_core.edm`` itself (their home before this package); the backbone and the sampler
from their submodules (or their old homes ``cbdm_core.nets.edm`` and ``cbdm_core.sampling.heun``).
"""

from .loss import EDMLoss, build_edm_loss
from .sigmas import (P_MEAN, P_STD, SIGMA_DATA, edm_coefficients, edm_loss_weight, schedule_sigmas, sigma_to_t,
                     sigma_to_timestep, t_to_sigma)

__all__ = [
    "EDMLoss",
    "P_MEAN",
    "P_STD",
    "SIGMA_DATA",
    "build_edm_loss",
    "edm_coefficients",
    "edm_loss_weight",
    "schedule_sigmas",
    "sigma_to_t",
    "sigma_to_timestep",
    "t_to_sigma",
]
