"""The training engine: dataset -> augmentation -> objective(model) -> optimizer/EMA -> checkpoint."""

from __future__ import annotations

import copy
import json
import shutil
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch

from .. import build
from ..atomic import atomic_write_text
from ..checkpoint import (Checkpoint, checkpoint_name, list_checkpoints, load_checkpoint, load_state_checked,
                          save_checkpoint)
from ..config import TrainConfig, dump_config_yaml, load_config_file, parse_train_config
from ..errors import CbdmError
from ..images import class_rows, grid_image, save_png, to_float, to_uint8
from .batch_source import BatchSource
from .batches import BatchIndexer, step_seed
from .distributed import DistContext, setup_distributed
from ..host_memory import keep_freed_host_memory
from .precision import Precision, describe_device, match_param_layout, resolve_precision
from .step import build_train_step

# Fields that may change when resuming a run.
RESUMABLE_CHANGES = {("optim", "steps"), ("log_every",), ("sample_every",), ("ckpt_every",), ("keep_last",),
                     ("device",), ("preview",), ("on_nonfinite",), ("perf",)}


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    checkpoint: Optional[Path]
    grid: Optional[Path]
    interrupted: bool = False


def _diff_configs(a: dict, b: dict, prefix: tuple = ()) -> list[tuple]:
    out = []
    for key in sorted(set(a) | set(b)):
        path = prefix + (key,)
        va, vb = a.get(key), b.get(key)
        if isinstance(va, dict) and isinstance(vb, dict):
            out.extend(_diff_configs(va, vb, path))
        elif va != vb:
            out.append(path)
    return out


class Trainer:
    """Trains one run folder.

    Args:
        cfg: the resolved configuration.
        run_dir: where checkpoints, logs and grids go.
        resume: continue from the latest checkpoint in ``run_dir``.
        overwrite: replace a different run already in ``run_dir``.
        on_log: called with each metrics record (for progress display).
    """

    def __init__(self, cfg: TrainConfig, run_dir: Path, *, resume: bool = False, overwrite: bool = False,
                 on_log: Optional[Callable[[dict], None]] = None, on_start: Optional[Callable] = None):
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.resume = resume
        self.overwrite = overwrite
        self.on_log = on_log
        self.on_start = on_start
        self._stop = threading.Event()
        self.reinitialised: list[str] = []
        self.precision: Optional[Precision] = None  # resolved at the start of run()
        self.device_name = ""

    # -- run folder -----------------------------------------------------------------
    @property
    def ckpt_dir(self) -> Path:
        return self.run_dir / "checkpoints"

    def _prepare_run_dir(self) -> Optional[Checkpoint]:
        cfg_path = self.run_dir / "config.yaml"
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            probe = self.run_dir / ".write-test"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise CbdmError(f"run folder {self.run_dir} is not writable: {exc.strerror or exc}") from None
        # Temporary files of a write that was killed midway are never complete checkpoints.
        if self.ckpt_dir.is_dir():
            for stale in self.ckpt_dir.glob(".ckpt-*.tmp"):
                stale.unlink(missing_ok=True)
        existing = list_checkpoints(self.ckpt_dir)
        if self.resume:
            if not existing:
                raise CbdmError(f"--resume: no checkpoint in {self.ckpt_dir}")
            saved = parse_train_config(load_config_file(cfg_path), str(cfg_path)) if cfg_path.exists() else None
            ckpt = load_checkpoint(existing[-1][1], with_optim=True)
            saved = saved or parse_train_config(ckpt.config, "checkpoint config")
            diffs = [d for d in _diff_configs(saved.model_dump(mode="json"), self.cfg.model_dump(mode="json"))
                     if not any(d[:len(p)] == p for p in RESUMABLE_CHANGES)]
            if diffs:
                names = ", ".join(".".join(map(str, d)) for d in diffs[:6])
                raise CbdmError(f"--resume: the options differ from the run in {self.run_dir} in: {names}")
            return ckpt
        if cfg_path.exists() or existing:
            if not self.overwrite:
                raise CbdmError(f"{self.run_dir} already holds a run; use --resume to continue it or --overwrite")
            shutil.rmtree(self.ckpt_dir, ignore_errors=True)
            for name in ("metrics.jsonl", "config.yaml"):
                (self.run_dir / name).unlink(missing_ok=True)
        return None

    # -- main loop ----------------------------------------------------------------------
    def run(self) -> TrainResult:
        cfg = self.cfg
        build.check_components(cfg)
        ctx = setup_distributed(build.resolve_device(cfg.device))
        try:
            return self._run(ctx)
        finally:
            ctx.close()

    def _run(self, ctx: DistContext) -> TrainResult:
        cfg, o = self.cfg, self.cfg.optim
        device = ctx.device
        ctx.shard(o.batch_size)  # a global batch that does not split evenly fails before any work
        # Rank 0 alone touches the run folder; its errors are raised on every rank.
        start_ckpt = ctx.main_first(self._prepare_run_dir, others=False)
        if not ctx.is_main and self.resume:
            start_ckpt = load_checkpoint(list_checkpoints(self.ckpt_dir)[-1][1], with_optim=True)
        data = ctx.main_first(lambda: build.load_training_data(cfg))  # rank 0 first: it may download
        precision = resolve_precision(cfg.perf, device)
        self.precision = precision  # the resolved speed choices, for the run header
        self.device_name = describe_device(device)
        if cfg.perf.keep_host_memory == "on" or (cfg.perf.keep_host_memory == "auto" and device.type == "cpu"):
            keep_freed_host_memory()

        augmentation = build.build_augmentation(cfg)
        schedule = build.build_schedule(cfg)
        counts = data.class_counts
        cond_dim = int(getattr(augmentation, "cond_dim", 0) or 0)
        torch.manual_seed(cfg.seed)
        model = build.build_model(cfg, image_size=data.image_size, channels=data.channels,
                                  num_classes=data.num_classes, cond_dim=cond_dim).to(device)
        ema_model = copy.deepcopy(model).eval().requires_grad_(False)
        regularizers = build.build_regularizers(cfg, class_counts=counts, num_classes=data.num_classes,
                                                schedule=schedule)
        lr_at = (lambda s: min(1.0, (s + 1) / o.warmup)) if o.warmup > 0 else (lambda s: 1.0)

        weights = None
        if cfg.data.resample != "none":
            from ..data.resample import class_sampling_weights

            weights = class_sampling_weights(data.labels, cfg.data.resample)
        source = BatchSource(data.images, data.labels, BatchIndexer(len(data), o.batch_size, cfg.seed, weights),
                             device)

        step = 0
        if start_ckpt is None and cfg.init_from is not None:
            from .init_from import init_from_checkpoint

            self.reinitialised = init_from_checkpoint(model, cfg.init_from)
            ema_model.load_state_dict(model.state_dict())
        if start_ckpt is not None:
            load_state_checked(model, start_ckpt.model, "checkpoint model weights")
            load_state_checked(ema_model, start_ckpt.ema, "checkpoint EMA weights")
            step = start_ckpt.step
        train_step = build_train_step(
            model, ema_model, build.build_base_loss(cfg, schedule), regularizers, schedule=schedule,
            num_classes=data.num_classes, p_uncond=cfg.objective.p_uncond,
            drop_whole_batch=cfg.objective.drop_whole_batch, lr=o.lr, grad_clip=o.grad_clip,
            ema_decay=o.ema_decay, ema_warmup=o.ema_warmup, precision=precision, ctx=ctx, batch_size=o.batch_size)
        optimizer = train_step.optimizer
        if start_ckpt is not None and start_ckpt.optim is not None:
            optimizer.load_state_dict(start_ckpt.optim)
            match_param_layout(optimizer)
        meta = {"num_classes": data.num_classes, "image_size": data.image_size, "channels": data.channels,
                "class_counts": counts.tolist(), "class_names": data.class_names, "dataset": data.name,
                "cond_dim": cond_dim, "speed": precision.as_dict()}
        if ctx.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.run_dir / "config.yaml", dump_config_yaml(cfg))
            if self.on_start:
                self.on_start(data, model, step)

        bad = torch.zeros((), dtype=torch.bool, device=device)  # any non-finite step since start

        def check_finite() -> None:
            if bool(ctx.any_device(bad)):
                raise CbdmError(f"non-finite loss or gradient before step {step}; stopped without saving "
                                f"(the last good checkpoint is kept in {self.ckpt_dir}; "
                                "--set on_nonfinite=skip skips such steps instead)")

        def save(at_step: int) -> Optional[Path]:
            check_finite()
            path = None
            if ctx.is_main:
                path = self.ckpt_dir / checkpoint_name(at_step)
                save_checkpoint(path, Checkpoint(step=at_step, config=cfg.model_dump(mode="json"),
                                                 model=model.state_dict(), ema=ema_model.state_dict(),
                                                 optim=optimizer.state_dict(), meta=meta))
                for _, old in list_checkpoints(self.ckpt_dir)[:-cfg.keep_last]:
                    old.unlink(missing_ok=True)
            ctx.barrier()
            return path

        def preview(at_step: int) -> Optional[Path]:
            path = self.preview(ema_model, schedule, data.num_classes, at_step) if ctx.is_main else None
            ctx.barrier()
            return path

        restore = self._install_signal_handlers()
        last_ckpt: Optional[Path] = None
        grid: Optional[Path] = None
        sums: dict[str, torch.Tensor] = {}
        skipped = 0
        window_start, window_steps = time.perf_counter(), 0
        log_path = self.run_dir / "metrics.jsonl"
        skip_mode = cfg.on_nonfinite == "skip"
        try:
            model.train()
            # Every rank must agree to stop, or one would wait for the others' gradients forever.
            while step < o.steps and not ctx.any(self._stop.is_set()):
                torch.manual_seed(step_seed(cfg.seed, step))
                images, labels = source.batch(step)
                x0 = to_float(images)
                g = torch.Generator(device=device).manual_seed(step_seed(cfg.seed, step, stream=3))
                x0, cond = augmentation(x0, g)
                if precision.channels_last:
                    x0 = x0.contiguous(memory_format=torch.channels_last)
                out = train_step(step, x0, labels, cond, lr=o.lr * lr_at(step), skip_nonfinite=skip_mode)
                if not out.applied:
                    skipped += 1
                    step += 1
                    continue
                bad = bad | ~out.finite
                step += 1
                window_steps += 1
                for k, v in out.terms.items():
                    sums[k] = sums.get(k, 0.0) + v
                if step % cfg.log_every == 0 or step == o.steps:
                    check_finite()
                    means = dict(zip(sums, ctx.mean(list(sums.values()))))
                    if ctx.is_main:
                        self._log(log_path, step, means, window_steps, optimizer.param_groups[0]["lr"],
                                  window_steps * o.batch_size / max(time.perf_counter() - window_start, 1e-9),
                                  skipped)
                    sums, window_start, window_steps = {}, time.perf_counter(), 0
                if cfg.ckpt_every and step % cfg.ckpt_every == 0 and step < o.steps:
                    last_ckpt = save(step)
                if cfg.sample_every and step % cfg.sample_every == 0 and step < o.steps:
                    grid = preview(step)
                    model.train()
            interrupted = self._stop.is_set() or step < o.steps
            last_ckpt = save(step)
            if not interrupted:
                grid = preview(step)
        finally:
            restore()
        return TrainResult(self.run_dir, step, last_ckpt, grid, interrupted)

    def _log(self, path: Path, step: int, sums: dict[str, torch.Tensor], steps: int, lr: float,
             images_per_sec: float, skipped: int) -> None:
        record = {"step": step, **{k: float(v) / max(steps, 1) for k, v in sums.items()}, "lr": lr,
                  "images_per_sec": images_per_sec}
        if skipped:
            record["skipped_steps"] = skipped
        with open(path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.on_log:
            self.on_log(record)

    # -- helpers -------------------------------------------------------------------------
    @torch.no_grad()
    def preview(self, ema_model: torch.nn.Module, schedule, num_classes: int, step: int) -> Path:
        """Sample a grid with one row per class from the EMA model."""
        from ..sampling import sample

        p = self.cfg.preview
        device = next(ema_model.parameters()).device
        y = torch.arange(num_classes, device=device).repeat_interleave(p.per_class)
        g = torch.Generator().manual_seed(self.cfg.seed)
        shape = (len(y), ema_model.channels, ema_model.image_size, ema_model.image_size)
        x_T = torch.randn(shape, generator=g).to(device)
        ema_model.eval()
        x0 = sample(ema_model, schedule, x_T, y, sampler=p.sampler, steps=p.steps, guidance=p.guidance,
                    generator=g)
        imgs = to_uint8(x0).cpu()
        path = self.run_dir / "samples" / f"grid-{step:08d}.png"
        save_png(grid_image(class_rows(imgs, y.cpu(), num_classes, p.per_class), nrow=p.per_class), path)
        return path

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
