"""``cbdm import-checkpoint``: a reference pytorch-ddpm / CBDM checkpoint, or a diffusers
``UNet2DModel`` folder (``--format diffusers``) -> a cbdm run folder."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import click

from cbdm_core.errors import CbdmError


def _int_list(text: Optional[str], flag: str) -> Optional[list[int]]:
    """``"1,2,2,2"`` -> ``[1, 2, 2, 2]``; ``""`` -> ``[]``; ``None`` stays ``None``."""
    if text is None:
        return None
    parts = [p.strip() for p in text.split(",") if p.strip()]
    try:
        return [int(p) for p in parts]
    except ValueError:
        raise CbdmError(f"{flag} {text!r}: expected a comma list of integers like 1,2,2,2") from None


def _name_list(text: Optional[str]) -> Optional[list[str]]:
    return None if text is None else [p.strip() for p in text.split(",")]


@click.command("import-checkpoint")
@click.argument("src", type=click.Path(path_type=Path))
@click.argument("dest", type=click.Path(path_type=Path))
@click.option("--ch", type=int, help="Base channels (checked against the checkpoint).")
@click.option("--channels", type=int, help="Image channels (checked against the checkpoint).")
@click.option("--ch-mult", help="Channel multipliers, e.g. 1,2,2,2 (checked against the checkpoint).")
@click.option("--attn", help="Attention levels, e.g. 1; '' for none (checked against the checkpoint).")
@click.option("--num-res-blocks", type=int, help="Residual blocks per level (checked against the checkpoint).")
@click.option("--num-classes", type=int, help="Classes (checked; 0 for an unconditional model).")
@click.option("--cond-dim", type=int, help="Augmentation-condition size (checked; 9 with ADA, else 0).")
@click.option("--T", "T", type=int, help="Diffusion steps (default: the checkpoint's time table, else 1000).")
@click.option("--beta-1", type=float, default=1e-4, show_default=True)
@click.option("--beta-T", "beta_T", type=float, default=0.02, show_default=True)
@click.option("--image-size", type=int, default=32, show_default=True)
@click.option("--dropout", type=float, default=0.1, show_default=True)
@click.option("--num-groups", type=int, default=32, show_default=True, help="GroupNorm groups (32 in the reference).")
@click.option("--dataset", default="imported", show_default=True, help="Dataset name recorded in the run.")
@click.option("--class-counts", help="Training images per class, e.g. 5000,2997,... (default: 1 each).")
@click.option("--class-names", help="Class names, comma separated (default: 0,1,...).")
@click.option("--overwrite", is_flag=True, help="Write into a non-empty DEST, replacing its checkpoints.")
@click.option("--format", "fmt", type=click.Choice(["reference", "diffusers"]), default="reference",
              show_default=True, help="reference: a pytorch-ddpm/CBDM .pt; diffusers: a folder with unet/ "
              "(UNet2DModel with class embeddings) and scheduler/.")
@click.option("--append-null", is_flag=True,
              help="diffusers: every class-embedding row is a class; add a zero null-label row.")
def import_checkpoint(src: Path, dest: Path, ch: Optional[int], channels: Optional[int], ch_mult: Optional[str],
                      attn: Optional[str], num_res_blocks: Optional[int], num_classes: Optional[int],
                      cond_dim: Optional[int], T: Optional[int], beta_1: float, beta_T: float, image_size: int,
                      dropout: float, num_groups: int, dataset: str, class_counts: Optional[str],
                      class_names: Optional[str], overwrite: bool, fmt: str, append_null: bool) -> None:
    """Convert a pytorch-ddpm / CBDM checkpoint SRC (.pt) into the run folder DEST.

    The architecture is read off the weights; options given here are checked against it.
    SRC is read with torch.load(weights_only=True): no code in it runs. With --format
    diffusers SRC is a folder (as `cbdm export` writes) read from safetensors and JSON only;
    the architecture options above do not apply to it.
    """
    if fmt == "diffusers":
        _import_diffusers(src, dest, append_null=append_null, overwrite=overwrite)
        return
    from cbdm_core.importers import ImportOptions, import_reference_checkpoint

    options = ImportOptions(
        ch=ch, channels=channels, ch_mult=_int_list(ch_mult, "--ch-mult"), attn=_int_list(attn, "--attn"),
        num_res_blocks=num_res_blocks, num_classes=num_classes, cond_dim=cond_dim, T=T, image_size=image_size,
        beta_1=beta_1, beta_T=beta_T, dropout=dropout, num_groups=num_groups, dataset=dataset,
        class_counts=_int_list(class_counts, "--class-counts"), class_names=_name_list(class_names))
    res = import_reference_checkpoint(src, dest, options, overwrite=overwrite)
    a = res.arch
    click.echo(f"imported {src} (step {res.step}): ch {a.ch}, ch_mult {','.join(map(str, a.ch_mult))}, "
               f"attn {','.join(map(str, a.attn)) or 'none'}, {a.num_res_blocks} res blocks/level, "
               f"{a.num_classes} classes, cond_dim {a.cond_dim}, T {a.T} -> {res.checkpoint}")


def _import_diffusers(src: Path, dest: Path, *, append_null: bool, overwrite: bool) -> None:
    from cbdm_core.importers import import_diffusers_unet

    path, cfg, meta = import_diffusers_unet(src, dest, append_null=append_null, overwrite=overwrite)
    o = cfg.model.options
    click.echo(f"imported {src} (UNet2DModel): ch {o['ch']}, ch_mult {','.join(map(str, o['ch_mult']))}, "
               f"attn {','.join(map(str, o['attn'])) or 'none'}, {meta.num_classes} classes, "
               f"{cfg.diffusion.schedule} T {cfg.diffusion.T} -> {path}")
