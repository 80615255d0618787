"""What ``cbdm train`` shows while it runs: the run header, a live bar or plain progress lines."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from cbdm_core.config import TrainConfig
from cbdm_core.training.monitor import BOOKKEEPING, evaluation_line, is_evaluation, progress_line


def counts_table(data: Any) -> Table:
    """The training set's images per class."""
    table = Table(title=f"{data.name}: {len(data)} images, {data.num_classes} classes", show_edge=False)
    table.add_column("class", justify="right")
    table.add_column("name")
    table.add_column("images", justify="right")
    for i, (name, n) in enumerate(zip(data.class_names, data.class_counts.tolist())):
        table.add_row(str(i), str(name), str(n))
    return table


class TrainDisplay:
    """The trainer's ``on_start``/``on_step``/``on_log``/``on_status`` callbacks for one run.

    Under torchrun only rank 0 talks. Without a terminal (nohup, SLURM) a live bar prints
    nothing until the end, so plain lines are printed instead.
    """

    def __init__(self, cfg: TrainConfig, out: Path, progress: bool):
        self.cfg, self.out = cfg, out
        self.trainer: Any = None  # set once the trainer exists (the header reads its speed choices)
        self.console = Console(stderr=True, quiet=os.environ.get("RANK", "0") != "0")
        live = progress and self.console.is_terminal
        self.plain = progress and not self.console.is_terminal
        self.bar = Progress(TextColumn("[bold]train"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                            TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                            console=self.console, disable=not live)
        self.task = self.bar.add_task("train", total=cfg.optim.steps, info="")
        self.clock = {"start": time.perf_counter(), "step0": 0}

    def say(self, message: str) -> None:
        # Paths and commands are never wrapped, so they can be copied.
        self.console.print(message, markup=False, highlight=False, soft_wrap=True)

    def on_start(self, data: Any, model: Any, step: int) -> None:
        """The run header (data, model, speed choices), then the bar starts."""
        cfg, out, trainer = self.cfg, self.out, self.trainer
        n_params = sum(p.numel() for p in model.parameters())
        self.console.print(counts_table(data))
        self.say(f"model {cfg.model.backbone}: {n_params / 1e6:.2f}M parameters; run folder {out}")
        self.say(f"step: {trainer.precision.describe()} on {trainer.device_name}")
        if cfg.init_from is not None and step == 0:
            fresh = ", ".join(trainer.reinitialised) or "none"
            self.say(f"initialised from {cfg.init_from}; re-initialised: {fresh}")
        if "tensorboard" in cfg.log:
            self.say(f"TensorBoard: tensorboard --logdir {trainer.folder.tensorboard}")
        self.clock.update(start=time.perf_counter(), step0=step)
        self.bar.update(self.task, completed=step)
        self.bar.start()

    def on_step(self, step: int) -> None:
        self.bar.update(self.task, completed=step)  # cheap: rich redraws on its own clock

    def on_log(self, rec: dict) -> None:
        """An evaluation line, a plain progress line, or the bar's loss text."""
        if is_evaluation(rec):
            self.say(evaluation_line(rec))
            return
        steps = self.cfg.optim.steps
        if self.plain:
            done = rec["step"] - self.clock["step0"]
            rate = (time.perf_counter() - self.clock["start"]) / max(done, 1)
            self.say(progress_line(rec, steps, rate * (steps - rec["step"]) if done else None))
            return
        if "total" not in rec:  # every step of the window was skipped (on_nonfinite=skip)
            self.bar.update(self.task, completed=rec["step"], info=f"{rec.get('skipped_steps', 0)} steps skipped")
            return
        # Every term the methods log, after the total and the base loss.
        extra = "".join(f" {k} {v:.4g}" for k, v in rec.items()
                        if k not in BOOKKEEPING and k not in ("total", "diffusion"))
        info = f"loss {rec['total']:.4f} diff {rec['diffusion']:.4f}{extra} {rec['images_per_sec']:.0f} img/s"
        self.bar.update(self.task, completed=rec["step"], info=info)

    def stop(self) -> None:
        self.bar.stop()

    def finished(self, result: Any) -> None:
        """The closing lines; exit status 130 when the run was interrupted."""
        if result.interrupted:
            self.say(f"interrupted at step {result.step}; checkpoint {result.checkpoint}")
            self.say(f"continue with: cbdm train --out {self.out} --resume")
            raise SystemExit(130)
        self.say(f"done: step {result.step}, checkpoint {result.checkpoint}, grid {result.grid}")
        self.say(f"next: cbdm sample {self.out}")


def default_out(cfg: TrainConfig) -> Path:
    """``runs/<dataset>-<time>``: the run folder when ``--out`` is not given."""
    import datetime as _dt

    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{cfg.data.dataset}-{stamp}"


__all__ = ["TrainDisplay", "counts_table", "default_out"]
