"""The ``lit-idpo`` command: LightningCLI over IntermediateDPO and PreferenceDataModule.

    lit-idpo fit --config configs/quickstart.yaml
    lit-idpo validate --config configs/tiny.yaml
    lit-idpo fit --help            # every option with its docstring
    lit-idpo fit --config configs/quickstart.yaml --print_config
    lit-idpo evaluate --help       # pairwise win rates with judges (lit_idpo/evaluate.py)
    lit-idpo sweep --help          # train and evaluate a list of settings (lit_idpo/sweep.py)
"""

from __future__ import annotations

import os
import sys
import time

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from lightning.pytorch.cli import LightningCLI  # noqa: E402
from lightning.pytorch.utilities import rank_zero_info  # noqa: E402

from lit_idpo.data import PreferenceDataModule  # noqa: E402
from lit_idpo.module import IntermediateDPO, load_checkpoint_safely  # noqa: E402


class IntermediateDPOCLI(LightningCLI):
    """LightningCLI with the tokenizer tied to the policy and a closing summary after ``fit``."""

    def add_arguments_to_parser(self, parser) -> None:
        # The data must be tokenised with the policy's own tokenizer.
        parser.link_arguments("model.model", "data.tokenizer")

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


def main(args=None) -> None:
    # `evaluate` and `sweep` are lit-idpo's own subcommands (LightningCLI's are fixed: fit, validate,
    # test, predict), so route them to their parsers before LightningCLI reads the arguments.
    argv = sys.argv[1:] if args is None else list(args)
    if argv and argv[0] == "evaluate":
        from lit_idpo.evaluate import main as evaluate_main

        evaluate_main(argv[1:])
        return
    if argv and argv[0] == "sweep":
        from lit_idpo.sweep import main as sweep_main

        sweep_main(argv[1:])
        return
    IntermediateDPOCLI(
        IntermediateDPO,
        PreferenceDataModule,
        save_config_kwargs={"overwrite": True},
        args=args,
    )


if __name__ == "__main__":
    main()
