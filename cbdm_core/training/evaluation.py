"""FID/KID of a small sample set every ``evaluate.every`` training steps (k-diffusion's
``--evaluate-every``), in the feature space of the dataset's classifier.

The reference (real images, classifier, reference features) is prepared once at start-up;
each evaluation samples the same labels from the same noise (a fixed seed) with the EMA
weights, so successive values differ by the weights alone. The global RNG state is kept:
a run with evaluation trains the same weights as one without.
"""

from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Iterator, Optional

import torch

from ..config import TrainConfig
from ..errors import CbdmError
from ..run_folder import RunFolder

log = logging.getLogger("cbdm.train")

DEFAULT_STEPS = 20  # few DDIM steps: a trend, cheap enough to run often
PREFIX = "eval_"  # metrics.jsonl keys of an evaluation record

StatusFn = Callable[[str], None]


def sampling_steps(cfg: TrainConfig) -> int:
    """``evaluate.steps``, or :data:`DEFAULT_STEPS` capped at T."""
    return cfg.evaluate.steps if cfg.evaluate.steps is not None else min(DEFAULT_STEPS, cfg.diffusion.T)


def check_evaluation(cfg: TrainConfig) -> None:
    """Refuse, before any data is read, evaluation settings that could not run: a folder
    dataset without a classifier file, a missing file, sampler settings the sampler rejects."""
    e = cfg.evaluate
    if not e.every:
        return
    if e.classifier is None and cfg.data.dataset == "folder":
        raise CbdmError("evaluate.every needs a classifier file for a folder dataset: train one with "
                        f"`cbdm eval train-classifier --dataset folder --data-root {cfg.data.root or 'ROOT'}` "
                        "and pass --evaluate-classifier FILE")
    if e.classifier is not None and not Path(e.classifier).expanduser().is_file():
        raise CbdmError(f"evaluate.classifier {e.classifier} does not exist (train one with "
                        f"`cbdm eval train-classifier --dataset {cfg.data.dataset}`)")
    if e.guidance > 0 and cfg.objective.p_uncond <= 0:
        raise CbdmError("evaluate.guidance > 0 needs label dropout, but objective.p_uncond is 0")
    from ..build import build_schedule
    from ..sampling.api import resolve_sampling
    from ..sampling.preflight import preflight
    from ..sampling.settings import SamplerSettings

    # The sampler itself judges its settings (unknown name, steps > T, ...), on a dummy denoiser.
    stand_in = SimpleNamespace(num_classes=1, schedule=build_schedule(cfg))
    # model_construct: evaluate's own model validated these numbers; the sampler judges them.
    how = SamplerSettings.model_construct(sampler=e.sampler, steps=sampling_steps(cfg), eta=e.eta,
                                          guidance=e.guidance, clip_denoised=None, sampler_options={},
                                          guidance_method="cfg", guidance_options={})
    try:
        preflight(stand_in, resolve_sampling(how))
    except CbdmError as exc:
        raise CbdmError(f"evaluate: {exc}") from None


@contextlib.contextmanager
def kept_rng(device: torch.device) -> Iterator[None]:
    """Run the block with its own copy of the global RNG state (CPU, and the CUDA device)."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        yield


class TrainingEvaluator:
    """Prepares the reference once (:meth:`prepare`), then evaluates the EMA model (:meth:`run`).

    Args:
        cfg: the run's configuration (``evaluate`` and ``data`` are read).
        folder: the run folder (the classifier is trained into it when no file is given).
        num_classes, chw: the model's classes and image shape ``(C, H, W)``.
        device: where sampling and features run.
        on_status: called with a line for each slow preparation step.
    """

    def __init__(self, cfg: TrainConfig, folder: RunFolder, *, num_classes: int, chw: tuple[int, int, int],
                 device: torch.device, on_status: Optional[StatusFn] = None):
        self.cfg, self.folder, self.num_classes, self.chw, self.device = cfg, folder, num_classes, chw, device
        self.status: StatusFn = on_status or (lambda _m: None)
        self.options: Any = None
        self.reference: Any = None
        self.components: Any = None  # EvalComponents, resolved in prepare()
        from ..sampling.plan import plan_labels

        self.labels = plan_labels("balanced", cfg.evaluate.num, num_classes)

    def due(self, step: int) -> bool:
        every = self.cfg.evaluate.every
        return every > 0 and step % every == 0

    def classifier_path(self) -> Path:
        """The classifier file: the configured one, or the one trained into the run folder once."""
        e, d = self.cfg.evaluate, self.cfg.data
        if e.classifier is not None:
            return Path(e.classifier).expanduser()
        from ..build import dataset_options
        from ..features.auto_classifier import ensure_classifier

        return ensure_classifier(self.folder.classifier, d.dataset, d.root, epochs=e.classifier_epochs,
                                 device=self.device, on_status=lambda m: self.status(f"evaluation: {m}"),
                                 training_sets=[dataset_options(self.cfg, "train")])

    def prepare(self) -> None:
        """Classifier, real reference set and its features: once per process, before training."""
        from ..build_evaluation import resolve_evaluation
        from ..evaluation import EvalOptions
        from ..evaluation.prepared import prepare_reference

        e, d = self.cfg.evaluate, self.cfg.data
        with kept_rng(self.device):
            classifier = self.classifier_path()
            self.options = EvalOptions(dataset=d.dataset, data_root=d.root, extractor="classifier",
                                       classifier=classifier, metrics=list(e.metrics), batch_size=e.batch_size,
                                       device=str(self.device), classes=d.classes, class_order=d.class_order,
                                       image_size=d.resize)
            self.components = resolve_evaluation(self.options)  # names resolved once, for every evaluation
            self.reference = prepare_reference(self.options, self.components,
                                               on_status=lambda m: self.status(f"evaluation: {m}"))
        ref = self.reference.images
        if self.reference.chw != tuple(self.chw) or ref.num_classes != self.num_classes:
            c, h, w = self.reference.chw
            raise CbdmError(f"evaluation: the {d.dataset} reference images are {c}x{h}x{w} in {ref.num_classes} "
                            f"classes but the model makes {'x'.join(map(str, self.chw))} in {self.num_classes}")
        self.status(f"evaluation: {', '.join(e.metrics)} of {e.num} samples every {e.every} steps "
                    f"({e.sampler}, {sampling_steps(self.cfg)} steps, features of {classifier})")

    @torch.no_grad()
    def run(self, model: torch.nn.Module, schedule: Any, step: int) -> dict[str, Any]:
        """``{"eval_<metric>": value or None, "eval_seconds", "eval_num"}`` for ``model`` (in eval
        mode: the EMA network) at ``step``."""
        from ..evaluation import SampleSet
        from ..evaluation.engine import evaluate
        from ..sampling.in_memory import sample_images

        if self.reference is None:
            raise CbdmError("the training evaluator was not prepared")
        e = self.cfg.evaluate
        started = time.perf_counter()
        values: dict[str, Optional[float]] = {}
        with kept_rng(self.device):
            try:
                images = sample_images(model, schedule, self.labels, chw=self.chw,
                                       seed=self.cfg.seed if e.seed is None else e.seed, batch_size=e.batch_size,
                                       sampler=e.sampler, steps=sampling_steps(self.cfg), eta=e.eta,
                                       guidance=e.guidance)
            except CbdmError as exc:
                log.warning("evaluation at step %d not computed: %s", step, exc)
            else:
                samples = SampleSet(images, torch.as_tensor(self.labels, dtype=torch.long),
                                    Path(f"training step {step}"), "training")
                # The metrics log their warnings (too few samples, ...) themselves.
                result = evaluate(samples, self.options, components=self.components, reference=self.reference)
                values = result.values()
        return {**{PREFIX + m: values.get(m) for m in e.metrics},
                "eval_seconds": round(time.perf_counter() - started, 3), "eval_num": len(self.labels)}
