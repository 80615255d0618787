"""What a method's options model says about itself: names, types, defaults, numeric or not."""

from __future__ import annotations

import typing
from typing import Any

from pydantic import BaseModel


def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return "|".join(str(a) for a in typing.get_args(annotation))
    if origin is typing.Union:
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        inner = " | ".join(_type_name(a) for a in args)
        return f"{inner} | None" if len(args) < len(typing.get_args(annotation)) else inner
    return getattr(annotation, "__name__", str(annotation))


def _docstring_args(model: type[BaseModel]) -> dict[str, str]:
    """``name: text`` lines of the model's ``Args:`` section (Google style)."""
    out: dict[str, str] = {}
    doc = model.__doc__ or ""
    current, indent = None, 0
    for line in doc.splitlines():
        stripped = line.strip()
        name, sep, text = stripped.partition(":")
        if sep and name.replace("_", "").isalnum() and name in model.model_fields:
            current, indent = name, len(line) - len(line.lstrip())
            out[name] = text.strip()
        elif current and stripped and len(line) - len(line.lstrip()) > indent:
            out[current] += " " + stripped  # a continuation line of the same entry
        else:
            current = None
    return out


def describe_options(model: type[BaseModel]) -> list[dict[str, Any]]:
    """``[{"name", "type", "default", "required", "description", "numeric"}]`` for every field of
    ``model`` (``default`` None for a required field)."""
    docs = _docstring_args(model)
    rows = []
    for name, f in model.model_fields.items():
        required = f.is_required()
        default = None if required else f.get_default(call_default_factory=True)
        rows.append({"name": name, "type": _type_name(f.annotation), "default": default, "required": required,
                     "description": f.description or docs.get(name, ""), "numeric": is_numeric(f.annotation)})
    return rows


def is_numeric(annotation: Any) -> bool:
    """An int or float option (also ``Optional[int]``): what ``cbdm sweep option`` can sweep."""
    if annotation in (int, float):
        return True
    if typing.get_origin(annotation) is typing.Union:
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return bool(args) and all(a in (int, float) for a in args)
    return False
