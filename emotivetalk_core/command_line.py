"""What every command line of the project shares (``python -m emotivetalk_core`` and
``python -m emotivetalk_core.train``): bad input is one line on stderr with exit status 2, an
unexpected failure status 1, a traceback only with ``--debug``, and SIGTERM unwinds like Ctrl-C so
no partial file is left behind."""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import threading
from collections.abc import Callable


class UsageError(Exception):
    """Bad command-line input: reported in one line, exit status 2."""


class Parser(argparse.ArgumentParser):
    """argparse with its own errors reported like every other usage error (one line, status 2)."""

    def error(self, message):
        raise UsageError(f"{message} (see --help)")


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the process is, so the writers' cleanup runs as for Ctrl-C."""


@contextlib.contextmanager
def terminate_as_interrupt():
    """While the command runs, SIGTERM unwinds like Ctrl-C (no partial file is left behind)."""
    if threading.current_thread() is not threading.main_thread():  # signals only reach the main thread
        yield
        return

    def terminate(signum, frame):
        raise _Terminated()

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_reporting_errors(run: Callable[[], int], user_errors: tuple[type[Exception], ...], debug: bool) -> int:
    """``run()``'s status; a user error -> 2 and one line on stderr, anything else -> 1 (with the
    traceback only when ``debug``). Shared by this command line and the training one."""
    try:
        return run()
    except KeyboardInterrupt as interrupt:  # Ctrl-C or SIGTERM: the writers have removed their unfinished files
        if debug:
            raise
        terminated = isinstance(interrupt, _Terminated)
        print("terminated" if terminated else "interrupted", file=sys.stderr)
        return 143 if terminated else 130
    except user_errors as error:
        if debug:
            raise
        print(f"error: {_one_line(error)}", file=sys.stderr)
        return 2
    except Exception as error:
        if debug:
            raise
        print(f"error: unexpected {type(error).__name__}: {_one_line(error)} (run with --debug for details)", file=sys.stderr)
        return 1


def _one_line(error: Exception) -> str:
    if isinstance(error, FileNotFoundError) and error.filename:
        return f"file not found: {error.filename}"
    return " ".join(str(error).split()) or type(error).__name__
