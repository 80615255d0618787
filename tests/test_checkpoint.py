"""Safetensors checkpoints: round trips, atomic writes, refusals."""

import pytest
import torch
from safetensors.torch import save_file

from cbdm_core import load_run
from cbdm_core.build import build_model
from cbdm_core.checkpoint import Checkpoint, load_checkpoint, load_state_checked, save_checkpoint
from cbdm_core.config import TrainConfig
from cbdm_core.errors import CheckpointError

OPTS = {"ch": 8, "ch_mult": [1, 2], "attn": [1], "num_res_blocks": 1, "num_groups": 4, "dropout": 0.0}
META = {"num_classes": 3, "image_size": 8, "channels": 1, "class_counts": [9, 3, 1], "cond_dim": 0}


def _cfg():
    return TrainConfig.model_validate({"model": {"options": OPTS}, "diffusion": {"T": 50}})


def _model(cfg=None):
    torch.manual_seed(0)
    return build_model(cfg or _cfg(), image_size=8, channels=1, num_classes=3)


def _save(path, model, optim=None, cfg=None):
    cfg = cfg or _cfg()
    save_checkpoint(path, Checkpoint(step=7, config=cfg.model_dump(mode="json"), model=model.state_dict(),
                                     ema=model.state_dict(), optim=optim, meta=META))


def test_round_trip_with_optimizer_state(tmp_path):
    model = _model()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.randn(2, 1, 8, 8), torch.tensor([1, 2]), torch.tensor([0, 3])).pow(2).mean().backward()
    opt.step()
    _save(tmp_path / "c.safetensors", model, opt.state_dict())
    ck = load_checkpoint(tmp_path / "c.safetensors", with_optim=True)
    assert ck.step == 7 and ck.meta.to_dict() == META
    for k, v in model.state_dict().items():
        assert torch.equal(ck.model[k], v)
    opt2 = torch.optim.Adam(_model().parameters(), lr=1e-3)
    opt2.load_state_dict(ck.optim)
    s1, s2 = opt.state_dict(), opt2.state_dict()
    for idx in s1["state"]:
        for key in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(s1["state"][idx][key], s2["state"][idx][key])


def test_load_run_gives_same_outputs(tmp_path):
    model = _model().eval()
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    _save(tmp_path / "run" / "checkpoints" / "ckpt-00000007.safetensors", model)
    run = load_run(tmp_path / "run")
    x, t, y = torch.randn(3, 1, 8, 8), torch.tensor([0, 10, 49]), torch.tensor([0, 1, 3])
    assert torch.allclose(run.model(x, t, y), model(x, t, y))
    assert run.step == 7 and run.schedule.num_timesteps == 50 and run.num_classes == 3


def test_failed_write_keeps_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "c.safetensors"
    _save(path, _model())
    before = path.read_bytes()

    def boom(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("cbdm_core.tensor_io.save_file", boom)
    with pytest.raises(CheckpointError.__mro__[1]):  # CbdmError
        _save(path, _model())
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["c.safetensors"]  # no temp file left


def test_wrong_shapes_are_named(tmp_path):
    big = TrainConfig.model_validate({"model": {"options": {**OPTS, "ch": 16, "num_groups": 4}}, "diffusion": {"T": 50}})
    _save(tmp_path / "c.safetensors", _model(big), cfg=_cfg())  # weights of ch=16, config says ch=8
    with pytest.raises(CheckpointError, match="wrong shapes"):
        load_run(tmp_path / "c.safetensors")


def test_missing_keys_are_named():
    model = _model()
    state = dict(model.state_dict())
    state.pop("head.weight")
    state["extra.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match="missing head.weight.*unexpected extra.weight"):
        load_state_checked(model, state, "test")


def test_foreign_and_garbage_files_are_refused(tmp_path):
    save_file({"w": torch.zeros(2)}, str(tmp_path / "foreign.safetensors"))
    with pytest.raises(CheckpointError, match="not a cbdm checkpoint"):
        load_checkpoint(tmp_path / "foreign.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 100)
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "junk.safetensors")
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "absent.safetensors")
