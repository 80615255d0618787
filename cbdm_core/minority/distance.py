"""Distances between an image x0 and its Tweedie reconstruction, for the minority score.

The authors measure it with LPIPS (minority-guidance: VGG; sg-minority: AlexNet), which needs
pretrained backbone weights an offline machine may lack. Here:

* ``classifier``: L2 distance between the penultimate features of the dataset's feature
  classifier (the ``classifier`` feature extractor's network) -- the default when such a
  classifier file is given or already trained in the cache (a deviation from the authors);
* ``pixel``: L2 norm of ``x0 - x0_hat`` (sg-minority's own ``--use_lpips False`` choice,
  ``--norm_for_mg 2``), the fallback;
* ``lpips``: the authors' choice, when the ``lpips`` package and its backbone weights are
  present locally (see :func:`lpips_weights_path`).

Every distance maps ``a, b`` (float ``[B, C, H, W]`` in [-1, 1]) to ``[B]`` and is
differentiable (self-guided minority generation takes its gradient).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from ..errors import CbdmError

Distance = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
DISTANCES = ("auto", "classifier", "pixel", "lpips")
LPIPS_FILES = {"vgg": "vgg16-397923af.pth", "alex": "alexnet-owt-7be5be79.pth"}
DEVIATION = ("the authors use LPIPS; this run used {name} (no pretrained LPIPS backbone offline), "
             "so scores and levels are comparable only within the same distance")


def pixel_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``||a - b||_2`` per row (sg-minority gaussian_diffusion.py, the non-LPIPS branch)."""
    return (a - b).flatten(1).norm(p=2, dim=1)


def classifier_distance(path: str | os.PathLike) -> Distance:
    """L2 distance between the feature classifier's penultimate features of ``a`` and ``b``."""
    from ..features.classifier_net import load_classifier

    net = load_classifier(path).eval().requires_grad_(False)

    def dist(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if next(net.parameters()).device != a.device:
            net.to(a.device)
        dtype = next(net.parameters()).dtype
        fa, fb = net.features(a.to(dtype)), net.features(b.to(dtype))
        return (fa - fb).flatten(1).norm(p=2, dim=1).to(a.dtype)

    return dist


def lpips_weights_path(net: str) -> Path:
    """Where torchvision (used by ``lpips``) looks for the backbone weights, offline:
    ``$TORCH_HOME/hub/checkpoints/<file>`` (``~/.cache/torch`` when unset)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / LPIPS_FILES[net]


def lpips_distance(net: str = "vgg") -> Distance:
    """The authors' LPIPS, only from local files (never a download)."""
    weights = lpips_weights_path(net)
    try:
        import lpips  # type: ignore[import-not-found]
    except ImportError:
        raise CbdmError(f"distance lpips not available: `pip install lpips` and put the {net} weights at "
                        f"{weights}") from None
    if not weights.is_file():
        raise CbdmError(f"distance lpips not available: put the {net} backbone weights at {weights}")
    model = lpips.LPIPS(net=net, verbose=False).eval().requires_grad_(False)

    def dist(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if a.shape[1] == 1:  # LPIPS wants 3 channels
            a, b = a.expand(-1, 3, -1, -1), b.expand(-1, 3, -1, -1)
        model.to(a.device)
        return model(a, b).flatten()

    return dist


def shared_feature_classifier(dataset: Optional[str]) -> Optional[Path]:
    """The dataset's shared feature classifier if one is already trained in the cache (none is
    trained here: the score must not silently start a training)."""
    if not dataset:
        return None
    from ..evaluation.reference import default_cache_dir

    path = default_cache_dir() / "classifiers" / f"classifier-{dataset}.safetensors"
    return path if path.is_file() else None


def make_distance(name: str = "auto", *, feature_classifier: Optional[str] = None, dataset: Optional[str] = None,
                  lpips_net: str = "vgg") -> tuple[Distance, dict[str, Any]]:
    """``(distance, record)``; ``auto`` is ``classifier`` when a feature classifier is given or
    cached for ``dataset``, else ``pixel``. The record names the distance and the deviation."""
    if name not in DISTANCES:
        raise CbdmError(f"unknown distance {name!r}; choose one of: {', '.join(DISTANCES)}")
    if name in ("auto", "classifier") and feature_classifier is None:
        found = shared_feature_classifier(dataset)
        feature_classifier = str(found) if found is not None else None
        if name == "classifier" and feature_classifier is None:
            raise CbdmError(f"distance classifier needs a feature classifier: give its file, or train the "
                            f"shared one for {dataset!r} with `cbdm eval` first")
    if name == "auto":
        name = "classifier" if feature_classifier is not None else "pixel"
    if name == "pixel":
        return pixel_distance, {"distance": "pixel", "deviation": DEVIATION.format(name="the pixel L2 norm")}
    if name == "classifier":
        return classifier_distance(feature_classifier), {
            "distance": "classifier", "feature_classifier": str(feature_classifier),
            "deviation": DEVIATION.format(name="the L2 distance of feature-classifier features")}
    if lpips_net not in LPIPS_FILES:
        raise CbdmError(f"unknown LPIPS network {lpips_net!r}; choose one of: {', '.join(LPIPS_FILES)}")
    return lpips_distance(lpips_net), {"distance": "lpips", "lpips_net": lpips_net, "deviation": "none"}
