"""What every runner in `experiments/` shares: one-line errors, exit status 2, config flags.

Bad input (a bad flag value, an unknown dataset, a corrupt file, ...) must end
with one line naming the problem and the fix, no traceback, and exit status 2.
absl's own flag errors print a usage dump and exit 1; `parse_flags` replaces
that for `app.run(main, flags_parser=parse_flags)`.

A library config (e.g. `tff_vision.config.ExperimentConfig`) declares each
setting once, with its help, choices and bound (`tff_vision.settings`);
`define_config_flags` makes the absl flags of it and `config_values` reads
them back, so a new setting needs no code here.
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Any, NoReturn

from absl import flags

from tff_vision import settings


def fail(message: str) -> NoReturn:
    """Prints `error: <message>` as one line on stderr and exits with status 2."""
    sys.exit(report_error(message))


def report_error(message: str) -> int:
    """Prints `error: <message>` as one line on stderr; returns 2, bad input's exit status."""
    print(f"error: {message}", file=sys.stderr, flush=True)
    return 2


def parse_flags(argv: list[str]) -> list[str]:
    """absl flag parsing with a one-line error and exit status 2 on bad flags."""
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        fail(f"{str(e).splitlines()[0]} (see --helpfull)")


def flags_module_name(name: str) -> str:
    """The module name absl files a module's flags under: the script path for `__main__`.

    Flags defined on a module's behalf get the name absl would have given them,
    so that `--help` of `python -m <module>` still lists them as its own.
    """
    return sys.argv[0] if name == "__main__" else name


def define_config_flags(
    config_cls: type, module_name: str, flag_values: flags.FlagValues = flags.FLAGS
) -> None:
    """Defines one flag per setting of `config_cls`, filed under `module_name`.

    A string setting with choices becomes an enum flag; a tuple setting a list
    flag; integer settings keep their lower bound as the flag's validator.
    """
    for option in settings.options(config_cls):
        common = dict(module_name=module_name, flag_values=flag_values)
        name, default, text = option.name, option.default, option.help
        if option.kind is bool:
            flags.DEFINE_bool(name, default, text, **common)
        elif option.kind is int:
            flags.DEFINE_integer(name, default, text, lower_bound=option.lower_bound, **common)
        elif option.kind is float:
            flags.DEFINE_float(name, default, text, **common)
        elif option.kind is tuple:
            flags.DEFINE_list(name, list(default), text, **common)
        elif option.choices is not None:
            flags.DEFINE_enum(name, default, option.choices, text, **common)
        else:
            flags.DEFINE_string(name, default, text, **common)


def config_values(config_cls: type, flag_values: flags.FlagValues = flags.FLAGS) -> dict[str, Any]:
    """The settings of `config_cls` as the flags give them (list flags as tuples).

    An unset flag whose default is None (e.g. a required --output_dir) gives the
    setting's own default.
    """
    values = {}
    for field in dataclasses.fields(config_cls):
        value = flag_values[field.name].value
        if value is None:
            value = field.default
        values[field.name] = tuple(value) if isinstance(value, list) else value
    return values
