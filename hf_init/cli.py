"""What every script shares: bad input ends in one clear line and a non-zero exit."""

from __future__ import annotations

import sys
from typing import Callable


class UsageError(ValueError):
    """Bad input from the user: printed as one line, exit status 2."""


def one_line_errors(parser):
    """Make an ``argparse`` parser raise :class:`UsageError` on a bad flag (one line via
    :func:`fail_cleanly`) instead of printing its usage block and exiting."""

    def _raise(message: str):
        raise UsageError(f"{message} (see --help)")

    parser.error = _raise
    return parser


def fail_cleanly(main: Callable[[], object]) -> int:
    """Run ``main``; turn bad input (ValueError, FileNotFoundError, UsageError) into one line on
    stderr and exit status 2 instead of a traceback. Other errors still raise (they are bugs)."""
    try:
        result = main()
    except (UsageError, ValueError, FileNotFoundError, FileExistsError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return int(result or 0)
