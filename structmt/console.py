"""What the command-line tools print: one setup for every entry point (:func:`setup`), and
the lines structmt itself prints (:func:`say`, :func:`say_once`).

By default a person sees structmt's own lines, warnings and errors, each once and in one
line (``error: ...``); third-party INFO and DEBUG records, and tracebacks, appear only with
``-v/--verbose`` (``structmt-run`` passes it on as ``hydra.verbose=true``). A SIGTERM to an entry point ends
the child processes it waits on too (:func:`child_process`) and removes its temporary files
(:func:`temporary_path`), then ends the entry point, by the signal (143 in a shell).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import traceback
import warnings
from collections.abc import Hashable, Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import Any

_lock = threading.Lock()
_said: set[Hashable] = set()
#: the child processes an entry point waits on (fairseq-train, fairseq-generate, a seed's process): a SIGTERM to the
#: entry point alone (``kill PID``, a container's stop) ends them too; they trained on, orphaned, before
_children: set[subprocess.Popen[Any]] = set()
#: set by the SIGTERM handler: a child started after it (by a thread that was waiting on a lock) is ended at once
_terminating = threading.Event()
#: temporary files and folders (an atomic write's, the analysis's figures) that a SIGTERM removes before the
#: process ends: the finally blocks that would remove them do not run when the signal ends it
_temporary: set[str] = set()


def remove_path(path: str | os.PathLike[str]) -> None:
    """Remove the file or folder ``path`` (a link: the link), if it is there."""
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            os.unlink(path)


@contextmanager
def temporary_path(path: str | os.PathLike[str]) -> Iterator[None]:
    """``path`` (a file or a folder) is removed if a SIGTERM ends this process while the block runs; the block
    removes it (or renames it into place) itself otherwise."""
    _temporary.add(os.fspath(path))
    try:
        yield
    finally:
        _temporary.discard(os.fspath(path))


@contextmanager
def child_process(proc: subprocess.Popen[Any]) -> Iterator[subprocess.Popen[Any]]:
    """``proc``, ended with this process when a SIGTERM ends it (:func:`setup`), while the block runs."""
    _children.add(proc)
    try:
        if _terminating.is_set():  # started while the handler ended the others: end it too
            proc.terminate()
        yield proc
    finally:
        _children.discard(proc)


def run_child(cmd: list[str]) -> int:
    """Run ``cmd`` (its output where this process's goes) as :func:`child_process`; returns its exit status."""
    with subprocess.Popen(cmd) as proc, child_process(proc):
        try:
            return proc.wait()
        except BaseException:  # as subprocess.run does: the child does not outlive an interrupted wait
            proc.kill()
            raise


def _exits(pid: int, within: float) -> bool:
    """Whether process ``pid`` (a child) ends within ``within`` seconds, left for its ``Popen`` to reap: the
    handler may have interrupted that ``Popen``'s own wait, which holds the lock its ``wait`` and ``poll`` take."""
    deadline = time.monotonic() + within
    while True:
        try:
            if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT | os.WNOHANG) is not None:
                return True
        except ChildProcessError:  # reaped already
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)


def _terminated(signum: int, frame: object) -> None:
    """SIGTERM: pass it on to the child processes (each ends its own; a fairseq-train resumes from its last
    checkpoint when run again) and wait for them (at most 30 s each), then end this process by the signal, as
    without this handler (its threads with it: none starts a child meanwhile, :func:`child_process`)."""
    _terminating.set()
    children = list(_children)  # no lock: the handler runs between two steps of the main thread, which may hold one
    for proc in children:
        proc.terminate()
    for proc in children:
        if not _exits(proc.pid, within=30.0):
            proc.kill()
        try:  # reaped here (its Popen's wait may be the one this handler interrupted): no zombie left behind
            os.waitpid(proc.pid, 0)
        except ChildProcessError:  # its Popen reaped it
            pass
    if children:
        sys.stderr.write(f"terminated (SIGTERM): {len(children)} child process(es) stopped\n")
        sys.stderr.flush()
    for path in list(_temporary):
        remove_path(path)
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


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
    with its traceback only when ``verbose`` (so does one Python cannot raise, in a ``__del__``, as a warning).
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
        sys.unraisablehook = _one_line_unraisable
    # a handler of a launcher's own (submitit's, in a SLURM job) stays
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _terminated)


def _show_warning(message: Warning | str, category: type[Warning], *_: object, **__: object) -> None:
    sys.stderr.write(f"warning: {message}\n")


def _one_line_unraisable(unraisable: Any) -> None:
    """An exception Python cannot raise (a library's ``__del__`` failing after its ``__init__`` failed): one line."""
    error = unraisable.exc_value
    what = f"{unraisable.exc_type.__name__}: {error}" if error is not None else unraisable.exc_type.__name__
    place = unraisable.object
    where = f" in {getattr(place, '__qualname__', None) or repr(place)}" if place is not None else ""
    sys.stderr.write(f"warning: ignored {what}{where} (-v shows the traceback)\n")


def _one_line_error(kind: type[BaseException], error: BaseException, tb: TracebackType | None) -> None:
    if issubclass(kind, KeyboardInterrupt):
        sys.stderr.write("interrupted\n")
    elif issubclass(kind, BrokenPipeError):  # the reader went away (`structmt-leaderboard | head`): as `cat` does
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at interpreter exit
        sys.exit(141)
    else:
        ours = kind.__module__.partition(".")[0] == "structmt"
        sys.stderr.write(f"error: {error if ours else f'{kind.__name__}: {error}'} (-v shows the traceback)\n")
