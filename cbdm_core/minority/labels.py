"""A run's training images labelled with their minority level (and class), the training set of
the minority classifier (``cbdm train-classifier --noisy RUN --minority``)."""

from __future__ import annotations

from typing import Any, Callable, Optional

from ..errors import CbdmError
from ..guidance_classifier.source import NoisySource
from ..interfaces import LabeledImages
from .distance import make_distance
from .score import joint_labels, minority_scores, perturb_timestep, quantise, score_record


def minority_dataset(src: NoisySource, *, levels: int, perturb_t: int, respacing: int, n_iter: int,
                     distance: str, feature_classifier: Optional[str], lpips_net: str, class_cond: bool,
                     device: Any, seed: int = 0,
                     echo: Callable[[str], None] = lambda _: None) -> tuple[LabeledImages, dict[str, Any], Any]:
    """``(images with minority labels, record for the classifier file, scores)``."""
    if src.model is None:
        raise CbdmError("--minority needs a run (its model scores the images), not a dataset name")
    data, schedule = src.data, src.schedule
    dist, dist_record = make_distance(distance, feature_classifier=feature_classifier,
                                      dataset=src.record.get("dataset"), lpips_net=lpips_net)
    t = perturb_timestep(schedule.num_timesteps, perturb_t, respacing)
    echo(f"minority score of {len(data)} images: Tweedie reconstruction from t={t} (index {perturb_t} of a "
         f"{respacing}-step respacing), {n_iter} draw(s), distance {dist_record['distance']}")
    model = src.model.to(device)
    scores = minority_scores(model, schedule, data.images, data.labels, dist, t=t, n_iter=n_iter,
                             seed=seed, device=device)
    lv, thresholds = quantise(scores, levels)
    conditional = class_cond and data.num_classes > 1
    labels = joint_labels(data.labels, lv, levels, conditional)
    names = ([f"{c}/level{l}" for c in data.class_names for l in range(levels)] if conditional
             else [f"level{l}" for l in range(levels)])
    options = {"levels": levels, "perturb_t": perturb_t, "respacing": respacing, "n_iter": n_iter}
    record = score_record(scores, lv, thresholds, t=t, options=options, distance=dist_record,
                          class_cond=conditional, num_classes=data.num_classes)
    out = LabeledImages(data.images, labels, names, data.name, {**data.info, "minority_levels": levels})
    return out, record, scores
