"""What each paper fixed when it evaluated (``cbdm eval --paper NAME``).

One :class:`PaperSettings` per paper: the reference split, the FID statistics file, the
number of samples, the feature extractor and its resize, the metrics, each with the file and
line of the authors' code (or of this project's docs) it was read from. Read from the
snapshots of the authors' repositories named in :data:`REPOSITORIES`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

from ..errors import CbdmError

REPOSITORIES = {
    "cbdm": "qym7/CBDM-pytorch@94e201e",
    "t2h": "MediaBrain-SJTU/OC_LT@ced1843",
    "coral": "SankarLab/coral-lt-diffusion@62c9dfa",
    "cm": "Feng-Hong/ImbDiff-CM@7e4d5e9",
}
PAPER_EXTRACTOR = "inception"
# The network and resize of the papers' code (pytorch-ddpm's copy of pytorch-fid's InceptionV3).
PAPER_RESIZE = "bilinear to 299x299, torch F.interpolate(align_corners=False) (pytorch-fid)"
OUR_RESIZE = "bilinear to 299x299, torch-fidelity's TensorFlow-1-compatible resize"
INCEPTION_WEIGHTS = "pt_inception-2015-12-05-6726825d.pth (the TF FID Inception)"


class PaperSettings(BaseModel):
    """One paper's evaluation protocol; ``sources`` maps a field to ``repo:file:line``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    title: str
    datasets: tuple[str, ...] = ("cifar10", "cifar100")  # base names; -lt variants evaluate alike
    reference_split: Literal["train", "test"] = "train"
    stats_files: dict[str, str] = {"cifar10": "cifar10.train.npz", "cifar100": "cifar100.train.npz"}
    num_samples: int = 50_000
    balanced_samples: bool = True
    extractor: str = PAPER_EXTRACTOR
    weights: str = INCEPTION_WEIGHTS
    resize: str = PAPER_RESIZE
    metrics: tuple[str, ...] = ("fid", "is")
    sources: dict[str, str]
    confirmed: bool = True  # False: not read from the authors' code
    note: str = ""

    def stats_file(self, dataset: str) -> str | None:
        """The paper's statistics file for ``dataset`` (``cifar10-lt`` -> ``cifar10.train.npz``)."""
        return self.stats_files.get(base_dataset(dataset))


def base_dataset(dataset: str) -> str:
    """``cifar10-lt`` -> ``cifar10``: the balanced set a long-tailed one is evaluated against."""
    return dataset[:-3] if dataset.endswith("-lt") else dataset


def _cbdm() -> PaperSettings:
    repo = REPOSITORIES["cbdm"]
    return PaperSettings(
        name="cbdm", title="CBDM (Qin et al., CVPR 2023)",
        metrics=("fid", "is", "prd", "precision_recall"),
        sources={
            "reference_split": f"{repo}:main.py:375-378 (fid_cache = ./stats/cifar10[0].train.npz)",
            "stats_file": f"{repo}:config/cifar10.txt:15, config/cifar100.txt:15",
            "num_samples": f"{repo}:main.py:67 (num_images 50000), config/cifar10.txt:21",
            "extractor": f"{repo}:score/inception.py:13 (FID_WEIGHTS_URL ...6726825d.pth), score/both.py:36",
            "resize": f"{repo}:score/inception.py:151-155",
            "metrics": f"{repo}:main.py:75-76 (prd, improved_prd on), score/both.py:128,150 (only at 50000)",
        })


def _t2h() -> PaperSettings:
    repo = REPOSITORIES["t2h"]
    return PaperSettings(
        name="t2h", title="T2H / OC (Zhang et al., ICLR 2024)",
        sources={
            "reference_split": f"{repo}:main.py:432-435; README.md:16 (the stats/ folder of the CBDM code)",
            "stats_file": f"{repo}:main.py:90, 432-435",
            "num_samples": f"{repo}:main.py:87 (num_images 50000), ddpm_gen.py:59",
            "extractor": f"{repo}:score/inception.py:13 (local pt_inception-2015-12-05-6726825d.pth)",
            "resize": f"{repo}:score/inception.py:151-155",
            "metrics": f"{repo}:score/both.py:126 (returns IS and FID)",
        })


def _coral() -> PaperSettings:
    repo = REPOSITORIES["coral"]
    return PaperSettings(
        name="coral", title="CORAL (Rodriguez et al., NeurIPS 2025)",
        metrics=("fid", "is", "precision_recall"),
        sources={
            "reference_split": f"{repo}:main.py:470-474; docs/methods.md:314 (issue 14: balanced CIFAR train set)",
            "stats_file": f"{repo}:main.py:74, 470-474",
            "num_samples": f"{repo}:main.py:71 (num_images 50000); docs/methods.md:314",
            "extractor": f"{repo}:main.py:21 (score.both of the CBDM code, not in the repository)",
            "resize": f"{repo}:main.py:21 -> {REPOSITORIES['cbdm']}:score/inception.py:151-155",
            "metrics": f"{repo}:main.py:80 (improved_prd); docs/methods.md:315 (FID / IS / recall)",
        },
        note="the repository holds no score/ folder: its main.py imports the CBDM code's score.both")


def _cm() -> PaperSettings:
    return PaperSettings(
        name="cm", title="CM, capacity manipulation (Hong et al., ICLR 2026)",
        metrics=("fid",), confirmed=False,
        sources={
            "reference_split": "not stated (docs/methods.md:341); assumed as CBDM/T2H, whose U-Net and targets CM uses",
            "stats_file": "not stated; assumed cifar10[0].train.npz as CBDM/T2H",
            "num_samples": "docs/methods.md:324 (issue 14: 50k balanced samples)",
            "extractor": "not stated; assumed the FID Inception as CBDM/T2H",
            "resize": "not stated; assumed as CBDM/T2H",
            "metrics": "docs/methods.md:324-331 (FID only)",
        },
        note=f"{REPOSITORIES['cm']}: README.md only ('Coming Soon'); no evaluation code to read")


PAPERS: dict[str, PaperSettings] = {p.name: p for p in (_cbdm(), _t2h(), _coral(), _cm())}


def get_paper(name: str) -> PaperSettings:
    """The settings of paper ``name`` (case-insensitive); an unknown name is a one-line error."""
    key = name.strip().lower()
    if key not in PAPERS:
        raise CbdmError(f"unknown paper {name!r}; choose from {', '.join(sorted(PAPERS))}")
    return PAPERS[key]
