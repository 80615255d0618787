"""``cbdm import-checkpoint``: reference pytorch-ddpm / CBDM U-Net checkpoints -> cbdm runs.

A compact re-implementation of the reference U-Net (its module names, its
time-embedding table, its bmm attention) is the source model; the imported
run must give the same outputs.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from torch import nn

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

# ---------------------------------------------------------------- reference-layout U-Net


class Swish(nn.Module):
    def forward(self, x):
        return x * torch.sigmoid(x)


class TimeEmbedding(nn.Module):
    def __init__(self, T: int, d_model: int, dim: int):
        super().__init__()
        freq = torch.exp(-torch.arange(0, d_model, step=2) / d_model * math.log(10000))
        ang = torch.arange(T).float()[:, None] * freq[None, :]
        table = torch.stack([torch.sin(ang), torch.cos(ang)], dim=-1).view(T, d_model)
        self.timembedding = nn.Sequential(nn.Embedding.from_pretrained(table), nn.Linear(d_model, dim), Swish(),
                                          nn.Linear(dim, dim))

    def forward(self, t):
        return self.timembedding(t)


class RefDown(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.main = nn.Conv2d(c, c, 3, stride=2, padding=1)

    def forward(self, x, temb):
        return self.main(x)


class RefUp(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.main = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x, temb):
        return self.main(nn.functional.interpolate(x, scale_factor=2, mode="nearest"))


class RefAttn(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.group_norm = nn.GroupNorm(32, c)
        self.proj_q, self.proj_k, self.proj_v, self.proj = (nn.Conv2d(c, c, 1) for _ in range(4))

    def forward(self, x):
        B, C, H, W = x.shape
        h = self.group_norm(x)
        q = self.proj_q(h).permute(0, 2, 3, 1).reshape(B, H * W, C)
        k = self.proj_k(h).reshape(B, C, H * W)
        w = torch.softmax(torch.bmm(q, k) * C ** -0.5, dim=-1)
        v = self.proj_v(h).permute(0, 2, 3, 1).reshape(B, H * W, C)
        h = torch.bmm(w, v).reshape(B, H, W, C).permute(0, 3, 1, 2)
        return x + self.proj(h)


class RefRes(nn.Module):
    def __init__(self, cin, cout, tdim, dropout, attn=False):
        super().__init__()
        self.block1 = nn.Sequential(nn.GroupNorm(32, cin), Swish(), nn.Conv2d(cin, cout, 3, padding=1))
        self.temb_proj = nn.Sequential(Swish(), nn.Linear(tdim, cout))
        self.block2 = nn.Sequential(nn.GroupNorm(32, cout), Swish(), nn.Dropout(dropout),
                                    nn.Conv2d(cout, cout, 3, padding=1))
        self.shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()
        self.attn = RefAttn(cout) if attn else nn.Identity()

    def forward(self, x, temb):
        h = self.block1(x) + self.temb_proj(temb)[:, :, None, None]
        return self.attn(self.block2(h) + self.shortcut(x))


class RefUNet(nn.Module):
    """The pytorch-ddpm / CBDM U-Net layout (cond: label_embedding, augm: augm_embedding)."""

    def __init__(self, T=50, ch=32, ch_mult=(1, 2), attn=(1,), num_res_blocks=1, dropout=0.1,
                 num_class=3, augm=True, in_ch=3):
        super().__init__()
        tdim = ch * 4
        self.time_embedding = TimeEmbedding(T, ch, tdim)
        if num_class:
            self.label_embedding = nn.Embedding(num_class, tdim)
        if augm:
            self.augm_embedding = nn.Linear(9, tdim, bias=False)
        self.head = nn.Conv2d(in_ch, ch, 3, padding=1)
        self.downblocks = nn.ModuleList()
        chs, now = [ch], ch
        for i, mult in enumerate(ch_mult):
            for _ in range(num_res_blocks):
                self.downblocks.append(RefRes(now, ch * mult, tdim, dropout, attn=i in attn))
                now = ch * mult
                chs.append(now)
            if i != len(ch_mult) - 1:
                self.downblocks.append(RefDown(now))
                chs.append(now)
        self.middleblocks = nn.ModuleList([RefRes(now, now, tdim, dropout, True), RefRes(now, now, tdim, dropout)])
        self.upblocks = nn.ModuleList()
        for i, mult in reversed(list(enumerate(ch_mult))):
            for _ in range(num_res_blocks + 1):
                self.upblocks.append(RefRes(chs.pop() + now, ch * mult, tdim, dropout, attn=i in attn))
                now = ch * mult
            if i != 0:
                self.upblocks.append(RefUp(now))
        self.tail = nn.Sequential(nn.GroupNorm(32, now), Swish(), nn.Conv2d(now, in_ch, 3, padding=1))

    def forward(self, x, t, y=None, augm=None):
        temb = self.time_embedding(t)
        if y is not None:
            temb = temb + self.label_embedding(y)
        if augm is not None:
            temb = temb + self.augm_embedding(augm)
        h = self.head(x)
        hs = [h]
        for layer in self.downblocks:
            h = layer(h, temb)
            hs.append(h)
        for layer in self.middleblocks:
            h = layer(h, temb)
        for layer in self.upblocks:
            if isinstance(layer, RefRes):
                h = torch.cat([h, hs.pop()], dim=1)
            h = layer(h, temb)
        return self.tail(h)


def _randomised(model: nn.Module, seed: int) -> nn.Module:
    """Non-trivial weights everywhere (the frozen time table stays)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "timembedding.0" not in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return model.eval()


def _save_ref(path: Path, **kw) -> tuple[RefUNet, RefUNet]:
    net, ema = _randomised(RefUNet(**kw), 1), _randomised(RefUNet(**kw), 2)
    torch.save({"net_model": net.state_dict(), "ema_model": ema.state_dict(), "step": 123,
                "x_T": torch.randn(2, 3, 8, 8), "sched": {"last_epoch": 5}}, path)
    return net, ema


@pytest.fixture(scope="module")
def ref(tmp_path_factory):
    base = tmp_path_factory.mktemp("ref")
    net, ema = _save_ref(base / "ckpt.pt")
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
    assert run.meta["imported_from"] == "ckpt.pt" and run.meta["cond_dim"] == 9
    assert run.meta["class_counts"] == [1, 1, 1] and run.meta["channels"] == 3
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
    model = _randomised(RefUNet(num_class=0, augm=False), 3)
    torch.save({f"module.{k}": v for k, v in model.state_dict().items()}, tmp_path / "bare.pt")  # DataParallel
    import_reference_checkpoint(tmp_path / "bare.pt", tmp_path / "run", ImportOptions(image_size=8))
    run = load_run(tmp_path / "run")
    assert run.num_classes == 0 and run.step == 0 and run.meta["class_counts"] == []
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
