"""Dataclass configs from a command line, one way for every front end (the recipe, the study, the evaluator's
`eval/win_rate.py` and `eval/judge_quality.py`, `python -m alignkit.dynamics`).

`--config file.yaml` gives defaults, `--field value` (or `--field-name value`) overrides them: TRL's `TrlParser`
(HfArgumentParser plus the YAML file). On top of it, every YAML key must be a field and every YAML value must have
the field's type (argparse never sees YAML values, so nobody else checks them), and every failure becomes an
`AlignkitError` naming the file, the key or the flag, with a close match when there is one. A config that shares
field names with another (the judge's `model`, `temperature`) is given a prefix on the command line (`--judge_model`)
and may sit in the YAML file as a section (`judge: {model: ...}`).
"""

from __future__ import annotations

import argparse
import difflib
import os
import re
import types
import typing
from collections.abc import Sequence
from dataclasses import MISSING, field, fields, make_dataclass
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


def check_yaml_keys(
    path: str, classes: Sequence[type], removed: dict[str, str] | None = None, sections: Sequence[str] = ()
) -> dict:
    """The YAML file's mapping, once every key is a known field and every value has the field's type. A mapping under
    a key of `sections` is read as prefixed keys: `judge: {model: x}` is `judge_model: x`."""
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
    data = flatten_sections(path, data, sections)
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


def flatten_sections(path: str, data: dict, sections: Sequence[str]) -> dict:
    """`data` with each section's mapping spliced in as `<section>_<key>` keys (a key given both ways is an error)."""
    flat = {k: v for k, v in data.items() if k not in sections}
    for section in sections:
        if section not in data:
            continue
        inner = data[section] or {}
        if not isinstance(inner, dict):
            raise AlignkitError(f"config file {path}: key '{section}' is {inner!r}; expected a mapping of key: value")
        for key, value in inner.items():
            name = f"{section}_{key}"
            if name in flat:
                raise AlignkitError(f"config file {path}: '{section}: {key}' and '{name}' are the same key; keep one")
            flat[name] = value
    return flat


def config_file_argument(args: list[str]) -> str | None:
    """The value of `--config`, if given; `--config` with no file after it is an error, not an IndexError."""
    if "--config" not in args:
        return None
    i = args.index("--config")
    if i + 1 == len(args) or args[i + 1].startswith("--"):
        raise AlignkitError("--config needs a YAML file after it, e.g. --config recipes/configs/default.yaml")
    return args[i + 1]


def prefixed(cls: type, prefix: str, aliases: dict[str, list[str]] | None = None) -> type:
    """A copy of dataclass `cls` whose fields are `prefix + name` (types, defaults and help kept; no checks: those run
    when `unprefixed` builds the real config), so that it shares a command line with configs that have fields of
    the same names. `aliases` maps a field's name to extra flags (e.g. `{"base_url": ["--judge"]}`)."""
    hints = typing.get_type_hints(cls)
    specs = []
    for f in fields(cls):
        metadata = dict(f.metadata) | ({"aliases": aliases[f.name]} if aliases and f.name in aliases else {})
        default = {"default": f.default} if f.default is not MISSING else {"default_factory": f.default_factory}
        specs.append((prefix + f.name, hints[f.name], field(metadata=metadata, **default)))
    group = prefix.rstrip("_") or cls.__name__
    return make_dataclass(f"{cls.__name__}Flags", specs, namespace={"_argument_group_name": group})


def unprefixed(cls: type, prefix: str, flags) -> object:
    """The `cls` config that a `prefixed(cls, prefix)` instance holds (its `__post_init__` checks run here)."""
    return cls(**{f.name: getattr(flags, prefix + f.name) for f in fields(cls)})


def blame_file(
    err: AlignkitError, path: str, yaml_keys: set[str], cli_keys: set[str], sections: Sequence[str] = ()
) -> AlignkitError:
    """`err` (an invalid value) prefixed with the YAML file when a key it names was set there, not on the command
    line: the user then knows which file to open. A section's key may be named `judge_model` or `judge.model`."""

    def spellings(key: str) -> list[str]:
        return [key] + [f"{s}.{key[len(s) + 1 :]}" for s in sections if key.startswith(f"{s}_")]

    named = {
        k
        for k in yaml_keys - cli_keys
        if any(re.search(rf"(?<!\w){re.escape(name)}(?!\w)", str(err)) for name in spellings(str(k)))
    }
    return AlignkitError(f"config file {path}: {err}") if named else err


def parse_dataclasses(
    classes: Sequence[type],
    argv: Sequence[str],
    removed: dict[str, str] | None = None,
    description: str | None = None,
    prefixes: dict[type, str] | None = None,
    aliases: dict[str, list[str]] | None = None,
    prog: str | None = None,
) -> list:
    """One instance of each of `classes` from `--config file.yaml` plus `--field value` overrides (`-h`: help).

    Args:
        classes: the dataclass configs, in the order their instances are returned.
        argv: the command line after the program's name.
        removed: YAML keys that once were fields, with what to do instead (their use is an error that says so).
        description: the first paragraph of `--help`.
        prefixes: configs whose fields take a prefix on the command line (`{JudgeConfig: "judge_"}`: `--judge_model`,
            and `judge_model:` or a `judge:` section in the YAML file).
        aliases: extra flags for fields of the prefixed configs, by unprefixed name (`{"base_url": ["--judge"]}`);
            other configs name theirs in the field's metadata, as HfArgumentParser reads it.
        prog: the program's name in `--help` (default: the script's file name).
    """
    args = list(argv)
    prefixes = prefixes or {}
    flag_classes = [prefixed(c, prefixes[c], aliases) if c in prefixes else c for c in classes]
    sections = [p.rstrip("_") for p in prefixes.values()]
    path = config_file_argument(args)
    data = check_yaml_keys(path, flag_classes, removed, sections) if path else {}
    cli_keys = {a[2:].split("=")[0].replace("-", "_") for a in args if a.startswith("--")}
    parser = TrlParser(tuple(flag_classes), allow_abbrev=False, description=description, prog=prog)
    parser.add_argument(  # for --help only: it is taken off the command line below, before argparse runs
        "--config", metavar="FILE.yaml", default=argparse.SUPPRESS, help="YAML file of field: value defaults; "
        "the flags given with it override them" + (f" ({', '.join(sections)}: may be a section)" if sections else "")
    )  # fmt: skip
    for action in parser._actions:  # argparse %-formats help text: a '95%' in a field's help would break --help
        if action.help:
            action.help = action.help.replace("%", "%%")
    if path:
        i = args.index("--config")
        del args[i : i + 2]
        for name, value in data.pop("env", {}).items():  # TrlParser's `env:` mapping, set before parsing
            os.environ[name] = str(value)
        parser.set_defaults_with_config(**data)
    try:
        *parts, unknown = parser.parse_args_into_dataclasses(args, return_remaining_strings=True)
        parts = [unprefixed(c, prefixes[c], p) if c in prefixes else p for c, p in zip(classes, parts)]
    except AlignkitError as err:  # a __post_init__ check
        raise blame_file(err, path, set(data), cli_keys, sections) if path else err from None
    except ValueError as err:  # a value of the wrong type in the YAML reaches us as a bare ValueError
        raise AlignkitError(f"invalid config: {err}") from None
    if unknown:
        flags = [a for a in unknown if a.startswith("--")]
        first = flags[0] if flags else unknown[0]
        close = difflib.get_close_matches(first.lstrip("-").replace("-", "_"), keys_of(flag_classes), n=1)
        hint = f" (did you mean '--{close[0]}'?)" if close else ""
        raise AlignkitError(f"unknown command-line argument '{first}'{hint}")
    return parts
