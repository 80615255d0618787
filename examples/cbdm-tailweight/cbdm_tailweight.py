"""Method ``tail-weight``: an extra diffusion loss weighted towards rare classes.

    contribution = strength * mean_i( w(y_i) * mean(|eps_theta(x_t,i) - target_i|^2) ),
    w(c) = (mean_k n_k / n_c) ** power, normalised to mean 1 over the classes,

computed from the shared pass's main prediction (no extra forward). Install this
package and run ``cbdm train --method tail-weight -M power=1``.
"""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field

from cbdm_core import hookimpl
from cbdm_core.methods import MethodSpec, TrainingMethod


class TailWeightOptions(BaseModel):
    """Options of ``tail-weight``.

    Args:
        strength: weight of the extra term (0 turns it off).
        power: how strongly rare classes are favoured (0: uniform).
    """

    model_config = ConfigDict(extra="forbid")

    strength: float = Field(1.0, ge=0)
    power: float = Field(0.5, ge=0)


class TailWeight(TrainingMethod):
    """Adds the class-weighted squared error of the main prediction."""

    def __init__(self, class_weights: torch.Tensor, strength: float):
        self.class_weights = class_weights
        self.strength = strength

    def loss(self, ctx, out):
        per_row = (out.pred - ctx.target.float()).pow(2).flatten(1).mean(1)
        w = self.class_weights.to(per_row.device)[ctx.y]
        term = (w * per_row).mean()
        return {"tail_weighted": term}, self.strength * term


def build(options: TailWeightOptions, ctx) -> TailWeight:
    counts = ctx.class_counts.double().clamp_min(1)
    w = (counts.mean() / counts) ** options.power
    return TailWeight((w / w.mean()).float(), options.strength)


@hookimpl
def register_components(register) -> None:
    register("method", "tail-weight", MethodSpec(options_model=TailWeightOptions, build=build,
                                                 paper="(example plugin)", code="examples/cbdm-tailweight"),
             description="example: extra diffusion loss weighted by (mean count / class count)^power")
