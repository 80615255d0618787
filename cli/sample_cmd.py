"""``cbdm sample``: many samples from a trained run, in resumable shards."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any, Optional, Sequence

import click
from rich.console import Console
from rich.progress import BarColumn, Progress, ProgressColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.text import Text

from cbdm_core.errors import CbdmError

from .sampling_options import sampling_options, settings_from_options

DEFAULT_PER_CLASS = 10
DEFAULT_SHARD_SIZE = 5000

# `cbdm sample`'s own wording where it says more than the model's field descriptions.
SAMPLE_HELP = {
    "num": f"Number of images (default {DEFAULT_PER_CLASS} per class).",
    "out": "Sample folder (default <run_dir>/samples-<sampler>-<steps>-w<w>, then -KEY=VALUE for each -S option, "
           "--eta, --clip/--no-clip, --precision or --format png given, then -<guidance>[-KEY=VALUE] for a "
           "guidance other than plain cfg).",
}


class _RateColumn(ProgressColumn):
    """Images per second."""

    def render(self, task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("-- img/s" if speed is None else f"{speed:.1f} img/s", style="progress.data.speed")


def run_dir_of(path: Path) -> Path:
    """The run folder of a run folder or of a checkpoint file (``<run>/checkpoints/ckpt-*.safetensors``)."""
    from cbdm_core.run_folder import RunFolder  # lazy: `cbdm --help` loads no torch

    return RunFolder.of(path).path


def default_out_dir(path: Path, sampler: str, steps: int, guidance: float, guidance_method: str = "cfg",
                    guidance_options: Optional[dict[str, Any]] = None, *,
                    sampler_settings: Optional[dict[str, Any]] = None) -> Path:
    """``<run>/samples-<sampler>-<steps>-w<w>``, then ``-<key>=<value>`` for each sampler setting given
    (``sampler_settings``: ``-S`` options, a non-zero ``eta``, ``clip``, ``precision`` other than fp32),
    then ``-<guidance>[-<key>=<value>...]`` for any guidance but the default ``cfg`` without options:
    images made otherwise never land in (and are never refused by) the plain command's folder."""
    name = f"samples-{sampler}-{steps}-w{guidance:g}"
    name += "".join(f"-{_safe(k)}={_safe(_text(v))}" for k, v in sorted((sampler_settings or {}).items()))
    if guidance_method != "cfg" or guidance_options:
        name += "-" + _safe(guidance_method)
        name += "".join(f"-{_safe(k)}={_safe(_text(v))}" for k, v in sorted((guidance_options or {}).items()))
    return run_dir_of(path) / name


def _given_sampler_settings(how: Any, image_format: str = "npz") -> dict[str, Any]:
    """What of ``how`` besides sampler, steps and guidance changes the images or their files and was set:
    the ``-S`` options, a non-zero ``eta``, ``clip`` (on/off), a precision other than fp32, ``--format png``."""
    given = dict(how.sampler_options)
    if image_format != "npz":
        given["format"] = image_format
    if how.eta:
        given["eta"] = how.eta
    if how.clip_denoised is not None:
        given["clip"] = "on" if how.clip_denoised else "off"
    if how.precision != "fp32":
        given["precision"] = how.precision
    return given


def _text(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _safe(text: str) -> str:
    """``text`` with every character a folder name should not hold replaced by ``_`` (a clash
    of two such names is caught by the folder's manifest, never silently reused)."""
    return re.sub(r"[^A-Za-z0-9._+=-]", "_", text)


def _free_bytes(folder: Path) -> Optional[int]:
    """Free space on the disk that holds ``folder`` (or its nearest existing parent)."""
    probe = folder.absolute()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        return shutil.disk_usage(probe).free
    except OSError:
        return None


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000:
            return f"{n:.0f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


@click.command("sample")
@click.argument("run_path", metavar="RUN_DIR_OR_CHECKPOINT", type=click.Path(path_type=Path))
@sampling_options(("sampler", "steps", "eta", "guidance", "guidance_method", "guidance_options", "num", "classes",
                   "batch_size", "seed", "ema", "out"),
                  defaults={"seed": 0}, helps=SAMPLE_HELP)
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--var-type", help="ddpm variance: fixedlarge or fixedsmall.")
@click.option("--spacing", help="ddim timestep spacing: uniform, linspace or trailing.")
@sampling_options(("sampler_options", "clip_denoised", "precision"))
@click.option("--shard-size", type=int, default=DEFAULT_SHARD_SIZE, show_default=True, help="Images per shard file.")
@click.option("--format", "image_format", type=click.Choice(["npz", "png"]), default="npz", show_default=True,
              help="npz shards, or one PNG per image in class folders (<out>/<class>/000042.png).")
@click.option("--seeds", metavar="A-B[,C-D]", help="(Re)generate only these sample indices, e.g. 0-99 or 5,17.")
@click.option("--overwrite", is_flag=True, help="Replace samples made with other settings in --out.")
@click.option("--progress/--no-progress", default=True, show_default=True)
def sample(run_path: Path, device: str, var_type: Optional[str], spacing: Optional[str], shard_size: int,
           image_format: str, seeds: Optional[str], overwrite: bool, progress: bool, **options: Any) -> None:
    """Sample images from a trained run into resumable shards (re-run the same command to resume).

    Under torchrun (torchrun --nproc_per_node N -m cbdm_cli sample ...) every process makes a
    contiguous range of the images; the images are the same for any number of processes.
    """
    from cbdm_core.device import resolve_device, setup_distributed

    # Every sampling value is checked here, once, by the settings models (one line per error).
    how, job = settings_from_options(options)
    how.sampler_options = {**how.sampler_options, **_shortcuts(var_type, spacing)}
    if shard_size <= 0:
        raise CbdmError(f"--shard-size must be positive, got {shard_size}")
    ctx = setup_distributed(resolve_device(device))
    try:
        _sample(ctx, run_path, how, job, shard_size=shard_size, image_format=image_format, seeds=seeds,
                overwrite=overwrite, progress=progress)
    finally:
        ctx.close()


def parse_seeds(text: str) -> list[int]:
    """``"0-9,15"`` -> ``[0, ..., 9, 15]`` (inclusive ranges, like EDM's --seeds)."""
    out: list[int] = []
    for part in text.split(","):
        part = part.strip()
        lo, dash, hi = part.partition("-")
        try:
            a, b = int(lo), int(hi) if dash else int(lo)
        except ValueError:
            raise CbdmError(f"--seeds: {part!r} is not an index or a range A-B (e.g. 0-99 or 5,17)") from None
        if a < 0 or b < a:
            raise CbdmError(f"--seeds: {part!r} is not a range A-B with 0 <= A <= B")
        from cbdm_core.sampling.settings import MAX_SAMPLES  # here: the package imports torch

        if b >= MAX_SAMPLES or len(out) + b - a >= MAX_SAMPLES:
            raise CbdmError(f"--seeds: {part!r} reaches past the largest sample set ({MAX_SAMPLES} images)")
        out.extend(range(a, b + 1))
    return out


def _shortcuts(var_type: Optional[str], spacing: Optional[str]) -> dict[str, Any]:
    """The ``--var-type`` and ``--spacing`` shortcuts of ``-S var_type=...`` / ``-S spacing=...``."""
    return {k: v for k, v in (("var_type", var_type), ("spacing", spacing)) if v is not None}


def _warn_disk(say, run, num: int, out: Path) -> None:
    """Warn (not refuse) when the samples may not fit on the disk of ``out``."""
    from cbdm_core.sampling.generate import estimate_output_bytes

    image_shape = (int(run.meta.channels), int(run.meta.image_size), int(run.meta.image_size))
    need, free = estimate_output_bytes(num, image_shape), _free_bytes(out)
    if free is not None and need > free:
        say(f"warning: the samples need about {_size(need)} but only {_size(free)} is free "
            f"on the disk of {out}")


def _generate_with_bar(console: Console, say, show: bool, run, labels, num: int, out: Path, **kwargs: Any):
    """:func:`generate_samples` with a progress bar; Ctrl-C says how to resume and exits 130."""
    from cbdm_core.sampling.generate import generate_samples

    bar = Progress(TextColumn("[bold]sample"), BarColumn(), TextColumn("{task.completed:.0f}/{task.total:.0f}"),
                   _RateColumn(), TimeElapsedColumn(), TimeRemainingColumn(), console=console,
                   disable=not show)
    task = bar.add_task("sample", total=num)

    def on_ready(already: int) -> None:
        if already:
            say(f"resuming: {already} of {num} images already in {out}")
        # Start the rate clock after the skipped shards, so img/s counts new images only.
        bar.reset(task, total=num, completed=already)
        bar.start()

    def on_progress(done: float, total: int) -> None:
        bar.update(task, completed=done)

    try:
        return generate_samples(run, labels, out_dir=out, on_progress=on_progress, on_ready=on_ready, **kwargs)
    except KeyboardInterrupt:
        bar.stop()
        say(f"interrupted; complete shards are kept in {out} (re-run the same command to resume)")
        raise SystemExit(130)
    finally:
        bar.stop()


def _report(result, run, num: int, image_format: str, chosen: Optional[Sequence[int]] = None) -> None:
    """What was made, and the command that evaluates it (only for a complete folder)."""
    if chosen is not None:
        what = f"{len(chosen)} chosen image(s) of the {num} (--seeds) in {result.out_dir}"
    elif image_format == "png":
        what = f"{num} images as PNG class folders in {result.out_dir}"
    else:
        what = (f"{num} images in {len(result.shards)} shard(s) in {result.out_dir} "
                f"({len(result.generated)} written, {len(result.skipped)} kept)")
    click.echo(f"{what}; grid {result.grid}")
    if not _complete(result.manifest):
        click.echo(f"the folder holds part of the {num} images; the same command without --seeds completes it "
                   "(then cbdm eval)")
        return
    # The dataset is spelled out so the command works as printed (it is the run's anyway).
    data = run.config.data
    root = f" --data-root {data.root}" if data.root is not None else ""
    click.echo(f"next: cbdm eval {result.out_dir} --dataset {data.dataset}{root}")


def _complete(manifest: Path) -> bool:
    try:
        return bool(json.loads(Path(manifest).read_text()).get("complete"))
    except (OSError, ValueError, AttributeError):
        return False


def _sample(ctx, run_path: Path, how, job, *, shard_size: int, image_format: str, seeds: Optional[str],
            overwrite: bool, progress: bool) -> None:
    """Load the run and sample ``job`` with the settings ``how`` (both already validated)."""
    from cbdm_core.host_memory import keep_freed_host_memory
    from cbdm_core.run import load_run
    from cbdm_core.sampling.api import resolve_sampling
    from cbdm_core.sampling.plan import plan_labels
    from cbdm_core.sampling.settings import SamplingSettings

    console = Console(stderr=True, quiet=not ctx.is_main)  # under torchrun only rank 0 talks

    def say(message: str) -> None:
        console.print(message, markup=False, highlight=False, soft_wrap=True)

    resolved = resolve_sampling(how)  # unknown sampler or guidance (option): fail before loading anything; once
    chosen = parse_seeds(seeds) if seeds is not None else None
    run = load_run(run_path, ema=job.ema, device=ctx.device)
    if next(run.model.parameters()).device.type == "cpu":
        keep_freed_host_memory()  # re-use activation buffers instead of page-faulting every step
    num = DEFAULT_PER_CLASS * run.num_classes if job.num is None else job.num
    labels = plan_labels(job.classes, num, run.num_classes, run.meta.class_counts)
    resolved = resolved.with_steps(run.schedule.num_timesteps)
    how = resolved.settings
    if how.guidance > 0 and not run.trained_with_label_dropout:
        say(f"warning: {run.checkpoint} was trained without label dropout (p_uncond = 0), so its "
            "unconditional prediction is untrained; guidance may give poor images")
    given = _given_sampler_settings(how, image_format)
    out = job.out if job.out is not None else default_out_dir(run_path, how.sampler, how.steps, how.guidance,
                                                              how.guidance_method, how.guidance_options,
                                                              sampler_settings=given)
    sampling = resolved.replace(SamplingSettings.of(how, job, num=num))
    _warn_disk(say, run, num, out)
    result = _generate_with_bar(console, say, progress and ctx.is_main, run, labels, num, out, sampling=sampling,
                                shard_size=shard_size, overwrite=overwrite, image_format=image_format,
                                indices=chosen, ctx=ctx)
    if ctx.is_main:
        _report(result, run, num, image_format, chosen)
