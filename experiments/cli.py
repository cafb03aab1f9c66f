"""What every runner in `experiments/` shares: one-line errors and exit status 2.

Bad input (a bad flag value, an unknown dataset, a corrupt file, ...) must end
with one line naming the problem and the fix, no traceback, and exit status 2.
absl's own flag errors print a usage dump and exit 1; `parse_flags` replaces
that for `app.run(main, flags_parser=parse_flags)`.
"""

from __future__ import annotations

import sys
from typing import NoReturn

from absl import flags


def fail(message: str) -> NoReturn:
    """Prints `error: <message>` as one line on stderr and exits with status 2."""
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(2)


def parse_flags(argv: list[str]) -> list[str]:
    """absl flag parsing with a one-line error and exit status 2 on bad flags."""
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        fail(f"{str(e).splitlines()[0]} (see --helpfull)")
