"""Build a run's components from a :class:`TrainConfig`: the edge where names become objects.

This module (with ``run.py`` and the CLI) is where the registry is read: names are resolved
here (:func:`resolve_components`) and the layers below receive the objects.
"""

from __future__ import annotations

from typing import Any, Optional

import torch

from .checkpoint import RunMeta
from .components import Components, ModelComponents, ResolvedMethod
from .config import TrainConfig, validate_component_options
from .device import resolve_device  # noqa: F401  (its old home; importers of cbdm_core.build keep working)
from .errors import CbdmError, UnknownComponentError
from .interfaces import missing_capabilities
from .label_distributions import checked_distribution
from .methods.base import MethodBuildContext, MethodSpec, TrainingMethod
from .registry import Registry, get_registry, split_name
from .run_folder import resolve_checkpoint
from .sampling.api import resolve_guidance
from .schedules import NoiseSchedule
from .settings_check import check_sampling_settings


def build_schedule(cfg: TrainConfig, components: Optional[Components | ModelComponents] = None) -> NoiseSchedule:
    """The configured noise schedule (from ``components`` when the names are already resolved)."""
    d = cfg.diffusion
    factory = components.schedule if components else get_registry().get("noise_schedule", d.schedule).obj
    return factory(d.T, beta_1=d.beta_1, beta_T=d.beta_T)


def backbone_options(cfg: TrainConfig, cond_dim: int = 0, registry: Optional[Registry] = None):
    """The backbone spec and its validated options (``cond_dim`` added when it takes one)."""
    spec = (registry or get_registry()).get("backbone", cfg.model.backbone).obj
    options = dict(cfg.model.options)
    fields = getattr(spec.options_model, "model_fields", {})
    if cond_dim and "cond_dim" in fields and "cond_dim" not in options:
        options["cond_dim"] = cond_dim
    return spec, validate_component_options(spec.options_model, options, f"model.options ({cfg.model.backbone})")


def build_model(cfg: TrainConfig, *, image_size: int, channels: int, num_classes: int,
                cond_dim: int = 0, components: Optional[ModelComponents] = None) -> torch.nn.Module:
    """The configured backbone, refused (one line) if it lacks a capability a configured method needs
    (from ``components`` when the names are already resolved, ``cond_dim`` included)."""
    spec, options = ((components.backbone, components.backbone_options) if components
                     else backbone_options(cfg, cond_dim))
    model = spec.build(options, image_size=image_size, channels=channels, num_classes=num_classes,
                       schedule=build_schedule(cfg, components))
    check_capabilities(cfg, model, components.methods if components else None)
    return model


def check_capabilities(cfg: TrainConfig, model: torch.nn.Module,
                       methods: Optional[tuple[ResolvedMethod, ...]] = None) -> None:
    """Refuse ``model`` when it lacks a capability (``MethodSpec.requires``) of a configured method
    (``methods`` when already resolved): the one place that checks what a method needs of a
    backbone, before any method attaches."""
    # Lazily: the first method lacking a capability is reported before later names are looked up.
    specs = ((m.spec for m in methods) if methods is not None
             else (get_registry().get("method", mc.name).obj for mc in cfg.objective.methods))
    for mc, spec in zip(cfg.objective.methods, specs):
        missing = missing_capabilities(model, spec.requires)
        if missing:
            raise CbdmError(f"method {mc.name!r} needs a backbone with {' and '.join(missing)}; backbone "
                            f"{cfg.model.backbone!r} ({type(model).__name__}) has none")


def loss_name(cfg: TrainConfig, registry: Optional[Registry] = None) -> str:
    if cfg.objective.loss is not None:
        return cfg.objective.loss
    return (registry or get_registry()).get("backbone", cfg.model.backbone).obj.default_loss


def build_base_loss(cfg: TrainConfig, schedule: NoiseSchedule, components: Optional[Components] = None):
    """The run's base loss on ``schedule`` (from ``components`` when the names are already resolved)."""
    import inspect

    factory = components.loss if components else get_registry().get("diffusion_loss", loss_name(cfg)).obj
    try:
        accepts = "backbone_options" in inspect.signature(factory).parameters
    except (TypeError, ValueError):
        accepts = False
    if accepts:  # losses tied to a backbone (EDM) read their settings from its options
        return factory(schedule, backbone_options=backbone_options(cfg)[1])
    return factory(schedule)


def method_options(cfg: TrainConfig, registry: Optional[Registry] = None) -> list[tuple[str, MethodSpec, Any]]:
    """``(name, spec, validated options)`` of every configured method, in order."""
    out = []
    for i, mc in enumerate(cfg.objective.methods):
        spec = (registry or get_registry()).get("method", mc.name).obj
        options = validate_component_options(spec.options_model, mc.options, f"objective.methods[{i}] ({mc.name})")
        out.append((mc.name, spec, options))
    return out


def build_methods(cfg: TrainConfig, *, class_counts: torch.Tensor, num_classes: int,
                  schedule: NoiseSchedule, components: Optional[ModelComponents] = None) -> list[TrainingMethod]:
    """The configured training methods, built in config order (not yet attached to a model; from
    ``components`` when the names are already resolved)."""
    probs = _probs(components.label_distribution) if components else label_distribution_probs()
    ctx = MethodBuildContext(class_counts=torch.as_tensor(class_counts), num_classes=num_classes,
                             schedule=schedule, backbone=cfg.model.backbone, label_distribution=probs)
    resolved = [(m.name, m.spec, m.options) for m in components.methods] if components else method_options(cfg)
    out = []
    for name, spec, options in resolved:
        method = spec.build(options, ctx)
        if not getattr(method, "name", ""):
            method.name = name
        out.append(method)
    return out


def attach_methods(methods: list[TrainingMethod], model: torch.nn.Module) -> None:
    """Let every method add its modules to ``model`` (before any weights are loaded into it)."""
    for method in methods:
        method.attach(model)


def build_augmentation(cfg: TrainConfig, components: Optional[Components] = None):
    """The configured augmentation (from ``components`` when the names are already resolved)."""
    factory = components.augmentation if components else get_registry().get("augmentation", cfg.data.augment).obj
    return factory(cfg.data.augment_p)


def dataset_options(cfg: TrainConfig, split: str = "train"):
    from .data.options import DatasetOptions

    d = cfg.data
    return DatasetOptions(root=d.root, split=split, imb_factor=d.imb_factor, lt_profile=d.lt_profile,
                          lt_seed=d.lt_seed, max_per_class=d.max_per_class, download=d.download, strict=d.strict,
                          classes=d.classes, class_order=d.class_order, resize=d.resize)


def load_training_data(cfg: TrainConfig, components: Optional[Components] = None):
    """The configured training split (from ``components`` when the names are already resolved)."""
    factory = components.dataset if components else get_registry().get("dataset", cfg.data.dataset).obj
    return factory(dataset_options(cfg, "train"))


def label_distribution_lookup(registry: Optional[Registry] = None):
    """``name -> LabelDistributionFactory`` (``"pow:0.5"`` looks up ``pow``), for method options."""
    reg = registry or get_registry()
    return lambda name: reg.get("label_distribution", name).obj


def label_distribution_probs(registry: Optional[Registry] = None):
    """``(name, class_counts) -> probabilities``: what :class:`MethodBuildContext` hands methods."""
    return _probs(label_distribution_lookup(registry))


def _probs(lookup):
    """``(name, class_counts) -> probabilities`` from a ``name -> factory`` lookup."""
    return lambda name, counts: checked_distribution(name, lookup(name)(counts, split_name(name)[1]), len(counts))


def resolve_model_components(cfg: TrainConfig, cond_dim: int = 0,
                             registry: Optional[Registry] = None) -> ModelComponents:
    """The names a trained run's model needs, resolved once, in this order: schedule, methods
    (and their options), backbone (and its options, ``cond_dim`` added when it takes one)."""
    reg = registry or get_registry()
    schedule = reg.get("noise_schedule", cfg.diffusion.schedule).obj
    methods = tuple(ResolvedMethod(name, spec, opts) for name, spec, opts in method_options(cfg, reg))
    backbone, options = backbone_options(cfg, cond_dim, registry=reg)
    return ModelComponents(schedule=schedule, backbone=backbone, backbone_options=options, methods=methods,
                           label_distribution=label_distribution_lookup(reg))


def check_method(method: ResolvedMethod, registry: Registry) -> None:
    """A method's fail-fast checks: its label-distribution options are registered names, then
    its own ``check`` (both before any data is loaded)."""
    for key in method.spec.label_distribution_options:
        registry.get("label_distribution", getattr(method.options, key))
    if method.spec.check is not None:
        method.spec.check(method.options)


def resolve_components(cfg: TrainConfig, registry: Optional[Registry] = None) -> Components:
    """Every name of ``cfg`` resolved, in this order, with one-line errors listing the choices:
    dataset, augmentation, schedule, backbone (and its options), loss, methods (options, checks),
    sampler and guidance of the preview."""
    reg = registry or get_registry()
    dataset = reg.get("dataset", cfg.data.dataset).obj
    augmentation = reg.get("augmentation", cfg.data.augment).obj
    schedule = reg.get("noise_schedule", cfg.diffusion.schedule).obj
    backbone, options = backbone_options(cfg, registry=reg)
    loss = reg.get("diffusion_loss", loss_name(cfg, reg)).obj
    methods = tuple(ResolvedMethod(name, spec, opts) for name, spec, opts in method_options(cfg, reg))
    for method in methods:
        check_method(method, reg)
    sampler = reg.get("sampler", cfg.preview.sampler).obj
    # The preview's guidance options are validated by the sampling layer's one checker.
    resolve_guidance(cfg.preview.guidance_method, cfg.preview.guidance_options)
    guidance = reg.get("guidance", cfg.preview.guidance_method).obj
    return Components(dataset=dataset, augmentation=augmentation, schedule=schedule, backbone=backbone,
                      backbone_options=options, loss_name=loss_name(cfg, reg), loss=loss, methods=methods,
                      sampler=sampler, guidance=guidance, label_distribution=label_distribution_lookup(reg),
                      plugins=component_plugins(cfg, reg))


def check_components(cfg: TrainConfig) -> Components:
    """Fail fast (before loading data) on unknown names and invalid plugin options; the resolved
    components."""
    components = resolve_components(cfg)
    # The preview runs after training: its settings are checked now, not then.
    check_sampling_settings(cfg.preview, schedule=build_schedule(cfg), where="preview")
    if cfg.init_from is not None:
        resolve_checkpoint(cfg.init_from)
    return components


def component_plugins(cfg: TrainConfig, registry: Optional[Registry] = None) -> dict[str, str]:
    """``{"kind:name": "distribution version"}`` of every component ``cfg`` uses, stored with
    checkpoints so a run whose plugin is no longer installed can name the missing package."""
    reg = registry or get_registry()
    used = [("dataset", cfg.data.dataset), ("augmentation", cfg.data.augment),
            ("noise_schedule", cfg.diffusion.schedule), ("backbone", cfg.model.backbone),
            ("diffusion_loss", loss_name(cfg, reg)), ("sampler", cfg.preview.sampler),
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
