"""Dataclass configs from a YAML file plus dotted overrides, validated from the fields' type hints.

A config is a (possibly nested) dataclass. The YAML file is a mapping whose keys are the field names, with a
nested mapping for each nested dataclass field; overrides (usually CLI flags) are keyed by dotted names
("optim.lr") and applied on top. Values are coerced by the field's type hint:

    int, float (ints accepted), str, bool, pathlib.Path, X | None, Literal[...], list[X], tuple[X, Y],
    tuple[X, ...], dict[str, X], nested dataclass, Any

Strings are parsed where the type asks for something else (CLI flags arrive as strings; PyYAML reads `1e-5`
as a string): "1e-5" -> float, "true"/"no" -> bool, "a,b" -> list, "none"/"null" -> None for Optional
fields. Every problem is a one-line ConfigError naming the dotted key, e.g.
"run.yaml: unknown key 'optim.lrr' (did you mean 'optim.lr'?)" or "optim.lr must be a number, got 'abc'".
A dataclass's own __post_init__ checks run when it is built; a ValueError/TypeError they raise becomes a
ConfigError too.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml

from longrl.atomic import write_text_atomic
from longrl.errors import ConfigError

_NONE_STRINGS = ("none", "null", "~")
_TRUE_STRINGS = ("true", "yes", "on", "1")
_FALSE_STRINGS = ("false", "no", "off", "0")


def load_config(cls: type, path: str | Path | None = None, overrides: Mapping[str, Any] | None = None) -> Any:
    """Build a `cls` instance: defaults, then the YAML file at `path`, then `overrides` ({"optim.lr": 1e-5}).

    Override values may be typed already or strings to coerce; a None value means "not given" (a CLI flag
    left at its default) and is skipped: to set an Optional field to null pass the string "none".
    Raises ConfigError (one line) for a missing file, bad YAML, an unknown key (with a suggestion), a value
    of the wrong type, or a value the dataclass's own checks reject.
    """
    if not dataclasses.is_dataclass(cls) or not isinstance(cls, type):
        raise TypeError(f"load_config needs a dataclass type, got {cls!r}")
    data: dict[str, Any] = {}
    if path is not None:
        source = Path(path).name
        data = _read_yaml(Path(path))
        _check_keys(cls, data, source=source)
    for dotted, value in (overrides or {}).items():
        if value is None:
            continue
        _check_dotted_key(cls, dotted)
        _set_dotted(data, dotted, value)
    return config_from_dict(cls, data)


def config_from_dict(cls: type, data: Mapping[str, Any], *, prefix: str = "", base: Any = None) -> Any:
    """Build a `cls` instance from a (nested) mapping of field values, coercing each by its type hint.

    Fields absent from `data` keep their value in `base` (an instance of cls) when given, else the class
    default. `prefix` is the dotted name of this config inside its parent, used in error messages.
    """
    if not isinstance(data, Mapping):
        raise ConfigError(
            f"{prefix.rstrip('.') or 'config'} must be a mapping of its fields, got {_show(data)}"
        )
    if not prefix:
        _check_keys(cls, data, source=None)  # nested sections were checked with the whole tree's key names
    hints = _type_hints(cls)
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        name = f"{prefix}{f.name}"
        default = getattr(base, f.name) if base is not None else _field_default(f)
        if f.name in data:
            kwargs[f.name] = _coerce(data[f.name], hints[f.name], name, default)
        elif base is not None:
            kwargs[f.name] = default
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (ValueError, TypeError) as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: {first_line}") from None


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """A plain, YAML-able dict of a config dataclass (nested dataclasses -> dicts, tuples -> lists, Path -> str).

    Only init fields are written, so `load_config(type(cfg), saved_file)` rebuilds an equal config.
    """
    if not dataclasses.is_dataclass(cfg) or isinstance(cfg, type):
        raise TypeError(f"config_to_dict needs a dataclass instance, got {cfg!r}")
    return {f.name: _plain(getattr(cfg, f.name)) for f in dataclasses.fields(cfg) if f.init}


def save_config(cfg: Any, path: str | Path) -> Path:
    """Write `config_to_dict(cfg)` as YAML to `path` atomically (`longrl.atomic`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump(config_to_dict(cfg), sort_keys=False, default_flow_style=False)
    write_text_atomic(path, text)
    return path


def config_keys(cls: type) -> list[str]:
    """Every dotted key `cls` accepts, nested sections included ("optim", "optim.lr", ...), in field order."""
    keys: list[str] = []
    hints = _type_hints(cls)
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        keys.append(f.name)
        nested = _dataclass_in(hints[f.name])
        if nested is not None:
            keys.extend(f"{f.name}.{k}" for k in config_keys(nested))
    return keys


# ---- reading and key checks -------------------------------------------------------------------------------


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        what = "is a folder, not a file" if path.is_dir() else "does not exist"
        raise ConfigError(f"config file {path} {what}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or "cannot parse"
        raise ConfigError(f"{path}: not valid YAML ({problem}{where})") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"cannot read config file {path}: {err}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path}: the top level must be a mapping of config keys, got {type(data).__name__}"
        )
    return data


def _check_keys(cls: type, data: Mapping[str, Any], *, source: str | None, prefix: str = "",
                root: type | None = None) -> None:  # fmt: skip
    """Raise ConfigError for the first key of `data` (recursing into nested sections) that `cls` lacks."""
    root = root or cls
    hints = _type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    for key, value in data.items():
        if not isinstance(key, str) or key not in names:
            _unknown_key(root, f"{prefix}{key}", source)
        nested = _dataclass_in(hints[key])
        if nested is not None and isinstance(value, Mapping):
            _check_keys(nested, value, source=source, prefix=f"{prefix}{key}.", root=root)


def _check_dotted_key(cls: type, dotted: str) -> None:
    """Raise ConfigError unless `dotted` names a field of `cls` (walking through nested dataclasses)."""
    current: type | None = cls
    for part in dotted.split("."):
        names = {f.name for f in dataclasses.fields(current) if f.init} if current is not None else set()
        if part not in names:
            _unknown_key(cls, dotted, None)
        current = _dataclass_in(_type_hints(current)[part])


def _unknown_key(root: type, dotted: str, source: str | None) -> None:
    """Raise the ConfigError for an unknown key, suggesting the closest key `root` knows."""
    known = config_keys(root)
    # A right name in the wrong section ("lr" at the top level) first, then the closest spelling.
    leaf = dotted.rsplit(".", 1)[-1]
    close = [k for k in known if k.rsplit(".", 1)[-1] == leaf][:1]
    close = close or difflib.get_close_matches(dotted, known, n=1, cutoff=0.6)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    where = f"{source}: " if source else "config: "
    raise ConfigError(f"{where}unknown key '{dotted}'{hint}")


def _set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    *sections, leaf = dotted.split(".")
    node = data
    for part in sections:
        child = node.get(part)
        if dataclasses.is_dataclass(child) and not isinstance(child, type):
            child = config_to_dict(child)
        if not isinstance(child, dict):
            child = {}
        node[part] = child
        node = child
    node[leaf] = value


# ---- coercion ---------------------------------------------------------------------------------------------


def _coerce(value: Any, hint: Any, name: str, default: Any = None) -> Any:
    """`value` converted to the type `hint` describes, or a ConfigError naming `name`."""
    if hint is Any or hint is object:
        return value
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is typing.Union or origin is types.UnionType:
        return _coerce_union(value, args, name, default)
    if origin is Literal:
        return _coerce_literal(value, args, name)
    if origin in (list, tuple, dict) or hint in (list, tuple, dict):
        return _coerce_container(value, hint, origin or hint, args, name)
    if dataclasses.is_dataclass(hint):
        if isinstance(value, hint):
            return value
        base = default if isinstance(default, hint) else None
        return config_from_dict(hint, value, prefix=f"{name}.", base=base)
    if hint is bool:
        return _to_bool(value, name)
    if hint is int:
        return _to_int(value, name)
    if hint is float:
        return _to_float(value, name)
    if hint is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{name} must be a string, got {_show(value)}")
    if hint is Path:
        if isinstance(value, (str, Path)):
            return Path(value)
        raise ConfigError(f"{name} must be a path, got {_show(value)}")
    if isinstance(hint, type):
        if isinstance(value, hint):
            return value
        raise ConfigError(f"{name} must be a {hint.__name__}, got {_show(value)}")
    return value  # a hint this module does not interpret (a TypeVar, a Protocol...): pass through


def _coerce_union(value: Any, args: tuple, name: str, default: Any) -> Any:
    members = [a for a in args if a is not type(None)]
    optional = len(members) < len(args)
    if optional and (value is None or (isinstance(value, str) and value.strip().lower() in _NONE_STRINGS)):
        return None
    errors: list[str] = []
    for member in members:
        try:
            return _coerce(value, member, name, default)
        except ConfigError as err:
            errors.append(str(err))
    if len(errors) == 1:
        message = errors[0]
        raise ConfigError(message + (" (or null)" if optional else ""))
    allowed = " or ".join(_type_name(m) for m in members) + (" or null" if optional else "")
    raise ConfigError(f"{name} must be {allowed}, got {_show(value)}")


def _coerce_literal(value: Any, choices: tuple, name: str) -> Any:
    for choice in choices:
        if value == choice and type(value) is type(choice):
            return choice
        if isinstance(value, str) and not isinstance(choice, str) and value.strip() == str(choice):
            return choice  # "3" from a CLI flag for Literal[1, 3]
    shown = ", ".join(repr(c) for c in choices)
    raise ConfigError(f"{name} must be one of {shown}, got {_show(value)}")


def _coerce_container(value: Any, hint: Any, origin: type, args: tuple, name: str) -> Any:
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{name} must be a mapping, got {_show(value)}")
        key_type, value_type = args if args else (Any, Any)
        return {
            _coerce(k, key_type, f"{name} key", None): _coerce(v, value_type, f"{name}.{k}", None)
            for k, v in value.items()
        }
    if isinstance(value, str):
        value = [item.strip() for item in value.split(",")] if value.strip() else []
    if not isinstance(value, (list, tuple)):
        kind = "list" if origin is list else "sequence"
        raise ConfigError(f"{name} must be a {kind}, got {_show(value)}")
    if origin is list:
        item_type = args[0] if args else Any
        return [_coerce(v, item_type, f"{name}[{i}]", None) for i, v in enumerate(value)]
    if not args or (len(args) == 2 and args[1] is Ellipsis):
        item_type = args[0] if args else Any
        return tuple(_coerce(v, item_type, f"{name}[{i}]", None) for i, v in enumerate(value))
    if len(value) != len(args):
        raise ConfigError(f"{name} must have {len(args)} items, got {len(value)}: {_show(value)}")
    return tuple(
        _coerce(v, t, f"{name}[{i}]", None) for i, (v, t) in enumerate(zip(value, args, strict=True))
    )


def _to_bool(value: Any, name: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE_STRINGS + _FALSE_STRINGS:
        return value.strip().lower() in _TRUE_STRINGS
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise ConfigError(f"{name} must be true or false, got {_show(value)}")


def _to_int(value: Any, name: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)  # 1e3 written for 1000
    if isinstance(value, str):
        text = value.strip().replace("_", "")
        try:
            return int(text)
        except ValueError:
            try:
                number = float(text)
            except ValueError:
                number = math.nan
            if math.isfinite(number) and number.is_integer():
                return int(number)
    raise ConfigError(f"{name} must be an integer, got {_show(value)}")


def _to_float(value: Any, name: str) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip().replace("_", ""))
        except ValueError:
            pass
    raise ConfigError(f"{name} must be a number, got {_show(value)}")


# ---- helpers ----------------------------------------------------------------------------------------------


def _type_hints(cls: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls)
    except Exception as err:  # noqa: BLE001 - a broken annotation is a bug in the config class
        raise TypeError(f"cannot resolve the type hints of {cls.__name__}: {err}") from err


def _dataclass_in(hint: Any) -> type | None:
    """The dataclass type `hint` names (directly or as `X | None`), else None."""
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        return hint
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        found = [a for a in typing.get_args(hint) if dataclasses.is_dataclass(a) and isinstance(a, type)]
        return found[0] if len(found) == 1 else None
    return None


def _field_default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return config_to_dict(value)
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def _type_name(hint: Any) -> str:
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string", Path: "a path"}
    if hint in names:
        return names[hint]
    origin = typing.get_origin(hint)
    if origin is list:
        return "a list"
    if origin is tuple:
        return "a sequence"
    if origin is dict:
        return "a mapping"
    if origin is Literal:
        return "one of " + ", ".join(repr(c) for c in typing.get_args(hint))
    return getattr(hint, "__name__", str(hint))


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
