"""The reference seam: where the reference's per-layer log-probs of a batch come from.

The LightningModule chooses one :class:`ReferenceLogprobs` once and asks it for every batch:

- :class:`LiveReference`: a frozen copy of the model scores the batch;
- :class:`AdapterDisabledReference`: with LoRA, the policy itself with its adapters disabled;
- :class:`CachedReference`: a lookup by ``pair_index`` in the table ``model.reference_cache`` holds
  (built once by a live one, see :class:`lit_idpo.reference.cache.ReferenceCache`).

Every implementation returns the same layout: ``[1 + K, 2B]`` SUMS of completion-token log-probs,
row 0 the final layer and rows 1..K the intermediate ones, columns the batch's chosen rows then its
rejected rows. Batches may be of any packing mode (:mod:`lit_idpo.batch`): the live references score
the very batch the policy scores, and the cache is keyed by the pairs' tokens, so it serves every mode.
Length averaging (``ipo``) is the loss's business (:mod:`lit_idpo.losses`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Callable, Dict, Optional

import torch
from torch import nn

from lit_idpo.batch import ScoringPlan
from lit_idpo.reference.cache import ReferenceCache

Batch = Dict[str, torch.Tensor]
#: ``score(network, batch, plan)``: a network's ``[1 + K, 2B]`` per-layer log-prob sums of a batch (``plan``: its
#: scoring plan, built once per batch by the caller, or None).
Scorer = Callable[[nn.Module, Batch, Optional[ScoringPlan]], torch.Tensor]


class ReferenceLogprobs(ABC):
    """The reference model's per-layer summed completion log-probs of a batch."""

    @abstractmethod
    def sums(self, batch: Batch, split: Optional[str] = None, plan: Optional[ScoringPlan] = None) -> torch.Tensor:
        """``[1 + K, 2B]`` reference log-prob sums of ``batch``; ``split`` (``"train"``/``"val"``) names the
        split its ``pair_index`` refers to (only a cached reference needs it); ``plan`` is the batch's
        scoring plan when the caller has built it."""


class LiveReference(ReferenceLogprobs):
    """A frozen copy of the model scores each batch.

    Args:
        network: returns the frozen reference network as the module holds it now (a strategy may have
            wrapped or sharded it since), or ``None`` when it is not loaded.
        score: scores a network on a batch.
    """

    def __init__(self, network: Callable[[], Optional[nn.Module]], score: Scorer):
        self._network = network
        self._score = score

    @torch.no_grad()
    def sums(self, batch: Batch, split: Optional[str] = None, plan: Optional[ScoringPlan] = None) -> torch.Tensor:
        network = self._network()
        if network is None:
            raise RuntimeError("the reference model is not loaded: with model.reference_cache it is loaded only to "
                               "build the cache; read cached values through compute_loss(batch, split=...).")
        return self._score(network, batch, plan)


class AdapterDisabledReference(ReferenceLogprobs):
    """With LoRA: the policy with its adapters disabled is the reference (no second copy in memory).

    Args:
        policy: returns the peft policy as the module holds it now.
        score: scores a network on a batch.
    """

    def __init__(self, policy: Callable[[], nn.Module], score: Scorer):
        self._policy = policy
        self._score = score

    @torch.no_grad()
    def sums(self, batch: Batch, split: Optional[str] = None, plan: Optional[ScoringPlan] = None) -> torch.Tensor:
        policy = self._policy()
        with policy.disable_adapter():
            return self._score(policy, batch, plan)


class CachedReference(ReferenceLogprobs):
    """Reads the values from the reference cache by ``pair_index``; the reference model is never run here."""

    def __init__(self, cache: ReferenceCache):
        self.cache = cache

    @property
    def tables(self):
        """The loaded tables by split (``"train"``, ``"val"``)."""
        return self.cache.tables

    def sums(self, batch: Batch, split: Optional[str] = None, plan: Optional[ScoringPlan] = None) -> torch.Tensor:
        return self.cache.lookup(batch, split, plan)


__all__ = ["AdapterDisabledReference", "CachedReference", "LiveReference", "ReferenceLogprobs", "Scorer"]
