"""Settings declared once: dataclass fields that carry their help, choices and bounds.

A config class (e.g. `config.ExperimentConfig`) declares each setting with
`option(default, help, ...)`; the metadata is what the runner's flags are
generated from (`options`, used by `experiments/cli.py`) and what the generic
checks (`check_bounds`, `check_choices`) read, so that a new setting is
written in one place. Help texts and choices may be functions (`lazy`), so
that values kept by modules that load TensorFlow are only looked up when
asked for: this module loads neither TF nor absl.
"""

from __future__ import annotations

import dataclasses
import importlib
import typing
from collections.abc import Callable, Sequence
from typing import Any

_SAME = object()  # `option(flag_default=...)` not given: the flag default is the field default.


def lazy(module: str, name: str) -> Callable[[], Any]:
    """`module.name`, imported and looked up when called."""
    return lambda: getattr(importlib.import_module(module), name)


def option(
    default: Any,
    help_text: str | Callable[[], str],
    *,
    choices: Sequence[str] | Callable[[], Sequence[str]] | None = None,
    lower_bound: int | None = None,
    bound_note: str = "",
    example: str = "",
    flag_default: Any = _SAME,
    affects_results: bool = True,
) -> Any:
    """A setting: a dataclass field whose metadata says how it is given and checked.

    Args:
        default: The setting's default.
        help_text: The flag's help, or a function returning it.
        choices: Allowed values (of each entry, for a tuple setting), or a function
            returning them; a string setting with choices becomes an enum flag.
        lower_bound: Smallest allowed value of an integer setting (flag and check).
        bound_note: What the bound value means, shown in the bound's error.
        example: A good value, named in the bound's error.
        flag_default: The flag's default where it differs from `default`.
        affects_results: False for settings a resumed run may change (paths, workers).
    """
    metadata = {
        "help": help_text,
        "choices": choices,
        "lower_bound": lower_bound,
        "bound_note": bound_note,
        "example": example,
        "flag_default": default if flag_default is _SAME else flag_default,
        "affects_results": affects_results,
    }
    return dataclasses.field(default=default, metadata=metadata)


@dataclasses.dataclass(frozen=True)
class Option:
    """One setting as a command-line option (what `experiments/cli.py` makes a flag of).

    `kind` is bool, int, float, str or tuple (a list of strings); `default` is
    the flag's default; help and choices are resolved (this may load TF).
    """

    name: str
    kind: type
    default: Any
    help: str
    choices: tuple[str, ...] | None
    lower_bound: int | None


def options(config_cls: type) -> list[Option]:
    """Every setting of `config_cls` (a dataclass of `option` fields) as an `Option`."""
    hints = typing.get_type_hints(config_cls)
    return [
        Option(
            name=f.name,
            kind=_kind(hints[f.name]),
            default=f.metadata["flag_default"],
            help=_resolve(f.metadata["help"]),
            choices=choices_of(f),
            lower_bound=f.metadata["lower_bound"],
        )
        for f in dataclasses.fields(config_cls)
    ]


def _kind(hint: Any) -> type:
    if typing.get_origin(hint) is tuple:
        return tuple
    (kind,) = [t for t in typing.get_args(hint) or (hint,) if t is not type(None)]
    return kind


def _resolve(value: Any) -> Any:
    return value() if callable(value) else value


def choices_of(field: dataclasses.Field) -> tuple[str, ...] | None:
    """The allowed values of a setting, or None for any."""
    choices = _resolve(field.metadata["choices"])
    return None if choices is None else tuple(choices)


def result_fields(config: Any) -> dict[str, Any]:
    """The settings of `config` that determine results, tuples as lists (JSON-ready)."""
    fields = {}
    for f in dataclasses.fields(config):
        if f.metadata["affects_results"]:
            value = getattr(config, f.name)
            fields[f.name] = list(value) if isinstance(value, tuple) else value
    return fields


def check_bounds(config: Any) -> None:
    """Raises ValueError (one line) for a setting below its `lower_bound`."""
    for f in dataclasses.fields(config):
        low, value = f.metadata["lower_bound"], getattr(config, f.name)
        if low is not None and value < low:
            note = f" ({f.metadata['bound_note']})" if f.metadata["bound_note"] else ""
            fix = f"; pass e.g. --{f.name}={f.metadata['example']}" if f.metadata["example"] else ""
            raise ValueError(f"--{f.name} must be >= {low}{note}, got {value}{fix}")


def check_choices(config: Any) -> None:
    """Raises ValueError (one line) for a setting, or a list entry, not in its choices."""
    for f in dataclasses.fields(config):
        choices, value = choices_of(f), getattr(config, f.name)
        if choices is None:
            continue
        if isinstance(value, tuple):
            for entry in value:
                one_of(f"--{f.name} entry", entry, choices)
        else:
            one_of(f"--{f.name}", value, choices)


def one_of(flag: str, value: str, choices: Sequence[str]) -> None:
    """Raises ValueError unless `value` is one of `choices`."""
    if value not in choices:
        raise ValueError(f"unknown {flag} {value!r}; use one of: {', '.join(choices)}")
