"""lit-idpo: Intermediate DPO for Hugging Face causal LMs on PyTorch Lightning.

Public API:
    linear_logprobs, LinearLogprobsOptions   the fused LM-head log-prob op (lit_idpo.kernels)
    sequence_logprobs                         model + batch -> per-layer sequence log-probs
    intermediate_dpo_loss, preference_loss    the losses
    IntermediateDPO, LoraOptions              the LightningModule
    PreferenceDataModule                      the LightningDataModule
    load_checkpoint_safely, SafeCheckpointIO  checkpoint loading with weights_only=True
    CheckpointError, ReferenceCacheError      what a damaged checkpoint / stale reference cache raises

The names are imported on first use (PEP 562), so ``import lit_idpo`` and ``import lit_idpo.kernels``
load neither Lightning nor transformers until a name that needs them is touched.
"""

from __future__ import annotations

import importlib
import sys
from typing import TYPE_CHECKING, Dict, List

__version__ = "0.1.0"

# Public name -> the module that defines (or re-exports) it.
_EXPORTS = {
    "CheckpointError": "lit_idpo.checkpoint",
    "IntermediateDPO": "lit_idpo.module",
    "LinearLogprobsOptions": "lit_idpo.kernels",
    "LoraOptions": "lit_idpo.module",
    "PreferenceDataModule": "lit_idpo.data",
    "ReferenceCacheError": "lit_idpo.reference.cache",
    "SafeCheckpointIO": "lit_idpo.checkpoint",
    "intermediate_dpo_loss": "lit_idpo.losses",
    "linear_logprobs": "lit_idpo.kernels",
    "load_checkpoint_safely": "lit_idpo.checkpoint",
    "preference_loss": "lit_idpo.losses",
    "sequence_logprobs": "lit_idpo.logprobs",
}

__all__ = [  # a literal list, so that static tools read it; tests/test_imports.py checks it against _EXPORTS
    "CheckpointError",
    "IntermediateDPO",
    "LinearLogprobsOptions",
    "LoraOptions",
    "PreferenceDataModule",
    "ReferenceCacheError",
    "SafeCheckpointIO",
    "intermediate_dpo_loss",
    "linear_logprobs",
    "load_checkpoint_safely",
    "preference_loss",
    "sequence_logprobs",
]

if TYPE_CHECKING:  # static analysers and IDEs see the names; nothing is imported at run time
    from lit_idpo.checkpoint import CheckpointError, SafeCheckpointIO, load_checkpoint_safely
    from lit_idpo.data import PreferenceDataModule
    from lit_idpo.kernels import LinearLogprobsOptions, linear_logprobs
    from lit_idpo.logprobs import sequence_logprobs
    from lit_idpo.losses import intermediate_dpo_loss, preference_loss
    from lit_idpo.module import IntermediateDPO, LoraOptions
    from lit_idpo.reference.cache import ReferenceCacheError


def lazy_exports(package: str, exports: Dict[str, str]):
    """PEP 562 ``__getattr__`` and ``__dir__`` for ``package``, whose public names (``exports``: name -> the module
    that defines it) are imported on first use; every lit_idpo package with re-exports uses this pair."""

    def __getattr__(name: str):
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        setattr(sys.modules[package], name, value)  # later look-ups skip this function
        return value

    def __dir__() -> List[str]:
        return sorted(set(vars(sys.modules[package])) | set(exports))

    return __getattr__, __dir__


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
