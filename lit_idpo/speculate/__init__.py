"""``lit-idpo speculate``: a model's own intermediate layer as its draft model (early-exit speculative decoding).

    command.py    the options, the agreement and decoding measurements, the command
    decoding.py   the decoders: transformers' early exit (with an exact acceptance counter) and a
                  shared-cache loop (LayerSkip's scheme)
    report.py     speculate.json / .md / .png
"""

from lit_idpo.speculate.command import (
    SUPPORTED_MODEL_TYPES,
    DraftCounter,
    OutputMismatchError,
    SpeculateOptions,
    check_early_exit_support,
    layer_agreement,
    main,
    resolve_exit_layers,
    run,
    speculate,
)

__all__ = ["SpeculateOptions", "OutputMismatchError", "DraftCounter", "speculate", "layer_agreement",
           "resolve_exit_layers", "check_early_exit_support", "SUPPORTED_MODEL_TYPES", "run", "main"]
