"""Built-in training methods: ``cbdm`` (CVPR 2023), ``t2h`` (OC, ICLR 2024),
``coral`` (NeurIPS 2025), ``cm`` (ICLR 2026), ``diffrop`` (arXiv 2402.10821, from the paper),
``dispersive`` (Wang & He 2025) and ``ccua`` (arXiv 2507.09052, from its released code)."""

from __future__ import annotations

from cbdm_core.hookspecs import hookimpl
from cbdm_core.methods import cbdm, t2h
from cbdm_core.methods.base import MethodSpec
from cbdm_core.methods.ccua import CCUA_SPEC
from cbdm_core.methods.cm import CM_SPEC
from cbdm_core.methods.coral import CORAL_SPEC
from cbdm_core.methods.diffrop import DIFFROP_SPEC
from cbdm_core.methods.dispersive import DISPERSIVE_SPEC


@hookimpl
def register_components(register) -> None:
    register("method", "cbdm", MethodSpec(options_model=cbdm.CBDMOptions, build=cbdm.build_cbdm_regularizer,
                                          paper=cbdm.PAPER, code=cbdm.CODE, sweepable=("tau", "gamma"),
                                          label_distribution_options=("y_dist",)),
             description="CBDM: regularise eps(x_t, y) towards eps(x_t, y') with y' from a target distribution")
    register("method", "t2h", MethodSpec(options_model=t2h.T2HOptions, build=t2h.build_t2h,
                                         paper=t2h.PAPER, code=t2h.CODE, sweepable=("cut_time",)),
             description="OC/T2H: regress on the eps of a likely source image from a more frequent class")
    register("method", "coral", CORAL_SPEC,
             description="CORAL: supervised contrastive loss on a projection of the bottleneck, weighted to low noise")
    register("method", "cm", CM_SPEC,
             description="CM: low-rank conv adapters; class-weighted consistency/divergence of outputs with/without them")
    register("method", "diffrop", DIFFROP_SPEC,
             description="DiffROP: hinge on the KL between the reverse kernels of the true and a contrasting class "
                         "(from the paper; no released code; reconstructed); form=released: the inverse distance "
                         "between other-class rows' predictions of the DiffROP baseline in CCUA's released SiT code")
    register("method", "dispersive", DISPERSIVE_SPEC,
             description="Dispersive Loss: InfoNCE-L2 repulsion of the batch's intermediate features, no positives")
    register("method", "ccua", CCUA_SPEC,
             description="CCUA: InfoNCE repulsion of the null-label view's tap features + t/T-weighted MSE "
                         "between the conditional and unconditional predictions (from the released code; "
                         "the paper's method text not read)")
