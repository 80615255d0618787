"""The standard FID Inception v3 (TensorFlow 2015 weights) through torch-fidelity.

The weights are never substituted: either the user gives the official file
(``weights_path`` / ``CBDM_INCEPTION_WEIGHTS``) or torch-fidelity downloads it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from pathlib import Path
from typing import Iterator

import torch

from ..errors import CbdmError
from ._io import file_sha256
from .base import FeatureSet, batches, check_images

log = logging.getLogger("cbdm.features")

ENV_WEIGHTS = "CBDM_INCEPTION_WEIGHTS"
# torch hub names the file with the first 8 hex digits of its SHA-256.
OFFICIAL_SHA256_PREFIX = "6726825d"
FEATURE_LAYER = "2048"
LOGITS_LAYER = "logits_unbiased"


def inception_weights_url() -> str:
    """The URL torch-fidelity downloads the Inception weights from."""
    from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3
    return URL_INCEPTION_V3


def resolve_weights_path(weights_path: str | os.PathLike | None) -> Path | None:
    """The explicit option, else ``$CBDM_INCEPTION_WEIGHTS``, else ``None`` (download)."""
    if weights_path is None or str(weights_path) == "":
        weights_path = os.environ.get(ENV_WEIGHTS) or None
    return Path(weights_path).expanduser() if weights_path is not None else None


def _offline_help() -> str:
    url = inception_weights_url()
    cached = Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]
    return (f"download {url} on a machine with internet and pass it with --inception-weights PATH "
            f"(or set {ENV_WEIGHTS}=PATH), or copy it to {cached}; offline, `--extractor classifier "
            f"--classifier PATH` needs no download (train one with `cbdm eval train-classifier`)")


def _check_weights_file(path: Path) -> str:
    """Validate a user-given weights file; returns its SHA-256."""
    if not path.is_file():
        raise CbdmError(f"Inception weights file {path} does not exist; {_offline_help()}")
    sha = file_sha256(path)
    if sha.startswith(OFFICIAL_SHA256_PREFIX):
        return sha  # the known official file: torch-fidelity loads it as is
    try:
        # weights_only: an unknown file must be plain tensors before torch-fidelity's full unpickling.
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is the same user error
        raise CbdmError(f"Inception weights file {path} is not a PyTorch state dict: "
                        f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
    if not isinstance(state, dict) or "fc.weight" not in state:
        raise CbdmError(f"Inception weights file {path} is not a torch-fidelity Inception v3 state dict; "
                        f"{_offline_help()}")
    msg = (f"Inception weights {path} are not the official FID weights (sha256 {sha[:8]}, "
           f"expected {OFFICIAL_SHA256_PREFIX}...): FID/IS/KID values are NOT comparable to published ones")
    log.warning(msg)
    warnings.warn(msg, UserWarning, stacklevel=3)
    return sha


def _build_network(path: Path | None) -> torch.nn.Module:
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    try:
        return FeatureExtractorInceptionV3(
            "inception-v3-compat", [FEATURE_LAYER, LOGITS_LAYER],
            feature_extractor_weights_path=None if path is None else str(path), verbose=False,
        )
    except Exception as e:  # noqa: BLE001 - download/load failures all mean "no usable weights"
        reason = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        if path is None:
            raise CbdmError(f"could not download the Inception v3 weights ({reason}); "
                            f"{_offline_help()}") from None
        raise CbdmError(f"could not load Inception weights from {path} ({reason})") from None


@contextlib.contextmanager
def _ieee_fp32(device: torch.device) -> Iterator[None]:
    """Disable TF32 for the reference network on CUDA, so features match the published
    float32 pipeline. Uses the new precision API when present: mixing it with the
    legacy ``allow_tf32`` flags is an error in recent PyTorch."""
    if device.type != "cuda":
        yield
        return
    conv = getattr(torch.backends.cudnn, "conv", None)
    matmul = torch.backends.cuda.matmul
    if conv is not None and hasattr(conv, "fp32_precision") and hasattr(matmul, "fp32_precision"):
        saved = (conv.fp32_precision, matmul.fp32_precision)
        conv.fp32_precision, matmul.fp32_precision = "ieee", "ieee"
        try:
            yield
        finally:
            conv.fp32_precision, matmul.fp32_precision = saved
    else:
        saved = (torch.backends.cudnn.allow_tf32, matmul.allow_tf32)
        torch.backends.cudnn.allow_tf32, matmul.allow_tf32 = False, False
        try:
            yield
        finally:
            torch.backends.cudnn.allow_tf32, matmul.allow_tf32 = saved


class InceptionExtractor:
    """Pool3 (2048-d) features and softmax of the unbiased logits (1008 classes, for IS).

    Loads the network at construction, so missing weights fail early.
    """

    name = "inception"

    def __init__(self, weights_path: str | os.PathLike | None = None) -> None:
        path = resolve_weights_path(weights_path)
        sha = _check_weights_file(path) if path is not None else OFFICIAL_SHA256_PREFIX
        self.weights_path = path
        self.net = _build_network(path)
        self.cache_key = f"inception-v3-tf2015-{sha[:8]}"

    @torch.no_grad()
    def extract(self, images: torch.Tensor, batch_size: int = 100,
                device: str | torch.device = "cpu") -> FeatureSet:
        """Features of ``uint8 [N, 1 or 3, H, W]`` images (torch-fidelity resizes to 299)."""
        check_images(images, channels=(1, 3))
        dev = torch.device(device)
        self.net.to(dev)
        feats, probs = [], []
        with _ieee_fp32(dev):
            for batch in batches(images, batch_size):
                batch = batch.to(dev)
                if batch.shape[1] == 1:
                    batch = batch.expand(-1, 3, -1, -1)
                f, logits = self.net(batch.contiguous())
                feats.append(f.float().cpu())
                probs.append(torch.softmax(logits.double(), dim=1).float().cpu())
        return FeatureSet(torch.cat(feats), None, torch.cat(probs), self.cache_key)


def build_inception(weights_path: str | os.PathLike | None = None, **options) -> InceptionExtractor:
    """Factory registered as feature extractor ``inception``; option ``weights_path``."""
    if options:
        raise CbdmError(f"unknown option(s) for feature extractor 'inception': {', '.join(sorted(options))}; "
                        "available: weights_path")
    return InceptionExtractor(weights_path)
