"""Built-in target label distributions for CBDM's y'."""

from __future__ import annotations

from cbdm_core import label_distributions as ld
from cbdm_core.hookspecs import hookimpl


@hookimpl
def register_components(register) -> None:
    register("label_distribution", "train", ld.train_distribution, description="training class frequencies")
    register("label_distribution", "bal", ld.balanced_distribution, description="uniform over classes")
    register("label_distribution", "sqrt", ld.sqrt_distribution, description="proportional to sqrt(n_c)")
    register("label_distribution", "pow", ld.pow_distribution, description="pow:q, proportional to n_c^q")
