"""Built-in training regularisers."""

from __future__ import annotations

from cbdm_core.cbdm import CBDMOptions, build_cbdm_regularizer
from cbdm_core.hookspecs import hookimpl
from cbdm_core.interfaces import RegularizerSpec


@hookimpl
def register_components(register) -> None:
    register("regularizer", "cbdm", RegularizerSpec(options_model=CBDMOptions, build=build_cbdm_regularizer),
             description="CBDM distribution-adjustment regulariser (Qin et al. 2023)")
