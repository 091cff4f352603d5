"""``roomcast serve --config FILE``: read a TOML file into the defaults of ``serve``'s options.

Imports click only (the CLI is its one user). The keys are the options' own names, which are
the ``Settings`` field names (``port``, ``cors_origins``, ``redis_url``): one spelling, with
underscores, as TOML files usually have; a dashed key is refused with the underscored one to
use, rather than accepted, so a file never holds the same setting twice under two spellings.

The values become click's ``default_map``, which click reads after the command line and the
``ROOMCAST_*`` variables and before the built-in defaults: a flag or a variable overrides the
file, the file overrides ``Settings()``, with no precedence code of ours to get wrong.

Each value is checked against the TOML type its option takes (an integer for ``--port``, a
list of strings for a repeatable option) before click converts it: click would take the
string ``"8001"`` for a port, which hides a mistake a typed file format is there to show.
Ranges and consistency are ``Settings``' rules, checked once the server is configured.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterable, Mapping
from typing import Any

import click

__all__ = ["ConfigFileError", "read_config"]


class ConfigFileError(Exception):
    """The file cannot be used; the message is one line naming the file (and the key)."""


def read_config(path: str, params: Iterable[click.Parameter], ctx: click.Context) -> dict[str, Any]:
    """The values of the TOML file at ``path``, checked and converted for the options
    ``params`` of ``ctx``'s command, keyed by option name (for ``ctx.default_map``).

    Raises:
        ConfigFileError: the file cannot be read or parsed, names an unknown key, or holds a
            value of the wrong type or one the option's type refuses.
    """
    table = _load(path)
    options = {
        p.name: p
        for p in params
        if isinstance(p, click.Option) and p.name is not None and p.expose_value and not p.is_eager
    }
    values: dict[str, Any] = {}
    for key, value in table.items():
        option = options.get(key)
        if option is None:
            raise ConfigFileError(_unknown(path, key, options))
        expected = _expected(option)
        if not _fits(expected, option.multiple, value):
            noun = f"a list of {expected}s" if option.multiple else f"{_article(expected)} {expected}"
            raise ConfigFileError(f"{path}: {key} must be {noun}, got {_toml_type(value)} {value!r}")
        try:
            values[key] = option.type_cast_value(ctx, value)
        except click.BadParameter as exc:
            raise ConfigFileError(f"{path}: {key}: {exc.message}") from None
    return values


def _load(path: str) -> Mapping[str, Any]:
    try:
        with open(path, "rb") as file:
            return tomllib.load(file)
    except OSError as exc:
        raise ConfigFileError(f"cannot read the config file {path}: {(exc.strerror or str(exc)).lower()}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigFileError(f"{path}: not valid TOML: {exc}") from None
    except UnicodeDecodeError:
        raise ConfigFileError(f"{path}: not valid TOML: not UTF-8 text") from None


def _unknown(path: str, key: str, options: Mapping[str, click.Option]) -> str:
    underscored = key.replace("-", "_")
    if underscored != key and underscored in options:
        return f"{path}: unknown key {key!r}: write {underscored!r} (the keys use underscores)"
    return f"{path}: unknown key {key!r} (the keys are the names of the roomcast serve options, with underscores)"


def _expected(option: click.Option) -> str:
    """The TOML type an option's value must have: ``integer``, ``number``, ``boolean`` or
    ``string`` (what any other click type converts from, as it does a variable's value)."""
    if option.is_flag and option.is_bool_flag:
        return "boolean"
    if isinstance(option.type, click.types.IntParamType):
        return "integer"
    if isinstance(option.type, click.types.FloatParamType):
        return "number"
    if isinstance(option.type, click.types.BoolParamType):
        return "boolean"
    return "string"


def _fits(expected: str, multiple: bool, value: object) -> bool:
    if multiple:
        return isinstance(value, list) and all(_fits(expected, False, item) for item in value)
    if expected == "boolean":
        return isinstance(value, bool)
    if isinstance(value, bool):  # TOML's true is not a number, whatever Python says
        return False
    if expected == "integer":
        return isinstance(value, int)
    if expected == "number":
        return isinstance(value, int | float)
    return isinstance(value, str)


def _article(noun: str) -> str:
    return "an" if noun[0] in "aeiou" else "a"


def _toml_type(value: object) -> str:
    """``value``'s type as TOML calls it, for a refusal."""
    names = {bool: "a boolean", int: "an integer", float: "a float", str: "a string", list: "an array", dict: "a table"}
    return names.get(type(value), type(value).__name__)
