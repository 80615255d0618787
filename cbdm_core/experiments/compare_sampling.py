"""The sampling parts of a ``cbdm compare`` study: sample and evaluate one folder (kept when
finished and still valid), choose w on the selection samples, and the evaluation's options."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

from ..errors import CbdmError
from .arms import check_files_before_sampling, check_kept_set
from .compare_folder import manifest_seed, read_metrics
from .compare_rates import records_problem
from .compare_plan import Part, StudyObserver, StudyPlan
from .sampling_cost import timed_sampling
from .sweeps import SweepPoint, best_point


def eval_options(plan: StudyPlan, metrics: list[str], classifier: Optional[Path]):
    """The :class:`~cbdm_core.evaluation.EvalOptions` of the study's sample sets."""
    from ..evaluation import EvalOptions

    e, d = plan.protocol.evaluation, plan.protocol.data
    return EvalOptions(dataset=d.dataset, data_root=d.root, extractor=e.extractor, classifier=classifier,
                       inception_weights=e.inception_weights, metrics=metrics, metric_options=dict(e.metric_options),
                       reference_split=e.reference_split, cache_dir=e.cache_dir, batch_size=e.batch_size,
                       device=plan.protocol.training.device, image_size=d.resize)


def study_classifier(plan: StudyPlan, observer: StudyObserver) -> Optional[Path]:
    """The feature classifier file; ``auto`` trains one into the study folder once."""
    e = plan.protocol.evaluation
    if e.extractor != "classifier" or e.classifier is None:
        return None
    if e.classifier != "auto":
        return Path(e.classifier)
    from ..device import resolve_device
    from ..features.auto_classifier import ensure_classifier

    d = plan.protocol.data

    return ensure_classifier(plan.out_dir / f"classifier-{d.dataset}-heldout.safetensors", d.dataset, d.root,
                             epochs=e.classifier_epochs, device=resolve_device(plan.protocol.training.device),
                             on_status=observer.status, training_sets=_training_sets(plan))


def _training_sets(plan: StudyPlan) -> list[Any]:
    """The distinct dataset options of every run's training set (the auto classifier sees none
    of their images; runs differ only by method, so this is usually one)."""
    from ..build import dataset_options

    out: list[Any] = []
    for cfg in plan.configs.values():
        opts = dataset_options(cfg, "train")
        if opts not in out:
            out.append(opts)
    return out


def sample_and_evaluate(plan: StudyPlan, part: Part, seed: int, num: int, options: Any, reference: Any,
                        observer: StudyObserver, index: int, runs: dict) -> dict[str, Any]:
    """The folder's ``metrics.json`` document, computed unless already there."""
    from ..evaluation import write_metrics_json
    from ..evaluation.engine import evaluate
    from ..sampling.generate import generate_samples
    from ..sampling.plan import plan_labels

    recorded = manifest_seed(part.folder)
    if recorded is not None and recorded != seed:
        raise CbdmError(f"{part.folder} was sampled with seed {recorded}, but this study samples it with "
                        f"seed {seed} (one sampling seed per training seed); use another --out")
    stale = check_kept_set(part.folder, regenerate=plan.overwrite)  # a finished set too: not kept blindly
    # A report whose records.csv is missing or cut is evaluated again (its samples are kept).
    doc = None if stale or records_problem(part.folder) else read_metrics(part.folder)
    observer.start(index, part, doc is not None)
    if doc is not None:
        return doc
    check_files_before_sampling(plan.entries[part.method], plan.model_dir(part.method, part.seed), part.seed)
    run = _loaded(plan, part, runs)
    sampling = plan.resolved_sampling(part.method, part.seed,
                                      {"seed": seed, "guidance": float(part.guidance or 0.0), "num": num})
    labels = plan_labels(sampling.settings.classes, num, run.num_classes, run.meta.class_counts)
    observer.status(f"{part.label}: sampling {num} images (seed {seed}) into {part.folder}")
    with timed_sampling(part.folder, num, next(run.model.parameters()).device):  # cost, for compare.json
        generate_samples(run, labels, out_dir=part.folder, sampling=sampling, overwrite=stale,
                         on_progress=lambda d, t: observer.advance(d, t))
    result = evaluate(part.folder, options, components=plan.evaluation, reference=reference,
                      on_status=observer.status)
    write_metrics_json(result, part.folder / "metrics.json")
    return json.loads((part.folder / "metrics.json").read_text())


def _loaded(plan: StudyPlan, part: Part, runs: dict):
    from ..device import resolve_device
    from ..run import load_run

    key = plan.model_dir(part.method, part.seed)  # an arm loads the weights of the run it samples
    ema = plan.sampling_for(part.method, part.seed).ema
    if (key, ema) not in runs:
        runs.clear()  # one model in memory at a time
        device = resolve_device(plan.protocol.training.device)
        runs[(key, ema)] = load_run(key, ema=ema, device=device)
    return runs[(key, ema)]


def choose_guidance(points: dict[float, list[Optional[float]]], select: str) -> Optional[float]:
    """The w whose mean ``select`` over seeds is best (direction as declared); ties: smaller w."""
    scored = []
    for w, vals in points.items():
        known = [v for v in vals if v is not None]
        scored.append(SweepPoint(w, "", {select: (sum(known) / len(known)) if known else None}))
    best = best_point(scored, select)
    return None if best is None else best.value


def select_guidance(plan: StudyPlan, label: str, method_parts: list[Part], options: Any, reference: Any,
                    obs: StudyObserver, index: int, runs: dict) -> tuple[float, dict, dict[int, list[dict[str, Any]]]]:
    """``(w, points, selection)`` of one method: the fixed w, or the grid's best on the
    selection samples (sampled and evaluated here; parts numbered from ``index``)."""
    p = plan.protocol
    selection: dict[int, list[dict[str, Any]]] = {s: [] for s in p.seeds}
    if not p.selecting():
        return p.guidance.values[0], {}, selection
    select = p.guidance.select or ""
    num = p.guidance.selection_num or p.sampling.num
    for part in [x for x in method_parts if x.kind == "select"]:
        doc = sample_and_evaluate(plan, part, plan.seeds["select"][part.seed], num, options,
                                  reference, obs, index, runs)
        index += 1
        selection[part.seed].append({"w": part.guidance, "samples": str(part.folder),
                                     "seed": manifest_seed(part.folder), select: doc["values"].get(select)})
    points = {w: [next(x[select] for x in selection[s] if x["w"] == w) for s in p.seeds]
              for w in p.guidance.values}
    chosen = choose_guidance(points, select)
    if chosen is None:
        raise CbdmError(f"no selection sample set of {label} has a value for {select}; cannot choose w")
    obs.status(f"{label}: w = {chosen:g} chosen by {select} on the selection samples "
               f"(seeds derived from {p.guidance.selection_seed})")
    return chosen, points, selection
