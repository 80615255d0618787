"""cbdm export --format diffusers and import-checkpoint --format diffusers (diffusers is optional)."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from cbdm_core.nets.unet import UNet, UNetOptions, timestep_embedding

from .helpers import cli_fails, cli_ok

diffusers = pytest.importorskip("diffusers", reason="diffusers not installed (pip install 'cbdm[diffusers]')")

TINY = {
    "model": {"backbone": "unet", "options": {"ch": 8, "ch_mult": [1, 2], "attn": [1], "num_res_blocks": 1,
                                              "dropout": 0.1, "num_groups": 4}},
    "diffusion": {"T": 100},
    "data": {"dataset": "digits-lt"},
    # A large lr so six steps move the class embeddings enough for guidance to matter.
    "optim": {"batch_size": 16, "steps": 6, "warmup": 1, "ema_decay": 0.5, "lr": 0.02},
    "preview": {"sampler": "ddim", "steps": 2, "per_class": 1},
    "log_every": 3,
}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    (root / "tiny.yaml").write_text(yaml.safe_dump(TINY))
    cli_ok("train", "--config", root / "tiny.yaml", "--out", root / "run", "--no-progress")
    return root / "run"


def test_time_embedding_matches_diffusers_after_permutation():
    """flip_sin_to_cos=False, freq_shift=0 gives our frequencies; only the (sin, cos) layout differs."""
    from diffusers.models.embeddings import get_timestep_embedding

    from cbdm_core.exporters.unet_mapping import _interleave_order

    t = torch.tensor([0, 1, 17, 999])
    ours = timestep_embedding(t, 16)
    theirs = get_timestep_embedding(t, 16, flip_sin_to_cos=False, downscale_freq_shift=0)
    assert torch.equal(ours[:, _interleave_order(16)], theirs)
    assert not torch.equal(ours, theirs)


def test_export_sample_equals_cbdm_sample_and_round_trip(run_dir, tmp_path):
    """train -> export -> diffusers pipeline gives cbdm's DDIM images; export -> import gives the same weights."""
    from diffusers import DiffusionPipeline

    from cbdm_core.run import load_run
    from cbdm_core.sampling import sample

    out = tmp_path / "hf"
    cli_ok("export", run_dir, "--format", "diffusers", "--out", out)
    assert {p.name for p in out.iterdir()} >= {"model_index.json", "unet", "scheduler", "pipeline.py", "README.md"}
    sched = json.loads((out / "scheduler" / "scheduler_config.json").read_text())
    assert (sched["num_train_timesteps"], sched["beta_schedule"], sched["clip_sample"]) == (100, "linear", False)
    assert json.loads((out / "unet" / "config.json").read_text())["num_class_embeds"] == 11  # 10 + null
    pipe = DiffusionPipeline.from_pretrained(str(out), trust_remote_code=True)
    pipe.set_progress_bar_config(disable=True)
    run = load_run(run_dir)
    x_T = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([0, 3, 9, 10])  # 10: the null label
    images = {}
    for w in (0.0, 2.0):
        ours = sample(run.model, run.schedule, x_T, y, sampler="ddim", steps=10, eta=0.0, guidance=w)
        theirs = pipe(class_labels=y, guidance_scale=w, num_inference_steps=10, latents=x_T,
                      output_type="latent").images
        torch.testing.assert_close(theirs, ours, rtol=1e-5, atol=1e-5)
        png = pipe(class_labels=y, guidance_scale=w, num_inference_steps=10, latents=x_T, output_type="pt").images
        torch.testing.assert_close(png, (ours / 2 + 0.5).clamp(0, 1), rtol=1e-5, atol=1e-5)
        images[w] = ours
    # Guidance changes the conditional rows by far more than the tolerance, so the formula is tested.
    assert (images[0.0][:3] - images[2.0][:3]).abs().max() > 1e-3
    torch.testing.assert_close(images[0.0][3], images[2.0][3], rtol=0, atol=0)  # null row: unguided

    cli_ok("import-checkpoint", "--format", "diffusers", out, tmp_path / "back")
    back = load_run(tmp_path / "back")
    a, b = run.model.state_dict(), back.model.state_dict()
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert back.step == run.step and back.meta.class_names == run.meta.class_names
    again = sample(back.model, back.schedule, x_T, y, sampler="ddim", steps=10, eta=0.0, guidance=2.0)
    assert torch.equal(again, images[2.0])


def test_export_raw_weights_differ_from_ema(run_dir, tmp_path):
    from safetensors.torch import load_file

    cli_ok("export", run_dir, "--out", tmp_path / "ema")
    cli_ok("export", run_dir, "--out", tmp_path / "raw", "--weights", "model")
    ema = load_file(str(tmp_path / "ema" / "unet" / "diffusion_pytorch_model.safetensors"))
    raw = load_file(str(tmp_path / "raw" / "unet" / "diffusion_pytorch_model.safetensors"))
    assert not torch.equal(ema["conv_in.weight"], raw["conv_in.weight"])
    cli_fails("export", run_dir, "--out", tmp_path / "ema", match="not an empty folder")


def test_unmappable_options_are_refused():
    from cbdm_core.errors import CbdmError
    from cbdm_core.exporters.unet_mapping import check_mappable

    with pytest.raises(CbdmError, match=r"ch_mult\[0\] = 2.*cond_dim = 9"):
        check_mappable(UNetOptions(ch=8, ch_mult=[2, 2], num_groups=4), cond_dim=9)


@pytest.mark.parametrize("opts", [dict(ch_mult=[1, 2, 3], attn=[0, 2], num_res_blocks=2), dict(attn=[])])
def test_mapping_is_exact_for_other_layouts(opts):
    """Attention at other levels, three levels, two blocks per level: the same network."""
    from diffusers import UNet2DModel

    from cbdm_core.exporters.unet_mapping import diffusers_config, from_diffusers, to_diffusers

    o = UNetOptions(ch=8, num_groups=4, dropout=0.0, **{"ch_mult": [1, 2], **opts})
    torch.manual_seed(0)
    net = UNet(o, image_size=8, channels=3, num_classes=2).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.1 * torch.randn_like(p))
        net.label_embedding.weight[-1].zero_()
    d = UNet2DModel(**diffusers_config(o, image_size=8, channels=3, num_classes=2)).eval()
    d.load_state_dict(to_diffusers(net.state_dict(), o), strict=True)
    x, t, y = torch.randn(3, 3, 8, 8), torch.tensor([0, 7, 999]), torch.tensor([0, 1, 2])
    with torch.no_grad():
        torch.testing.assert_close(d(x, t, class_labels=y).sample, net(x, t, y), rtol=1e-5, atol=1e-5)
    back = from_diffusers(d.state_dict(), o)
    assert all(torch.equal(back[k], v) for k, v in net.state_dict().items())


def test_import_refuses_nonzero_null_row_unless_append_null(run_dir, tmp_path):
    from safetensors.torch import load_file, save_file

    out = tmp_path / "hf"
    cli_ok("export", run_dir, "--out", out)
    weights = out / "unet" / "diffusion_pytorch_model.safetensors"
    sd = load_file(str(weights))
    sd["class_embedding.weight"][-1] = 0.5
    save_file(sd, str(weights))
    cli_fails("import-checkpoint", "--format", "diffusers", out, tmp_path / "a", match="--append-null")
    cli_ok("import-checkpoint", "--format", "diffusers", out, tmp_path / "b", "--append-null")
    from cbdm_core.run import load_run

    assert load_run(tmp_path / "b").num_classes == 11
    cfg = json.loads((out / "unet" / "config.json").read_text())
    (out / "unet" / "config.json").write_text(json.dumps({**cfg, "resnet_time_scale_shift": "scale_shift"}))
    cli_fails("import-checkpoint", "--format", "diffusers", out, tmp_path / "c", match="resnet_time_scale_shift")
