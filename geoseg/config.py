"""Typed, validated configuration.

Configs are YAML files that map one to one onto pydantic models with ``extra="forbid"``:
an unknown key is an error that names the key and the file, never silently ignored.
YAML is read with ``yaml.SafeLoader`` only (a key given twice in a mapping is an error).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from geoseg.errors import ConfigError

M = TypeVar("M", bound=BaseModel)


#: largest seed: numpy's generators take 0 .. 2**32 - 1
MAX_SEED = 2**32 - 1


class Strict(BaseModel):
    """Base of every config model: unknown keys are errors, values are validated."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)  # inf and NaN are never a setting


def format_validation_error(err: ValidationError, source: str) -> str:
    """One line naming the first offending key, what is wrong, and the source.

    Args:
        err: the pydantic error.
        source: the file (or "option") the values came from.

    Returns:
        A message such as ``unknown key 'model.pv.encodr' in configs/x.yaml``.
    """
    errors = err.errors()
    first = errors[0]
    key = ".".join(str(p) for p in _field_path(first["loc"])) or "<root>"
    where = f"in {source}"
    flag = _cli_option(key) if source == "options" else None
    if flag is not None:  # the values came from the command line: name the option the user typed
        key, where = flag, "on the command line"
    if first["type"] == "extra_forbidden":
        what = f"unknown key '{key}'"
        hint = "remove it or check its spelling against docs/cli.md"
    elif first["type"] == "missing":
        what = f"missing key '{key}'"
        hint = "add it"
    elif not first["loc"]:  # a check across keys: its message names them
        what = str(first["msg"]).removeprefix("Value error, ")
        hint = "fix the values"
    else:
        # a union (float or 'auto') fails once per member: one message, the members' reasons joined
        same = [e for e in errors if _field_path(e["loc"]) == _field_path(first["loc"])]
        why = " or ".join(dict.fromkeys(str(e["msg"]).removeprefix("Input should be ") for e in same))
        shown = f" {first['input']!r}" if len(same) > 1 else ""
        msg = str(first["msg"]).removeprefix("Value error, ")
        what = f"invalid value{shown} for '{key}': " + ("should be " + why if len(same) > 1 else msg)
        hint = "fix the value"
        errors = [first] + [e for e in errors if e not in same]
    extra = f" (and {len(errors) - 1} more problems)" if len(errors) > 1 else ""
    return f"{what} {where}{extra}; {hint}"


def _cli_option(key: str) -> str | None:
    """The option of the running click command that sets config key ``key``, or None.

    ``max_results`` is ``--max-results``; None outside a command, or when no option has that name.
    """
    import click

    ctx = click.get_current_context(silent=True)
    flag = "--" + key.replace("_", "-")
    if ctx is None or "." in key:
        return None
    return flag if any(flag in getattr(p, "opts", ()) for p in ctx.command.params) else None


def _field_path(loc: tuple[int | str, ...]) -> tuple[int | str, ...]:
    """The keys of a pydantic error location, without the union members' tags.

    Examples:
        >>> _field_path(("predict", "budget", "constrained-float"))
        ('predict', 'budget')
        >>> _field_path(("gsd", "literal['native','model']"))
        ('gsd',)
    """
    return tuple(p for p in loc if isinstance(p, int) or (p.isidentifier() and p not in _TAGS))


#: pydantic's names for the members of a union of plain types (keys never take them)
_TAGS = frozenset({"float", "int", "str", "bool", "list", "dict", "tuple", "none"})


def validate(model: type[M], data: dict[str, Any], source: str) -> M:
    """Validate a plain mapping against a config model.

    Raises:
        ConfigError: one line naming the key and the source.
    """
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, source)) from None


class DuplicateKeyError(yaml.constructor.ConstructorError):  # type: ignore[misc]  # PyYAML has no stubs here
    """A mapping of a YAML file gives one key twice (PyYAML would keep the last silently)."""


class _UniqueKeyLoader(yaml.SafeLoader):  # type: ignore[misc]
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping (merge keys ``<<`` aside)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, Hashable):  # SafeLoader's own error follows
                continue
            line = key_node.start_mark.line + 1
            if key in seen:
                raise DuplicateKeyError(None, None, f"key '{key}' is given twice (lines {seen[key]} and {line})",
                                        key_node.start_mark)
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping with safe loading.

    Raises:
        ConfigError: the file is missing, not YAML, or not a mapping.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise ConfigError(f"cannot read config {path}: {err.strerror}; check the path") from None
    try:  # UTF-8, with or without a byte-order mark; UTF-16 as Windows' Notepad may save it
        text = raw.decode("utf-16" if raw[:2] in (b"\xff\xfe", b"\xfe\xff") else "utf-8-sig")
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path} is not UTF-8 text (byte {err.start}: {raw[err.start:err.start + 1]!r}); "
                          "save it as UTF-8") from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader (duplicate keys refused)
    except DuplicateKeyError as err:
        raise ConfigError(f"{path}: {err.problem}; keep one") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path} is not valid YAML{where}; fix its syntax") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of keys to values, not {type(data).__name__}")
    return data


def deep_update(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Return ``base`` with ``overrides`` merged in, recursing into nested mappings.

    Examples:
        >>> deep_update({"a": {"b": 1, "c": 2}}, {"a": {"c": 3}})
        {'a': {'b': 1, 'c': 3}}
    """
    out = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_update(out[key], value)
        else:
            out[key] = value
    return out


def parse_sets(items: Sequence[str]) -> dict[str, Any]:
    """``KEY=VALUE`` overrides (``--set``) as a nested mapping; keys dotted, values read as YAML.

    Examples:
        >>> parse_sets(["model.ff.encoder_depth=5", "model.halo=16", "augment.d4=0.5"])
        {'model': {'ff': {'encoder_depth': 5}, 'halo': 16}, 'augment': {'d4': 0.5}}
        >>> parse_sets(["model.pv.decoder_channels=[64, 32, 16, 16, 16]"])
        {'model': {'pv': {'decoder_channels': [64, 32, 16, 16, 16]}}}

    Raises:
        ConfigError: an item without ``=``, an empty key part, a value that is not YAML, or a key
            set twice.
    """
    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        parts = key.strip().split(".")
        if not sep or not all(p.strip() for p in parts):
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE with a dotted key, e.g. "
                              "--set model.ff.encoder_depth=5")
        try:
            value = yaml.safe_load(text) if text.strip() else ""
        except yaml.YAMLError as err:
            raise ConfigError(f"--set {item!r}: the value is not YAML ({err.__class__.__name__}); "
                              "quote it, e.g. --set 'name=\"a: b\"'") from None
        node = out
        for i, part in enumerate(parts[:-1]):
            node = node.setdefault(part.strip(), {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {item!r}: '{'.'.join(parts[:i + 1])}' is also set to a value")
        last = parts[-1].strip()
        if last in node:
            raise ConfigError(f"--set {item!r}: '{key.strip()}' is set twice (or inside a value set before)")
        node[last] = value
    return out


def load_config(
    model: type[M], path: str | Path | None = None, overrides: dict[str, Any] | None = None,
    sets: Sequence[str] = (),
) -> M:
    """Load a YAML config, apply overrides (CLI options win), and validate it.

    Args:
        model: the pydantic model of the config.
        path: YAML file, or None for the model's defaults.
        overrides: nested mapping of CLI options, which take precedence (None: not given, ignored).
        sets: ``--set KEY=VALUE`` items (:func:`parse_sets`), applied over the file as given
            (``null`` included); errors then name the file "with --set".

    Raises:
        ConfigError: unreadable file, unknown key or invalid value.
    """
    data = deep_update(read_yaml(path) if path is not None else {}, parse_sets(sets))
    clean = {k: v for k, v in (overrides or {}).items() if v is not None}
    data = deep_update(data, clean)
    source = str(path) if path is not None else "options"
    return validate(model, data, f"{source} with --set" if sets else source)


def dump_yaml(model: BaseModel) -> str:
    """The resolved config as YAML text (JSON-compatible values only)."""
    return yaml.safe_dump(model.model_dump(mode="json"), sort_keys=False)


def differences(given: dict[str, Any], saved: dict[str, Any], prefix: str = "") -> list[tuple[str, Any, Any]]:
    """The dotted keys whose values differ between two nested mappings, with both values.

    Examples:
        >>> differences({"optim": {"lr": 0.001, "wd": 0}, "epochs": 3}, {"optim": {"lr": 0.01, "wd": 0}, "epochs": 3})
        [('optim.lr', 0.001, 0.01)]
    """
    out: list[tuple[str, Any, Any]] = []
    for key in dict.fromkeys([*given, *saved]):
        a, b = given.get(key), saved.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append((f"{prefix}{key}", a, b))
    return out
