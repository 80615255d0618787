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
    ("cbdm_core.edm", "cbdm_core.edm.sigmas", ["SIGMA_DATA", "schedule_sigmas", "t_to_sigma", "sigma_to_t",
                                               "sigma_to_timestep", "edm_coefficients", "edm_loss_weight"]),
    ("cbdm_core.edm", "cbdm_core.edm.loss", ["EDMLoss", "build_edm_loss"]),
    ("cbdm_core.nets.edm", "cbdm_core.edm.precond", ["C_NOISE_SCALE", "EDMOptions", "EDMPrecond", "build_edm"]),
    ("cbdm_core.experiments.compare", "cbdm_core.experiments.compare_plan",
     ["Part", "StudyObserver", "StudyPlan", "plan_study", "sampling_seed", "sampling_seeds"]),
    ("cbdm_core.experiments.compare", "cbdm_core.experiments.compare_folder", ["PROTOCOL_JSON"]),
    ("cbdm_core.experiments.compare", "cbdm_core.experiments.compare_sampling", ["choose_guidance"]),
    ("cbdm_core.experiments.compare", "cbdm_core.experiments.compare_training", ["StudyInterrupted"]),
    ("cbdm_core.experiments.compare_report", "cbdm_core.experiments.compare_document",
     ["FORMAT", "build_document", "reported_values"]),
    ("cbdm_core.experiments.compare_report", "cbdm_core.experiments.compare_rates",
     ["GROUP_SUFFIXES", "image_level", "rate_of"]),
    ("cbdm_core.experiments.compare_report", "cbdm_core.experiments.compare_markdown", ["markdown"]),
    ("cbdm_core.sampling.heun", "cbdm_core.edm.heun", ["DEFAULT_STEPS", "HeunOptions", "heun_sample",
                                                       "karras_sigmas"]),
]


@pytest.mark.parametrize("old, new, names", MOVED, ids=[f"{o}->{n}" for o, n, _ in MOVED])
def test_old_import_paths_give_the_moved_objects(old, new, names):
    old_mod, new_mod = importlib.import_module(old), importlib.import_module(new)
    for name in names:
        assert getattr(old_mod, name) is getattr(new_mod, name), f"{old}.{name} is not {new}.{name}"
        defined_in = getattr(getattr(new_mod, name), "__module__", new)  # constants have none
        assert defined_in == new, f"{name} still defined in {defined_in}, not {new}"


def test_edm_lives_in_one_package():
    """Every EDM module of the core is under cbdm_core/edm/ (the old homes only re-export)."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "cbdm_core"
    for old in (root / "nets" / "edm.py", root / "sampling" / "heun.py"):
        assert len(old.read_text(encoding="utf-8").splitlines()) < 10, f"{old} should only re-export"
    assert not (root / "edm.py").exists()
    assert {p.name for p in (root / "edm").glob("*.py")} >= {"sigmas.py", "loss.py", "precond.py", "heun.py"}


def test_resolve_device_keeps_its_errors():
    from cbdm_core.device import resolve_device
    from cbdm_core.errors import CbdmError

    assert resolve_device("cpu").type == "cpu"
    with pytest.raises(CbdmError, match="unknown device 'gpu7'; use auto, cpu, cuda or cuda:N"):
        resolve_device("gpu7")


def test_compare_modules_stay_small():
    """The study code is split by responsibility; no part grows back past the house limit."""
    from pathlib import Path

    folder = Path(__file__).resolve().parents[1] / "cbdm_core" / "experiments"
    sizes = {p.name: len(p.read_text(encoding="utf-8").splitlines()) for p in folder.glob("compare*.py")}
    assert {"compare.py", "compare_plan.py", "compare_folder.py", "compare_training.py", "compare_sampling.py",
            "compare_report.py", "compare_document.py", "compare_rates.py", "compare_tables.py",
            "compare_markdown.py"} <= set(sizes)
    too_long = {name: n for name, n in sizes.items() if n > 300}  # the report's parts are each under 160
    assert not too_long, f"split these further: {too_long}"
