"""The ``lit-idpo`` command: dispatches to the subcommands and prints user errors as one line.

    lit-idpo fit --config configs/quickstart.yaml
    lit-idpo validate --config configs/tiny.yaml
    lit-idpo fit --help            # every option with its docstring
    lit-idpo fit --config configs/quickstart.yaml --print_config
    lit-idpo evaluate --help       # pairwise win rates with judges (lit_idpo.evaluation)
    lit-idpo sweep --help          # train and evaluate a list of settings (lit_idpo.sweep)

``fit`` / ``validate`` / ``test`` / ``predict`` are LightningCLI's (:mod:`lit_idpo.fit`); ``evaluate`` and
``sweep`` are jsonargparse commands of their own. Every subcommand accepts ``--config FILE.yaml``,
``--print_config`` and ``--help``.

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

__all__ = ["main", "run"]  # and IntermediateDPOCLI, deprecated here (see __getattr__)

SUBCOMMANDS = ("fit", "validate", "test", "predict", "evaluate", "sweep", "speculate")
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
    # `evaluate` and `sweep` are lit-idpo's own subcommands (LightningCLI's are fixed: fit, validate,
    # test, predict), so route them to their parsers before LightningCLI reads the arguments.
    if argv and argv[0] == "evaluate":
        evaluation = importlib.import_module("lit_idpo.evaluation")
        if not hasattr(evaluation, "main"):  # the package before its command moved in: the old module's
            evaluation = importlib.import_module("lit_idpo.evaluate")
        return evaluation.main(argv[1:])
    if argv and argv[0] == "sweep":
        from lit_idpo.sweep import main as sweep_main

        return sweep_main(argv[1:])
    if argv and argv[0] == "speculate":  # early-exit speculative decoding (lit_idpo.speculate)
        from lit_idpo.speculate import main as speculate_main

        return speculate_main(argv[1:])
    from lit_idpo.fit import run_fit

    return run_fit(args)


def main(args: Optional[Sequence[str]] = None) -> None:
    """Entry point of ``lit-idpo``: :func:`run`, with a user error printed as one line and exit code 2."""
    try:
        run(args)
    except UserError as err:
        if _debug():
            raise
        print(f"lit-idpo: error: {_short(err)}", file=sys.stderr, flush=True)
        sys.exit(EXIT_USER_ERROR)


def __getattr__(name: str):
    # Deprecated location of IntermediateDPOCLI (now lit_idpo.fit); loaded on first use so that
    # `lit-idpo sweep` / `evaluate` do not import Lightning's CLI just to start.
    if name == "IntermediateDPOCLI":
        from lit_idpo.fit import IntermediateDPOCLI

        return IntermediateDPOCLI
    raise AttributeError(f"module 'lit_idpo.cli' has no attribute {name!r}")


if __name__ == "__main__":
    main()
