"""Build components from a :class:`TrainConfig`, always through the registry."""

from __future__ import annotations

from typing import Any, Optional

import torch

from .checkpoint import RunMeta
from .config import TrainConfig, validate_component_options
from .device import resolve_device  # noqa: F401  (its old home; importers of cbdm_core.build keep working)
from .errors import CbdmError, UnknownComponentError
from .interfaces import missing_capabilities
from .methods.base import MethodBuildContext, MethodSpec, TrainingMethod
from .registry import get_registry
from .run_folder import resolve_checkpoint
from .sampling.guidance import resolve_guidance
from .schedules import NoiseSchedule
from .settings_check import check_sampling_settings


def build_schedule(cfg: TrainConfig) -> NoiseSchedule:
    d = cfg.diffusion
    factory = get_registry().get("noise_schedule", d.schedule).obj
    return factory(d.T, beta_1=d.beta_1, beta_T=d.beta_T)


def backbone_options(cfg: TrainConfig, cond_dim: int = 0):
    spec = get_registry().get("backbone", cfg.model.backbone).obj
    options = dict(cfg.model.options)
    fields = getattr(spec.options_model, "model_fields", {})
    if cond_dim and "cond_dim" in fields and "cond_dim" not in options:
        options["cond_dim"] = cond_dim
    return spec, validate_component_options(spec.options_model, options, f"model.options ({cfg.model.backbone})")


def build_model(cfg: TrainConfig, *, image_size: int, channels: int, num_classes: int,
                cond_dim: int = 0) -> torch.nn.Module:
    """The configured backbone, refused (one line) if it lacks a capability a configured method needs."""
    spec, options = backbone_options(cfg, cond_dim)
    model = spec.build(options, image_size=image_size, channels=channels, num_classes=num_classes,
                       schedule=build_schedule(cfg))
    check_capabilities(cfg, model)
    return model


def check_capabilities(cfg: TrainConfig, model: torch.nn.Module) -> None:
    """Refuse ``model`` when it lacks a capability (``MethodSpec.requires``) of a configured method:
    the one place that checks what a method needs of a backbone, before any method attaches."""
    for mc in cfg.objective.methods:
        missing = missing_capabilities(model, get_registry().get("method", mc.name).obj.requires)
        if missing:
            raise CbdmError(f"method {mc.name!r} needs a backbone with {' and '.join(missing)}; backbone "
                            f"{cfg.model.backbone!r} ({type(model).__name__}) has none")


def loss_name(cfg: TrainConfig) -> str:
    if cfg.objective.loss is not None:
        return cfg.objective.loss
    return get_registry().get("backbone", cfg.model.backbone).obj.default_loss


def build_base_loss(cfg: TrainConfig, schedule: NoiseSchedule):
    import inspect

    factory = get_registry().get("diffusion_loss", loss_name(cfg)).obj
    try:
        accepts = "backbone_options" in inspect.signature(factory).parameters
    except (TypeError, ValueError):
        accepts = False
    if accepts:  # losses tied to a backbone (EDM) read their settings from its options
        return factory(schedule, backbone_options=backbone_options(cfg)[1])
    return factory(schedule)


def method_options(cfg: TrainConfig) -> list[tuple[str, MethodSpec, Any]]:
    """``(name, spec, validated options)`` of every configured method, in order."""
    out = []
    for i, mc in enumerate(cfg.objective.methods):
        spec = get_registry().get("method", mc.name).obj
        options = validate_component_options(spec.options_model, mc.options, f"objective.methods[{i}] ({mc.name})")
        out.append((mc.name, spec, options))
    return out


def build_methods(cfg: TrainConfig, *, class_counts: torch.Tensor, num_classes: int,
                  schedule: NoiseSchedule) -> list[TrainingMethod]:
    """The configured training methods, built in config order (not yet attached to a model)."""
    ctx = MethodBuildContext(class_counts=torch.as_tensor(class_counts), num_classes=num_classes,
                             schedule=schedule, backbone=cfg.model.backbone)
    out = []
    for name, spec, options in method_options(cfg):
        method = spec.build(options, ctx)
        if not getattr(method, "name", ""):
            method.name = name
        out.append(method)
    return out


def attach_methods(methods: list[TrainingMethod], model: torch.nn.Module) -> None:
    """Let every method add its modules to ``model`` (before any weights are loaded into it)."""
    for method in methods:
        method.attach(model)


def build_augmentation(cfg: TrainConfig):
    factory = get_registry().get("augmentation", cfg.data.augment).obj
    return factory(cfg.data.augment_p)


def dataset_options(cfg: TrainConfig, split: str = "train"):
    from .data.options import DatasetOptions

    d = cfg.data
    return DatasetOptions(root=d.root, split=split, imb_factor=d.imb_factor, lt_profile=d.lt_profile,
                          lt_seed=d.lt_seed, max_per_class=d.max_per_class, download=d.download, strict=d.strict,
                          classes=d.classes, class_order=d.class_order, resize=d.resize)


def load_training_data(cfg: TrainConfig):
    factory = get_registry().get("dataset", cfg.data.dataset).obj
    return factory(dataset_options(cfg, "train"))


def check_components(cfg: TrainConfig) -> None:
    """Fail fast (before loading data) on unknown names and invalid plugin options."""
    reg = get_registry()
    reg.get("dataset", cfg.data.dataset)
    reg.get("augmentation", cfg.data.augment)
    reg.get("noise_schedule", cfg.diffusion.schedule)
    backbone_options(cfg)
    reg.get("diffusion_loss", loss_name(cfg))
    for _, spec, options in method_options(cfg):
        if spec.check is not None:  # the method's own fail-fast checks (e.g. CBDM's y' distribution)
            spec.check(options)
    reg.get("sampler", cfg.preview.sampler)
    resolve_guidance(cfg.preview.guidance_method, cfg.preview.guidance_options)
    # The preview runs after training: its settings are checked now, not then.
    check_sampling_settings(cfg.preview, schedule=build_schedule(cfg), where="preview")
    if cfg.init_from is not None:
        resolve_checkpoint(cfg.init_from)


def component_plugins(cfg: TrainConfig) -> dict[str, str]:
    """``{"kind:name": "distribution version"}`` of every component ``cfg`` uses, stored with
    checkpoints so a run whose plugin is no longer installed can name the missing package."""
    reg = get_registry()
    used = [("dataset", cfg.data.dataset), ("augmentation", cfg.data.augment),
            ("noise_schedule", cfg.diffusion.schedule), ("backbone", cfg.model.backbone),
            ("diffusion_loss", loss_name(cfg)), ("sampler", cfg.preview.sampler),
            ("guidance", cfg.preview.guidance_method)] + [("method", m.name) for m in cfg.objective.methods]
    out = {}
    for kind, name in used:
        comp = reg.get(kind, name)
        out[f"{kind}:{comp.name}"] = f"{comp.plugin.split(':', 1)[0]} {comp.version}"
    return out


def explain_missing_plugin(exc: UnknownComponentError, meta: Optional[RunMeta]) -> CbdmError:
    """``exc`` with the plugin distribution the run was made with, when its metadata names it."""
    plugins = meta.plugins if isinstance(meta, RunMeta) else None  # no metadata: nothing to add
    made_with = (plugins or {}).get(f"{exc.kind}:{exc.name}")
    if not made_with:
        return exc
    dist = str(made_with).split()[0]
    return UnknownComponentError(f"{exc.kind.replace('_', ' ')} {exc.name!r} is not installed: the run was made "
                                 f"with it from plugin {made_with} (pip install {dist})", exc.kind, exc.name)
