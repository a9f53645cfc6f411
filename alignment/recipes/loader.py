"""Typed loading of nested dataclasses from YAML mappings, with errors that name the field.

`load_dataclass(cls, data, where)` walks the dataclass's fields, checks every value against its annotation
(int, float, str, bool, Literal, Optional, list[...], dict[str, ...] and nested dataclasses), rejects unknown
keys, and raises `ConfigError` with a message such as
``rewards.objectives[1].weight: expected a number, got 'heavy'``. Integers must fit 64 bits, numbers must be
finite, and no string (field or list item) may be empty: none of them means anything to the libraries they reach.
`apply_overrides(data, ["a.b=1", ...])` applies CLI `--set` overrides to the raw mapping before loading; each value
is parsed by the project's bounded YAML loader (`alignment.recipes.yaml_loading`).
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from typing import Any, Literal, TypeVar, Union

from alignment.errors import ConfigError
from alignment.recipes.yaml_loading import YamlSyntaxError, load_yaml

T = TypeVar("T")
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
_FIELD_NAME = re.compile(r"^[A-Za-z_][\w-]*$")


def _describe(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _convert(annotation: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None:
            if type(None) in args:
                return None
            raise ConfigError(f"{where}: must not be empty (null)")
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(arg, value, where)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(
            errors[0] if len(errors) == 1 else f"{where}: {_describe(value)} matches none of the allowed types"
        )
    if origin is Literal:
        if value not in args:
            allowed = ", ".join(repr(a) for a in args)
            raise ConfigError(f"{where}: {_describe(value)} is not allowed; choose one of {allowed}")
        return value
    if dataclasses.is_dataclass(annotation):
        return load_dataclass(annotation, value, where)
    if origin in (list, tuple) or annotation in (list, tuple):
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected a list, got {_describe(value)}")
        item_type = args[0] if args else Any
        return [_convert(item_type, item, f"{where}[{i}]") for i, item in enumerate(value)]
    if origin is dict or annotation is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {_describe(value)}")
        value_type = args[1] if len(args) == 2 else Any
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise ConfigError(f"{where}: keys must be strings, got {_describe(key)}")
            out[key] = _convert(value_type, item, f"{where}.{key}")
        return out
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {_describe(value)}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {_describe(value)}")
        if not INT64_MIN <= value <= INT64_MAX:  # past what torch, numpy and the OS take: never meaningful here
            raise ConfigError(f"{where}: {_describe(value)} is out of range (a 64-bit integer at most)")
        return value
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            # YAML reads 5e-4 (no dot) as a string: accept numeric strings.
            if isinstance(value, str):
                try:
                    value = float(value)
                except ValueError:
                    raise ConfigError(f"{where}: expected a number, got {_describe(value)}") from None
            else:
                raise ConfigError(f"{where}: expected a number, got {_describe(value)}")
        try:
            value = float(value)
        except OverflowError:
            raise ConfigError(f"{where}: {_describe(value)} is too large for a number") from None
        if not math.isfinite(value):
            raise ConfigError(f"{where}: expected a finite number, got {value}")
        return value
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {_describe(value)}")
        if value == "":  # no string field or list item of a recipe means anything when empty (use null)
            raise ConfigError(f"{where}: must not be an empty string")
        return value
    raise TypeError(f"unsupported annotation {annotation!r} at {where}")


def load_dataclass(cls: type[T], data: Any, where: str) -> T:
    """Build dataclass `cls` from mapping `data`; `where` is the dotted path used in error messages.

    Missing fields take their defaults; a missing field without default, an unknown key or a value of the
    wrong type raises ConfigError naming the field. After construction, `cls.validate()` runs if defined.
    """
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping of fields, got {_describe(data)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields), key=repr)
    if unknown:
        prefix = f"{where}." if where else ""
        key = unknown[0] if isinstance(unknown[0], str) and _FIELD_NAME.match(unknown[0]) else repr(unknown[0])
        raise ConfigError(f"{prefix}{key}: unknown field; allowed fields here: {', '.join(sorted(fields))}")
    kwargs = {}
    for name, field in fields.items():
        path = f"{where}.{name}" if where else name
        if name in data:
            kwargs[name] = _convert(hints[name], data[name], path)
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{path}: required field is missing")
    obj = cls(**kwargs)
    validate = getattr(obj, "validate", None)
    if callable(validate):
        validate(where)
    return obj


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``a.b.0.c=value`` into its key path and a YAML-parsed value (so numbers, bools, lists parse)."""
    if "=" not in text:
        raise ConfigError(f"--set {_describe(text)}: expected key=value, e.g. --set train.max_steps=10")
    key, raw = text.split("=", 1)
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"--set {_describe(text)}: the key must be a dotted path such as train.learning_rate")
    try:
        value = load_yaml(raw, f"--set {_describe(text)}") if raw != "" else ""
    except YamlSyntaxError:  # not YAML: the text itself (the field's type check then says if it fits)
        value = raw
    return key.split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `--set key=value` overrides to the raw recipe mapping (in place) and return it.

    List elements are addressed by index (``rewards.objectives.1.weight=0.5``); missing mappings are created.
    """
    for text in overrides:
        path, value = parse_override(text)
        node: Any = data
        for depth, part in enumerate(path[:-1]):
            where = ".".join(path[: depth + 1])
            if isinstance(node, list):
                node = node[_list_index(part, node, where, text)]
            elif isinstance(node, dict):
                if node.get(part) is None:
                    node[part] = {}
                node = node[part]
            else:
                raise ConfigError(f"--set {_describe(text)}: {where} is not a mapping or list")
        last = path[-1]
        if isinstance(node, list):
            node[_list_index(last, node, ".".join(path), text)] = value
        elif isinstance(node, dict):
            node[last] = value
        else:
            raise ConfigError(f"--set {_describe(text)}: {'.'.join(path[:-1])} is not a mapping or list")
    return data


def _list_index(part: str, node: list[Any], where: str, text: str) -> int:
    if not part.isdigit() or int(part) >= len(node):
        raise ConfigError(f"--set {_describe(text)}: {where} must be an index below {len(node)}")
    return int(part)
