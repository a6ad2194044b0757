"""Configuration: typed dataclasses loaded from YAML plus ``dotted.key=value`` overrides.

This is the project's one source of truth for configuration. A config is a (possibly
nested) dataclass; :func:`load_config` reads a YAML file, applies command-line style
overrides, checks every value against the dataclass field types and builds the
instance. Every problem raises :class:`~drafttrain.errors.DrafttrainError` whose message
names the source (file or override), the dotted key, what is wrong and how to fix it.

Recipes follow the convention ``configs/<family>/<recipe>.yaml``: the file stem picks
the config class through :data:`CONFIG_CLASSES` (see :func:`load_recipe_config`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import importlib
import types
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

from drafttrain.errors import DrafttrainError
from drafttrain.io import write_atomically

T = TypeVar("T")

#: Recipe name (YAML file stem) -> "module.path:ClassName", imported lazily.
CONFIG_CLASSES: dict[str, str] = {
    "eval": "drafttrain.evaluation.config:EvalConfig",
    "pretrain": "drafttrain.training.config:PretrainConfig",
    "distill": "drafttrain.training.config:DistillConfig",
    "search": "drafttrain.search.config:SearchConfig",
    "calibrate": "drafttrain.calibration.config:CalibrateConfig",
    "export": "drafttrain.bundle.config:ExportConfig",
    "pipeline": "drafttrain.pipeline.config:PipelineConfig",
}


def documented(text: str, **kwargs) -> Any:
    """A dataclass field with a help text (CLI flags and docs read it from the field's metadata)."""
    return dataclasses.field(metadata={"help": text}, **kwargs)


@dataclasses.dataclass
class _Context:
    """Where values came from, so errors can name the file or the override."""

    path: str | None
    overrides: dict[str, str] = dataclasses.field(default_factory=dict)  # dotted key -> raw text

    def source(self, key: str) -> str:
        for okey, raw in self.overrides.items():
            if key == okey or key.startswith((okey + ".", okey + "[")):
                return f"override {raw!r}"
        if self.path is not None:
            return self.path
        return "defaults + overrides" if self.overrides else "defaults (no config file)"

    def error(self, key: str, problem: str, fix: str) -> DrafttrainError:
        return DrafttrainError(f"{self.source(key)}: {key or '<top level>'}: {problem}. Fix: {fix}.")


def load_config(cls: type[T], path: str | Path | None = None, overrides: Sequence[str] = ()) -> T:
    """Build ``cls`` from the YAML at ``path`` (or defaults if None) plus ``key=value`` overrides."""
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"load_config needs a dataclass type, got {cls!r}")
    ctx = _Context(str(path) if path is not None else None)
    data = _read_yaml(Path(path)) if path is not None else {}
    for item in overrides:
        key, value = _parse_override(item)
        _set_dotted(data, key, value, ctx)
        ctx.overrides[key] = item
    return _build_dataclass(cls, data, "", ctx)


def config_from_dict(cls: type[T], data: Any, source: str) -> T:
    """Build ``cls`` from already-parsed data (e.g. a JSON document), errors naming ``source``."""
    return _build_dataclass(cls, data, "", _Context(source))


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise DrafttrainError(f"{path}: config file not found. Fix: check the path (cwd is {Path.cwd()}).")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise DrafttrainError(f"{path}: invalid YAML: {exc}. Fix: correct the YAML syntax.") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise DrafttrainError(
            f"{path}: top level must be a mapping of keys to values, got {type(data).__name__}. "
            "Fix: write the config as 'key: value' lines."
        )
    return data


def _parse_override(item: str) -> tuple[str, Any]:
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise DrafttrainError(
            f"override {item!r}: not of the form key=value. Fix: write e.g. sampling.top_k=4."
        )
    try:
        return key, yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        raise DrafttrainError(
            f"override {item!r}: {key}: value is not valid YAML ({exc}). Fix: quote or correct the value."
        ) from exc


def _set_dotted(data: dict, key: str, value: Any, ctx: _Context) -> None:
    parts = key.split(".")
    node = data
    for i, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            prefix = ".".join(parts[: i + 1])
            raise ctx.error(prefix, f"cannot set {key}: {prefix} is {child!r}, not a mapping",
                            f"set {prefix} to a mapping first or drop the override")
        node = child
    node[parts[-1]] = value


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _build_dataclass(cls: type[T], data: Any, key: str, ctx: _Context) -> T:
    if not isinstance(data, Mapping):
        raise ctx.error(key, f"expected a mapping for {cls.__name__}, got {data!r} ({type(data).__name__})",
                        f"give {key or 'the config'} as 'name: value' entries")
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for name in data:
        if name not in fields:
            raise ctx.error(_join(key, str(name)), f"unknown key for {cls.__name__}",
                            f"use one of: {', '.join(sorted(fields))}")
    kwargs = {}
    for name, field in fields.items():
        sub = _join(key, name)
        if name in data:
            kwargs[name] = _convert(hints[name], data[name], sub, ctx)
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise ctx.error(sub, f"required field missing for {cls.__name__}",
                            f"add '{name}: <value>' to the config or pass {sub}=<value>")
    try:
        return cls(**kwargs)
    except (DrafttrainError, ValueError) as exc:
        raise ctx.error(key, f"invalid {cls.__name__}: {exc}", "correct the values named above") from exc


def _type_name(tp: Any) -> str:
    return tp.__name__ if isinstance(tp, type) else str(tp).replace("typing.", "")


def _convert(tp: Any, value: Any, key: str, ctx: _Context) -> Any:
    origin, args = get_origin(tp), get_args(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        return _convert_union(tp, args, value, key, ctx)
    if value is None:
        raise ctx.error(key, f"expected {_type_name(tp)}, got null", f"give {key} a value or remove it")
    if origin is Literal:
        if any(value == c and type(value) is type(c) for c in args):
            return value
        raise ctx.error(key, f"{value!r} is not one of the allowed choices",
                        f"use one of: {', '.join(repr(c) for c in args)}")
    if origin in (list, tuple, dict):
        return _convert_container(tp, origin, args, value, key, ctx)
    if dataclasses.is_dataclass(tp):
        return _build_dataclass(tp, value, key, ctx)
    return _convert_scalar(tp, value, key, ctx)


def _convert_union(tp: Any, args: tuple, value: Any, key: str, ctx: _Context) -> Any:
    if value is None and type(None) in args:
        return None
    options = [a for a in args if a is not type(None)]
    if len(options) == 1:
        return _convert(options[0], value, key, ctx)
    for option in options:
        try:
            return _convert(option, value, key, ctx)
        except DrafttrainError:
            continue
    raise ctx.error(key, f"expected {_type_name(tp)}, got {value!r} ({type(value).__name__})",
                    f"set {key} to a value of type {_type_name(tp)}")


def _convert_container(tp: Any, origin: type, args: tuple, value: Any, key: str, ctx: _Context) -> Any:
    wanted = Mapping if origin is dict else (list, tuple)
    if not isinstance(value, wanted):
        form = "a mapping" if origin is dict else "a list like [a, b]"
        raise ctx.error(key, f"expected {_type_name(tp)}, got {value!r} ({type(value).__name__})",
                        f"give {key} as {form}")
    if origin is dict:
        ktype, vtype = args or (Any, Any)
        return {_convert(ktype, k, f"{key}.{k}", ctx): _convert(vtype, v, f"{key}.{k}", ctx)
                for k, v in value.items()}
    if origin is list:
        item = args[0] if args else Any
        return [_convert(item, v, f"{key}[{i}]", ctx) for i, v in enumerate(value)]
    if len(args) == 2 and args[1] is Ellipsis:
        item_types = [args[0]] * len(value)
    else:
        item_types = list(args) if args else [Any] * len(value)
        if len(item_types) != len(value):
            raise ctx.error(key, f"expected {len(item_types)} items, got {len(value)}",
                            f"give {key} as a list of {len(item_types)} values")
    return tuple(_convert(t, v, f"{key}[{i}]", ctx) for i, (t, v) in enumerate(zip(item_types, value)))


_SCALARS = {  # field type -> (accepted YAML value types, how to write one)
    bool: ((bool,), "true or false"),
    int: ((int,), "an integer"),
    float: ((int, float), "a number"),
    str: ((str,), "a string (quote it if it looks like a number)"),
    Path: ((str, Path), "a path string"),
}


def _convert_scalar(tp: Any, value: Any, key: str, ctx: _Context) -> Any:
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return _convert_enum(tp, value, key, ctx)
    if tp not in _SCALARS:
        raise TypeError(f"drafttrain.config: unsupported field type {_type_name(tp)} for {key}")
    accepted, hint = _SCALARS[tp]
    if isinstance(value, accepted) and (tp is bool or not isinstance(value, bool)):
        return tp(value)
    if tp is float and isinstance(value, str):  # YAML 1.1 reads 1e-4 (no dot) as a string
        with contextlib.suppress(ValueError):
            return float(value)
    raise ctx.error(key, f"expected {_type_name(tp)}, got {value!r} ({type(value).__name__})",
                    f"set {key} to {hint}")


def _convert_enum(tp: type[enum.Enum], value: Any, key: str, ctx: _Context) -> enum.Enum:
    for member in tp:
        if value == member.value or value == member.name or value is member:
            return member
    raise ctx.error(key, f"{value!r} is not a valid {tp.__name__}",
                    f"use one of: {', '.join(repr(m.value) for m in tp)}")


def config_to_dict(obj: Any) -> Any:
    """Turn a config (dataclass) into plain YAML-safe data: dicts, lists, str, numbers, bool, None."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: config_to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Mapping):
        return {str(k): config_to_dict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [config_to_dict(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, enum.Enum):
        return obj.value
    return obj


def save_config(obj: Any, path: str | Path) -> None:
    """Write ``obj`` as YAML to ``path`` atomically (temp file in the same directory + os.replace)."""
    write_atomically(path, yaml.safe_dump(config_to_dict(obj), sort_keys=False))


def config_class_for(name: str) -> type:
    """The config dataclass registered for recipe ``name`` in :data:`CONFIG_CLASSES`."""
    if name not in CONFIG_CLASSES:
        known = ", ".join(sorted(CONFIG_CLASSES)) or "(none registered)"
        raise DrafttrainError(
            f"unknown config recipe {name!r}; known recipes: {known}. Fix: name the file "
            "configs/<family>/<recipe>.yaml after a known recipe, or register it in "
            "drafttrain.config.CONFIG_CLASSES."
        )
    module, _, attr = CONFIG_CLASSES[name].partition(":")
    return getattr(importlib.import_module(module), attr)


def load_recipe_config(path: str | Path, overrides: Sequence[str] = ()) -> Any:
    """Load ``configs/<family>/<recipe>.yaml`` with the class registered for ``<recipe>``."""
    try:
        cls = config_class_for(Path(path).stem)
    except DrafttrainError as exc:
        raise DrafttrainError(f"{path}: {exc}") from exc
    return load_config(cls, path, overrides)
