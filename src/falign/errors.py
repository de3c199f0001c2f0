"""The root of the errors a user of falign can cause and mend: a bad config, name, option,
file, run directory or command line.  Each says what and where in one line; the command line
prints it as ``falign: error: ...`` and exits with 2 (it catches this class alone)."""

from __future__ import annotations

__all__ = ["FalignError"]


class FalignError(Exception):
    """A user's mistake that falign can name in one line (every falign error class derives
    from it, beside the built-in class it has always been: ``ConfigError`` is a ``ValueError``
    too)."""
