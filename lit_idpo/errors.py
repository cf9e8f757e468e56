"""User errors: mistakes in what the user gave (a config value, a data file or row, a model path, a cache).

Every error that the user can fix derives from :class:`UserError`. The ``lit-idpo`` command prints
such an error as one or two lines, ``lit-idpo: error: <message>``, and exits non-zero without a
traceback (set ``LIT_IDPO_DEBUG=1`` to see it). Anything else is a bug and keeps its traceback.

A message names what is wrong (file, row as the user counts it, field or option) and the fix.
The concrete classes also derive from the built-in exception they replaced (``ValueError``,
``RuntimeError``, ``FileNotFoundError``), so existing ``except`` clauses keep working.
"""

from __future__ import annotations


class UserError(Exception):
    """An error in the user's input; the CLI shows its message alone, without a traceback."""


class ConfigError(UserError, ValueError):
    """A configuration value that cannot be used (names the option and the fix)."""


class DataError(UserError, ValueError):
    """A data file or row that cannot be used (names the file, the row's line number and the field)."""


class ModelSourceError(UserError, OSError):
    """A model source that cannot be loaded: a path that does not exist, or a Hub id unreachable offline."""


class VerifierError(UserError, RuntimeError):
    """A task's verifier (or the user's ``judge.verifier``) that raised, or gave no bool, on one response."""
