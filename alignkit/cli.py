"""Dataclass configs from a command line, one way for every entry point that has them (the recipe, the study).

`--config file.yaml` gives defaults, `--field value` overrides them: TRL's `TrlParser` (HfArgumentParser plus the YAML
file). On top of it, every YAML key must be a field and every YAML value must have the field's type (argparse never
sees YAML values, so nobody else checks them), and every failure becomes an `AlignkitError` naming the file, the key
or the flag, with a close match when there is one.
"""

from __future__ import annotations

import difflib
import re
import types
import typing
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path

import yaml
from trl import TrlParser

from alignkit.errors import AlignkitError

DECIMAL = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")
EXTRA_YAML_KEYS = {"env"}  # TrlParser's own: a mapping of environment variables to set before parsing


def keys_of(classes: Sequence[type]) -> set[str]:
    return {f.name for cls in classes for f in fields(cls)}


def field_types(classes: Sequence[type]) -> dict[str, object]:
    return {name: hint for cls in classes for name, hint in typing.get_type_hints(cls).items()}


def type_ok(value, hint) -> bool:
    """Whether a YAML value fits a field's annotation (YAML values skip argparse's conversion, so we check here)."""
    if typing.get_origin(hint) in (types.UnionType, typing.Union):
        return any(type_ok(value, arg) for arg in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is typing.Any:
        return True
    if typing.get_origin(hint) is typing.Literal:
        return value in typing.get_args(hint)
    if typing.get_origin(hint) is list:
        (item,) = typing.get_args(hint) or (typing.Any,)
        return isinstance(value, list) and all(type_ok(v, item) for v in value)
    if hint is dict or typing.get_origin(hint) is dict:
        return isinstance(value, dict)
    if hint is float:
        return (isinstance(value, int | float) and not isinstance(value, bool)) or is_decimal(value)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)


def is_decimal(value) -> bool:
    """A string in decimal notation, e.g. '2e-4': YAML 1.1 (PyYAML) reads exponents without a dot as strings, and
    argparse converts such a string default with the field's type, so a float field accepts it."""
    return isinstance(value, str) and DECIMAL.fullmatch(value.strip()) is not None


def check_yaml_keys(path: str, classes: Sequence[type], removed: dict[str, str] | None = None) -> dict:
    """The YAML file's mapping, once every key is a known field and every value has the field's type."""
    try:
        data = yaml.safe_load(Path(path).read_text())
    except (FileNotFoundError, IsADirectoryError):
        raise AlignkitError(f"config file {path} does not exist") from None
    except UnicodeDecodeError as err:
        raise AlignkitError(f"config file {path} is not UTF-8 text ({err.reason} at byte {err.start})") from None
    except yaml.YAMLError as err:
        raise AlignkitError(f"config file {path} is not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise AlignkitError(f"config file {path} must be a mapping of field: value")
    removed = removed or {}
    known = keys_of(classes) | EXTRA_YAML_KEYS
    hints = field_types(classes)
    for key, value in data.items():
        if key in removed:
            raise AlignkitError(f"config file {path}: key '{key}' was removed: {removed[key]}; delete it")
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise AlignkitError(f"config file {path}: unknown key '{key}'{hint}")
        if key == "env" and not isinstance(value, dict):
            raise AlignkitError(f"config file {path}: key 'env' is {value!r}; expected a mapping of NAME: value")
        if key != "env" and not type_ok(value, hints[key]):
            if isinstance(value, bool) and hints[key] is str:  # YAML 1.1 reads a bare off/on/no/yes as a boolean
                raise AlignkitError(f"config file {path}: key '{key}' is {value!r}; quote the word: {key}: \"off\"")
            hint = hints[key]
            expected = hint.__name__ if isinstance(hint, type) else str(hint).replace("typing.", "")
            raise AlignkitError(f"config file {path}: key '{key}' is {value!r}; expected {expected}")
    return data


def config_file_argument(args: list[str]) -> str | None:
    """The value of `--config`, if given; `--config` with no file after it is an error, not an IndexError."""
    if "--config" not in args:
        return None
    i = args.index("--config")
    if i + 1 == len(args) or args[i + 1].startswith("--"):
        raise AlignkitError("--config needs a YAML file after it, e.g. --config recipes/configs/default.yaml")
    return args[i + 1]


def blame_file(err: AlignkitError, path: str, yaml_keys: set[str], cli_keys: set[str]) -> AlignkitError:
    """`err` (an invalid value) prefixed with the YAML file when a key it names was set there, not on the command
    line: the user then knows which file to open."""
    named = {k for k in yaml_keys - cli_keys if re.search(rf"(?<!\w){re.escape(str(k))}(?!\w)", str(err))}
    return AlignkitError(f"config file {path}: {err}") if named else err


def parse_dataclasses(
    classes: Sequence[type], argv: Sequence[str], removed: dict[str, str] | None = None, description: str | None = None
) -> list:
    """One instance of each of `classes` from `--config file.yaml` plus `--field value` overrides (`-h`: help)."""
    args = list(argv)
    path = config_file_argument(args)
    yaml_keys = set(check_yaml_keys(path, classes, removed)) if path else set()
    cli_keys = {a[2:].split("=")[0] for a in args if a.startswith("--")}
    parser = TrlParser(tuple(classes), allow_abbrev=False, description=description)
    for action in parser._actions:  # argparse %-formats help text: a '95%' in a field's help would break --help
        if action.help:
            action.help = action.help.replace("%", "%%")
    try:
        *parts, _, unknown = parser.parse_args_and_config(
            args, return_remaining_strings=True, separate_remaining_strings=True
        )
    except AlignkitError as err:  # a __post_init__ check
        raise blame_file(err, path, yaml_keys, cli_keys) if path else err from None
    except ValueError as err:  # a value of the wrong type in the YAML reaches us as a bare ValueError
        raise AlignkitError(f"invalid config: {err}") from None
    if unknown:
        flags = [a for a in unknown if a.startswith("--")]
        first = flags[0] if flags else unknown[0]
        close = difflib.get_close_matches(first.lstrip("-").replace("-", "_"), keys_of(classes), n=1)
        hint = f" (did you mean '--{close[0]}'?)" if close else ""
        raise AlignkitError(f"unknown command-line argument '{first}'{hint}")
    return parts
