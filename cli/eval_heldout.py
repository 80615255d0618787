"""The held-out-real row of ``cbdm eval``: the memorisation metric applied to real images outside
the model's training set (each flag a false positive), next to the samples' rates, so a
memorisation number is never read without its floor (the same row `cbdm compare` reports)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Optional

HELDOUT_FILE = "heldout-real.json"


def has_memorization(result: Any) -> bool:
    return any(k.startswith("memorization") for k in result.values())


def heldout_row(result: Any, options: Any, reference: Any, samples: Path, out_dir: Path,
                status: Callable[[str], None], warn: Callable[[str], None] = lambda _m: None) -> Optional[Path]:
    """Compute the held-out-real document for the samples' model, write it to
    ``out_dir/heldout-real.json`` (with the rates per frequency group) and return its path;
    ``None``, with ``warn``, when the dataset has no held-out real image (the metrics stand).
    ``reference``: the prepared reference (``None``: prepared here)."""
    from cbdm_core.atomic import atomic_write_text
    from cbdm_core.evaluation.report import groups_of
    from cbdm_core.experiments.heldout import NoHeldOutImages, heldout_document
    from cbdm_core.experiments.memorization_evidence import heldout_rows
    from cbdm_core.metrics.memorization import THRESHOLD
    from cbdm_core.sampling import shards as sh

    if reference is None:  # evaluate() prepared its own: load it again (features from the cache), quietly,
        import warnings    # since its warnings were already shown and recorded

        from cbdm_core.build_evaluation import resolve_evaluation
        from cbdm_core.evaluation.prepared import prepare_reference

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            reference = prepare_reference(options, resolve_evaluation(options))
    manifest = sh.read_manifest(samples) if Path(samples).is_dir() else None
    threshold = float((options.metric_options.get("memorization") or {}).get("threshold", THRESHOLD))
    try:
        doc = heldout_document(options.dataset, options.data_root, options.image_size, threshold, reference,
                               manifest, status, f"the training set of {samples}")
    except NoHeldOutImages as exc:  # e.g. a folder dataset without test/: every real image was trained on
        warn(str(exc))
        return None
    groups = groups_of(result) or {}
    doc["rows"] = heldout_rows(doc, groups)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    path = Path(out_dir) / HELDOUT_FILE
    atomic_write_text(path, json.dumps(doc) + "\n")
    return path


def describe_row(path: Path) -> str:
    """One line: the false-positive rate per space and group."""
    rows = json.loads(Path(path).read_text())["rows"]
    parts = []
    for space, row in rows.items():
        cells = ", ".join(f"{g} {row[g]:.3g}" for g in ("all", "head", "medium", "tail") if row.get(g) is not None)
        parts.append(f"{space}: {cells}")
    return "memorisation of held-out real images (false positives): " + "; ".join(parts)
