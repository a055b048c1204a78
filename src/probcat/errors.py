"""Errors raised by probcat at its boundaries.

Every class also inherits the matching built-in, so ``except ValueError`` keeps working.
"""

__all__ = [
    "ProbcatError",
    "ProbcatValueError",
    "ProbcatFileError",
    "ProbcatIOError",
]


class ProbcatError(Exception):
    """Base class of every error probcat raises on purpose."""


class ProbcatValueError(ProbcatError, ValueError):
    """An argument, configuration or input array is invalid."""


class ProbcatFileError(ProbcatError, FileNotFoundError):
    """A file that should exist does not."""


class ProbcatIOError(ProbcatError, OSError):
    """A file could not be read or written (unreadable, corrupt, not writable)."""
