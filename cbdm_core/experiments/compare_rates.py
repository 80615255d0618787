"""The rates of a ``cbdm compare`` study recounted from its images: which values are rates
over images (memorisation, conditional accuracy, per frequency group), each sample folder's
per-image outcomes (``records.csv``), and the image-level evidence on a rate difference (the CMH
test stratified by seed x class and the two-stage bootstrap of :mod:`.stats`)."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, Callable, Optional, Union

import numpy as np

from ..errors import CbdmError
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


def _load_records(folder: Union[str, Path]) -> tuple[Optional[dict[str, list]], Optional[str]]:
    """``(columns, problem)`` of the report folder's ``records.csv``: the problem (one line) when it is
    missing, unreadable, holds a cell that is not a number, or has another row count than the images its
    ``metrics.json`` counted (a missing or cut file silently left images out of the tests)."""
    from ..evaluation import RECORDS_CSV, read_records_csv

    path = Path(folder) / RECORDS_CSV
    if not path.is_file():
        return None, f"{path} is missing"
    try:
        records = read_records_csv(path)
    except (OSError, ValueError, csv.Error) as exc:
        return None, f"{path} is unreadable ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})"
    try:
        count = int(json.loads((Path(folder) / "metrics.json").read_text())["samples"]["count"])
    except (OSError, ValueError, KeyError, TypeError):
        return records, None  # no count to check against: the metrics' own reader decides about that file
    rows = len(records["requested_class"])
    return records, (None if rows == count else f"{path} has {rows} rows for the {count} images evaluated")


def records_problem(folder: Union[str, Path]) -> Optional[str]:
    """Why the report folder's ``records.csv`` cannot stand for its evaluated images, or None."""
    return _load_records(folder)[1]


def read_records(folder: str) -> Optional[dict[str, list]]:
    """A report folder's ``records.csv`` as columns; ``None`` when the folder has none and never had
    (a study from before records.csv, whose image-level tests are then left out). A damaged or
    partial file is one line naming it (:func:`records_problem`)."""
    from ..evaluation import RECORDS_CSV

    if not (Path(folder) / RECORDS_CSV).is_file():
        return None
    records, problem = _load_records(folder)
    if problem is not None:
        raise CbdmError(f"{problem}; evaluate that folder again (delete its metrics.json and re-run the study "
                        "that made it)")
    return records


def check_records_complete(records: dict[Any, Optional[dict]], folders: dict[Any, str]) -> None:
    """Every report of a comparison has its records, or none has (an older study): a seed without
    records would silently leave its images out of the image-level tests."""
    missing = [folders[k] for k, r in records.items() if r is None]
    if missing and len(missing) < len(records):
        raise CbdmError(f"{Path(missing[0]) / 'records.csv'} is missing while other reports of the study have "
                        "theirs; evaluate that folder again (delete its metrics.json and re-run the study that "
                        "made it)")


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
