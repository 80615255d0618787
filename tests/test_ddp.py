"""Multi-process training: 2 ranks x B/2 rows train the same weights as 1 process x B rows."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
import yaml
from click.testing import CliRunner

from cbdm_cli.main import cli
from cbdm_core import build
from cbdm_core.methods.cbdm import CBDMRegularizer
from cbdm_core.checkpoint import list_checkpoints, load_checkpoint
from cbdm_core.config import parse_train_config
from cbdm_core.errors import CbdmError
from cbdm_core.objectives import DiffusionObjective
from cbdm_core.schedules import LinearSchedule
from cbdm_core.training.distributed import DistContext, ShardedObjective, env_world

from .helpers import TINY, tiny_unet
DDP_CFG = {**TINY, "model": {**TINY["model"], "options": {**TINY["model"]["options"], "dropout": 0.0}},
           "objective": {"p_uncond": 0.3, "methods": [{"name": "cbdm", "options": {"y_dist": "bal"}}, {"name": "t2h"}]},
           "optim": {**TINY["optim"], "steps": 3, "warmup": 0, "lr": 1e-3}, "log_every": 1,
           # fp32 on every CPU: perf.amp=auto picks bf16 where the CPU has it, and bf16 kernels may round
           # a batch of 8 differently from one of 16, which would blur this sharding check.
           "perf": {"amp": "off"}}


def _objective(set_size: int = 2, t2h: bool = False) -> DiffusionObjective:
    reg = CBDMRegularizer(probs=torch.full((3,), 1 / 3), tau=0.01, set_size=set_size)
    sched = LinearSchedule(T=100)
    methods = [reg]
    if t2h:
        from cbdm_core.methods.base import MethodBuildContext
        from cbdm_core.methods.t2h import T2HOptions, build_t2h

        methods.append(build_t2h(T2HOptions(mode="full"), MethodBuildContext(torch.ones(3), 3, sched)))
    return DiffusionObjective(sched, 3, methods, p_uncond=0.3)


def test_t2h_draws_sources_from_the_whole_global_batch(monkeypatch):
    """Under torchrun T2H's candidate pool is the global batch: rank 0's rows take sources from rank 1's."""
    b, world = 8, 2
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(b, 1, 8, 8, generator=g) * 2 - 1
    y = torch.randint(0, 3, (b,), generator=g)
    objective = _objective(t2h=True)
    seen = []
    real = objective.prepare

    def spy(*args, **kwargs):
        ctx, extras = real(*args, **kwargs)
        seen.append((ctx.x0.shape[0], ctx.target.clone()))
        return ctx, extras

    monkeypatch.setattr(objective, "prepare", spy)
    torch.manual_seed(5)
    objective(tiny_unet(3), x0, y)
    for rank in range(world):
        lo, hi = DistContext(rank=rank, world=world).shard(b)
        torch.manual_seed(5)
        ShardedObjective(objective, lo, hi)(tiny_unet(3), x0, y)
    (n_full, full), (n0, t0), (n1, t1) = seen
    assert n_full == n0 == n1 == b  # every rank computes the targets over the global batch
    assert torch.equal(full, t0) and torch.equal(full, t1)


@pytest.mark.parametrize("t2h", [False, True])
def test_shards_of_the_global_draw_rebuild_the_single_process_loss(t2h):
    b, world = 8, 2
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(b, 1, 8, 8, generator=g) * 2 - 1
    y = torch.randint(0, 3, (b,), generator=g)
    model = tiny_unet(3)
    objective = _objective(t2h=t2h)

    torch.manual_seed(5)
    full = objective(model, x0, y)
    full.total.backward()
    ref_grads = [p.grad.clone() for p in model.parameters()]

    model.zero_grad()
    totals = []
    for rank in range(world):
        lo, hi = DistContext(rank=rank, world=world).shard(b)
        torch.manual_seed(5)  # every rank starts the step from the same seed
        terms = ShardedObjective(objective, lo, hi)(model, x0, y)
        (terms.total / world).backward()  # DDP's gradient average
        totals.append(terms.total.detach())
    assert torch.allclose(torch.stack(totals).mean(), full.total, rtol=1e-5)
    for p, ref in zip(model.parameters(), ref_grads):
        assert torch.allclose(p.grad, ref, rtol=1e-4, atol=1e-8)


def test_batch_must_split_evenly():
    with pytest.raises(CbdmError, match="divisible"):
        DistContext(rank=0, world=3).shard(16)
    assert DistContext(rank=2, world=4).shard(16) == (8, 12)


def test_env_world(monkeypatch):
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    assert env_world() == (0, 1, 0)
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(CbdmError, match="WORLD_SIZE"):
        env_world()


def _torchrun() -> list[str]:
    exe = shutil.which("torchrun")
    return [exe] if exe else [sys.executable, "-m", "torch.distributed.run"]


@pytest.mark.slow
def test_two_ranks_match_one_process(tmp_path):
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(DDP_CFG))
    # One thread per rank: two ranks on a 2-core box, like torchrun's own default.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    cmd = _torchrun() + ["--standalone", "--nproc_per_node=2", "-m", "cbdm_cli", "train", "--config",
                         str(tmp_path / "c.yaml"), "--out", str(tmp_path / "ddp"), "--no-progress", "--device", "cpu"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr.count("done: step 3") == 1  # only rank 0 talks

    res = CliRunner().invoke(cli, ["train", "--config", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "one"),
                                   "--no-progress", "--device", "cpu"])
    assert res.exit_code == 0, res.output

    a = load_checkpoint(list_checkpoints(tmp_path / "ddp" / "checkpoints")[-1][1])
    b = load_checkpoint(list_checkpoints(tmp_path / "one" / "checkpoints")[-1][1])
    assert a.step == b.step == 3
    cfg = parse_train_config(DDP_CFG)
    torch.manual_seed(cfg.seed)
    init = build.build_model(cfg, image_size=8, channels=1, num_classes=10).state_dict()
    moved = max((b.model[k] - init[k]).abs().max().item() for k in init)
    assert moved > 1e-3  # the runs trained, so equal weights mean equal updates
    for k in a.model:
        assert torch.allclose(a.model[k], b.model[k], atol=1e-5), k
        assert torch.allclose(a.ema[k], b.ema[k], atol=1e-5), k
    # Logs are written once (rank 0), with the loss averaged over ranks.
    ddp_log = (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()
    one_log = (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()
    assert len(ddp_log) == len(one_log) == 3
    for x, y in zip(ddp_log, one_log):
        assert abs(json.loads(x)["total"] - json.loads(y)["total"]) < 1e-5
    assert (tmp_path / "ddp" / "samples").is_dir()
