"""The ``lit-idpo`` command: one table of subcommands, and user errors printed as one line.

    lit-idpo fit --config configs/quickstart.yaml
    lit-idpo validate --config configs/tiny.yaml
    lit-idpo fit --help            # every option with its docstring
    lit-idpo fit --config configs/quickstart.yaml --print_config
    lit-idpo evaluate --help       # pairwise win rates with judges (lit_idpo.evaluation)
    lit-idpo sweep --help          # train and evaluate a list of settings (lit_idpo.sweep)
    lit-idpo speculate --help      # an intermediate layer as its own draft model (lit_idpo.speculate)

``fit`` / ``validate`` / ``test`` / ``predict`` are LightningCLI's (:mod:`lit_idpo.fit`); ``evaluate``, ``sweep``
and ``speculate`` are lit-idpo's own three, each a jsonargparse parser built by
:func:`lit_idpo.errors.command_parser`. Every subcommand accepts ``--config FILE.yaml``, ``--print_config`` and
``--help``.

Errors: a :class:`lit_idpo.errors.UserError` (a bad config value, data file or row, model path, ...)
ends the command with ``lit-idpo: error: <message>`` on stderr and exit code 2, without a traceback;
set ``LIT_IDPO_DEBUG=1`` to see the traceback. Any other exception is a bug and shows its traceback.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Optional, Sequence

from lit_idpo.errors import ConfigError, UserError

__all__ = ["main", "run"]

# Subcommand -> (module, function called with the arguments after the subcommand, or with all of them for
# LightningCLI's). Modules load only when their subcommand runs.
COMMANDS = {
    "fit": ("lit_idpo.fit", "run_fit"),
    "validate": ("lit_idpo.fit", "run_fit"),
    "test": ("lit_idpo.fit", "run_fit"),
    "predict": ("lit_idpo.fit", "run_fit"),
    "evaluate": ("lit_idpo.evaluation.command", "main"),
    "sweep": ("lit_idpo.sweep.runner", "main"),
    "speculate": ("lit_idpo.speculate.command", "main"),
}
LIGHTNING_SUBCOMMANDS = ("fit", "validate", "test", "predict")  # LightningCLI reads the subcommand itself
SUBCOMMANDS = tuple(COMMANDS)
EXIT_USER_ERROR = 2  # what argparse / jsonargparse use for a usage error


def _debug() -> bool:
    return os.environ.get("LIT_IDPO_DEBUG", "").strip().lower() not in ("", "0", "false", "no")


def _short(err: BaseException) -> str:
    # One or two lines: a message written on two lines (problem, then fix) stays so; longer ones are joined.
    lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
    if not lines:
        return type(err).__name__
    return "\n  ".join(lines) if len(lines) <= 2 else " ".join(lines)


def run(args: Optional[Sequence[str]] = None):
    """Run one ``lit-idpo`` subcommand with ``args`` (default: ``sys.argv[1:]``); user errors propagate."""
    argv = sys.argv[1:] if args is None else list(args)
    if not argv or (argv[0] not in SUBCOMMANDS and not argv[0].startswith("-")):
        given = f"unknown subcommand {argv[0]!r}" if argv else "no subcommand given"
        raise ConfigError(f"{given}; give one of {', '.join(SUBCOMMANDS)} (e.g. lit-idpo fit --config "
                          f"configs/tiny.yaml; lit-idpo <subcommand> --help lists its options)")
    name = argv[0] if argv[0] in COMMANDS else "fit"  # `lit-idpo --help`: LightningCLI's top-level parser
    module, function = COMMANDS[name]
    command = getattr(importlib.import_module(module), function)
    return command(args if name in LIGHTNING_SUBCOMMANDS else argv[1:])


def main(args: Optional[Sequence[str]] = None) -> None:
    """Entry point of ``lit-idpo``: :func:`run`, with a user error printed as one line and exit code 2."""
    try:
        run(args)
    except UserError as err:
        if _debug():
            raise
        print(f"lit-idpo: error: {_short(err)}", file=sys.stderr, flush=True)
        sys.exit(EXIT_USER_ERROR)


if __name__ == "__main__":
    main()
