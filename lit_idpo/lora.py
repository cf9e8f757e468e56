"""LoRA adapters (peft) on the policy: the options and the wrapping.

With LoRA the reference is the policy with its adapters disabled (see :mod:`lit_idpo.reference.seam`), so
no second copy of the model is held in memory.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Union

from torch import nn

from lit_idpo.errors import ConfigError, MissingDependencyError


@dataclass
class LoraOptions:
    """LoRA adapters (peft) on the policy. The reference is then the same network with its adapters
    disabled, so no second copy of the model is held in memory.

    Args:
        rank: adapter rank r (the paper used 16).
        alpha: LoRA scaling numerator (the update is scaled by alpha / rank).
        dropout: dropout on the adapters' input (the base model's own dropout stays off).
        target_modules: module names to adapt, or ``all-linear`` (every linear layer but the LM head).
        save_merged: also write the merged model (adapters folded into the weights) to ``<hf_output_dir>/merged``.
    """

    rank: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: Union[str, List[str]] = "all-linear"
    save_merged: bool = False


def as_lora_options(lora: Union[LoraOptions, Dict[str, Any], None]) -> Optional[LoraOptions]:
    """``model.lora`` as :class:`LoraOptions` (or ``None``); a plain dict is what checkpoints store."""
    if lora is None or isinstance(lora, LoraOptions):
        return lora
    known = sorted(LoraOptions.__dataclass_fields__)
    if isinstance(lora, dict):
        unknown = sorted(set(lora) - set(known))
        if unknown:
            raise ConfigError(f"model.lora: unknown option(s) {unknown}; known: {known}. Remove or rename them.")
        return LoraOptions(**lora)
    raise ConfigError(f"model.lora must be LoRA options ({', '.join(known)}) or null, got {type(lora).__name__}.")


def wrap_lora(policy: nn.Module, lora: LoraOptions) -> nn.Module:
    """``policy`` with trainable LoRA adapters (a peft ``PeftModel``); every other weight is frozen."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError as error:
        raise MissingDependencyError("model.lora needs peft, which is not installed: pip install peft (or pip "
                                     "install 'lit-idpo[lora]').") from error
    config = LoraConfig(r=lora.rank, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                        target_modules=lora.target_modules, task_type="CAUSAL_LM")
    return get_peft_model(policy, config)


__all__ = ["LoraOptions", "as_lora_options", "wrap_lora"]
