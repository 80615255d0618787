"""Train and save a noise-aware classifier file: the code path of ``cbdm train-classifier
--noisy RUN [--minority]``, also called by ``cbdm compare`` for a sampling arm's
``train_classifier:`` (a per-run classifier made as a part of the study)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Optional

from pydantic import BaseModel, ConfigDict, Field

from ..errors import CbdmError
from ..minority.score import LEVELS, N_ITER, PERTURB_T, RESPACING
from .source import NoisySource


class NoisyClassifierJob(BaseModel):
    """How to train one classifier file (the defaults of ``cbdm train-classifier``)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    minority: bool = False
    levels: int = Field(LEVELS, ge=1)
    perturb_t: int = Field(PERTURB_T, ge=0)
    respacing: int = Field(RESPACING, ge=1)
    n_iter: int = Field(N_ITER, ge=1)
    distance: str = "auto"
    feature_classifier: Optional[str] = None
    lpips_net: str = "vgg"
    class_cond: bool = True
    balanced: bool = True
    epochs: int = Field(50, ge=1)
    batch_size: int = Field(128, ge=1)
    lr: float = Field(2e-3, gt=0)
    width: int = Field(32, ge=4)
    holdout: float = Field(0.1, ge=0, lt=1)
    bins: int = Field(10, ge=1)
    seed: int = 0


def scores_path(out: Path) -> Path:
    """The per-image scores file beside the classifier file."""
    return Path(out).with_name(Path(out).stem + ".scores.safetensors")


def save_scores(out: Path, scores: Any, labels: Any, record: dict[str, Any]) -> Path:
    """Per-image minority scores and (joint) labels, in the dataset's order, with the record."""
    from ..tensor_io import save_tensors

    path = scores_path(out)
    save_tensors(path, {"scores": scores.double(), "labels": labels.long()},
                 {"format": "cbdm-minority-scores-v1", "minority": json.dumps(record["minority"])})
    return path


def _minority_data(src: NoisySource, out: Path, job: NoisyClassifierJob, device: Any,
                   echo: Callable[[str], None]) -> dict[str, Any]:
    """Relabel ``src.data`` with minority levels (in place); the record for the file."""
    from ..minority.labels import minority_dataset

    src.data, extra, scores = minority_dataset(
        src, device=device, seed=job.seed, echo=echo, levels=job.levels, perturb_t=job.perturb_t,
        respacing=job.respacing, n_iter=job.n_iter, distance=job.distance, feature_classifier=job.feature_classifier,
        lpips_net=job.lpips_net, class_cond=job.class_cond)
    echo(f"wrote {save_scores(out, scores, src.data.labels, extra)} (score per image, levels "
         f"{extra['minority']['level_counts'][:3]}... images each)")
    return extra


def make_noisy_classifier(src: NoisySource, out: Path, job: NoisyClassifierJob, *, device: Any,
                          echo: Callable[[str], None] = lambda _: None) -> list[dict[str, Any]]:
    """Train on ``src`` (its images, or their minority levels), print and save the held-out
    accuracy per noise level into ``out`` (written atomically, last); returns those rows."""
    from ..data.common import split_holdout
    from .net import save_noisy_classifier
    from .train import accuracy_by_t, train_noisy_classifier

    extra = _minority_data(src, out, job, device, echo) if job.minority else {}
    train, test = split_holdout(src.data, job.holdout, job.seed)
    if len(test) == 0:
        raise CbdmError("nothing to hold out (every class has one image); the accuracy per t needs held-out images")
    counts = train.class_counts.tolist()
    echo(f"training on {len(train)} images of {src.record['dataset']}, {train.num_classes} classes "
         f"(counts {min(counts)}..{max(counts)}), {'balanced' if job.balanced else 'plain'} batches, x_t from the "
         f"{src.schedule.name} schedule (T={src.schedule.num_timesteps}), {job.epochs} epoch(s) on {device}")
    model = train_noisy_classifier(train.images, train.labels, train.num_classes, src.schedule, epochs=job.epochs,
                                   batch_size=job.batch_size, lr=job.lr, balanced=job.balanced, seed=job.seed,
                                   device=device, width=job.width,
                                   progress=lambda e, loss: echo(f"epoch {e + 1}/{job.epochs}: loss {loss:.4f}"))
    rows = accuracy_by_t(model, src.schedule, test.images, test.labels, bins=job.bins)
    echo(f"held-out accuracy per noise level ({len(test)} images; balanced = mean over classes):")
    for r in rows:
        echo(f"  t {r['t_lo']:>5}-{r['t_hi']:<5} accuracy {r['accuracy']:.3f}  balanced {r['balanced_accuracy']:.3f}")
    meta = {**model.meta, **src.record, "class_names": list(train.class_names), "class_counts": counts,
            "image_size": train.image_size, "channels": train.channels, "num_classes": train.num_classes,
            "holdout": job.holdout, "holdout_size": len(test), "accuracy_by_t": rows, **extra}
    save_noisy_classifier(model.cpu(), src.schedule, out, meta)
    echo(f"wrote {out}")
    return rows
