"""lit-idpo: Intermediate DPO for Hugging Face causal LMs on PyTorch Lightning.

Public API:
    linear_logprobs, LinearLogprobsOptions   the fused LM-head log-prob op (lit_idpo.kernels)
    sequence_logprobs                         model + batch -> per-layer sequence log-probs
    intermediate_dpo_loss, preference_loss    the losses
    IntermediateDPO, LoraOptions              the LightningModule
    PreferenceDataModule                      the LightningDataModule
    load_checkpoint_safely, SafeCheckpointIO  checkpoint loading with weights_only=True
    CheckpointError, ReferenceCacheError      what a damaged checkpoint / stale reference cache raises
"""

from lit_idpo.kernels import LinearLogprobsOptions, linear_logprobs
from lit_idpo.logprobs import sequence_logprobs
from lit_idpo.losses import intermediate_dpo_loss, preference_loss
from lit_idpo.data import PreferenceDataModule
from lit_idpo.module import CheckpointError, IntermediateDPO, LoraOptions, SafeCheckpointIO, load_checkpoint_safely
from lit_idpo.reference_cache import ReferenceCacheError

__all__ = [
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
__version__ = "0.1.0"
