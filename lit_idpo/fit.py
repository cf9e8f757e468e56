"""Fit logic shared by the ``lit-idpo`` command and the sweep: the LightningCLI over IntermediateDPO and
PreferenceDataModule, and a parse-only reading of fit config files.

:mod:`lit_idpo.cli` runs :func:`run_fit` for ``fit`` / ``validate`` / ``test`` / ``predict``;
:mod:`lit_idpo.sweep` reads the full configuration of each of its runs with :func:`parse_fit_config`
(and trains them as ``lit-idpo fit`` child processes). Neither imports the other.

A config error (bad value type, unknown key, missing file) raises :class:`lit_idpo.errors.ConfigError`
with jsonargparse's message on one line instead of printing the ~80-line usage text, so the command
ends with one ``lit-idpo: error: ...`` line like every other user error.
"""

from __future__ import annotations

import os
import sys
import time
from argparse import ArgumentError
from typing import List, Optional, Sequence

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from lightning.pytorch.cli import LightningCLI  # noqa: E402
from lightning.pytorch.utilities import rank_zero_info  # noqa: E402

from lit_idpo.checkpoint import load_checkpoint_safely  # noqa: E402
from lit_idpo.data import PreferenceDataModule  # noqa: E402
from lit_idpo.errors import config_error  # noqa: E402
from lit_idpo.module import IntermediateDPO  # noqa: E402
from lit_idpo.trainer import Trainer  # noqa: E402

__all__ = ["IntermediateDPOCLI", "parse_fit_config", "run_fit"]


class IntermediateDPOCLI(LightningCLI):
    """LightningCLI with the tokenizer tied to the policy, config errors as ConfigError, and a closing summary.

    Its Trainer is :class:`lit_idpo.trainer.Trainer` (``trainer.precision: auto``) unless ``trainer_class`` says
    otherwise.
    """

    def __init__(self, *args, trainer_class=Trainer, **kwargs):
        super().__init__(*args, trainer_class=trainer_class, **kwargs)

    def init_parser(self, **kwargs):
        # Called for the main parser and each subcommand's. Raise instead of printing the ~80-line usage and
        # exiting: parse_arguments turns the error into a one-line ConfigError (--help, --print_config still exit).
        kwargs.setdefault("exit_on_error", False)
        return super().init_parser(**kwargs)

    def add_arguments_to_parser(self, parser) -> None:
        # The data must be tokenised with the policy's own tokenizer.
        parser.link_arguments("model.model", "data.tokenizer")

    def parse_arguments(self, parser, args) -> None:
        try:
            super().parse_arguments(parser, args)
        except ArgumentError as err:
            argv = list(sys.argv[1:] if args is None else args)
            raise config_error(err, argv[0] if argv and argv[0] in self.subcommands() else "") from err

    def _parse_ckpt_path(self) -> None:
        # LightningCLI reads ``--ckpt_path``'s hyperparameters (torch.load, weights_only=True) before
        # anything else, so a truncated or foreign file fails there with a bare unpickling/zip error.
        # Re-read a file that failed through load_checkpoint_safely, which raises a CheckpointError
        # naming the file, the cause and the fix. (A private hook: were Lightning to rename it, this
        # override would simply stop being called and Lightning's own error would show.)
        try:
            super()._parse_ckpt_path()
        except Exception:
            ckpt_path = self.config[self.config.subcommand].get("ckpt_path")
            if ckpt_path:
                load_checkpoint_safely(ckpt_path)
            raise

    def before_fit(self) -> None:
        self._fit_started = time.perf_counter()

    def after_fit(self) -> None:
        elapsed = time.perf_counter() - getattr(self, "_fit_started", time.perf_counter())
        model = self.model
        lines = [f"lit-idpo: fit finished in {elapsed:.1f} s."]
        if model.last_val_table:
            lines.append("Final validation metrics per layer:\n" + model.last_val_table)
        if model.saved_model_dir:
            lines.append(f"Trained policy (Hugging Face format): {model.saved_model_dir}")
        rank_zero_info("\n".join(lines))


def run_fit(args: Optional[Sequence[str]] = None) -> IntermediateDPOCLI:
    """Run a LightningCLI subcommand (``fit``, ``validate``, ``test``, ``predict``); ``args`` default to sys.argv."""
    return IntermediateDPOCLI(
        IntermediateDPO,
        PreferenceDataModule,
        save_config_kwargs={"overwrite": True},
        parser_kwargs={"description": "Intermediate DPO: fit / validate / test / predict (LightningCLI). "
                                      "lit-idpo evaluate --help, lit-idpo sweep --help and lit-idpo speculate --help "
                                      "show the other three."},
        args=None if args is None else list(args),
    )


class _ParseOnlyCLI(IntermediateDPOCLI):
    """Parses and checks a configuration; builds no model, data or trainer."""

    def parse_arguments(self, parser, args) -> None:
        # Called with explicit args only; skips LightningCLI's warning about sys.argv also holding arguments
        # (this process's own command line, e.g. ``lit-idpo sweep ...``, is not meant for this parser).
        try:
            self.config = parser.parse_args(args)
        except ArgumentError as err:
            files = ", ".join(str(a) for a in args if not str(a).startswith("--"))
            raise config_error(err, "fit", where=f"fit config {files}: ") from err

    def instantiate_classes(self) -> None:
        pass


def parse_fit_config(config_files: Sequence[str]):
    """The full ``fit`` configuration (defaults filled in) that these ``--config`` files give, loading nothing.

    Returns the jsonargparse Namespace of the ``fit`` subcommand's options (``.model``, ``.data``, ``.trainer``).
    """
    args: List[str] = []
    for path in config_files:
        args += ["--config", str(path)]
    return _ParseOnlyCLI(IntermediateDPO, PreferenceDataModule, run=False, args=args).config
