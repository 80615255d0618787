"""Runs, studies and plugins the tests fake on disk or in the registry (shared by several test
modules, which never import each other)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from cbdm_core import locks, registry
from cbdm_core.build import build_model
from cbdm_core.checkpoint import Checkpoint, save_checkpoint
from cbdm_core.config import TrainConfig
from cbdm_core.experiments import compare_training
from cbdm_core.hookspecs import hookimpl
from cbdm_core.methods.base import MethodSpec, TrainingMethod
from cbdm_core.methods.cbdm import CBDMOptions

from .helpers import TINY

# -- `cbdm compare`: a tiny protocol and a trainer spy ----------------------------------------------------

TINY_UNET = {"ch": 8, "ch_mult": [1, 2], "attn": [1], "num_res_blocks": 1, "dropout": 0.0, "num_groups": 4}


def tiny_protocol(work: Path, **changes) -> dict:
    """Two methods, two seeds, two training steps, a two-point w grid, a few samples."""
    proto = {
        "name": "tiny",
        "data": {"dataset": "digits-lt", "imb_factor": 0.03},
        "training": {"preset": "quickstart", "steps": 2, "device": "cpu",
                     "config": {"model": {"options": TINY_UNET}, "diffusion": {"T": 50},
                                "optim": {"batch_size": 8, "warmup": 1},
                                "preview": {"steps": 2, "per_class": 1}, "log_every": 1}},
        "methods": [{"method": "ddpm"}, {"method": "cbdm", "options": {"tau": 0.002}}],
        "seeds": [0, 1],
        "sampling": {"sampler": "ddim", "steps": 2, "num": 40, "batch_size": 40},
        "guidance": {"grid": [0, 2], "select": "fid", "selection_seed": 7},
        "report_seed": 3,
        "evaluation": {"extractor": "classifier", "classifier": "auto", "classifier_epochs": 1,
                       "metrics": ["fid", "per_class", "memorization"], "cache_dir": str(work / "cache"),
                       "metric_options": {"per_class": {"k": 2}}},
        "primary": ["memorization_pixels_tail", "coverage_tail"],
        "bootstrap": 200,
    }
    for key, value in changes.items():
        proto[key] = value
    return proto


def write_protocol(path: Path, proto: dict) -> Path:
    path.write_text(yaml.safe_dump(proto))
    return path


class TrainerSpy:
    """Counts trainer runs; can stop the study (like Ctrl-C) before the n-th run starts."""

    def __init__(self, monkeypatch, stop_before: int | None = None):
        self.runs: list[Path] = []
        from cbdm_core.training.trainer import Trainer as original
        spy = self

        class Spy(original):
            def run(self):
                if stop_before is not None and len(spy.runs) + 1 >= stop_before:
                    raise KeyboardInterrupt
                spy.runs.append(self.run_dir)
                return super().run()

        monkeypatch.setattr(compare_training, "Trainer", Spy)  # the module that starts the runs


# -- tiny untrained runs written straight to disk ----------------------------------------------------------

TOY_OPTS = {"ch": 8, "ch_mult": [1, 2], "attn": [1], "num_res_blocks": 1, "num_groups": 4, "dropout": 0.0}
TOY_META = {"num_classes": 3, "image_size": 8, "channels": 1, "class_counts": [9, 3, 1], "class_names": ["a", "b", "c"],
            "dataset": "toy", "cond_dim": 0}


def write_toy_run(root: Path, *, config_over: dict | None = None, meta_over: dict | None = None,
                  ema_fill: float | None = None) -> Path:
    cfg = TrainConfig.model_validate({"model": {"options": TOY_OPTS}, "diffusion": {"T": 50}}).model_dump(mode="json")
    for dotted, value in (config_over or {}).items():
        *parents, last = dotted.split(".")
        node = cfg
        for p in parents:
            node = node[p]
        node[last] = value
    torch.manual_seed(0)
    model = build_model(TrainConfig.model_validate({"model": {"options": TOY_OPTS}, "diffusion": {"T": 50}}),
                        image_size=8, channels=1, num_classes=3)
    sd = model.state_dict()
    ema = {k: v.clone() for k, v in sd.items()}
    if ema_fill is not None:
        next(iter(ema.values())).fill_(ema_fill)
    save_checkpoint(root / "checkpoints" / "ckpt-00000000.safetensors",
                    Checkpoint(step=0, config=cfg, model=sd, ema=ema, meta={**TOY_META, **(meta_over or {})}))
    return root


SAMPLE_META = {"num_classes": 3, "image_size": 8, "channels": 1, "class_counts": [30, 10, 3],
               "class_names": ["a", "b", "c"], "dataset": "toy", "cond_dim": 0}


def write_sample_run(root: Path, p_uncond: float) -> Path:
    cfg = TrainConfig.model_validate({
        "model": {"backbone": "unet", "options": {"ch": 8, "ch_mult": [1, 2], "attn": [1], "num_res_blocks": 1,
                                                  "dropout": 0.0, "num_groups": 4}},
        "diffusion": {"T": 50, "beta_T": 0.2},
        "objective": {"p_uncond": p_uncond},
    })
    torch.manual_seed(0)
    model = build_model(cfg, image_size=8, channels=1, num_classes=3)
    sd = model.state_dict()
    ema = {k: v.clone() for k, v in sd.items()}  # safetensors refuses tensors shared between the two
    path = root / "checkpoints" / "ckpt-00000000.safetensors"
    save_checkpoint(path, Checkpoint(step=0, config=cfg.model_dump(mode="json"), model=sd, ema=ema, meta=SAMPLE_META))
    return root


# An untrained digits-lt run (10 classes, T = 50): sweeps sample and evaluate it.
DIGITS_UNET = {"ch": 8, "ch_mult": [1, 2], "attn": [], "num_res_blocks": 1, "dropout": 0.0, "num_groups": 4}


def write_digits_run(root: Path, p_uncond: float) -> Path:
    """An untrained digits-lt checkpoint: enough to exercise the sweep's plumbing."""
    cfg = TrainConfig.model_validate({
        "model": {"backbone": "unet", "options": DIGITS_UNET}, "diffusion": {"T": 50, "beta_T": 0.2},
        "data": {"dataset": "digits-lt"}, "objective": {"p_uncond": p_uncond}})
    torch.manual_seed(0)
    model = build_model(cfg, image_size=8, channels=1, num_classes=10)
    with torch.no_grad():  # the output layer starts at zero: move every weight so labels and w matter
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    sd = model.state_dict()
    meta = {"num_classes": 10, "image_size": 8, "channels": 1, "dataset": "digits-lt", "cond_dim": 0,
            "class_names": [str(i) for i in range(10)], "class_counts": [100, 80, 60, 45, 35, 25, 20, 15, 12, 10]}
    save_checkpoint(root / "checkpoints" / "ckpt-00000000.safetensors",
                    Checkpoint(step=0, config=cfg.model_dump(mode="json"), model=sd,
                               ema={k: v.clone() for k, v in sd.items()}, meta=meta))
    return root


def digits_feature_classifier(path: Path) -> Path:
    """A quickly trained digits feature classifier for evaluation (its quality does not matter)."""
    from cbdm_core.data import dataset_options, load_dataset
    from cbdm_core.features import save_classifier, train_classifier

    torch.set_num_threads(1)
    ds = load_dataset("digits", dataset_options(split="train"))
    model = train_classifier(ds.images, ds.labels, ds.num_classes, epochs=1, batch_size=128, lr=2e-3,
                             balanced=True, seed=0, device=torch.device("cpu"))
    save_classifier(model, path, {"dataset": "digits", "class_names": ds.class_names})
    return path


class LockHolder:
    """Another process holding a folder's lock (plain fcntl, as any cbdm command would)."""

    def __init__(self, folder: Path):
        folder.mkdir(parents=True, exist_ok=True)
        code = ("import fcntl, os, sys, time\n"
                f"fd = os.open({str(folder / locks.LOCK_NAME)!r}, os.O_RDWR | os.O_CREAT)\n"
                "fcntl.flock(fd, fcntl.LOCK_EX)\n"
                "os.ftruncate(fd, 0); os.write(fd, str(os.getpid()).encode())\n"
                "print('ready', flush=True)\n"
                "time.sleep(60)\n")
        self.proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout.readline().strip() == "ready"

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=10)


# -- a method whose loss turns NaN at its third call ------------------------------------------------------

class _NaNOnThirdCall(TrainingMethod):
    def __init__(self):
        self.calls = 0

    def extra_labels(self, ctx):
        return None

    def loss(self, ctx, out):
        self.calls += 1
        bad = float("nan") if self.calls == 3 else 0.0
        return {}, out.pred.new_tensor(bad)


class _NaNPlugin:
    @hookimpl
    def register_components(self, register):
        register("method", "nan-third", MethodSpec(options_model=CBDMOptions, build=lambda o, ctx: _NaNOnThirdCall()))


@pytest.fixture
def nan_registry():
    registry._DEFAULT = registry.build_registry([_NaNPlugin()])
    yield
    registry.reset_registry()


def nan_config(tmp_path, **over):
    """A tiny config that trains the ``nan-third`` method (needs the ``nan_registry`` fixture)."""
    cfg = {**TINY, "objective": {"methods": [{"name": "nan-third"}]}, **over}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path
