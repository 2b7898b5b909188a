"""Turn pydantic's validation errors into one readable message naming the key and what is allowed."""

from __future__ import annotations

import typing

from pydantic import BaseModel, ValidationError

from edgepack.core.errors import closest_names


def describe_validation_error(error: ValidationError, source: str, root: type[BaseModel]) -> str:
    lines = [_describe_one(e, root) for e in error.errors()]
    return f"{source}: " + "; ".join(lines)


def _describe_one(err: dict, root: type[BaseModel]) -> str:
    loc = [str(p) for p in err["loc"]]
    key = ".".join(loc) or "(top level)"
    if err["type"] == "extra_forbidden":
        allowed = _fields_at(root, loc[:-1])
        hint = closest_names(loc[-1], allowed)
        did_you_mean = f" (did you mean {hint[0]!r}?)" if hint else ""
        return f"unknown key {key!r}{did_you_mean}; allowed here: {', '.join(allowed)}"
    if err["type"] == "missing":
        return f"missing required key {key!r}"
    message = err["msg"].removeprefix("Value error, ")
    return f"{key!r}: {message} (got {err.get('input')!r})"


def _fields_at(model: type[BaseModel], loc: list[str]) -> list[str]:
    """Field names of the sub-model that a location points into (best effort; [] when it cannot tell)."""
    current: typing.Any = model
    for part in loc:
        current = _sub_model(current, part)
        if current is None:
            return []
    return list(current.model_fields) if isinstance(current, type) and issubclass(current, BaseModel) else []


def _sub_model(model: typing.Any, part: str) -> typing.Any:
    if part.isdigit():  # a list index: stay on the list's item type, already unwrapped
        return model
    if not (isinstance(model, type) and issubclass(model, BaseModel)) or part not in model.model_fields:
        return None
    return _unwrap(model.model_fields[part].annotation)


def _unwrap(annotation: typing.Any) -> typing.Any:
    """The BaseModel inside Optional[...], list[...] or a plain annotation."""
    for arg in typing.get_args(annotation) or (annotation,):
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg
        inner = _unwrap(arg) if typing.get_args(arg) else None
        if inner is not None:
            return inner
    return None
