"""Mistakes a user can fix, and how every entry point reports them: one line, no traceback.

    with reported_errors("pack"):
        run(config_from_args(args))

ends the process with exit code 1 and `[pack] error: <message>` on stderr when the work raises
a UserError, an OSError (a missing file, a folder without permission, a full disk), or one of
the exception types given; Ctrl-C ends it with `[pack] interrupted (Ctrl-C)` and exit code 130. Anything else is a bug and keeps its traceback. Set
FACE_GENERATION_DEBUG=1 to get the traceback of a reported error too.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

DEBUG_VARIABLE = "FACE_GENERATION_DEBUG"
INTERRUPTED = 130  # the exit code of a process ended by SIGINT, as shells report it
PATH_SETTINGS = "paths.data, paths.metrics, paths.models, paths.plots"


class UserError(ValueError):
    """A mistake in the settings or the input; the message names the setting and the fix.
    A ValueError, so callers that catch ValueError around a stage still do."""


def describe(error: BaseException) -> str:
    """The error's message in one line; for a file the system refused, which file and why."""
    if isinstance(error, OSError) and error.filename is not None:
        message = f"{error.filename}: {error.strerror or error}"
        if isinstance(error, PermissionError):
            message += (
                "; give yourself access to it, or point the setting that holds it "
                f"({PATH_SETTINGS}) to a folder you can write"
            )
        return message
    return "; ".join(line.strip() for line in str(error).splitlines() if line.strip())


@contextmanager
def reported_errors(stage: str, *also: type[BaseException]) -> Iterator[None]:
    """Turn user mistakes raised inside into `SystemExit("[stage] error: ...")` (exit code 1)."""
    reported: tuple[type[BaseException], ...] = (UserError, OSError, *also)
    debug = os.environ.get(DEBUG_VARIABLE, "") not in ("", "0")
    try:
        yield
    except reported as error:
        if debug:
            raise
        raise SystemExit(f"[{stage}] error: {describe(error)}") from None
    except KeyboardInterrupt:  # Ctrl-C: the user knows why; a traceback tells them nothing
        if debug:
            raise
        print(f"[{stage}] interrupted (Ctrl-C)", file=sys.stderr)
        raise SystemExit(INTERRUPTED) from None
