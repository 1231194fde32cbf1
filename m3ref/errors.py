"""User-facing errors.

A user error (bad file, bad argument, wrong checkpoint path) raises `M3Error` with a one-line
message that names the file and line or the argument. Command-line entry points catch it and
print `error: <message>` without a traceback (see `cli_errors`). Programming errors stay
ordinary exceptions with tracebacks.
"""
from __future__ import annotations

import contextlib
import sys


class M3Error(ValueError):
    """A clear, one-line error about the user's input (file, line, argument)."""


@contextlib.contextmanager
def cli_errors():
    """Turn `M3Error` (and a missing file) into `error: ...` on stderr and exit status 2."""
    try:
        yield
    except (M3Error, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
