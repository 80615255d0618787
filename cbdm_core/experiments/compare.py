"""``cbdm compare``: train every method of a protocol on every seed, choose w per method on a
selection sampling seed, sample the report seed at that w, evaluate, and summarise.

Everything is resumable: a finished run (checkpoint at the final step), and a sample folder
whose ``metrics.json`` exists, are skipped; a partial run resumes from its checkpoint, one
stopped before its first checkpoint starts over from step 0; a partial sample folder keeps
its complete shards. The reference set is prepared once.

Folder layout (``DIR``)::

    protocol.json                     the protocol as run (a re-run must match it)
    runs/<method>/seed-<s>/           one training run per method and seed
        select-w<w>/                  selection samples + metrics.json + records.csv
        report-w<w>/                  report samples at the chosen w + metrics.json + records.csv

Each training seed samples with its own sampling seeds, derived from ``report_seed`` and
``guidance.selection_seed`` (:func:`sampling_seed`), so the sampling noise differs between
training seeds and is part of every seed-level interval.
    compare.json, compare.md, plots/  the result (see :mod:`.compare_report`)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

# The study's parts live in their own modules (planning, the folder, training, sampling); their
# public names are importable from here as before.
from .compare_folder import PROTOCOL_JSON, check_folder, manifest_seed
from .compare_plan import Part, StudyObserver, StudyPlan, plan_study, sampling_seed, sampling_seeds
from .compare_sampling import choose_guidance, eval_options, sample_and_evaluate, select_guidance, study_classifier
from .compare_training import StudyInterrupted, train_all_in_parallel, train_arm_classifier, train_run
from .curves import collect_curve
from .heldout import ensure_heldout_real
from .parallel_training import pool_threads
from .protocol import Protocol
from .study_time import StudyClock, read_study_time, time_summary
from .sweeps import value_label

__all__ = ["PROTOCOL_JSON", "Part", "StudyInterrupted", "StudyObserver", "StudyPlan", "choose_guidance", "plan_study",
           "run_study", "sampling_seed", "sampling_seeds"]


def run_study(protocol: Protocol, out_dir: Path, *, observer: Optional[StudyObserver] = None,
              jobs: int = 1, overwrite: bool = False) -> dict[str, Any]:
    """Run (or continue) the study of ``protocol`` in ``out_dir``; returns the ``compare.json``
    document after writing it with ``compare.md`` and the plots.

    ``jobs`` > 1 trains up to that many runs at once in worker processes, each with an equal
    share of this process's torch threads (see :mod:`.parallel_training`); sampling and
    evaluation stay in this process, with as many threads as the workers had together
    (:func:`.parallel_training.pool_threads`). ``overwrite`` regenerates kept sample sets whose guidance
    file (a noise-aware or minority classifier) changed since they were sampled. The wall time of each
    phase goes to ``study-time.json`` (:mod:`.study_time`)."""
    from ..evaluation.prepared import prepare_reference
    from .compare_report import write_outputs

    obs = observer or StudyObserver()
    plan = plan_study(protocol, out_dir)
    plan.overwrite = overwrite
    check_folder(plan)
    parts = plan.parts()
    obs.plan(parts)
    clock = StudyClock(Path(out_dir), jobs)
    with clock.phase("training"):
        classifier = study_classifier(plan, obs)
    report_opts = eval_options(plan, plan.eval_metrics, classifier)
    select_opts = eval_options(plan, plan.select_metrics, classifier)
    with clock.phase("reference"):
        reference = prepare_reference(report_opts, plan.evaluation, on_status=obs.status)  # once for the whole study
    if jobs > 1:
        with clock.phase("training"):
            train_all_in_parallel(plan, [x for x in parts if x.kind == "train"], obs, jobs)
    # Sampling and evaluation run here, after the workers: give them the threads the workers had
    # (under OMP_NUM_THREADS=1 this process would otherwise sample on one core of --jobs N).
    with pool_threads(jobs) as sampling_threads:
        clock.note("sampling_threads", sampling_threads)
        results = _each_method(plan, parts, obs, report_opts, select_opts, reference, clock)
        last_report = Path(list(results.values())[-1]["reports"][0]["samples"])  # the last method's, as before
        with clock.phase("sampling_evaluation"):
            heldout = ensure_heldout_real(plan, reference, last_report, obs.status)
    clock.finish()
    return write_outputs(plan, results, Path(out_dir), classifier=_classifier_summary(classifier), heldout=heldout,
                         study_time=time_summary(read_study_time(Path(out_dir))))


def _each_method(plan: StudyPlan, parts: list[Part], obs: StudyObserver, report_opts: Any, select_opts: Any,
                 reference: Any, clock: StudyClock) -> dict[str, dict[str, Any]]:
    """Train (what is left), choose w, sample and evaluate every method; ``{label: result}``."""
    results: dict[str, dict[str, Any]] = {}
    runs: dict = {}
    index = 0
    for label in plan.entries:
        method_parts = [x for x in parts if x.method == label]
        with clock.phase("training"):
            for part in [x for x in method_parts if x.kind == "train"]:
                train_run(plan, part, obs, index)
                index += 1
            for part in [x for x in method_parts if x.kind == "classifier"]:
                train_arm_classifier(plan, part, obs, index)
                index += 1
        with clock.phase("sampling_evaluation"):
            results[label], index = _sample_method(plan, label, method_parts, obs, report_opts, select_opts,
                                                   reference, index, runs)
    runs.clear()
    return results


def _sample_method(plan: StudyPlan, label: str, method_parts: list[Part], obs: StudyObserver, report_opts: Any,
                   select_opts: Any, reference: Any, index: int, runs: dict) -> tuple[dict[str, Any], int]:
    """Choose w, sample and evaluate one method's report and curve sets; (its result, next part index)."""
    p = plan.protocol
    entry = plan.entries[label]
    chosen, points, selection = select_guidance(plan, label, method_parts, select_opts, reference, obs, index,
                                                runs)
    index += sum(1 for x in method_parts if x.kind == "select")
    reports = []
    for part in [x for x in method_parts if x.kind == "report"]:
        part.guidance = chosen
        part.folder = plan.run_dir(label, part.seed) / f"report-w{value_label(chosen)}"
        doc = sample_and_evaluate(plan, part, plan.seeds["report"][part.seed], p.sampling.num, report_opts,
                                  reference, obs, index, runs)
        index += 1
        reports.append({"seed": part.seed, "run": str(plan.model_dir(label, part.seed)), "doc": doc,
                        "samples": str(part.folder), "sampling_seed": manifest_seed(part.folder),
                        "guidance": chosen, "selection": selection[part.seed]})
    for part in [x for x in method_parts if x.kind == "curve"]:
        sample_and_evaluate(plan, part, plan.seeds["report"][part.seed], p.sampling.num, report_opts,
                            reference, obs, index, runs)
        index += 1
    result = {"entry": entry, "chosen": chosen, "points": points, "reports": reports,
              "curve": collect_curve(plan, label)}
    return result, index


def _classifier_summary(path: Optional[Path]) -> Optional[dict[str, Any]]:
    if path is None:
        return None
    from ..features.auto_classifier import classifier_summary

    from .provenance import file_digest

    return {**classifier_summary(path), "sha256": file_digest(path)}
