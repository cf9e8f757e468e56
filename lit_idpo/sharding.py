"""FSDP2 sharding of the policy and the reference, and gathering the sharded policy's full weights.

Under Lightning's ``ModelParallelStrategy`` (used as FSDP2) each decoder block is one shard unit and
the whole causal LM the root unit: ``sequence_logprobs`` runs as the root's forward (see
:func:`lit_idpo.logprobs.call_as_forward`), so embeddings, the final norm and the LM head are whole
for the entire computation.
"""

from __future__ import annotations

from typing import Dict, Iterable, Optional

import torch
from torch import nn

from lit_idpo.errors import ConfigError
from lit_idpo.logprobs import find_head_path
from lit_idpo.models import unwrap_peft


def decoder_blocks(model: nn.Module) -> nn.ModuleList:
    """The list of decoder blocks of a causal LM (``model.layers`` for Llama/Qwen2, ``transformer.h`` for GPT-2)."""
    path = find_head_path(model)
    for child in path.backbone.children():
        if isinstance(child, nn.ModuleList) and len(child) == path.num_layers:
            return child
    raise ValueError(f"cannot find the {path.num_layers} decoder blocks of {type(unwrap_peft(model)).__name__}.")


def shard_fsdp2(networks: Iterable[Optional[nn.Module]], mesh) -> None:
    """Shard each network over ``mesh``'s data-parallel dimension: every decoder block, then the causal LM.

    ``mesh`` is the device mesh Lightning's ``ModelParallelStrategy`` gives the LightningModule; a
    tensor-parallel dimension larger than 1 is refused (lit-idpo uses that strategy as FSDP2 only).
    """
    names = mesh.mesh_dim_names or ()
    if "tensor_parallel" in names and mesh["tensor_parallel"].size() > 1:
        raise ConfigError("lit-idpo supports ModelParallelStrategy as FSDP2 only: set the strategy's "
                          "tensor_parallel_size=1.")
    from torch.distributed.fsdp import fully_shard

    data_mesh = mesh["data_parallel"] if "data_parallel" in names else mesh
    for network in networks:
        if network is None:
            continue
        for block in decoder_blocks(network):
            fully_shard(block, mesh=data_mesh)
        fully_shard(unwrap_peft(network), mesh=data_mesh)


def is_sharded(trainer) -> bool:
    """Whether ``trainer``'s strategy shards the module's parameters (FSDP1 or FSDP2)."""
    from lightning.pytorch.strategies import FSDPStrategy, ModelParallelStrategy

    return trainer is not None and isinstance(trainer.strategy, (FSDPStrategy, ModelParallelStrategy))


def gathered_state(wrapped: nn.Module, prefix: str) -> Dict[str, torch.Tensor]:
    """The full CPU state dict of the submodule under ``prefix`` (e.g. ``"policy."``) of a sharded model.

    A collective: every rank must call it. Rank 0 gets the weights, the other ranks an empty dict.
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    full = get_model_state_dict(wrapped, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return {k[len(prefix):]: v for k, v in full.items() if k.startswith(prefix)}


__all__ = ["decoder_blocks", "gathered_state", "is_sharded", "shard_fsdp2"]
