"""``cbdm export``: a trained run -> a folder another library loads (diffusers)."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("export")
@click.argument("run", type=click.Path(path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["diffusers"]), default="diffusers", show_default=True,
              help="Folder layout to write.")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Folder to write (must be new or empty).")
@click.option("--weights", type=click.Choice(["ema", "model"]), default="ema", show_default=True,
              help="EMA weights or the raw (non-EMA) weights.")
@click.option("--overwrite", is_flag=True, help="Replace a non-empty --out folder.")
def export(run: Path, fmt: str, out: Path, weights: str, overwrite: bool) -> None:
    """Write the U-Net run RUN (folder or checkpoint) as a diffusers folder.

    The folder holds unet/ (UNet2DModel with the classes and the null label as class
    embeddings), scheduler/ (DDIM, the run's noise schedule), pipeline.py (class-conditional
    sampling with classifier-free guidance) and a model card. Load it with
    DiffusionPipeline.from_pretrained(OUT, trust_remote_code=True).
    """
    from cbdm_core.exporters import export_diffusers

    res = export_diffusers(run, out, weights=weights, overwrite=overwrite)
    click.echo(f"exported {run} (step {res.step}, {weights} weights, {res.num_classes} classes) -> {res.out} "
               f"[{fmt}; max |eps diff| vs the run {res.max_abs_diff:.2g}]")
