"""What the command-line tools print: one setup for every entry point (:func:`setup`), and
the lines structmt itself prints (:func:`say`, :func:`say_once`).

By default a person sees structmt's own lines, warnings and errors, each once and in one
line (``error: ...``); third-party INFO and DEBUG records, and tracebacks, appear only with
``-v/--verbose`` (``hydra.verbose=true`` in ``structmt-run``).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
import traceback
import warnings
from collections.abc import Hashable
from types import TracebackType

_lock = threading.Lock()
_said: set[Hashable] = set()


def say(message: str) -> None:
    """Print one line to stdout in one write (threads that report together never mix lines)."""
    with _lock:
        sys.stdout.write(message + "\n")
        sys.stdout.flush()


def say_once(message: str, key: Hashable = None) -> None:
    """:func:`say` ``message`` unless this process has said it (or another message with ``key``) before."""
    key = message if key is None else key
    with _lock:
        if key in _said:
            return
        _said.add(key)
    say(message)


def add_verbose_option(parser: argparse.ArgumentParser) -> None:
    """The ``-v/--verbose`` option every entry point takes."""
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="show third-party log records, debug output and tracebacks"
    )


class _Console(logging.Handler):
    """Log records to the current ``sys.stderr``: structmt's as plain lines, others with level and logger."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
            if record.name.partition(".")[0] != "structmt":
                message = f"{record.levelname} {record.name}: {message}"
            elif record.levelno >= logging.WARNING:
                message = f"{record.levelname.lower()}: {message}"
            if record.exc_info and record.levelno >= logging.ERROR:
                message += "\n" + "".join(traceback.format_exception(*record.exc_info)).rstrip()
            sys.stderr.write(message + "\n")
            sys.stderr.flush()
        except Exception:  # noqa: BLE001 - logging must not fail the program
            self.handleError(record)


def setup(verbose: bool = False) -> None:
    """Console output of an entry point (idempotent; call it once arguments are parsed).

    Log records go to stderr: structmt's at INFO and above, other libraries' at WARNING
    and above (everything with ``verbose``).  Handlers writing to a file (Hydra's job log)
    are kept; other console handlers (Hydra's, or a library's ``basicConfig``) are replaced.
    Warnings print as ``warning: ...``; an uncaught exception prints ``error: <message>``,
    with its traceback only when ``verbose``.
    """
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, _Console) or (
            isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler)
        ):
            root.removeHandler(handler)
    root.addHandler(_Console())
    root.setLevel(logging.DEBUG if verbose else logging.WARNING)
    logging.getLogger("structmt").setLevel(logging.DEBUG if verbose else logging.INFO)
    for stream in (sys.stdout, sys.stderr):  # lines appear as they are printed, also through a pipe (| tee)
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(line_buffering=True)
    if not verbose:
        warnings.showwarning = _show_warning
        sys.excepthook = _one_line_error


def _show_warning(message: Warning | str, category: type[Warning], *_: object, **__: object) -> None:
    sys.stderr.write(f"warning: {message}\n")


def _one_line_error(kind: type[BaseException], error: BaseException, tb: TracebackType | None) -> None:
    if issubclass(kind, KeyboardInterrupt):
        sys.stderr.write("interrupted\n")
    elif issubclass(kind, BrokenPipeError):  # the reader went away (`structmt-leaderboard | head`): as `cat` does
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at interpreter exit
        sys.exit(141)
    else:
        ours = kind.__module__.partition(".")[0] == "structmt"
        sys.stderr.write(f"error: {error if ours else f'{kind.__name__}: {error}'} (-v shows the traceback)\n")
