"""User errors: mistakes in what the user gave (a config value, a data file or row, a model path, a cache),
and how every subcommand reports them: one parser builder, one parser-error conversion, one stderr printer.

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


class MissingDependencyError(UserError, ImportError):
    """An optional package an option needs is not installed (names the option and the pip command)."""


class VerifierError(UserError, RuntimeError):
    """A task's verifier (or the user's ``judge.verifier``) that raised, or gave no bool, on one response."""


def one_line(text: str) -> str:
    """A multi-line message (jsonargparse indents nested causes over several lines) as one line."""
    return " ".join(str(text).split())


def config_error(err: BaseException, command: str, where: str = "") -> ConfigError:
    """A parser's error as the :class:`ConfigError` every subcommand raises: ``<where><problem> (the options:
    lit-idpo <command> --help)``; ``where`` names the config file(s) read, when that helps."""
    usage = " ".join(part for part in ("lit-idpo", command, "--help") if part)
    return ConfigError(f"{where}{one_line(str(err))} (the options: {usage})")


def info(command: str, message: str) -> None:
    """One progress line on stderr, ``lit-idpo <command>: <message>`` (stdout carries the report)."""
    import sys

    print(f"lit-idpo {command}: {message}", file=sys.stderr, flush=True)


def command_parser(command: str, description: str, config_help: str, parser_class=None):
    """The jsonargparse parser each of lit-idpo's own subcommands (evaluate, sweep, speculate) starts from: it
    raises instead of exiting (the caller turns the error into :func:`config_error`), reads ``--config FILE``
    and ends with ``--progress`` / ``--no_progress`` (:func:`add_progress_flag`); the caller adds its options in
    between. ``parser_class``: a subclass of jsonargparse's ``ArgumentParser`` (default: that class)."""
    from jsonargparse import ActionConfigFile, ArgumentParser

    parser = (parser_class or ArgumentParser)(prog=f"lit-idpo {command}", description=description, exit_on_error=False)
    parser.add_argument("--config", action=ActionConfigFile, help=config_help)
    return parser


def parse_command(parser, argv, command: str) -> dict:
    """Parse ``argv`` (None: ``sys.argv[1:]``) with a :func:`command_parser` parser and instantiate its classes;
    the options as keyword arguments (``--config`` left out). A bad option is a :func:`config_error`."""
    import argparse
    import sys

    try:
        config = parser.parse_args(sys.argv[1:] if argv is None else list(argv))
        init = parser.instantiate_classes(config)
    except argparse.ArgumentError as err:
        raise config_error(err, command) from None
    return {k: v for k, v in vars(init).items() if k != "config"}


def add_progress_flag(parser) -> None:
    """``--progress`` (default) / ``--no_progress``: show or hide progress bars."""
    from jsonargparse import ActionYesNo

    parser.add_argument("--progress", action=ActionYesNo, default=True,
                        help="show progress bars (--no_progress hides them)")
