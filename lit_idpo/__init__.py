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
from typing import TYPE_CHECKING

__version__ = "0.1.0"

# Public name -> the module that defines (or re-exports) it.
_EXPORTS = {
    "CheckpointError": "lit_idpo.module",
    "IntermediateDPO": "lit_idpo.module",
    "LinearLogprobsOptions": "lit_idpo.kernels",
    "LoraOptions": "lit_idpo.module",
    "PreferenceDataModule": "lit_idpo.data",
    "ReferenceCacheError": "lit_idpo.reference.cache",
    "SafeCheckpointIO": "lit_idpo.module",
    "intermediate_dpo_loss": "lit_idpo.losses",
    "linear_logprobs": "lit_idpo.kernels",
    "load_checkpoint_safely": "lit_idpo.module",
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
    from lit_idpo.data import PreferenceDataModule
    from lit_idpo.kernels import LinearLogprobsOptions, linear_logprobs
    from lit_idpo.logprobs import sequence_logprobs
    from lit_idpo.losses import intermediate_dpo_loss, preference_loss
    from lit_idpo.module import CheckpointError, IntermediateDPO, LoraOptions, SafeCheckpointIO, load_checkpoint_safely
    from lit_idpo.reference.cache import ReferenceCacheError


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'lit_idpo' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
