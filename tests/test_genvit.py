"""GenViT against an independent re-derivation of the released forward pass.

The reference below is written from the architecture of sndnyang/Diffusion_ViT at commit
84a4cfe (read, not copied): ``models/DifViT.py`` l.18-30 (sinusoid: ``half - 1`` spacing,
sines then cosines), l.47-55 (time MLP to ``4 (N + 1)``), l.60-66 (patches ``(p1 p2 c)`` ->
linear), l.71-79 (linear head, no final norm), l.80-82 and 99-110 (class token first,
learned position embedding), l.112-114 (head on the patch tokens); ``models/vit.py``
l.27-36 (pre-LayerNorm), l.39-55 (Linear-GELU-Linear MLP), l.58-101 (attention, qkv
without bias, softmax(q k^T / sqrt(d_head)) v, output projection), l.112-149 (per block
SiLU-Linear of the time vector to a scale and shift per token, applied to the residual
stream before attention and, with ``ffn_time``, before the MLP); ``models/create_model.py``
l.65-81 and ReadMe "Model Config" (CIFAR: patch 4, width 384, 12 heads, depth 9, MLP
ratio 2, head width 32). Parameters are named as the released modules name them.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from cbdm_core import registry
from cbdm_core.errors import CbdmError
from cbdm_core.nets.genvit import DiffusionGenViT, GenViTOptions, build_genvit
from cbdm_core.nets.genvit_release import load_released_genvit, map_released_genvit

CIFAR = GenViTOptions()
MICRO = GenViTOptions(patch_size=2, depth=2, width=16, heads=2)


@pytest.fixture(autouse=True, scope="module")
def _genvit_registered():
    # Before the entry points are installed, register the plugins by hand (no duplicates after).
    if "genvit" not in registry.get_registry().names("backbone"):
        import cbdm_plugins.edm
        import cbdm_plugins.vit

        registry._DEFAULT = registry.build_registry([cbdm_plugins.edm, cbdm_plugins.vit])
    yield


def released_shapes(o: GenViTOptions, image: int, channels: int, classes: int) -> dict[str, tuple]:
    """Every parameter of the released ``DifViT.ViT`` with its shape (classifier head included)."""
    n = (image // o.patch_size) ** 2
    tokens, d, pd, hidden = n + 1, o.width, o.patch_size ** 2 * channels, int(o.width * o.mlp_ratio)
    s = {"to_patch_embedding.1.weight": (d, pd), "to_patch_embedding.1.bias": (d,),
         "recon_head.0.weight": (pd, d), "recon_head.0.bias": (pd,),
         "pos_embedding": (1, tokens, d), "cls_token": (1, 1, d),
         "time_mlp.1.weight": (4 * tokens, d), "time_mlp.1.bias": (4 * tokens,),
         "time_mlp.3.weight": (4 * tokens, 4 * tokens), "time_mlp.3.bias": (4 * tokens,),
         "mlp_head.0.weight": (d,), "mlp_head.0.bias": (d,),
         "mlp_head.1.weight": (classes, d), "mlp_head.1.bias": (classes,)}
    for i in range(o.depth):
        s[f"transformer.time_layers.{i}.1.weight"] = (2 * tokens, 4 * tokens)
        s[f"transformer.time_layers.{i}.1.bias"] = (2 * tokens,)
        a, f = f"transformer.layers.{i}.0.", f"transformer.layers.{i}.1."
        s.update({a + "norm.weight": (d,), a + "norm.bias": (d,), a + "fn.to_qkv.weight": (3 * d, d),
                  a + "fn.to_out.0.weight": (d, d), a + "fn.to_out.0.bias": (d,),
                  f + "norm.weight": (d,), f + "norm.bias": (d,),
                  f + "fn.net.0.weight": (hidden, d), f + "fn.net.0.bias": (hidden,),
                  f + "fn.net.3.weight": (d, hidden), f + "fn.net.3.bias": (d,)})
    return s


def random_released(o: GenViTOptions, image: int = 32, channels: int = 3, classes: int = 100, seed: int = 0):
    """Random released weights, non-trivial everywhere (LayerNorm affines too) and O(1) activations."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, shape in released_shapes(o, image, channels, classes).items():
        z = torch.randn(shape, generator=g, dtype=torch.float64)
        if name.endswith("norm.weight") or name == "mlp_head.0.weight":
            z = 1 + 0.1 * z
        elif len(shape) == 2:  # linear weights: unit gain; the time modulation kept mild
            z = z / shape[1] ** 0.5 * (0.3 if "time_layers" in name else 1.0)
        else:
            z = 0.1 * z
        out[name] = z
    return out


def _lin(x, sd, name):
    return F.linear(x, sd[name + ".weight"], sd.get(name + ".bias"))


def reference_forward(sd, o: GenViTOptions, img, t, label_vec=None):
    """The released ``ViT.forward(img, t, recon=True)``, plus CBDM's label vector on the time vector."""
    b, c, hgt, wid = img.shape
    p, d, heads = o.patch_size, o.width, o.heads
    gh, gw = hgt // p, wid // p
    x = img.reshape(b, c, gh, p, gw, p).permute(0, 2, 4, 3, 5, 1).reshape(b, gh * gw, p * p * c)
    x = torch.cat([sd["cls_token"].expand(b, 1, d), _lin(x, sd, "to_patch_embedding.1")], 1) + sd["pos_embedding"]
    half = d // 2
    # float32 as in the release (an integer arange times a Python float), whatever the weights' dtype
    freq = torch.exp(torch.arange(half) * -(math.log(10000) / (half - 1)))
    arg = t[:, None] * freq
    sinusoid = torch.cat([arg.sin(), arg.cos()], 1).to(img.dtype)
    temb = _lin(F.gelu(_lin(sinusoid, sd, "time_mlp.1")), sd, "time_mlp.3")
    if label_vec is not None:
        temb = temb + label_vec
    tokens = x.shape[1]
    for i in range(o.depth):
        mod = _lin(F.silu(temb), sd, f"transformer.time_layers.{i}.1")
        scale, shift = mod[:, :tokens, None], mod[:, tokens:, None]
        pre = f"transformer.layers.{i}."
        x = x * (scale + 1) + shift
        h = F.layer_norm(x, (d,), sd[pre + "0.norm.weight"], sd[pre + "0.norm.bias"])
        q, k, v = (z.reshape(b, tokens, heads, d // heads).transpose(1, 2)
                   for z in _lin(h, sd, pre + "0.fn.to_qkv").chunk(3, -1))
        att = torch.softmax(q @ k.transpose(-1, -2) * (d // heads) ** -0.5, -1) @ v
        x = x + _lin(att.transpose(1, 2).reshape(b, tokens, d), sd, pre + "0.fn.to_out.0")
        if o.ffn_time:
            x = x * (scale + 1) + shift
        h = F.layer_norm(x, (d,), sd[pre + "1.norm.weight"], sd[pre + "1.norm.bias"])
        x = x + _lin(F.gelu(_lin(h, sd, pre + "1.fn.net.0")), sd, pre + "1.fn.net.3")
    out = _lin(x[:, 1:], sd, "recon_head.0").reshape(b, gh, gw, p, p, c)
    return out.permute(0, 5, 1, 3, 2, 4).reshape(b, c, hgt, wid)


def mapped_model(o: GenViTOptions, sd, classes: int = 100) -> DiffusionGenViT:
    model = build_genvit(o, image_size=32, channels=3, num_classes=classes).double()
    load_released_genvit(model, sd)
    return model.eval()


def test_parameter_count_matches_the_release():
    shapes = released_shapes(CIFAR, 32, 3, 100)
    released = sum(math.prod(s) for s in shapes.values())
    # Hand count of the CIFAR-100 release: patches 18,816 + head 18,480 + position 24,960 +
    # class token 384 + time MLP 167,960 + 9 blocks x 1,216,650 + classifier 39,268.
    assert released == 11_219_718  # the ReadMe's "11M"
    model = build_genvit(CIFAR, image_size=32, channels=3, num_classes=100)
    ours = sum(p.numel() for p in model.parameters())
    classifier = 384 * 2 + 384 * 100 + 100
    label_table = 101 * 4 * 65  # 100 classes and the null row, width 4 (N + 1)
    assert ours == released - classifier + label_table == 11_206_710


NO_FFN_TIME = GenViTOptions(patch_size=2, depth=2, width=16, heads=2, ffn_time=False)


@pytest.mark.parametrize("opts", [CIFAR, MICRO, NO_FFN_TIME], ids=["cifar", "micro", "micro-no-ffn-time"])
def test_forward_equals_the_release_on_mapped_weights(opts):
    sd = random_released(opts)
    model = mapped_model(opts, sd)
    torch.manual_seed(1)
    x = torch.randn(3, 3, 32, 32, dtype=torch.float64)
    t = torch.tensor([0, 417, 999])
    with torch.no_grad():
        expected = reference_forward(sd, opts, x, t)
        assert torch.allclose(model(x, t), expected, rtol=1e-9, atol=1e-9)
        # The null label adds nothing: the unconditional model IS the released network.
        assert torch.allclose(model(x, t, torch.full((3,), 100)), expected, rtol=1e-9, atol=1e-9)
        y = torch.tensor([0, 5, 99])
        with_label = reference_forward(sd, opts, x, t, model.label_embedding.weight[y])
        assert torch.allclose(model(x, t, y), with_label, rtol=1e-9, atol=1e-9)
        assert not torch.allclose(with_label, expected, atol=1e-6)  # the label does change eps


def test_mapping_keeps_patch_pixel_order():
    # One patch weight that reads a single (row, column, channel) pixel must read the same pixel.
    sd = random_released(MICRO)
    w = torch.zeros_like(sd["to_patch_embedding.1.weight"])
    w[0, (1 * 2 + 0) * 3 + 2] = 1.0  # row 1, column 0, channel 2 of the patch
    sd["to_patch_embedding.1.weight"] = w
    conv = map_released_genvit(sd)["patch_embed.proj.weight"]
    assert conv[0, 2, 1, 0] == 1.0 and conv.abs().sum() == 1.0


def test_mapping_drops_classifier_and_checkpoint_prefix():
    sd = {"denoise_fn." + k: v for k, v in random_released(MICRO).items()}
    sd["betas"] = torch.zeros(3)  # GaussianDiffusion's buffers sit beside the network
    mapped = map_released_genvit(sd)
    assert not any(k.startswith("mlp_head") for k in mapped)
    model = mapped_model(MICRO, sd)
    assert torch.equal(model.blocks[1].block.mlp.fc2.weight, sd["denoise_fn.transformer.layers.1.1.fn.net.3.weight"])


def test_mismatched_or_unknown_weights_fail_in_one_line():
    with pytest.raises(CbdmError, match="no counterpart"):
        map_released_genvit({**random_released(MICRO), "transformer.layers.0.0.fn.scale": torch.ones(2)})
    model = build_genvit(MICRO, image_size=32, channels=3, num_classes=10)
    with pytest.raises(CbdmError, match="do not fit"):
        load_released_genvit(model, random_released(CIFAR))


def test_null_label_row_is_zero_and_frozen():
    model = build_genvit(MICRO, image_size=32, channels=3, num_classes=10)
    x, t = torch.randn(2, 3, 32, 32), torch.tensor([3, 900])
    model(x, t, torch.tensor([10, 10])).square().mean().backward()
    assert torch.count_nonzero(model.label_embedding.weight[10]) == 0
    assert torch.count_nonzero(model.label_embedding.weight.grad[10]) == 0


def test_options_and_registry():
    with pytest.raises(ValueError, match="divisible by heads"):
        GenViTOptions(width=30, heads=4)
    with pytest.raises(CbdmError, match="not divisible by the genvit patch size"):
        build_genvit(GenViTOptions(patch_size=5), image_size=32, channels=3, num_classes=10)
    spec = registry.get_registry().get("backbone", "genvit").obj
    assert spec.options_model is GenViTOptions and spec.build is build_genvit and spec.recommended_lr == 2e-4


def test_feature_tap_and_float_time():
    model = build_genvit(MICRO, image_size=32, channels=3, num_classes=10)
    tap = model.feature_tap()
    seen = []
    tap.module.register_forward_hook(lambda m, i, o: seen.append(tap.pool(o)))
    out = model(torch.randn(2, 3, 32, 32), torch.tensor([-1200.5, 250.25]), torch.tensor([1, 2]))
    assert out.shape == (2, 3, 32, 32) and torch.isfinite(out).all()
    assert seen[0].shape == (2, tap.dim) == (2, 16)


def test_cbdm_regularizer_gradient_reaches_only_the_y_branch():
    from cbdm_core import LinearSchedule, cbdm_loss

    torch.manual_seed(0)
    model = build_genvit(GenViTOptions(patch_size=2, depth=2, width=16, heads=2), image_size=8, channels=1,
                         num_classes=3)
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(6, 1, 8, 8, generator=g) * 2 - 1
    noise = torch.randn(6, 1, 8, 8, generator=g)
    t, y, yp = torch.tensor([10, 200, 400, 600, 800, 999]), torch.tensor([0, 0, 0, 1, 1, 1]), torch.full((6,), 2)

    def grads(term: str) -> torch.Tensor:
        model.zero_grad()
        out = cbdm_loss(model, x0, y, LinearSchedule(), t=t, noise=noise, y_prime=yp, p_uncond=0.0)
        out[term].backward()
        return model.label_embedding.weight.grad.clone()

    g_reg, g_com = grads("regularizer"), grads("commitment")
    for c in (0, 1):
        assert g_reg[c].abs().sum() > 0 and g_com[c].abs().sum() == 0
    assert g_com[2].abs().sum() > 0 and g_reg[2].abs().sum() == 0


def test_cli_trains_and_samples_genvit(tmp_path):
    import json

    import yaml
    from click.testing import CliRunner

    from cbdm_cli.main import cli

    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump({
        "model": {"backbone": "unet"}, "diffusion": {"T": 100}, "data": {"dataset": "digits-lt"},
        "optim": {"batch_size": 8, "steps": 2, "warmup": 1, "ema_decay": 0.9},
        "preview": {"sampler": "ddim", "steps": 2, "per_class": 1}, "log_every": 1,
    }))
    out = tmp_path / "run"
    sets = ["model.options.patch_size=2", "model.options.depth=2", "model.options.width=16", "model.options.heads=2"]
    args = ["train", "--config", str(cfg), "--out", str(out), "--no-progress", "--backbone", "genvit"]
    res = CliRunner().invoke(cli, args + [a for s in sets for a in ("--set", s)])
    assert res.exit_code == 0, res.output
    rec = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert rec["regularizer"] >= 0 and "diffusion" in rec
    samples = tmp_path / "s"
    res = CliRunner().invoke(cli, ["sample", str(out), "--steps", "4", "--num", "6", "--out", str(samples),
                                   "--no-progress", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert list(samples.glob("shard-*.npz"))


def test_edm_over_genvit():
    from cbdm_core import LinearSchedule
    from cbdm_core.nets.edm import EDMOptions, build_edm

    torch.manual_seed(0)
    inner = {"patch_size": 2, "depth": 2, "width": 16, "heads": 2}
    model = build_edm(EDMOptions(inner="genvit", inner_options=inner), image_size=8, channels=1, num_classes=3,
                      schedule=LinearSchedule(T=100))
    x, sigma = torch.randn(2, 1, 8, 8), torch.tensor([0.3, 5.0])
    d = model.denoise(x, sigma, torch.tensor([0, 3]))
    assert d.shape == x.shape and torch.isfinite(d).all()
    # GenViT's output is not zero-initialised: D differs from the skip term c_skip x.
    assert not torch.allclose(d, 0.25 / (sigma ** 2 + 0.25).view(-1, 1, 1, 1) * x)
