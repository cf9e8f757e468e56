"""The batch contract: what a batch holds, in every packing mode, for the model side to read.

The data side (:mod:`lit_idpo.data.collate`, :mod:`lit_idpo.data.packing`) builds batches that satisfy it;
the model side (:mod:`lit_idpo.logprobs`, :mod:`lit_idpo.module`, :mod:`lit_idpo.reference`) reads them through
this module and never imports ``data/``.

Every batch carries ``pair_index [B]`` (packed) or ``input_ids [2B, T]`` (padded) for its ``2B`` sequences:
chosen ``0..B-1``, then rejected ``B..2B-1``. Which keys are present defines the mode, so no tensor-free
metadata travels through Lightning's device transfer:

- padded (``data.packing: none``): ``input_ids``, ``attention_mask``, ``completion_mask`` ``[2B, T]``;
- packed (``padding_free``, ``prefix_shared``): ``input_ids [R, T]``, ``position_ids [R, T]``,
  ``packed_attention [R, 1, T, T]`` (bool, True where a query token may attend to a key token), the scoring
  plan ``score_index [n]`` (flat index into ``R * T`` of the hidden state that predicts each scored token),
  ``score_target [n]`` (its token id), ``score_sequence [n]`` (its sequence), and ``sequence_tokens [2B]``
  (each sequence's prompt + completion tokens).

:func:`scoring_plan` gives every mode's plan (built from ``completion_mask`` for a padded batch), so the
log-prob code has one path; build it once per batch and pass it on. :func:`resolve_packing` decides which
mode a model can serve exactly, and the module tells a :class:`PackingResolver` data module the models it will
score with. The layouts and their measured costs: ``docs/packing.md``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Optional, Protocol, Sequence, Tuple, runtime_checkable

import torch

from lit_idpo.errors import ConfigError
from lit_idpo.models import unwrap_peft

PACKING_MODES = ("auto", "none", "padding_free", "prefix_shared")
#: Model types whose rotary (Llama/Mistral/Qwen2/Qwen3) or absolute (GPT-2) positions are read from
#: ``position_ids`` and whose attention takes a custom 4-D mask unchanged; the tests check them for exactness.
PACKABLE_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3", "gpt2")
#: Attention implementations that apply a custom dense 4-D mask as given.
MASK_ATTENTION = ("sdpa", "eager")

Batch = Dict[str, torch.Tensor]


def check_packing_mode(mode: str, option: str = "data.packing", modes: Sequence[str] = PACKING_MODES) -> str:
    """``mode`` if it is one of ``modes``, else a ConfigError naming ``option`` (the one check of the option)."""
    if mode not in modes:
        raise ConfigError(f"{option}={mode!r} is not an option; choose one of {list(modes)}")
    return mode


def is_packed(batch: Batch) -> bool:
    """True for a ``padding_free`` / ``prefix_shared`` batch (it carries ``packed_attention``)."""
    return "packed_attention" in batch


@dataclass
class ScoringPlan:
    """Which hidden state predicts which scored token of which sequence (see the module docstring)."""

    index: torch.Tensor  # [n] flat index into R*T
    target: torch.Tensor  # [n] token ids
    sequence: torch.Tensor  # [n] 0..2B-1
    num_sequences: int

    def lengths(self) -> torch.Tensor:
        """``[2B]`` scored (completion) tokens per sequence."""
        return torch.bincount(self.sequence, minlength=self.num_sequences)


def scoring_plan(batch: Batch) -> ScoringPlan:
    """The scoring plan of a batch of any mode (built from ``completion_mask`` for a padded one)."""
    if is_packed(batch):
        return ScoringPlan(batch["score_index"], batch["score_target"], batch["score_sequence"],
                           2 * batch["pair_index"].numel())
    input_ids, completion = batch["input_ids"], batch["completion_mask"].bool()
    width = input_ids.shape[1]
    # Hidden state at t-1 predicts token t.
    row, position = completion[:, 1:].nonzero(as_tuple=True)  # [n] each
    return ScoringPlan(row * width + position, input_ids[:, 1:][row, position], row, input_ids.shape[0])


def sequence_token_counts(batch: Batch, plan: Optional[ScoringPlan] = None) -> torch.Tensor:
    """``[2, 2B]``: per sequence, its prompt + completion tokens and its completion tokens (``plan``: the
    batch's scoring plan if already built)."""
    if is_packed(batch):
        tokens = batch["sequence_tokens"]
        return torch.stack([tokens, (plan or scoring_plan(batch)).lengths().to(tokens.dtype)])
    return torch.stack([batch["attention_mask"].sum(-1), batch["completion_mask"].sum(-1)])


def attention_for(batch: Batch, attn_implementation: str, dtype: torch.dtype) -> torch.Tensor:
    """The 4-D mask of a packed batch as the attention implementation wants it: SDPA takes the boolean mask,
    eager attention adds its mask to the scores, so it gets 0 / most-negative values of ``dtype``."""
    allowed = batch["packed_attention"]
    if attn_implementation == "eager":
        return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill_(
            ~allowed, torch.finfo(dtype).min)
    return allowed


def unsupported_reason(mode: str, model) -> Optional[str]:
    """Why ``model`` cannot score ``mode`` batches exactly, or None when it can."""
    if mode == "none":
        return None
    config = unwrap_peft(model).config
    model_type = getattr(config, "model_type", None)
    if model_type not in PACKABLE_MODEL_TYPES:
        return (f"packed batches are checked for exactness only on {', '.join(PACKABLE_MODEL_TYPES)} models "
                f"(their positions come from position_ids and their attention takes a custom mask)")
    implementation = getattr(config, "_attn_implementation", None) or "eager"
    if implementation not in MASK_ATTENTION:
        return (f"its attention implementation {implementation!r} does not apply a custom 4-D attention mask "
                f"(packed rows need one); load it with attn_implementation='sdpa' or 'eager'")
    sliding = getattr(config, "sliding_window", None)
    if sliding is not None and getattr(config, "use_sliding_window", True):
        return (f"its sliding-window attention (sliding_window={sliding}) is replaced by a packed batch's mask, "
                f"so tokens further apart than the window would see each other")
    return None


def resolve_packing(requested: str, models: Sequence[Any]) -> Tuple[str, Optional[str]]:
    """The mode to use for ``requested`` with these models (policy, reference), and why ``auto`` fell back.

    ``auto`` picks ``prefix_shared`` when every model serves it exactly, else ``none`` (the reason is
    returned for the log). An explicit mode a model cannot serve raises a ConfigError naming ``data.packing``.
    """
    check_packing_mode(requested)
    # Both packed modes need the same support (a custom 4-D mask and position_ids), and prefix_shared does less work.
    candidates = ("prefix_shared",) if requested == "auto" else (requested,)
    reasons = []
    for mode in candidates:
        reason = next((r for r in (unsupported_reason(mode, m) for m in models if m is not None) if r), None)
        if reason is None:
            return mode, ("; ".join(reasons) or None)
        model_type = next(getattr(unwrap_peft(m).config, "model_type", "?") for m in models if m is not None)
        reasons.append(f"data.packing={mode} cannot serve model type {model_type!r}: {reason}")
        if requested != "auto":
            raise ConfigError(f"{reasons[-1]}. Use data.packing=none (padded batches) or auto.")
    return "none", "; ".join(reasons) + "; using padded batches (data.packing=none)"


@runtime_checkable
class PackingResolver(Protocol):
    """A data module whose batch layout waits for the model: the one way the model side tells the data side
    which models will score its batches.

    ``data.packing: auto`` can only be decided once the policy's and reference's attention implementations are
    known, which is in the LightningModule's ``setup``; the module then calls ``resolve_packing([policy,
    reference])`` on ``trainer.datamodule`` if it is a PackingResolver (``PreferenceDataModule`` is one). Any
    other data module (a user's own LightningDataModule, or bare dataloaders) is used as it is: its padded
    batches need nothing, and a packed batch it builds is checked by :func:`check_packable` when scored.
    """

    def resolve_packing(self, models: Sequence[Any]) -> str:
        """Fix the batches' mode for ``models`` (policy, reference or None) and return it."""
        ...


def check_packable(model) -> None:
    """Raise a ConfigError naming ``data.packing`` when ``model`` cannot score packed batches exactly (for a
    packed batch built without :func:`resolve_packing`, e.g. by a data module used directly)."""
    reason = unsupported_reason("prefix_shared", model)
    if reason is not None:
        model_type = getattr(unwrap_peft(model).config, "model_type", "?")
        raise ConfigError(f"data.packing: a packed batch cannot be scored by model type {model_type!r}: {reason}. "
                          f"Use data.packing=none or auto.")


__all__ = ["MASK_ATTENTION", "PACKABLE_MODEL_TYPES", "PACKING_MODES", "Batch", "PackingResolver", "ScoringPlan",
           "attention_for",
           "check_packable", "check_packing_mode", "is_packed", "resolve_packing", "scoring_plan",
           "sequence_token_counts", "unsupported_reason"]
