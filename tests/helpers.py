"""Small models, configs and helpers shared by the tests (test modules import only from here,
never from each other)."""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Mapping, Optional

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from torch import nn

from cbdm_core.nets.unet import UNet, UNetOptions


def tiny_unet(num_classes: int = 3, channels: int = 1, image_size: int = 8, dropout: float = 0.0) -> UNet:
    torch.manual_seed(0)
    opts = UNetOptions(ch=8, ch_mult=[1, 2], attn=[1], num_res_blocks=1, dropout=dropout, num_groups=4)
    return UNet(opts, image_size=image_size, channels=channels, num_classes=num_classes)


class LinearDenoiser(nn.Module):
    """eps = a * x + b[y] + c * t: simple enough to check gradients by hand."""

    def __init__(self, num_classes: int = 3, dim: int = 4):
        super().__init__()
        self.num_classes = num_classes
        self.a = nn.Parameter(torch.tensor(0.5))
        self.b = nn.Parameter(torch.randn(num_classes + 1, 1, 2, 2) * 0.3)
        self.calls: list[int] = []

    def forward(self, x, t, y):
        self.calls.append(x.shape[0])
        return self.a * x + self.b[y] + 1e-3 * t.float().view(-1, 1, 1, 1)


def invoke_cli(*args):
    """Run ``cbdm ARGS...`` in-process (arguments stringified)."""
    from click.testing import CliRunner

    from cbdm_cli.main import cli

    return CliRunner().invoke(cli, [str(a) for a in args])


def cli_ok(*args):
    res = invoke_cli(*args)
    assert res.exit_code == 0, res.output
    return res


def cli_fails(*args, match: str) -> str:
    """The command exits 1 with exactly one ``Error:`` line containing ``match`` and no traceback."""
    res = invoke_cli(*args)
    assert res.exit_code == 1, res.output
    assert "Traceback" not in res.output
    errors = [line for line in res.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and match in errors[0], res.output
    return errors[0]


def make_ctx(model, *, b: int = 6, num_classes: int = 3, counts=None, keep=None, seed: int = 0, T: int = 100):
    """A fixed batch for ``model`` (labels cycling through the classes), drawn by the real
    :class:`~cbdm_core.objectives.DiffusionObjective` (``prepare``) with no method."""
    from cbdm_core.objectives import DiffusionObjective
    from cbdm_core.schedules import LinearSchedule

    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(b, model.channels, model.image_size, model.image_size, generator=g)
    y = torch.arange(b) % num_classes
    keep = torch.ones(b, dtype=torch.bool) if keep is None else keep
    t = torch.randint(0, T, (b,), generator=g)
    noise = torch.randn(x0.shape, generator=g)
    counts = torch.tensor(counts if counts is not None else [10 * (i + 1) for i in range(num_classes)])
    objective = DiffusionObjective(LinearSchedule(T=T), num_classes, class_counts=counts)
    return objective.prepare(x0, y, t=t, noise=noise, keep=keep)[0]


def run_step(model, methods, ctx):
    """One step of the real objective on ``ctx`` with ``methods``: ``(total, terms, main prediction)``."""
    from cbdm_core.methods.base import TrainingMethod
    from cbdm_core.objectives import DiffusionObjective

    class _Record(TrainingMethod):  # a last method that keeps the main prediction it was handed
        def loss(self, c, out):
            self.pred = out.pred
            return {}, out.pred.new_zeros(())

    record = _Record()
    objective = DiffusionObjective(ctx.schedule, ctx.num_classes, [*methods, record], class_counts=ctx.class_counts)
    extras = [m.extra_labels(ctx) for m in objective.methods]
    out = objective.evaluate(model, ctx, extras)
    return out.total, out.terms, record.pred


def assert_same_final_checkpoint(run_a, run_b, step: int, *, ema: bool = True):
    """The newest checkpoints of two run folders are both at ``step`` with bit-identical model
    (and, with ``ema``, EMA) tensors; returns the two checkpoints."""
    from cbdm_core.checkpoint import list_checkpoints, load_checkpoint

    a = load_checkpoint(list_checkpoints(Path(run_a) / "checkpoints")[-1][1])
    b = load_checkpoint(list_checkpoints(Path(run_b) / "checkpoints")[-1][1])
    assert a.step == b.step == step
    for k in a.model:
        assert torch.equal(a.model[k], b.model[k]), k
        if ema:
            assert torch.equal(a.ema[k], b.ema[k]), k
    return a, b


# -- shared configs and helpers of the CLI tests (no test module imports another) ---------------------

# The tiny `cbdm train` run of the CLI tests (a few steps on the embedded digits).
TINY = {
    "model": {"backbone": "unet", "options": {"ch": 8, "ch_mult": [1, 2], "attn": [1], "num_res_blocks": 1,
                                              "dropout": 0.1, "num_groups": 4}},
    "diffusion": {"T": 100},
    "data": {"dataset": "digits-lt"},
    "optim": {"batch_size": 16, "steps": 6, "warmup": 2, "ema_decay": 0.9},
    "preview": {"sampler": "ddim", "steps": 4, "per_class": 2},
    "log_every": 2,
}



def merge_overrides(base: Mapping[str, Any], overrides: Optional[Mapping[str, Any]] = None, /,
                    **more: Any) -> dict[str, Any]:
    """A deep copy of ``base`` with ``overrides``, then ``more``, applied in turn. A dotted key
    (``"optim.steps"``, ``"model.options"``) sets that entry as given (a dict replaces the
    section); a plain name with a dict value merges into the section (``optim={"steps": 2}``
    keeps the other optim keys, nested dicts merge too); anything else replaces."""
    cfg = copy.deepcopy(dict(base))
    for key, value in [*(overrides or {}).items(), *more.items()]:
        _override(cfg, key, copy.deepcopy(value))
    return cfg


def _override(node: dict, key: str, value: Any) -> None:
    *parents, last = key.split(".")
    for name in parents:
        node = node.setdefault(name, {})
    if not parents and isinstance(value, dict) and isinstance(node.get(last), dict):
        for name, item in value.items():
            _override(node[last], name, item)
    else:
        node[last] = value


class TinyConfig:
    """The ``tiny_config`` fixture (tests/conftest.py): fresh copies of :data:`TINY` with overrides."""

    def __call__(self, overrides: Optional[Mapping[str, Any]] = None, /, **more: Any) -> dict[str, Any]:
        """``TINY`` with ``overrides`` (see :func:`merge_overrides`); a new deep copy every call."""
        return merge_overrides(TINY, overrides, **more)

    def write(self, path: Path, overrides: Optional[Mapping[str, Any]] = None, /, **more: Any) -> Path:
        """Write that config as YAML to ``path`` (a ``.yaml`` file, else a folder: ``path/tiny.yaml``);
        returns the file."""
        path = Path(path)
        path = path if path.suffix in (".yaml", ".yml") else path / "tiny.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(self(overrides, **more)))
        return path


# The CLI tests' tiny run, shorter: the method tests train, sample and evaluate several methods.
METHOD_OVERRIDES = {"diffusion.T": 50, "optim": {"batch_size": 8, "steps": 2, "warmup": 1},
                    "preview": {"steps": 2, "per_class": 1}, "log_every": 1}
METHOD_TINY = merge_overrides(TINY, METHOD_OVERRIDES)

# The CLI tests' tiny run with a still smaller net (no attention, one level): only logging is checked.
MONITOR_OVERRIDES = {"model": {"options": {"ch_mult": [1], "attn": [], "dropout": 0.0}}, "diffusion.T": 20,
                     "optim": {"batch_size": 8, "steps": 4, "warmup": 1}, "preview": {"steps": 2, "per_class": 1}}
MONITOR_TINY = merge_overrides(TINY, MONITOR_OVERRIDES)


def train_run(config, out, *args):
    """``cbdm train --config CONFIG --out OUT --no-progress ARGS...`` (must succeed)."""
    return cli_ok("train", "--config", config, "--out", out, "--no-progress", *args)


def last_checkpoint(run):
    """The newest checkpoint of a run folder, loaded."""
    from cbdm_core.checkpoint import list_checkpoints, load_checkpoint

    return load_checkpoint(list_checkpoints(run / "checkpoints")[-1][1])


class LinearClassifier(torch.nn.Module):
    """logits = W flatten(x) + b + c * t: its log-softmax gradient is known in closed form."""

    def __init__(self, num_classes: int = 3, dim: int = 4):
        super().__init__()
        g = torch.Generator().manual_seed(3)
        self.W = torch.nn.Parameter(torch.randn(num_classes, dim, generator=g, dtype=torch.float64))
        self.b = torch.nn.Parameter(torch.randn(num_classes, generator=g, dtype=torch.float64))
        self.c = torch.nn.Parameter(torch.randn(num_classes, generator=g, dtype=torch.float64) * 1e-2)

    def forward(self, x, t):
        return x.flatten(1) @ self.W.T + self.b + t.double()[:, None] * self.c


def write_folder(root: Path, counts: dict[str, int], size: int = 8, seed: int = 0) -> Path:
    """``root/<class>/<i>.png`` with ``counts[class]`` random gray images each."""
    rng = np.random.default_rng(seed)
    for name, n in counts.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (size, size), dtype=np.uint8)).save(root / name / f"{i}.png")
    return root


def install_copy(example: Path, tmp: Path) -> dict:
    """pip-install a copy of ``example`` into ``tmp/site`` (the copy keeps build/ and egg-info out
    of the repository); returns an environment that sees it."""
    src = tmp / example.name
    shutil.copytree(example, src)
    target = tmp / "site"
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                           "--no-index", "--target", str(target), str(src)], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.fail(f"pip install of {example.name} failed: {proc.stderr[-2000:]}")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(target), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def cbdm_subprocess(env, *args):
    """``python -m cbdm_cli ARGS...`` in a subprocess with environment ``env``."""
    proc = subprocess.run([sys.executable, "-m", "cbdm_cli", *map(str, args)], env=env, capture_output=True,
                          text=True, timeout=600)
    return proc


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` with its bytes (to show nothing changed)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def alive(pid: int) -> bool:
    """Running (a zombie left to a PID 1 that does not reap counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")
