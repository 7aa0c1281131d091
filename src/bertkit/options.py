"""Settings that say how the command line sets them.

A config dataclass declares each setting once, with its default, its check and its help text (`option`); the
`bertkit` command adds the flags from those fields (`add_options`) and builds the config back from the parsed
arguments (`from_args`). So a default or a help text is never restated in the CLI, and a new setting is one field.
Only the standard library here: `bertkit --help` must not wait for torch.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import math
import os
import re
import types
import typing
from collections.abc import Callable, Sequence
from typing import Any

from bertkit.errors import BertkitError


def whole_number(low: int, high: int | None = None, why: str = "") -> Callable[[str], int]:
    """An argparse `type` for an integer in [low, high]: anything else is argparse's one-line error, exit 2."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < low or (high is not None and value > high):
            wanted = f"from {low} to {high}" if high is not None else f"at least {low}"
            raise argparse.ArgumentTypeError(f"must be {wanted}{why}, got {value}")
        return value

    return parse


def number(
    low: float, high: float | None = None, low_open: bool = False, high_open: bool = False
) -> Callable[[str], float]:
    """An argparse `type` for a finite float in the interval from `low` to `high` (open ends where asked)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        too_low = value <= low if low_open else value < low
        too_high = high is not None and (value >= high if high_open else value > high)
        if not math.isfinite(value) or too_low or too_high:
            if high is not None and not (low_open or high_open):
                wanted = f"from {low:g} to {high:g}"
            else:
                wanted = f"more than {low:g}" if low_open else f"at least {low:g}"
                wanted += "" if high is None else f" and {'less than' if high_open else 'at most'} {high:g}"
            raise argparse.ArgumentTypeError(f"must be {wanted}, got {text}")
        return value

    return parse


def numbers(each: Callable[[str], float]) -> Callable[[str], list[float]]:
    """An argparse `type` for one value or several separated by commas (e.g. `5e-5,3e-5,2e-5`), each as `each`
    checks it."""

    def parse(text: str) -> list[float]:
        values = [each(part.strip()) for part in text.split(",") if part.strip()]
        if not values:
            raise argparse.ArgumentTypeError(f"expected one number or several separated by commas, got {text!r}")
        return values

    return parse


def web_origin(text: str) -> str:
    """An argparse `type` for a web page's origin as a browser sends it, `scheme://host[:port]`: one with a path or
    a trailing slash would never equal a request's Origin header (CORS then fails with no word), and `*` would
    let every page on the web use the server."""
    match = re.fullmatch(r"(https?)://(\[[0-9a-f:.]+\]|[a-z0-9.-]+)(?::([0-9]{1,5}))?", text)
    scheme, port = (match.group(1), match.group(3)) if match else ("", None)
    if not match or (port is not None and (int(port) > 65535 or port == {"http": "80", "https": "443"}[scheme])):
        hint = (" (no path or trailing slash)" if re.match(r"https?://[^/]+/", text)
                else " (as a browser sends it: the host in lower case, no default port)" if re.match(r"https?://", text)
                else "")  # fmt: skip
        raise argparse.ArgumentTypeError(
            f"expected one origin like https://example.org or http://localhost:3000{hint}, got {text!r}"
        )
    return text


POSITIVE = whole_number(1)
NON_NEGATIVE = whole_number(0)
MIN_SEQ_LENGTH = 8  # room for [CLS], a few tokens of text and [SEP] (of A and B for pre-training)
SEQ_LENGTH = whole_number(MIN_SEQ_LENGTH, why=" (room for [CLS], the text and [SEP])")
PORT_NUMBER = whole_number(0, 65535, why=" (0 picks a free port)")
POSITIVE_NUMBER = number(0, low_open=True)
NON_NEGATIVE_NUMBER = number(0)
FRACTION = number(0, 1)  # a share, both ends allowed
DROPOUT = number(0, 1, high_open=True)
SEED = whole_number(0, 2**32 - 1)  # numpy's seeding refuses negative numbers


def option(
    default: Any = dataclasses.MISSING,
    *,
    help: str,
    flag: str | None = None,
    type: Callable[[str], Any] | None = None,
    choices: Sequence[str] | None = None,
    metavar: str | None = None,
    nargs: str | None = None,
) -> Any:
    """A dataclass field that the CLI exposes as `flag` (default: `--field-name`). A bool with default False is a
    switch that sets it, with default True one that clears it (name the flag then, e.g. `--no-nsp`). A field
    without a default is a required flag. `help` may say %(default)s; otherwise a non-empty default is appended."""
    meta = {"help": help, "flag": flag, "type": type, "choices": choices, "metavar": metavar, "nargs": nargs}
    return dataclasses.field(default=default, metadata=meta)


def as_whole_number(value: Any, name: str, low: int = 1) -> int:
    """`value` as an int when it is a whole number (Python's or numpy's, not a bool) of at least `low`; else a
    BertkitError naming `name`. The library's check of a count given in Python (a batch size of 0 failed inside
    `range`, a float inside a slice, neither naming the argument)."""
    if isinstance(value, bool) or not hasattr(value, "__index__"):
        raise BertkitError(f"{name} must be a whole number of {low} or more, got {value!r}")
    if value < low:
        raise BertkitError(f"{name} must be a whole number of {low} or more, got {value}")
    return int(value)


def check_switches(**switches: Any) -> None:
    """Refuse a switch (an on/off argument) that is not True or False: the string "no", 0 or None is taken as a
    value of its own (truthy or falsy) and then written to a file that refuses it."""
    for name, value in switches.items():
        if not isinstance(value, bool):
            raise BertkitError(f"{name} must be True or False, got {value!r}")


def check_values(config: Any) -> None:
    """Give a config built in Python the checks its flags give on the command line, and check it again when a run
    starts (a field set after the config was made skips `__post_init__`). Each field must be of its declared kind:
    True or False for a switch (the string "no" is true), a value where None is not one of its values, a config of
    the declared class for a nested config (checked in turn), text for a path (a `pathlib.Path` is kept as text: a
    run stores it in JSON); and each field declared with a `type` or `choices` is checked as the CLI checks that
    flag (a number given as a string is refused, not parsed). Raises BertkitError naming the field."""
    kinds = _declared_kinds(type(config))
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if isinstance(value, os.PathLike):
            value = os.fspath(value)
            object.__setattr__(config, f.name, value)
        _check_kind(f.name, value, kinds.get(f.name, ()))
        if value is None or "help" not in f.metadata:
            continue
        parse, choices = f.metadata["type"], f.metadata["choices"]
        if choices is not None and value not in choices:
            raise BertkitError(f"{f.name} {value!r} is not one of {', '.join(map(str, choices))}")
        if parse is None:
            continue
        if isinstance(value, list | tuple | dict | set):  # one value per field, as its flag takes
            raise BertkitError(f"{f.name} must be one value, got {value!r}")
        try:
            parsed = parse(str(value))
        except argparse.ArgumentTypeError as e:
            said = str(e) if isinstance(value, str) else str(e).replace(repr(str(value)), repr(value))
            raise BertkitError(f"{f.name} {said}" if said.startswith("must") else f"{f.name}: {said}") from None
        if isinstance(value, str) and not isinstance(parsed, str):
            raise BertkitError(f"{f.name} must be a number, got the string {value!r}")
        if isinstance(parsed, int) and not hasattr(value, "__index__"):  # an int, or numpy's
            raise BertkitError(f"{f.name}: expected a whole number, got {value!r}")


def check_config(config: Any, kind: type, name: str = "cfg") -> None:
    """Refuse `config` that is not a `kind` (a dict of its fields, say), then check its values again as a run starts:
    a field set after the config was made skipped `__post_init__`."""
    if not isinstance(config, kind):
        raise BertkitError(f"{name} must be a {kind.__name__}, got {type(config).__name__}")
    check_values(config)


@functools.cache
def _declared_kinds(config: type) -> dict[str, tuple[type, ...]]:
    """Each field's declared types (the members of a union), from the class's annotations; none where they cannot
    be read."""
    try:
        hints = typing.get_type_hints(config)
    except (NameError, TypeError):
        return {}
    kinds = {}
    for name, hint in hints.items():
        union = isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union
        members = typing.get_args(hint) if union else (hint,)
        kinds[name] = tuple(typing.get_origin(m) or m for m in members)
    return kinds


def _check_kind(name: str, value: Any, kinds: tuple[type, ...]) -> None:
    """Refuse `value` for a field declared as `kinds` where it is plainly not one of them (see `check_values`)."""
    if not kinds or Any in kinds:
        return
    if value is None:
        if type(None) not in kinds:
            raise BertkitError(f"{name} must be given: None is not one of its values")
        return
    real = [k for k in kinds if k is not type(None)]
    if real == [bool]:
        check_switches(**{name: value})
    nested = [k for k in real if dataclasses.is_dataclass(k)]
    if nested:
        if not isinstance(value, tuple(nested)):
            wanted = " or ".join(k.__name__ for k in nested)
            raise BertkitError(f"{name} must be a {wanted}, got {type(value).__name__}")
        check_values(value)
    elif real == [str] and not isinstance(value, str):
        raise BertkitError(f"{name} must be text, got {type(value).__name__}")


def cli_fields(config: type) -> list[dataclasses.Field]:
    """The fields of a config dataclass that the CLI exposes (declared with `option`)."""
    return [f for f in dataclasses.fields(config) if "help" in f.metadata]


def flag_of(config: type, name: str) -> str:
    """How a user names the field `name` of `config`: its CLI flag (`--field-name` unless `option` gave another), or
    the bare name for a field the CLI does not expose."""
    f = next(f for f in dataclasses.fields(config) if f.name == name)
    if "help" not in f.metadata:
        return name
    return f.metadata["flag"] or "--" + name.replace("_", "-")


def by_flag(settings: Any, names: Sequence[str] | None = None) -> dict[str, Any]:
    """`{flag: value}` of a config instance's fields (all, or those in `names`), as `flag_of` names them."""
    fields = [f.name for f in dataclasses.fields(settings)] if names is None else names
    return {flag_of(type(settings), n): getattr(settings, n) for n in fields}


def add_options(
    parser: argparse.ArgumentParser | Any,
    config: type,
    *,
    only: Sequence[str] | None = None,
    skip: Sequence[str] = (),
    defaults: Any = None,
    overrides: dict[str, dict[str, Any]] | None = None,
) -> None:
    """Add a flag for each CLI field of `config` (those in `only`, if given; not those in `skip`). `defaults` (an
    instance) supplies other defaults than the class's own, as a recipe that nests a config does; `overrides` other
    `option` arguments by field name (a help text, a check, a default), where a recipe means something more
    particular than the general field."""
    for f in cli_fields(config):
        if (only is not None and f.name not in only) or f.name in skip:
            continue
        meta = {**f.metadata, **(overrides or {}).get(f.name, {})}
        default = getattr(defaults, f.name) if defaults is not None else f.default
        default = meta.get("default", default)
        flag = meta["flag"] or "--" + f.name.replace("_", "-")
        text = meta["help"]
        kwargs: dict[str, Any] = {"dest": f.name}
        if isinstance(default, bool):
            kwargs["action"] = "store_false" if default else "store_true"
        else:
            if default is dataclasses.MISSING:
                kwargs["required"] = True
            else:
                kwargs["default"] = default
                if default is not None and "default" not in text:
                    text += " (default %(default)s)"
            for key in ("type", "choices", "metavar", "nargs"):
                if meta[key] is not None:
                    kwargs[key] = meta[key]
            if meta["flag"] and meta["metavar"] is None and meta["choices"] is None:  # --workers N, not NUM_WORKERS
                kwargs["metavar"] = meta["flag"].lstrip("-").replace("-", "_").upper()
        parser.add_argument(flag, help=text, **kwargs)


def from_args(config: type, args: argparse.Namespace, **values: Any) -> Any:
    """An instance of `config` from the parsed arguments of its CLI fields, and `values` for the rest (which win)."""
    kwargs = {f.name: getattr(args, f.name) for f in cli_fields(config) if hasattr(args, f.name)}
    return config(**{**kwargs, **values})
