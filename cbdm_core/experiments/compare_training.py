"""The training parts of a ``cbdm compare`` study: one run at a time, a sampling arm's
classifier, or every run in parallel worker processes."""

from __future__ import annotations

from pathlib import Path

from ..run_folder import RunFolder
from ..training.trainer import Trainer
from .compare_plan import Part, StudyObserver, StudyPlan


class StudyInterrupted(Exception):
    """Training was stopped by a signal; the run's checkpoint is saved and a re-run continues."""

    def __init__(self, run_dir: Path, step: int):
        super().__init__(f"interrupted while training {run_dir} at step {step}")
        self.run_dir, self.step = run_dir, step


def train_run(plan: StudyPlan, part: Part, observer: StudyObserver, index: int) -> None:
    """Train one run of the study unless it is finished (a partial one resumes)."""
    cfg = plan.configs[(part.method, part.seed)]
    done = RunFolder(part.folder).list_checkpoints()
    finished = bool(done) and done[-1][0] >= cfg.optim.steps
    observer.start(index, part, finished)
    if finished:
        return
    observer.status(f"{part.label}: {cfg.optim.steps} steps in {part.folder}" + (" (resuming)" if done else ""))
    total = cfg.optim.steps
    outcome = Trainer(cfg, part.folder, resume=bool(done), restart_unsaved=True,
                      on_log=lambda rec: observer.advance(rec["step"], total)).run()
    if outcome.interrupted:
        raise StudyInterrupted(part.folder, outcome.step)


def train_arm_classifier(plan: StudyPlan, part: Part, observer: StudyObserver, index: int) -> None:
    """A sampling arm's per-run classifier (``train_classifier:``), unless its file is there."""
    from .arm_classifier import ensure_arm_classifier

    observer.start(index, part, part.folder.is_file())
    if part.folder.is_file():
        return
    observer.status(f"{part.label}: training {part.folder} from {plan.model_dir(part.method, part.seed)}")
    ensure_arm_classifier(plan.entries[part.method], plan.model_dir(part.method, part.seed), part.seed,
                          device=plan.protocol.training.device, echo=observer.status)


def train_all_in_parallel(plan: StudyPlan, parts: list[Part], observer: StudyObserver, jobs: int) -> None:
    """Train every unfinished run of the study, ``jobs`` at a time in worker processes; the
    per-method loop then finds them finished. Runs that start from another method's weights
    (``init_from``) wait for a later wave. Raises :class:`StudyInterrupted` on Ctrl-C."""
    depth: dict[str, int] = {}
    for label, entry in plan.entries.items():  # init_from names an earlier entry (validated)
        depth[label] = 0 if entry.init_from is None else depth[entry.init_from] + 1
    for wave in sorted(set(depth.values())):
        _train_wave(plan, [x for x in parts if depth[x.method] == wave], parts, observer, jobs)


def _train_wave(plan: StudyPlan, wave: list[Part], parts: list[Part], observer: StudyObserver, jobs: int) -> None:
    from .parallel_training import TrainJob, train_in_parallel

    todo = []
    for part in wave:
        cfg = plan.configs[(part.method, part.seed)]
        done = RunFolder(part.folder).list_checkpoints()
        if not (done and done[-1][0] >= cfg.optim.steps):
            todo.append(TrainJob(cfg, part.folder, resume=bool(done), restart_unsaved=True))
    if not todo:
        return
    # Longest first, so that the last runs to finish are short ones (a method adds about one
    # forward pass per step); the order does not change any run.
    todo.sort(key=lambda j: j.config.optim.steps * (1 + len(j.config.objective.methods)), reverse=True)
    group = Part("train", "", -1, plan.out_dir, title=f"train {len(todo)} runs, {min(jobs, len(todo))} at a time")
    folders = {j.folder for j in todo}
    observer.start(min(i for i, p in enumerate(parts) if p.folder in folders), group, False)
    names = {part.folder: f"{part.method} seed {part.seed}" for part in parts}

    def finished(res) -> None:
        state = f"stopped at step {res.step}" if res.interrupted else f"finished at step {res.step}"
        observer.status(f"train {names.get(res.folder, res.folder)}: {state}")

    results = train_in_parallel(todo, jobs, on_progress=observer.advance, on_finished=finished)
    stopped = [r for r in results if r.interrupted]
    if stopped or len(results) < len(todo):
        first = stopped[0] if stopped else None
        raise StudyInterrupted(first.folder if first else plan.out_dir / "runs", first.step if first else 0)
