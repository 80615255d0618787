"""The ``--minority`` options of ``cbdm train-classifier --noisy RUN`` (minority guidance's
classifier over minority-score levels, Um et al. 2024); cbdm_core.guidance_classifier.make
writes the scores file."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import click

from cbdm_core.minority.distance import DISTANCES, LPIPS_FILES
from cbdm_core.minority.score import LEVELS, N_ITER, PERTURB_T, RESPACING

_OPTIONS = [
    click.option("--minority", is_flag=True,
                 help="Train minority guidance's classifier: labels are minority-score levels of the run's images."),
    click.option("--levels", type=int, default=LEVELS, show_default=True,
                 help="Minority levels L (quantiles of the score; the authors' num_m_classes)."),
    click.option("--perturb-t", type=int, default=PERTURB_T, show_default=True,
                 help="Perturbation index in a --respacing-step respacing (the authors' perturb_t)."),
    click.option("--respacing", type=int, default=RESPACING, show_default=True,
                 help="Respaced steps perturb-t indexes (the authors fix 100)."),
    click.option("--n-iter", type=int, default=N_ITER, show_default=True, help="Noise draws per image (n_iter)."),
    click.option("--distance", type=click.Choice(DISTANCES), default="auto", show_default=True,
                 help="x0 vs reconstruction: auto = classifier if a feature classifier is available, else pixel; "
                      "lpips needs the lpips package and local weights."),
    click.option("--feature-classifier", type=click.Path(path_type=Path, dir_okay=False, exists=True),
                 help="Feature classifier file for --distance classifier (default: the dataset's cached one)."),
    click.option("--lpips-net", type=click.Choice(sorted(LPIPS_FILES)), default="vgg", show_default=True,
                 help="LPIPS backbone (minority guidance used vgg)."),
    click.option("--class-cond/--no-class-cond", default=True, show_default=True,
                 help="Class-conditional minority classifier p(level | x_t, class) (their ImageNet-64 setting)."),
]


def minority_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """Add the ``--minority`` options to a click command."""
    for option in reversed(_OPTIONS):
        f = option(f)
    return f

