"""User-facing errors and warnings.

A user error (bad file, bad argument, wrong checkpoint path, full disk) raises `M3Error` with a
one-line message that names the file and line or the argument. Command-line entry points catch
it, and every `OSError`, and print `error: <message>` without a traceback (see `cli_errors`).
Legitimate input that changes a result (qrels documents missing from a corpus, a schedule that
changes on resume) gives an `M3Warning`, printed by the CLIs as one `warning: ...` line.
Programming errors stay ordinary exceptions with tracebacks.
"""
from __future__ import annotations

import contextlib
import errno
import os
import sys
import warnings

NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


class M3Error(ValueError):
    """A clear, one-line error about the user's input (file, line, argument)."""


class M3Warning(UserWarning):
    """A one-line note about input that is legitimate but changes what a run or a table means."""


def first_line(exc: BaseException) -> str:
    """The first non-empty line of an exception's message (or its type name)."""
    for line in str(exc).splitlines():
        if line.strip():
            return line.strip()
    return type(exc).__name__


def os_error_message(exc: OSError) -> str:
    """One line naming the path(s) of an OSError: 'PATH: permission denied', ...."""
    path = exc.filename if exc.filename is not None else None
    if exc.errno in NO_SPACE:
        return f"no space left on the device while writing {path}" if path else "no space left on the device"
    what = (exc.strerror or first_line(exc)).rstrip(".")
    what = what[:1].lower() + what[1:]
    if path is None:
        return what
    if exc.filename2 is not None:
        return f"{path} -> {exc.filename2}: {what}"
    return f"{os.fspath(path)}: {what}"


def _is_no_space(exc: BaseException) -> bool:
    if isinstance(exc, OSError) and exc.errno in NO_SPACE:
        return True
    text = str(exc)
    # safetensors and tokenizers (Rust) report "... (os error 28)"; torch.save to a path
    # reports a short write as "unexpected pos N vs M" without the errno
    return ("No space left on device" in text or "os error 28" in text or "os error 122" in text
            or "unexpected pos" in text)


@contextlib.contextmanager
def writing(path):
    """Turn a failed write under `path` into one `M3Error` naming it: a full disk (whatever
    library did the write: Python, torch, safetensors, tokenizers) says so, and any other
    OSError names its file."""
    try:
        yield
    except M3Error:
        raise
    except Exception as exc:  # noqa: BLE001 - every write failure is turned into one line
        if _is_no_space(exc):
            target = getattr(exc, "filename", None) or path
            raise M3Error(f"no space left on the device while writing {target}") from None
        if isinstance(exc, OSError):
            if exc.filename is None:
                raise M3Error(f"cannot write {path}: {os_error_message(exc)}") from None
            raise M3Error(f"cannot write {os_error_message(exc)}") from None
        raise


def _show_warning(message, category, filename, lineno, file=None, line=None, _default=warnings.showwarning):
    if issubclass(category, M3Warning):
        try:  # on a line of its own, also while a progress bar is drawn
            from tqdm import tqdm
            tqdm.write(f"warning: {message}", file=file or sys.stderr)
        except ImportError:
            print(f"warning: {message}", file=file or sys.stderr)
    else:
        _default(message, category, filename, lineno, file, line)


@contextlib.contextmanager
def cli_errors():
    """Turn `M3Error` and any `OSError` into `error: ...` on stderr and exit status 2;
    `M3Warning`s print as one `warning: ...` line."""
    shown = warnings.showwarning
    warnings.showwarning = _show_warning
    try:
        yield
    except M3Error as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    except OSError as exc:
        print(f"error: {os_error_message(exc)}", file=sys.stderr)
        raise SystemExit(2) from None
    finally:
        warnings.showwarning = shown
