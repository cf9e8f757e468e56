"""lit-idpo: Intermediate DPO for Hugging Face causal LMs on PyTorch Lightning.

Public API:
    linear_logprobs, LinearLogprobsOptions   the fused LM-head log-prob op (lit_idpo.kernels)
    sequence_logprobs                         model + batch -> per-layer sequence log-probs
    intermediate_dpo_loss, preference_loss    the losses
    IntermediateDPO, LoraOptions              the LightningModule
    PreferenceDataModule                      the LightningDataModule
"""

from lit_idpo.kernels import LinearLogprobsOptions, linear_logprobs
from lit_idpo.logprobs import sequence_logprobs
from lit_idpo.losses import intermediate_dpo_loss, preference_loss
from lit_idpo.data import PreferenceDataModule
from lit_idpo.module import IntermediateDPO, LoraOptions

__all__ = [
    "IntermediateDPO",
    "LinearLogprobsOptions",
    "LoraOptions",
    "PreferenceDataModule",
    "intermediate_dpo_loss",
    "linear_logprobs",
    "preference_loss",
    "sequence_logprobs",
]
__version__ = "0.1.0"
