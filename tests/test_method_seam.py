"""The method seam end to end with a method that attaches a module, and the CLI's method flags."""

import json

import pytest
import torch
from pydantic import BaseModel, ConfigDict

from cbdm_core import registry
from cbdm_core.checkpoint import list_checkpoints, load_checkpoint
from cbdm_core.hookspecs import hookimpl
from cbdm_core.methods.base import MethodSpec, TrainingMethod
from tests.helpers import cli_fails, cli_ok



class _GainOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    init: float = 1.0


class _Gain(TrainingMethod):
    """Attaches a trainable scalar that scales the prediction; sampling switches it to 2x."""

    def __init__(self, init: float):
        self.init = init
        self.passes: list[tuple[int, int, int]] = []

    def attach(self, model):
        model.method_gain = torch.nn.Parameter(torch.tensor(self.init))
        model.register_forward_hook(lambda m, args, out: out * m.method_gain)

    def for_sampling(self, model):
        with torch.no_grad():
            model.method_gain.mul_(2.0)

    def extra_labels(self, ctx):
        return ctx.y[None].clone()  # one extra view under the true labels

    def begin_pass(self, rows, total):
        self.passes.append((rows.start, rows.stop, total))

    def loss(self, ctx, out):
        again = out.predict(ctx.x_t, ctx.time, ctx.y_in)  # a further pass, with gradients
        term = (again - out.extra[0]).pow(2).mean() + 0 * out.pred.sum()
        return {"gain_term": term}, 0.0 * term


class _GainPlugin:
    @hookimpl
    def register_components(self, register):
        register("method", "gain", MethodSpec(options_model=_GainOptions, build=lambda o, ctx: _Gain(o.init)))


@pytest.fixture
def gain_registry():
    registry._DEFAULT = registry.build_registry([_GainPlugin()])
    yield
    registry.reset_registry()


# What this file's runs change in the tiny config: label dropout on, two steps.
SEAM = {"objective.p_uncond": 0.1, "optim.steps": 2}


def test_attached_module_is_trained_saved_loaded_and_switched_for_sampling(tmp_path, gain_registry, tiny_config):
    from cbdm_core import load_run

    run, cfg = tmp_path / "run", tiny_config.write(tmp_path / "c.yaml", SEAM)
    cli_ok("train", "--config", cfg, "--method", "gain", "-M", "init=0.5", "--out", run, "--no-progress")
    ck = load_checkpoint(list_checkpoints(run / "checkpoints")[-1][1])
    assert "method_gain" in ck.model and float(ck.model["method_gain"]) != 0.5  # trained
    rec = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert "gain_term" in rec
    loaded = load_run(run)
    assert torch.allclose(loaded.model.method_gain, 2 * ck.ema["method_gain"])  # for_sampling after loading
    cli_ok("sample", run, "-n", "10", "--steps", "2", "--out", tmp_path / "s")
    cli_ok("train", "--out", run, "--resume", "--steps", "3", "--no-progress")
    assert list_checkpoints(run / "checkpoints")[-1][0] == 3

    plain = tmp_path / "plain"
    cli_ok("train", "--config", cfg, "--method", "ddpm", "--out", plain, "--no-progress")
    res = cli_ok("train", "--config", cfg, "--method", "gain", "--init-from", plain,
                 "--out", tmp_path / "ft", "--no-progress")
    assert "re-initialised: method_gain" in res.output


def test_pass_rows_follow_method_order(gain_registry):
    from cbdm_core.methods.base import MethodBuildContext
    from cbdm_core.methods.cbdm import CBDMRegularizer
    from cbdm_core.objectives import DiffusionObjective
    from cbdm_core.schedules import LinearSchedule
    from tests.helpers import LinearDenoiser

    sched = LinearSchedule(T=50)
    cbdm = CBDMRegularizer(probs=torch.full((3,), 1 / 3), tau=0.01, set_size=2)
    gain = _Gain(1.0)
    model = LinearDenoiser(3)
    gain.attach(model)
    DiffusionObjective(sched, 3, [cbdm, gain], p_uncond=0.0)(model, torch.zeros(4, 1, 2, 2), torch.arange(4) % 3)
    # main rows [0, 4), cbdm's 2 x 4 rows [4, 12), gain's [12, 16) of 16
    assert gain.passes == [(12, 16, 16)]
    assert model.calls == [16, 4]  # the shared pass, then gain's further pass
    assert MethodBuildContext(torch.ones(3), 3, sched).backbone == "unet"


def test_method_flag_errors_are_one_line(tmp_path, tiny_config):
    cfg = tiny_config.write(tmp_path / "c.yaml", SEAM)
    cli_fails("train", "--config", cfg, "--method", "nope", match="unknown method 'nope'; available: ddpm, cbdm")
    cli_fails("train", "--config", cfg, "--method", "ddpm+cbdm", match="cannot be combined")
    cli_fails("train", "--config", cfg, "--method", "cbdm+t2h", "-M", "tau=1", match="METHOD.OPTION")
    cli_fails("train", "--config", cfg, "--method", "t2h", "-M", "cbdm.tau=1", match="not selected")
    cli_fails("train", "--config", cfg, "--method", "t2h", "-M", "cut=1", match="options: mode, cut_time")
    cli_fails("train", "--config", cfg, "--method", "t2h", "--tau", "0.1", match="option of method cbdm")
    cli_fails("train", "--config", cfg, "--method", "t2h", "-M", "mode=sideways", match="objective.methods[0]")
    cli_fails("train", "--config", cfg, "--y-dist", "nowhere", match="unknown label distribution 'nowhere'")


def test_method_selection_writes_the_config(tmp_path, tiny_config):
    from cbdm_cli.train_cmd import build_config

    path = tiny_config.write(tmp_path / "c.yaml", SEAM)
    cfg = build_config(path, None, {"method": ("cbdm+t2h",), "method_opts": ("t2h.cut_time=300",), "tau": 0.002}, ())
    assert [(m.name, m.options) for m in cfg.objective.methods] == [("cbdm", {"tau": 0.002}),
                                                                     ("t2h", {"cut_time": 300})]
    assert build_config(path, None, {"method": ("ddpm",)}, ()).objective.methods == []


def test_cbdm_methods_lists_options():
    res = cli_ok("methods", "--json")
    rows = {r["name"]: r for r in json.loads(res.output)}
    assert {"cbdm", "t2h"} <= set(rows)
    t2h = {o["name"]: o for o in rows["t2h"]["options"]}
    assert t2h["mode"]["default"] == "t2h" and t2h["cut_time"]["numeric"] and "OC_LT" in rows["t2h"]["code"]
    assert {o["name"] for o in rows["cbdm"]["options"]} == {"tau", "gamma", "y_dist", "set_size"}


class _StepRecorder(TrainingMethod):
    """Keeps the training step of every batch it sees (module-level, the trainer builds the method)."""

    seen: list = []

    def loss(self, ctx, out):
        _StepRecorder.seen.append(ctx.step)
        return {}, out.pred.new_zeros(())


class _StepPlugin:
    @hookimpl
    def register_components(self, register):
        register("method", "steprec", MethodSpec(options_model=_GainOptions, build=lambda o, ctx: _StepRecorder()))


def test_methods_see_the_trainers_step_also_after_resume(tmp_path, tiny_config):
    registry._DEFAULT = registry.build_registry([_StepPlugin()])
    _StepRecorder.seen = []
    try:
        run, cfg = tmp_path / "run", tiny_config.write(tmp_path / "c.yaml", {"optim.steps": 3})
        cli_ok("train", "--config", cfg, "--method", "steprec", "--out", run, "--no-progress")
        assert _StepRecorder.seen == [0, 1, 2]
        cli_ok("train", "--out", run, "--resume", "--steps", "5", "--no-progress")
        assert _StepRecorder.seen == [0, 1, 2, 3, 4]
    finally:
        registry.reset_registry()


def test_the_step_reaches_methods_under_every_objective_entry():
    from cbdm_core.objectives import DiffusionObjective
    from cbdm_core.schedules import LinearSchedule
    from cbdm_core.training.distributed import ShardedObjective
    from tests.helpers import LinearDenoiser

    _StepRecorder.seen = []
    objective = DiffusionObjective(LinearSchedule(T=50), 3, [_StepRecorder()], p_uncond=0.0)
    x0, y = torch.zeros(4, 1, 2, 2), torch.arange(4) % 3
    objective(LinearDenoiser(3), x0, y)  # outside a training loop: no step
    objective(LinearDenoiser(3), x0, y, step=7)
    ShardedObjective(objective, 0, 2)(LinearDenoiser(3), x0, y, step=9)  # a DDP rank's rows
    assert _StepRecorder.seen == [None, 7, 9]
