"""Writing the trained policy as a Hugging Face model directory (``save_pretrained``)."""

from __future__ import annotations

import copy
import os
from typing import Callable, Dict, Optional

import torch
from torch import nn

from lit_idpo.lora import LoraOptions


def save_hf_model(policy: nn.Module, tokenizer, directory: str, *, lora: Optional[LoraOptions] = None,
                  state_dict: Optional[Dict[str, torch.Tensor]] = None,
                  unsharded_copy: Optional[Callable[[], nn.Module]] = None) -> str:
    """Write ``policy`` and ``tokenizer`` to ``directory`` with ``save_pretrained``; return ``directory``.

    A full fine-tune gives a model directory that ``AutoModelForCausalLM.from_pretrained`` loads; with
    LoRA it is the adapter (peft format), plus ``<directory>/merged`` when ``lora.save_merged``.

    Args:
        policy: the trained policy (a peft model under LoRA).
        tokenizer: written beside the weights.
        directory: the output directory (created).
        lora: the policy's LoRA options, or ``None`` for a full fine-tune.
        state_dict: the policy's full weights when the live ones are sharded (FSDP).
        unsharded_copy: with ``state_dict`` and ``lora.save_merged``: builds a fresh unsharded policy of the
            same architecture (adapters included) to load ``state_dict`` into and merge.
    """
    os.makedirs(directory, exist_ok=True)
    policy.config.use_cache = True  # generation wants the KV cache; training turned it off
    try:
        policy.save_pretrained(directory, safe_serialization=True, state_dict=state_dict)
        tokenizer.save_pretrained(directory)
        if lora is not None and lora.save_merged:
            merged_dir = os.path.join(directory, "merged")
            _merged(policy, state_dict, unsharded_copy).save_pretrained(merged_dir, safe_serialization=True)
            tokenizer.save_pretrained(merged_dir)
    finally:
        policy.config.use_cache = False
    return directory


def _merged(policy: nn.Module, state_dict: Optional[Dict[str, torch.Tensor]],
            unsharded_copy: Optional[Callable[[], nn.Module]]) -> nn.Module:
    if state_dict is None:
        # Merge into a CPU copy: the live policy keeps its adapters (training may go on).
        return copy.deepcopy(policy).cpu().merge_and_unload()
    if unsharded_copy is None:
        raise ValueError("save_hf_model: merging sharded weights needs unsharded_copy to rebuild the policy.")
    merged = unsharded_copy()
    merged.load_state_dict(state_dict)
    return merged.merge_and_unload()


__all__ = ["save_hf_model"]
