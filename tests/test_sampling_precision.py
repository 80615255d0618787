"""Issue 29: ``--precision bf16`` sampling (the network under bf16 autocast, the sampler in fp32)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from cbdm_core.checkpoint import load_checkpoint, save_checkpoint
from cbdm_core.errors import CbdmError
from cbdm_core.sampling import precision_mode
from cbdm_core.sampling.api import sample
from cbdm_core.sampling.noise import sample_generators
from cbdm_core.sampling.settings import SamplerSettings
from cbdm_core.sampling.shards import load_samples
from cbdm_core.schedules import LinearSchedule

from .helpers import cli_fails, cli_ok, tiny_unet
from .run_helpers import write_sample_run

FAST = ["--steps", "5", "--no-progress", "--device", "cpu", "--num", "6", "-w", "1.5"]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A tiny run whose network is not ~0: an untrained U-Net's near-zero last convs would give
    eps ~ 0 in both precisions, so bf16 rounding would not show."""
    root = write_sample_run(tmp_path_factory.mktemp("runs") / "run", 0.1)
    path = next((root / "checkpoints").glob("*.safetensors"))
    ckpt = load_checkpoint(path)
    ckpt.model, ckpt.ema = _perturbed(ckpt.model), _perturbed(ckpt.ema)
    save_checkpoint(path, ckpt)
    return root


def _perturbed(state: dict[str, torch.Tensor], scale: float = 0.02) -> dict[str, torch.Tensor]:
    """``state`` with seeded noise on its conv weights (GroupNorm stays as built)."""
    gen = torch.Generator().manual_seed(0)
    return {k: t + scale * torch.randn(t.shape, generator=gen) if t.ndim == 4 else t for k, t in state.items()}


def _settings(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())["settings"]


def test_bf16_cli_images_are_close_to_fp32_and_recorded(run, tmp_path):
    cli_ok("sample", run, "--out", tmp_path / "fp32", *FAST)
    cli_ok("sample", run, "--out", tmp_path / "bf16", "--precision", "bf16", *FAST)
    assert "precision" not in _settings(tmp_path / "fp32")  # a default run's manifest is as it was
    assert _settings(tmp_path / "bf16")["precision"] == "bf16"
    (a, ya), (b, yb) = load_samples(tmp_path / "fp32"), load_samples(tmp_path / "bf16")
    np.testing.assert_array_equal(ya, yb)
    grey = np.abs(a.astype(int) - b.astype(int))
    assert grey.max() > 0  # bf16 did run: its rounding shows
    # Within 3 grey levels: all but 1% of the pixels, and 95% of those not saturated in fp32
    # (this untrained network saturates most pixels, where any precision agrees).
    assert (grey <= 3).mean() >= 0.99, (grey <= 3).mean()
    mid = (a > 0) & (a < 255)
    assert mid.sum() > 20 and (grey[mid] <= 3).mean() >= 0.95, (grey[mid] <= 3).mean()


def test_resume_with_the_other_precision_is_refused(run, tmp_path):
    out = tmp_path / "s"
    cli_ok("sample", run, "--out", out, "--precision", "bf16", *FAST)
    cli_fails("sample", run, "--out", out, *FAST, match='precision: "bf16" -> null')
    fp32 = tmp_path / "f"
    cli_ok("sample", run, "--out", fp32, *FAST)
    cli_fails("sample", run, "--out", fp32, "--precision", "bf16", *FAST, match='precision: null -> "bf16"')


def test_a_folder_sampled_before_the_setting_resumes_as_fp32(run, tmp_path):
    out = tmp_path / "old"
    args = ["sample", run, "--out", out, "--shard-size", "3", *FAST]
    cli_ok(*args)
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["settings"].pop("precision", None)  # an old-style manifest: no precision key at all
    manifest["complete"] = False
    (out / "manifest.json").write_text(json.dumps(manifest))
    kept = (out / "shard-00000.npz").read_bytes()
    (out / "shard-00001.npz").unlink()
    res = cli_ok(*args, "--precision", "fp32")
    assert "1 written, 1 kept" in res.output
    assert (out / "shard-00000.npz").read_bytes() == kept


def test_bf16_float_x0_is_close_to_fp32():
    model = tiny_unet().eval()
    model.load_state_dict(_perturbed(model.state_dict()))
    schedule = LinearSchedule(T=50)
    x_T = torch.randn(4, 1, 8, 8)
    y = torch.tensor([0, 1, 2, 3])  # 3: the null label
    common = dict(steps=5, guidance=1.5, generator=sample_generators(0, range(4)))
    x32 = sample(model, schedule, x_T, y, **common)
    x16 = sample(model, schedule, x_T, y, precision="bf16", **common)
    assert x16.dtype is torch.float32  # the sampler's arithmetic stays fp32
    # x0 here has std ~1 and spans about +-3; measured max difference 0.0025 (bf16's 8-bit mantissa)
    diff = float((x16 - x32).abs().max())
    assert 0.0 < diff < 0.02, diff


def test_precision_is_a_closed_setting(run, tmp_path):
    with pytest.raises(ValueError):
        SamplerSettings(precision="fp16")
    assert SamplerSettings().sample_kwargs()["precision"] == "fp32"
    assert "precision" not in SamplerSettings().manifest_fields()
    assert SamplerSettings.from_manifest({"sampler": "ddim"}).precision == "fp32"
    from .helpers import invoke_cli

    res = invoke_cli("sample", run, "--out", tmp_path / "x", "--precision", "fp16", *FAST)
    assert res.exit_code == 2 and "fp16" in res.output and not (tmp_path / "x").exists()


def test_bf16_where_it_cannot_run_natively(monkeypatch):
    from cbdm_core.training import precision

    monkeypatch.setattr(precision, "cpu_bf16_support", lambda: "")
    precision_mode._warn_emulated.cache_clear()
    with pytest.warns(RuntimeWarning, match="emulated"):
        precision_mode.check_precision("bf16", torch.device("cpu"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        precision_mode.check_precision("fp32", torch.device("cpu"))  # fp32 never warns
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    with pytest.raises(CbdmError, match="no bfloat16 support"):
        precision_mode.check_precision("bf16", torch.device("cuda"))
    with pytest.raises(CbdmError, match="cpu or cuda, not mps"):
        precision_mode.check_precision("bf16", torch.device("mps"))


def test_config_checks_of_bf16_settings_run_in_fp32(monkeypatch):
    """A preview's or protocol's check runs a CPU stand-in: no emulation warning for a GPU run."""
    from cbdm_core.sampling.settings import SamplingSettings
    from cbdm_core.settings_check import check_sampling_settings
    from cbdm_core.training import precision

    monkeypatch.setattr(precision, "cpu_bf16_support", lambda: "")
    precision_mode._warn_emulated.cache_clear()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_sampling_settings(SamplingSettings(precision="bf16", steps=2), schedule=LinearSchedule(T=10),
                                where="preview")
