"""Typed configs from nested dicts (YAML): dataclasses whose fields are checked by type and
by each class's ``check()``, with errors that name the dotted key.

A config dataclass declares its fields with type annotations (nested dataclasses for
sections) and may define ``check()``, raising :class:`BadValue` through :func:`require` and
its kin; :func:`from_dict` builds it and reports the first problem as "KEY: reason".

Example:
    >>> from dataclasses import dataclass
    >>> @dataclass
    ... class Budget:
    ...     epochs: int = 10
    ...     def check(self):
    ...         require_int(self, "epochs", 1)
    >>> from_dict(Budget, {"epochs": 0})
    Traceback (most recent call last):
    ValueError: epochs: must be an integer >= 1, got 0
"""

import dataclasses
import types
import typing


def is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


class BadValue(ValueError):
    """A ``check()`` failure: ``key`` (relative to the class) and the reason."""

    def __init__(self, key, reason):
        super().__init__(reason)
        self.key = key


def require(condition, key, reason):
    if not condition:
        raise BadValue(key, reason)


def require_one_of(obj, name, choices):
    value = getattr(obj, name)
    require(value in choices, name,
            f"must be one of {', '.join(map(str, choices))}, got {value!r}")


def require_int(obj, name, minimum):
    value = getattr(obj, name)
    require(is_int(value) and value >= minimum, name,
            f"must be an integer >= {minimum}, got {value!r}")


def _matches(value, annotation):
    """Whether a YAML value fits a field's type annotation (int accepted where float is)."""
    if annotation is typing.Any:
        return True
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, arg) for arg in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is int:
        return is_int(value)
    if annotation in (list,) or origin is list:
        return isinstance(value, list)
    return isinstance(value, annotation)


def from_dict(cls, data, prefix=""):
    """Builds dataclass ``cls`` from a nested dict, checking keys, types and values.

    Raises ValueError "KEY: reason" (dotted key path) on the first problem.

    Every field must be given (merge the defaults in first: :func:`merged`).
    """
    if not isinstance(data, dict):
        raise ValueError(f"{prefix.rstrip('.') or 'the file'}: must be a mapping of keys to values")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(f"{prefix}{unknown[0]}: unknown key; known keys here are "
                         f"{', '.join(sorted(fields))}")
    values = {}
    for name, value in data.items():
        annotation = hints[name]
        if dataclasses.is_dataclass(annotation):
            values[name] = from_dict(annotation, value, f"{prefix}{name}.")
        elif not _matches(value, annotation):
            raise ValueError(f"{prefix}{name}: expected {_describe(annotation)}, got {value!r}")
        else:
            values[name] = value
    obj = cls(**values)
    if hasattr(obj, "check"):
        try:
            obj.check()
        except BadValue as err:
            raise ValueError(f"{prefix}{err.key}: {err}") from None
    return obj


def merged(defaults, overrides):
    """``overrides`` laid over ``defaults``, mapping by mapping (unknown keys kept, for the check)."""
    if not isinstance(defaults, dict) or not isinstance(overrides, dict):
        return overrides
    return {**defaults, **{k: merged(defaults.get(k), v) for k, v in overrides.items()}}


def _describe(annotation):
    text = str(annotation).replace("typing.", "").replace("NoneType", "null")
    return text.replace("<class '", "").replace("'>", "")
