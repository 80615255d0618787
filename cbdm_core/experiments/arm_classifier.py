"""A sampling arm's per-run guidance classifier trained by the study itself.

An arm ``{label: L, sample_from: M, sampling: {guidance_options: {classifier:
"{run}/minority.safetensors"}}, train_classifier: {minority: true, epochs: 20}}`` makes each
seed's file from M's run of that seed (``cbdm train-classifier --noisy RUN [--minority]``'s
code path) as a plan part before the arm's samples; a finished file is kept (the file is
written atomically, last), so a stopped study resumes.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

from ..guidance_classifier.make import NoisyClassifierJob

if TYPE_CHECKING:
    from .protocol import MethodEntry


class ArmClassifier(NoisyClassifierJob):
    """``train_classifier:`` of a sampling arm: the options of ``cbdm train-classifier`` (same
    defaults), which guidance option holds the file, and the seed (default: the training seed)."""

    option: str = "classifier"
    seed: Optional[int] = None  # type: ignore[assignment]


def check_arm_classifier(entry: "MethodEntry") -> None:
    """``train_classifier`` only on a sampling arm whose guidance option names a per-run file."""
    tc = entry.train_classifier
    if tc is None:
        return
    if entry.sample_from is None:
        raise ValueError(f"method {entry.name}: train_classifier: is only for a sampling arm (sample_from: METHOD)")
    value = entry.sampling.guidance_options.get(tc.option) if entry.sampling is not None else None
    if not isinstance(value, str) or "{run}" not in value:
        raise ValueError(f"sampling arm {entry.name}: train_classifier needs sampling.guidance_options.{tc.option} "
                         "naming a per-run file with {run} (e.g. \"{run}/minority-classifier.safetensors\")")


def classifier_file(entry: "MethodEntry", run_dir: Path, seed: int) -> Path:
    """The file the arm's ``train_classifier`` makes for the run ``run_dir`` of ``seed``."""
    from .arms import fill_placeholders

    assert entry.train_classifier is not None and entry.sampling is not None
    return Path(fill_placeholders(entry.sampling.guidance_options[entry.train_classifier.option], run_dir, seed))


def ensure_arm_classifier(entry: "MethodEntry", run_dir: Path, seed: int, *, device: Any,
                          echo: Callable[[str], None]) -> bool:
    """Train the arm's classifier of one run unless its file exists; whether it was trained."""
    from ..device import resolve_device
    from ..guidance_classifier.make import make_noisy_classifier
    from ..guidance_classifier.source import run_source

    out = classifier_file(entry, run_dir, seed)
    if out.is_file():
        return False
    tc = entry.train_classifier
    assert tc is not None
    job = NoisyClassifierJob(**tc.model_dump(exclude={"option", "seed"}), seed=seed if tc.seed is None else tc.seed)
    src = run_source(run_dir)  # the arm's trained run: a folder, never a dataset name
    make_noisy_classifier(src, out, job, device=resolve_device(device), echo=echo)
    return True
