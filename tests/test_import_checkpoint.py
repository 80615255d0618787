"""``cbdm import-checkpoint``: reference pytorch-ddpm / CBDM U-Net checkpoints -> cbdm runs.

A compact re-implementation of the reference U-Net (``tests/reference_unet.py``) is the
source model; the imported run must give the same outputs.
"""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner

from cbdm_cli.main import cli
from cbdm_core import load_run
from cbdm_core.errors import CbdmError, CheckpointError
from cbdm_core.importers import (
    ImportOptions,
    convert_state_dict,
    import_reference_checkpoint,
    infer_architecture,
    resolve_arch,
)
from cbdm_core.nets.unet import UNet, UNetOptions

from .reference_unet import RefUNet, randomised, save_reference_checkpoint

# ---------------------------------------------------------------- a reference checkpoint


@pytest.fixture(scope="module")
def ref(tmp_path_factory):
    base = tmp_path_factory.mktemp("ref")
    net, ema = save_reference_checkpoint(base / "ckpt.pt")
    return base / "ckpt.pt", net, ema


def _inputs(n=4, T=50):
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 3, 8, 8, generator=g), torch.randint(0, T, (n,), generator=g), torch.tensor([0, 1, 2, 1])


# ---------------------------------------------------------------- tests


def test_layout_maps_onto_this_unet():
    ours = UNet(UNetOptions(ch=32, ch_mult=[1, 2], attn=[1], num_res_blocks=1, cond_dim=9),
                image_size=8, channels=3, num_classes=3)
    sd = RefUNet().state_dict()
    conv = convert_state_dict(sd, infer_architecture(sd))
    own = ours.state_dict()
    assert set(conv) == set(own)
    assert all(conv[k].shape == own[k].shape for k in own)
    assert torch.equal(conv["label_embedding.weight"][3], torch.zeros(128))


def test_infer_architecture():
    sd = RefUNet(T=40, ch=32, ch_mult=(1, 2, 1), attn=(0, 2), num_res_blocks=2, num_class=5, augm=False).state_dict()
    a = infer_architecture(sd)
    assert (a.ch, a.channels, a.ch_mult, a.attn, a.num_res_blocks) == (32, 3, [1, 2, 1], [0, 2], 2)
    assert (a.num_classes, a.cond_dim, a.T) == (5, 0, 40)


def test_import_matches_reference(ref, tmp_path):
    src, net, ema = ref
    res = import_reference_checkpoint(src, tmp_path / "run", ImportOptions(image_size=8))
    assert res.checkpoint.name == "ckpt-00000123.safetensors"
    assert (tmp_path / "run" / "config.yaml").is_file()
    run = load_run(tmp_path / "run")  # EMA by default
    assert run.step == 123 and run.num_classes == 3 and run.schedule.num_timesteps == 50
    assert run.meta.imported_from == "ckpt.pt" and run.meta.cond_dim == 9
    assert run.meta.class_counts == [1, 1, 1] and run.meta.channels == 3
    x, t, y = _inputs()
    with torch.no_grad():
        assert torch.allclose(run.model(x, t, y), ema(x, t, y), atol=1e-5)
        null = torch.full_like(y, 3)
        assert torch.allclose(run.model(x, t, null), ema(x, t, None), atol=1e-5)
        aug = torch.randn(4, 9)
        assert torch.allclose(run.model(x, t, y, cond=aug), ema(x, t, y, augm=aug), atol=1e-5)
        raw = load_run(tmp_path / "run", ema=False).model
        assert torch.allclose(raw(x, t, y), net(x, t, y), atol=1e-5)
        assert not torch.allclose(raw(x, t, y), run.model(x, t, y), atol=1e-3)


def test_unconditional_bare_state_dict(tmp_path):
    model = randomised(RefUNet(num_class=0, augm=False), 3)
    torch.save({f"module.{k}": v for k, v in model.state_dict().items()}, tmp_path / "bare.pt")  # DataParallel
    import_reference_checkpoint(tmp_path / "bare.pt", tmp_path / "run", ImportOptions(image_size=8))
    run = load_run(tmp_path / "run")
    assert run.num_classes == 0 and run.step == 0 and run.meta.class_counts == []
    x, t, _ = _inputs()
    with torch.no_grad():
        assert torch.allclose(run.model(x, t, torch.zeros(4, dtype=torch.long)), model(x, t), atol=1e-5)


class Payload:
    pass


def test_refuses_non_tensor_pickle(tmp_path):
    torch.save({"net_model": RefUNet().state_dict(), "extra": Payload()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="refusing to unpickle"):
        import_reference_checkpoint(tmp_path / "evil.pt", tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_bad_files(tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    torch.save([1, 2], tmp_path / "list.pt")
    torch.save({"model": {}}, tmp_path / "nonet.pt")
    for name, msg in (("junk.pt", "junk.pt"), ("list.pt", "not a checkpoint dict"), ("nonet.pt", "no 'net_model'"),
                      ("missing.pt", "not found")):
        with pytest.raises(CheckpointError, match=msg):
            import_reference_checkpoint(tmp_path / name, tmp_path / "run")


def test_wrong_shapes_and_mismatched_options(ref, tmp_path):
    src = ref[0]
    sd = RefUNet().state_dict()
    sd["upblocks.0.block2.3.weight"] = torch.zeros(64, 64, 1, 1)
    torch.save({"net_model": sd}, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="upblocks.0.block2.3.weight"):
        import_reference_checkpoint(tmp_path / "bad.pt", tmp_path / "a", ImportOptions(image_size=8))
    with pytest.raises(CheckpointError, match=r"--ch 64 \(checkpoint: 32\).*--attn 2 \(checkpoint: 1\)"):
        import_reference_checkpoint(src, tmp_path / "b", ImportOptions(ch=64, attn=[2], image_size=8))
    with pytest.raises(CheckpointError, match=r"--T 1000 \(checkpoint: 50\)"):
        import_reference_checkpoint(src, tmp_path / "c", ImportOptions(T=1000, image_size=8))
    with pytest.raises(CbdmError, match="class-counts"):
        import_reference_checkpoint(src, tmp_path / "d", ImportOptions(class_counts=[1, 2], image_size=8))
    with pytest.raises(CbdmError, match="image size"):
        import_reference_checkpoint(src, tmp_path / "e", ImportOptions(image_size=7))
    arch = infer_architecture(sd)
    assert resolve_arch(arch, ImportOptions(ch=32, ch_mult=[1, 2], num_classes=3)).ch == 32


def test_cli_end_to_end(ref, tmp_path):
    runner = CliRunner()
    dest = tmp_path / "run"
    args = ["import-checkpoint", str(ref[0]), str(dest), "--image-size", "8", "--ch-mult", "1,2",
            "--class-names", "a,b,c", "--class-counts", "50,10,2"]
    res = runner.invoke(cli, args)
    assert res.exit_code == 0, res.output
    assert "step 123" in res.output
    res = runner.invoke(cli, args)
    assert res.exit_code != 0 and "--overwrite" in res.output and "Traceback" not in res.output
    assert runner.invoke(cli, [*args, "--overwrite"]).exit_code == 0
    res = runner.invoke(cli, ["import-checkpoint", str(ref[0]), str(tmp_path / "x"), "--num-classes", "10"])
    assert res.exit_code != 0 and "--num-classes 10 (checkpoint: 3)" in res.output
    res = runner.invoke(cli, ["sample", str(dest), "--steps", "3", "--num", "6", "--no-progress", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert "6 images" in res.output
