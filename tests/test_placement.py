"""Issue 28 item 5 (placement): moved names live in their new module, and their old import
paths still give the same objects, so code written against the old layout keeps working."""

from __future__ import annotations

import importlib

import pytest

# (old module, new module, names): the old module re-exports what moved out of it.
MOVED = [
    ("cbdm_core.build", "cbdm_core.device", ["resolve_device"]),
    ("cbdm_core.training.distributed", "cbdm_core.device", ["DistContext", "env_world", "setup_distributed"]),
    ("cbdm_core.evaluation.engine", "cbdm_core.evaluation.extractor", ["ExtractorInfo", "build_extractor"]),
    ("cbdm_core.evaluation", "cbdm_core.evaluation.extractor", ["ExtractorInfo", "build_extractor"]),
]


@pytest.mark.parametrize("old, new, names", MOVED, ids=[f"{o}->{n}" for o, n, _ in MOVED])
def test_old_import_paths_give_the_moved_objects(old, new, names):
    old_mod, new_mod = importlib.import_module(old), importlib.import_module(new)
    for name in names:
        assert getattr(old_mod, name) is getattr(new_mod, name), f"{old}.{name} is not {new}.{name}"
        assert getattr(new_mod, name).__module__ == new, f"{name} still defined outside {new}"


def test_resolve_device_keeps_its_errors():
    from cbdm_core.device import resolve_device
    from cbdm_core.errors import CbdmError

    assert resolve_device("cpu").type == "cpu"
    with pytest.raises(CbdmError, match="unknown device 'gpu7'; use auto, cpu, cuda or cuda:N"):
        resolve_device("gpu7")
