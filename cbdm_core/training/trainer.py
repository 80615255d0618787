"""The training engine: dataset -> augmentation -> objective(model) -> optimizer/EMA -> checkpoint."""

from __future__ import annotations

import copy
import logging
import signal
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch

from .. import build
from ..checkpoint import Checkpoint, load_state_checked, read_run_meta
from ..components import Components
from ..config import TrainConfig
from ..device import DistContext, setup_distributed
from ..errors import CbdmError, UnknownComponentError
from ..images import class_rows, grid_image, save_png, to_uint8
from .batch_source import BatchSource
from .batches import BatchIndexer
from .checkpointing import CheckpointKeeper
from .evaluation import TrainingEvaluator, check_evaluation
from .events import Subscriber, Subscribers
from .loggers import LoggerGroup, open_loggers
from .loop import RunParts, TrainLoop
from .monitor import check_loggers
from .subscribers import CheckpointWriter, EvaluationRunner, MetricsLogger, PreviewWriter, StepCallback
from ..host_memory import keep_freed_host_memory
from ..run_folder import RESUMABLE_CHANGES, ResumePoint, RunFolder  # RESUMABLE_CHANGES: also imported from here
from ..run_files import append_line  # also imported from here
from .precision import Precision, describe_device, match_param_layout, resolve_precision
from .step import build_train_step

log = logging.getLogger("cbdm.train")

__all__ = ["Trainer", "TrainResult", "RESUMABLE_CHANGES", "append_line"]


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    checkpoint: Optional[Path]
    grid: Optional[Path]
    interrupted: bool = False


class Trainer:
    """Trains one run folder.

    Args:
        cfg: the resolved configuration.
        run_dir: where checkpoints, logs and grids go.
        resume: continue from the latest checkpoint in ``run_dir``.
        overwrite: replace a different run already in ``run_dir``.
        restart_unsaved: a run folder without any checkpoint (a run killed before its first)
            restarts from step 0, clearing what it left; one with a checkpoint is never touched
            (``cbdm compare`` and sweeps: a study must always continue).
        on_log: called with each metrics record (for progress display).
        on_step: called with the step number after every step (no device sync).
        on_status: called with a line for each slow start-up step (the evaluation's preparation).
        subscribers: more subscribers of the loop's events (``training/events.py``), called
            after the built-in ones (metrics log, evaluation, checkpoints, previews).
    """

    def __init__(self, cfg: TrainConfig, run_dir: Path, *, resume: bool = False, overwrite: bool = False,
                 restart_unsaved: bool = False, on_log: Optional[Callable[[dict], None]] = None, on_start: Optional[Callable] = None,
                 on_step: Optional[Callable[[int], None]] = None,
                 on_status: Optional[Callable[[str], None]] = None, subscribers: Sequence[Subscriber] = ()):
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.folder = RunFolder(self.run_dir)
        self.resume = resume
        self.overwrite = overwrite
        self.restart_unsaved = restart_unsaved
        self.on_log = on_log
        self.on_start = on_start
        self.on_step = on_step
        self.on_status = on_status
        self.subscribers = list(subscribers)  # the loop's events, after the built-in subscribers
        self.elapsed_before = 0.0  # training seconds of the run before this process (resume)
        self._loggers = LoggerGroup([])  # --log tensorboard / wandb (rank 0 only)
        self._stop = threading.Event()
        self.reinitialised: list[str] = []
        self.methods: list = []
        self.components: Optional[Components] = None  # the config's names, resolved by run()
        self.precision: Optional[Precision] = None  # resolved at the start of run()
        self.device_name = ""

    def subscribe(self, subscriber: Subscriber) -> None:
        """Receive the loop's events (``training/events.py``) after the built-in subscribers."""
        self.subscribers.append(subscriber)

    # -- main loop ----------------------------------------------------------------------
    def run(self) -> TrainResult:
        cfg = self.cfg
        try:
            self.components = build.check_components(cfg)  # every name resolved once, here
        except UnknownComponentError as exc:
            found = self.folder.list_checkpoints() if self.resume else []
            raise build.explain_missing_plugin(exc, read_run_meta(found[-1][1]) if found else {}) from None
        check_loggers(cfg.log)
        check_evaluation(cfg)
        ctx = setup_distributed(build.resolve_device(cfg.device))
        try:
            return self._run(ctx)
        finally:
            self.folder.release()  # a start refused before config.yaml leaves nothing behind
            ctx.close()

    def _run(self, ctx: DistContext) -> TrainResult:
        """dataset -> augmentation -> objective(model) -> optimizer/EMA -> checkpoint, stage by stage."""
        start = self._open_run_folder(ctx)
        self.elapsed_before = start.elapsed
        data = ctx.main_first(lambda: build.load_training_data(self.cfg, self.components))  # rank 0 first: it may download
        self._resolve_speed(ctx.device)
        parts = self._build_parts(ctx, data, start.checkpoint)
        # The previous run goes only now: a new run refused for its data, network, methods or --init-from
        # leaves it whole. A classifier trained into the folder must not be the previous run's (other data,
        # perhaps): then before the evaluator; a named classifier file is checked first.
        trains_classifier = self.cfg.evaluate.every and self.cfg.evaluate.classifier is None
        if start.replaces and ctx.is_main and trains_classifier:
            self.folder.clear(self.cfg.evaluate.classifier)
        evaluator = self._prepare_evaluator(ctx, data)
        if start.replaces and ctx.is_main and not trains_classifier:
            self.folder.clear(self.cfg.evaluate.classifier)
        if ctx.is_main:
            self.folder.write_config(self.cfg)
            if self.on_start:
                self.on_start(data, parts.model, parts.step)
        return self._train(ctx, parts, evaluator)

    def _open_run_folder(self, ctx: DistContext) -> ResumePoint:
        """Claim the run folder; where the run starts."""
        ctx.shard(self.cfg.optim.batch_size)  # a global batch that does not split evenly fails before any work
        # Rank 0 alone touches the run folder; its errors are raised on every rank.
        start = ctx.main_first(lambda: self.folder.open(self.cfg, resume=self.resume, overwrite=self.overwrite,
                                                        restart_unsaved=self.restart_unsaved), others=False)
        if not ctx.is_main:  # rank 0 has checked and repaired the folder: the newest checkpoint is good
            start = ResumePoint(self.folder.latest_checkpoint() if self.resume else None)
        return start

    def _resolve_speed(self, device: torch.device) -> None:
        """Resolve the speed choices (for the run header) and the host-memory policy."""
        perf = self.cfg.perf
        self.precision = resolve_precision(perf, device)
        self.device_name = describe_device(device)
        if perf.keep_host_memory == "on" or (perf.keep_host_memory == "auto" and device.type == "cpu"):
            keep_freed_host_memory()

    def _build_parts(self, ctx: DistContext, data, start_ckpt: Optional[Checkpoint]) -> RunParts:
        """Augmentation, schedule, model + methods, EMA, batches and the step, in the order that
        fixes their random draws (a resumed run depends on it)."""
        cfg, device, precision = self.cfg, ctx.device, self.precision
        augmentation = build.build_augmentation(cfg, self.components)
        schedule = build.build_schedule(cfg, self.components)
        cond_dim = int(getattr(augmentation, "cond_dim", 0) or 0)
        model, attached = self._build_model(data, schedule, cond_dim)
        model = model.to(device)
        ema_model = copy.deepcopy(model).eval().requires_grad_(False)
        source = self._batch_source(data, device)
        step = self._load_weights(model, ema_model, start_ckpt, attached)
        o = cfg.optim
        train_step = build_train_step(
            model, ema_model, build.build_base_loss(cfg, schedule, self.components), self.methods, schedule=schedule,
            num_classes=data.num_classes, class_counts=data.class_counts, p_uncond=cfg.objective.p_uncond,
            drop_whole_batch=cfg.objective.drop_whole_batch, lr=o.lr, grad_clip=o.grad_clip,
            ema_decay=o.ema_decay, ema_warmup=o.ema_warmup, precision=precision, ctx=ctx, batch_size=o.batch_size)
        if start_ckpt is not None and start_ckpt.optim is not None:
            _load_optimizer(train_step.optimizer, start_ckpt.optim)
        meta = {"num_classes": data.num_classes, "image_size": data.image_size, "channels": data.channels,
                "class_counts": data.class_counts.tolist(), "class_names": data.class_names, "dataset": data.name,
                "cond_dim": cond_dim, "speed": precision.as_dict(), "plugins": self._plugins()}
        return RunParts(data=data, schedule=schedule, augmentation=augmentation, model=model, ema_model=ema_model,
                        methods=self.methods, source=source, train_step=train_step, lr_at=_warmup(o.warmup),
                        precision=precision, meta=meta, step=step, start_ckpt=start_ckpt)

    def _plugins(self) -> dict[str, str]:
        """The plugin of every component the run uses (stored with its checkpoints)."""
        return self.components.plugins if self.components else build.component_plugins(self.cfg)

    def _build_model(self, data, schedule, cond_dim: int) -> tuple[torch.nn.Module, list[str]]:
        """The network with the methods' modules attached (seeded); the attached weight names."""
        cfg = self.cfg
        torch.manual_seed(cfg.seed)
        model = build.build_model(cfg, image_size=data.image_size, channels=data.channels,
                                  num_classes=data.num_classes, cond_dim=cond_dim)
        self.methods = build.build_methods(cfg, class_counts=data.class_counts, num_classes=data.num_classes,
                                           schedule=schedule)
        # Attached modules are part of the model from here on: optimised, averaged, checkpointed.
        plain = set(model.state_dict())
        build.attach_methods(self.methods, model)
        return model, [k for k in model.state_dict() if k not in plain]

    def _batch_source(self, data, device: torch.device) -> BatchSource:
        """The batches of every step, resampled by class when ``data.resample`` asks."""
        cfg = self.cfg
        weights = None
        if cfg.data.resample != "none":
            from ..data.resample import class_sampling_weights

            weights = class_sampling_weights(data.labels, cfg.data.resample)
        return BatchSource(data.images, data.labels,
                           BatchIndexer(len(data), cfg.optim.batch_size, cfg.seed, weights), device)

    def _load_weights(self, model: torch.nn.Module, ema_model: torch.nn.Module,
                      start_ckpt: Optional[Checkpoint], attached: list[str]) -> int:
        """Load the resumed (or ``init_from``) weights into model and EMA; the first step."""
        if start_ckpt is None and self.cfg.init_from is not None:
            from .init_from import init_from_checkpoint

            self.reinitialised = init_from_checkpoint(model, self.cfg.init_from, fresh_ok=attached)
            ema_model.load_state_dict(model.state_dict())
        if start_ckpt is None:
            return 0
        load_state_checked(model, start_ckpt.model, "checkpoint model weights")
        load_state_checked(ema_model, start_ckpt.ema, "checkpoint EMA weights")
        return start_ckpt.step

    def _prepare_evaluator(self, ctx: DistContext, data) -> Optional[TrainingEvaluator]:
        """The training-time evaluator, its reference prepared (rank 0), or ``None`` when off."""
        if not self.cfg.evaluate.every:
            return None
        # Rank 0 alone evaluates: it prepares the reference once, now, before any training
        # and before config.yaml, so a refused classifier leaves no run behind.
        evaluator = TrainingEvaluator(self.cfg, self.folder, num_classes=data.num_classes,
                                      chw=(data.channels, data.image_size, data.image_size), device=ctx.device,
                                      on_status=self.on_status)
        ctx.main_first(evaluator.prepare, others=False)
        return evaluator

    def _train(self, ctx: DistContext, parts: RunParts, evaluator: Optional[TrainingEvaluator]) -> TrainResult:
        """Run the step loop with loggers open and Ctrl-C/SIGTERM turned into a clean stop."""
        cfg = self.cfg
        self._loggers = (open_loggers(self.folder, cfg.log, cfg.model_dump(mode="json")) if ctx.is_main
                         else LoggerGroup([]))
        restore = self._install_signal_handlers()
        try:
            subscribers, checkpoints, previews = self._subscribers(ctx, parts, evaluator)
            loop = TrainLoop(cfg, ctx, parts, subscribers, self._stop, self.folder)
            interrupted = loop.run()
        finally:
            restore()
            self._loggers.close()
        return TrainResult(self.run_dir, loop.step, checkpoints.last, previews.last, interrupted)

    def _subscribers(self, ctx: DistContext, parts: RunParts, evaluator: Optional[TrainingEvaluator]
                     ) -> tuple[Subscribers, CheckpointWriter, PreviewWriter]:
        """The loop's subscribers: progress, metrics log, evaluation, checkpoints, previews, then
        those given to the trainer; the checkpoint and preview writers (their last paths)."""
        cfg, p = self.cfg, parts
        metrics = MetricsLogger(self.folder, self._loggers, self.on_log, self.elapsed_before)
        keeper = CheckpointKeeper(self.folder, cfg.keep_last, cfg.model_dump(mode="json"), p.meta)
        checkpoints = CheckpointWriter(ctx, keeper, p.model, p.ema_model, p.train_step.optimizer)
        previews = PreviewWriter(ctx, lambda step: self.preview(p.ema_model, p.schedule, p.data.num_classes, step,
                                                                p.data.class_names), self._loggers)
        subscribers = Subscribers()
        if self.on_step is not None:
            subscribers.subscribe(StepCallback(self.on_step))
        subscribers.subscribe(metrics)
        if evaluator is not None:
            subscribers.subscribe(EvaluationRunner(ctx, evaluator, lambda: self._for_sampling(p.ema_model),
                                                   p.schedule, metrics.write_evaluation))
        for subscriber in (checkpoints, previews, *self.subscribers):
            subscribers.subscribe(subscriber)
        return subscribers, checkpoints, previews

    # -- helpers -------------------------------------------------------------------------
    def _make_room(self, keep_last: int, estimate: int) -> None:
        """Free disk room for the next checkpoint (see :meth:`CheckpointKeeper.make_room`)."""
        CheckpointKeeper(self.folder, keep_last, {}, {}).make_room(keep_last, estimate)

    @torch.no_grad()
    def preview(self, ema_model: torch.nn.Module, schedule, num_classes: int, step: int,
                class_names: Optional[Sequence[str]] = None) -> Path:
        """Sample a grid with one row per class, labelled, from the EMA model."""
        from ..sampling import sample
        from ..sampling.api import resolve_steps

        p = self.cfg.preview
        device = next(ema_model.parameters()).device
        y = torch.arange(num_classes, device=device).repeat_interleave(p.per_class)
        g = torch.Generator().manual_seed(self.cfg.seed if p.seed is None else p.seed)
        shape = (len(y), ema_model.channels, ema_model.image_size, ema_model.image_size)
        x_T = torch.randn(shape, generator=g).to(device)
        ema_model.eval()
        ema_model = self._for_sampling(ema_model)
        x0 = sample(ema_model, schedule, x_T, y, generator=g, **p.model_copy(update={
            "steps": resolve_steps(p.sampler, p.steps, schedule.num_timesteps)}).sample_kwargs())
        imgs = to_uint8(x0).cpu()
        path = self.folder.grid(step)
        labels = [str(n) for n in class_names] if class_names else [str(k) for k in range(num_classes)]
        save_png(grid_image(class_rows(imgs, y.cpu(), num_classes, p.per_class), nrow=p.per_class,
                            row_labels=labels), path)
        return path

    def _for_sampling(self, ema_model: torch.nn.Module) -> torch.nn.Module:
        """The network as ``cbdm sample`` will see it: a copy changed by the methods that change
        it (merged adapters, ...), so the EMA weights being trained stay as they are."""
        from ..methods.base import TrainingMethod

        changing = [m for m in getattr(self, "methods", []) if type(m).for_sampling is not TrainingMethod.for_sampling]
        if not changing:
            return ema_model
        net = copy.deepcopy(ema_model)
        for m in changing:
            m.for_sampling(net)
        return net

    def request_stop(self) -> None:
        self._stop.set()

    def _install_signal_handlers(self) -> Callable[[], None]:
        if threading.current_thread() is not threading.main_thread():
            return lambda: None
        previous = {}

        def handler(signum, frame):
            self._stop.set()

        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, handler)

        def restore() -> None:
            for sig, h in previous.items():
                signal.signal(sig, h)

        return restore


def _warmup(warmup: int) -> Callable[[int], float]:
    """The learning-rate factor at a step: linear warm-up over ``warmup`` steps, then 1."""
    return (lambda s: min(1.0, (s + 1) / warmup)) if warmup > 0 else (lambda s: 1.0)


def _load_optimizer(optimizer: torch.optim.Optimizer, state: dict) -> None:
    """Load a checkpoint's optimizer state, with one clear error when it does not fit."""
    try:
        optimizer.load_state_dict(state)
    except (ValueError, KeyError, TypeError, IndexError, RuntimeError) as exc:
        raise CbdmError(f"--resume: the optimizer state in the checkpoint does not fit this model "
                        f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None
    match_param_layout(optimizer)
