"""What the registry checks of a registration: a name some command can select, and an object that
has its kind's members (the contracts themselves: :data:`cbdm_core.components.KIND_SPECS`).

Imports nothing of cbdm, so the registry can use it without an import cycle.
"""

from __future__ import annotations

from typing import Any, Optional

from pydantic import BaseModel

# Per kind with a spec class (cbdm_core.components.KIND_SPECS): the spec and the members a registered
# object must have, (name, must be callable).
_SPEC_MEMBERS: dict[str, tuple[str, tuple[tuple[str, bool], ...]]] = {
    "backbone": ("BackboneSpec", (("options_model", False), ("build", True))),
    "method": ("MethodSpec", (("options_model", False), ("build", True))),
    "sampler": ("SamplerSpec", (("run", True), ("default_steps", False))),
    "metric": ("MetricSpec", (("compute", True), ("values", False))),
}
RESERVED_METHOD_NAMES = ("ddpm",)  # `--method ddpm` means plain DDPM: no method at all


def contract_problem(kind: str, name: Any, obj: Any) -> Optional[str]:
    """Why ``obj`` registered as ``kind`` ``name`` breaks its kind's contract, or None.

    Checked at registration, so a plugin that registers a plain function as a method, or a name
    no command can select (``a:b``; ``a+b`` or ``ddpm`` for a method), is left out whole with one
    line instead of breaking ``cbdm methods`` or a run for everyone.
    """
    if not isinstance(name, str) or not name or any(ch.isspace() for ch in name) or ":" in name:
        return f"{kind} name {name!r} cannot be selected: a name is non-empty, without spaces or ':'"
    if kind == "method" and ("+" in name or name in RESERVED_METHOD_NAMES):
        return (f"method name {name!r} cannot be selected: '+' combines methods and 'ddpm' means no method")
    if kind == "guidance" and not callable(obj) and not callable(getattr(obj, "build", None)):
        return f"guidance {name!r} is a {type(obj).__name__}, not a GuidanceSpec or a callable"
    if kind not in _SPEC_MEMBERS:
        if kind != "guidance" and not callable(obj):
            return f"{kind} {name!r} is a {type(obj).__name__}, not a callable factory"
    else:
        spec, members = _SPEC_MEMBERS[kind]
        for member, is_callable in members:
            if not hasattr(obj, member) or (is_callable and not callable(getattr(obj, member))):
                return f"{kind} {name!r} is a {type(obj).__name__} without {member!r}; register a {spec}"
    options = getattr(obj, "options_model", None)
    required = kind in ("backbone", "method")  # their options are validated and stored with every run
    if (options is not None or required) and not (isinstance(options, type) and issubclass(options, BaseModel)):
        return f"{kind} {name!r}: options_model must be a pydantic model class, got {type(options).__name__}"
    return None
