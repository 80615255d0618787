"""Component registry filled by pluggy plugins discovered from entry points.

Kinds (:data:`KINDS`) and what a registered object must be: one contract per kind, all in
:mod:`cbdm_core.components` (:data:`~cbdm_core.components.KIND_SPECS`):

=====================  ==========================================================
kind                   object
=====================  ==========================================================
backbone               :class:`~cbdm_core.interfaces.BackboneSpec`
noise_schedule         :class:`~cbdm_core.components.ScheduleFactory`:
                       ``(num_timesteps, *, beta_1, beta_T) -> NoiseSchedule``
label_distribution     :class:`~cbdm_core.components.LabelDistributionFactory`:
                       ``(class_counts [C], arg: str | None) -> probabilities [C]``
method                 :class:`~cbdm_core.methods.base.MethodSpec` (a training method)
diffusion_loss         :class:`~cbdm_core.components.LossFactory`: ``(schedule) -> BaseLoss``
                       (``backbone_options=`` too when its signature names it: EDM)
sampler                :class:`~cbdm_core.interfaces.SamplerSpec`
guidance               :class:`~cbdm_core.interfaces.GuidanceSpec` or a callable
                       ``(model, scale: float, null_label: int) -> denoise_fn``
dataset                :class:`~cbdm_core.components.DatasetFactory`: ``(DatasetOptions) -> LabeledImages``
augmentation           :class:`~cbdm_core.components.AugmentationFactory`: ``(p: float) -> Augmentation``
feature_extractor      :class:`~cbdm_core.components.FeatureExtractorFactory`: ``(**options) -> FeatureExtractor``
metric                 :class:`~cbdm_core.interfaces.MetricSpec`
=====================  ==========================================================

The registry is read at the edge only (``build.py``, ``run.py``, the CLI, ``plugins/``; see
``tests/test_structure.py``): names become objects there, the layers below receive objects.

Names may carry an argument after a colon (``pow:0.5``); the registry looks up
the part before the colon and hands the rest to the component (label distributions;
guidance takes named options instead, see :func:`cbdm_core.sampling.api.resolve_guidance`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from importlib import metadata as importlib_metadata
from typing import Any, Callable, Iterator

import pluggy

from .component_contracts import contract_problem
from .errors import CbdmError, DuplicateComponentError, UnknownComponentError
from .hookspecs import PROJECT_NAME, CbdmSpec, hookimpl  # noqa: F401  (hookimpl: also found here)

log = logging.getLogger("cbdm.plugins")

KINDS: tuple[str, ...] = (
    "backbone",
    "noise_schedule",
    "label_distribution",
    "method",
    "diffusion_loss",
    "sampler",
    "guidance",
    "dataset",
    "augmentation",
    "feature_extractor",
    "metric",
)

# Kinds whose names may carry an argument after a colon (``pow:0.5``).
ARGUMENT_KINDS: frozenset[str] = frozenset({"label_distribution"})


@dataclass(frozen=True)
class Component:
    """One registered implementation."""

    kind: str
    name: str
    obj: Any
    plugin: str
    version: str
    description: str = ""


@dataclass
class Registry:
    """All components, keyed by (kind, name)."""

    components: dict[tuple[str, str], Component] = field(default_factory=dict)
    problems: list["PluginProblem"] = field(default_factory=list)  # plugins left out, see build_registry

    def add(self, component: Component) -> None:
        if component.kind not in KINDS:
            raise CbdmError(
                f"plugin {component.plugin} registered unknown kind {component.kind!r}; "
                f"kinds are: {', '.join(KINDS)}"
            )
        key = (component.kind, component.name)
        if key in self.components:
            other = self.components[key]
            raise DuplicateComponentError(
                f"{component.kind} {component.name!r} is registered twice: by plugin "
                f"{other.plugin} ({other.version}) and by plugin {component.plugin} ({component.version})"
            )
        problem = contract_problem(component.kind, component.name, component.obj)
        if problem is not None:
            raise CbdmError(f"plugin {component.plugin}: {problem}")
        self.components[key] = component

    def names(self, kind: str) -> list[str]:
        return sorted(n for k, n in self.components if k == kind)

    def get(self, kind: str, name: str) -> Component:
        """Look up ``name`` (the part before any ``:``) or fail naming the choices.

        Only kinds in :data:`ARGUMENT_KINDS` take an argument after the colon; for any other
        kind ``ddim:5`` is refused rather than looked up as ``ddim`` with the ``5`` dropped.
        """
        base, arg = split_name(name)
        try:
            component = self.components[(kind, base)]
        except KeyError:
            choices = ", ".join(self.names(kind)) or "(none registered)"
            raise UnknownComponentError(
                f"unknown {kind.replace('_', ' ')} {name!r}; available: {choices}", kind, base) from None
        if arg is not None and kind not in ARGUMENT_KINDS:
            raise CbdmError(f"{kind.replace('_', ' ')} {name!r}: a {kind.replace('_', ' ')} takes no argument "
                            f"after ':' (only label distributions do, as in pow:0.5); give {base!r} "
                            "its options with its option flag (cbdm plugins lists them)")
        return component

    def __iter__(self) -> Iterator[Component]:
        return iter(sorted(self.components.values(), key=lambda c: (c.kind, c.name)))


def split_name(name: str) -> tuple[str, str | None]:
    """``"pow:0.5"`` -> ``("pow", "0.5")``; ``"bal"`` -> ``("bal", None)``."""
    base, sep, arg = name.partition(":")
    return base, (arg if sep else None)


@dataclass(frozen=True)
class PluginProblem:
    """A plugin left out of the registry: it failed to import or to register, or it
    registered a name another plugin already holds."""

    plugin: str
    version: str
    error: str


def _entry_point_plugins(pm: pluggy.PluginManager, registry: Registry) -> dict[int, tuple[str, str]]:
    """Import and register every ``cbdm`` entry point, each on its own: one that fails to import
    is recorded in ``registry.problems`` and left out. Built-ins (the ``cbdm`` distribution) come
    first, so a third-party name collision leaves out the third-party plugin, never a built-in.
    Returns ``{id(plugin): (distribution, version)}``."""
    found = []
    for ep in importlib_metadata.entry_points(group=PROJECT_NAME):
        dist = getattr(ep, "dist", None)
        name, version = (dist.metadata["name"], dist.version) if dist is not None else ("(unknown)", "-")
        found.append((name != PROJECT_NAME, name, ep.name, version, ep))
    versions: dict[int, tuple[str, str]] = {}
    for _, dist_name, ep_name, version, ep in sorted(found, key=lambda f: f[:3]):
        if pm.has_plugin(ep_name) or pm.is_blocked(ep_name):  # as pluggy: the first of a name wins
            continue
        try:
            plugin = ep.load()
            pm.register(plugin, name=ep_name)
        except Exception as exc:  # noqa: BLE001 - a broken third-party plugin must not stop cbdm
            registry.problems.append(PluginProblem(f"{dist_name}:{ep_name}", version,
                                                   f"import failed: {_one_line(exc)}"))
            continue
        versions[id(plugin)] = (dist_name, version)
    return versions


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _register_plugin(registry: Registry, impl: Any, label: str, version: str, strict: bool) -> None:
    """Run one plugin's ``register_components`` into a staging list, then add all its
    components or none: a plugin that raises, registers an unknown kind or a name already
    taken is recorded in ``registry.problems`` (``strict``: raised, for plugins passed in code)."""
    staged: list[Component] = []

    def register(kind: str, name: str, obj: Any, description: str = "") -> None:
        staged.append(Component(kind, name, obj, label, version, description))

    trial = Registry(components=dict(registry.components))
    try:
        impl.function(register=register)
        for component in staged:
            trial.add(component)
    except Exception as exc:  # noqa: BLE001 - isolate the plugin, see above
        if strict:
            raise
        what = str(exc) if isinstance(exc, CbdmError) else f"register_components raised {_one_line(exc)}"
        registry.problems.append(PluginProblem(label, version, what))
        return
    registry.components = trial.components


def build_registry(extra_plugins: list[Any] | None = None) -> Registry:
    """Discover every plugin in the ``cbdm`` entry-point group and collect its components.

    Each entry-point plugin is loaded on its own: one that fails to import or to register, or
    that registers a name another plugin holds, is left out with a one-line warning and listed
    in ``registry.problems`` (``cbdm plugins`` shows it); every other component still works.

    Args:
        extra_plugins: modules or objects to register in addition (tests, notebooks); their
            errors raise, as they come from the caller's own code.
    """
    pm = pluggy.PluginManager(PROJECT_NAME)
    pm.add_hookspecs(CbdmSpec)
    registry = Registry()
    versions = _entry_point_plugins(pm, registry)
    extra = {id(p) for p in extra_plugins or []}
    for p in extra_plugins or []:
        pm.register(p, name=getattr(p, "__name__", None) or type(p).__name__)
    for impl in pm.hook.register_components.get_hookimpls():
        dist, version = versions.get(id(impl.plugin), ("(local)", "-"))
        label = f"{dist}:{impl.plugin_name}" if dist != "(local)" else impl.plugin_name
        _register_plugin(registry, impl, label, version, strict=id(impl.plugin) in extra)
    for problem in registry.problems:
        log.warning("Warning: plugin %s is left out: %s", problem.plugin, problem.error)
    return registry


_DEFAULT: Registry | None = None


def get_registry() -> Registry:
    """The process-wide registry, built on first use."""
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = build_registry()
    return _DEFAULT


def reset_registry() -> None:
    """Forget the cached registry (after installing a plugin at run time)."""
    global _DEFAULT
    _DEFAULT = None


def lookup(kind: str, name: str) -> Any:
    """Shortcut: the registered object for ``kind``/``name``."""
    return get_registry().get(kind, name).obj


Factory = Callable[..., Any]
