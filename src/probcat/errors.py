"""Errors raised by probcat at its boundaries, and its warnings.

Every class also inherits the matching built-in, so ``except ValueError`` keeps working.
"""

import os
import sys
import warnings

__all__ = [
    "ProbcatError",
    "ProbcatValueError",
    "ProbcatFileError",
    "ProbcatIOError",
    "ProbcatWarning",
    "warn_user",
    "brief",
]

_PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep


class ProbcatError(Exception):
    """Base class of every error probcat raises on purpose."""


class ProbcatValueError(ProbcatError, ValueError):
    """An argument, configuration or input array is invalid."""


class ProbcatFileError(ProbcatError, FileNotFoundError):
    """A file that should exist does not."""


class ProbcatIOError(ProbcatError, OSError):
    """A file could not be read or written (unreadable, corrupt, not writable)."""


def brief(e: BaseException, limit: int = 200) -> str:
    """The first line of exception ``e``'s message, cut to ``limit`` characters: for the
    one-line errors that quote another library's (astropy's error for a file of unknown
    format lists every format it knows, over 3,000 characters on 60 lines)."""
    lines = str(e).strip().splitlines()
    text = lines[0].strip() if lines else type(e).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


class ProbcatWarning(UserWarning):
    """Every warning probcat gives about its input or results (a ``UserWarning``):
    ``warnings.simplefilter("ignore", ProbcatWarning)`` silences them all."""


def warn_user(message: str, category: type[Warning] = ProbcatWarning) -> None:
    """Warn at the caller's own line: the first frame outside probcat, however deep in
    probcat the warning arises (a notebook shows the user's call, not probcat's internals),
    also from probcat's inference thread (the line of the call waiting for its job,
    :mod:`probcat.runtime`)."""
    from probcat import runtime

    frame = runtime.job_caller() or sys._getframe(1)
    while frame is not None and frame.f_code.co_filename.startswith(_PACKAGE):
        frame = frame.f_back
    if frame is None:  # called from nowhere but probcat
        warnings.warn(message, category, stacklevel=2)
        return
    g = frame.f_globals  # as warnings.warn does (no module_globals: a loader's source)
    warnings.warn_explicit(message, category, frame.f_code.co_filename, frame.f_lineno,
                           module=g.get("__name__", "<string>"),
                           registry=g.setdefault("__warningregistry__", {}))  # fmt: skip
