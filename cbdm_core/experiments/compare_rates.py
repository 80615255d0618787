"""The rates of a ``cbdm compare`` study recounted from its images: which values are rates
over images (memorisation, conditional accuracy, per frequency group), each sample folder's
per-image outcomes (``records.csv``), and the image-level evidence on a rate difference (the CMH
test stratified by seed x class and the two-stage bootstrap of :mod:`.stats`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from .stats import cmh_test, two_stage_bootstrap

GROUP_SUFFIXES = ("_head", "_medium", "_tail")
# Rates over images whose per-image outcome records.csv holds: value stem -> outcome of a row.
_RATES: dict[str, Callable[[dict[str, list], int], Optional[float]]] = {
    "memorization_pixels": lambda r, i: r["memorized_pixels"][i],
    "memorization_features": lambda r, i: r["memorized_features"][i],
    "accuracy": lambda r, i: (None if r["predicted_class"][i] is None or r["requested_class"][i] is None
                              else float(r["predicted_class"][i] == r["requested_class"][i])),
}


def group_of(value: str) -> Optional[str]:
    """``"tail"`` for ``fid_tail`` (the frequency group a value is averaged over), else ``None``."""
    for suffix in GROUP_SUFFIXES:
        if value.endswith(suffix):
            return suffix[1:]
    return None


def rate_of(value: str) -> Optional[tuple[str, Optional[str]]]:
    """``(stem, group)`` when ``value`` is a rate over images that records.csv can recount
    (``memorization_pixels_tail`` -> ``("memorization_pixels", "tail")``), else ``None``."""
    group = group_of(value)
    stem = value[: -len(group) - 1] if group else value
    return (stem, group) if stem in _RATES else None


def read_records(folder: str) -> Optional[dict[str, list]]:
    """A sample folder's ``records.csv`` as columns, ``None`` when missing (an older study)."""
    from ..evaluation import RECORDS_CSV, read_records_csv

    path = Path(folder) / RECORDS_CSV
    return read_records_csv(path) if path.is_file() else None


def _outcomes(records: Optional[dict[str, list]], stem: str, classes: Optional[list[int]]) -> dict[int, np.ndarray]:
    """``{class: per-image 0/1 outcomes}`` of the rate ``stem`` (within ``classes``; all when None)."""
    if records is None:
        return {}
    out: dict[int, list[float]] = {}
    for i, req in enumerate(records["requested_class"]):
        y = _RATES[stem](records, i)
        if req is None or y is None or (classes is not None and int(req) not in classes):
            continue
        out.setdefault(int(req), []).append(float(y))
    return {c: np.asarray(v) for c, v in out.items()}


def image_level(stem: str, classes: Optional[list[int]], method: list[Optional[dict]],
                baseline: list[Optional[dict]], *, resamples: int) -> dict[str, Any]:
    """The image-level evidence on one rate: per seed x class 2x2 tables -> CMH p-value, and the
    two-stage bootstrap interval of the pooled rate difference. ``method[i]``/``baseline[i]``
    are the records of training seed ``i``; a seed without records on either side is left out."""
    tables, m_pooled, b_pooled = [], [], []
    for rec_m, rec_b in zip(method, baseline):
        om, ob = _outcomes(rec_m, stem, classes), _outcomes(rec_b, stem, classes)
        if not om or not ob:
            continue
        for c in sorted(set(om) | set(ob)):
            a, b = om.get(c, np.empty(0)), ob.get(c, np.empty(0))
            tables.append([[a.sum(), a.size - a.sum()], [b.sum(), b.size - b.sum()]])
        m_pooled.append(np.concatenate(list(om.values())))
        b_pooled.append(np.concatenate(list(ob.values())))
    if not tables:
        return {"p_image": None}
    test = cmh_test(tables)
    low, high = two_stage_bootstrap(m_pooled, b_pooled, resamples=resamples, seed=0)
    events = [int(sum(t[0][0] for t in tables)), int(sum(t[1][0] for t in tables))]
    images = [int(sum(t[0][0] + t[0][1] for t in tables)), int(sum(t[1][0] + t[1][1] for t in tables))]
    return {"p_image": test.p, "cmh_statistic": test.statistic, "cmh_strata": test.strata,
            "odds_ratio_mh": test.odds_ratio, "events": events, "images": images,
            "bootstrap_2stage": [low, high]}
