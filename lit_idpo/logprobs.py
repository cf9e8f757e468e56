"""Model + batch -> per-layer sequence log-probs of the completion tokens.

For a layer ``l`` (1..L, the output of decoder block ``l``) the log-prob of a completion comes from
``lm_head(final_norm(h_l))``: the model's own final norm and LM head, nothing new is trained. The
final layer (``l = L``) uses the model's normal output path. Hugging Face backbones return
``hidden_states`` as L+1 tensors whose LAST entry is already after the final norm, so the norm is
applied to intermediate entries only, never twice to the last.

The CausalLM forward would build ``[B, T, V]`` logits for every position; we run the backbone alone,
keep only the rows that predict a completion token (prompt and padding rows never reach the head),
and push the rows of every selected layer through ONE :func:`linear_logprobs` call. Padded and packed
batches (``data.packing``, :mod:`lit_idpo.batch`) take the same path: a batch's scoring plan
names, for each scored token, the hidden state that predicts it and the sequence it belongs to.

Under FSDP the head weight is whole only inside its module's forward, so the computation runs as the
causal LM's forward and the head call as the LM head's (:func:`call_as_forward`); under autocast the
op itself casts (lit_idpo.kernels.precision). Why, in detail: docs/kernels.md, "From a model to the op".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Sequence

import torch
from torch import nn

from lit_idpo.batch import ScoringPlan, attention_for, is_packed, scoring_plan
from lit_idpo.kernels import LinearLogprobsOptions, linear_logprobs
from lit_idpo.layers import resolve_layers
from lit_idpo.models import unwrap_peft

# Attribute names under which backbones keep their final norm (Llama/Mistral/Qwen2/Gemma: norm;
# GPT-2/GPT-J/Falcon: ln_f; GPT-NeoX/OPT: final_layer_norm; Phi: final_layernorm).
_FINAL_NORM_NAMES = ("norm", "ln_f", "final_layer_norm", "final_layernorm")
# Model types whose layout (hidden_states[-1] already normed, head applied without post-processing)
# the tests check against the CausalLM's own logits. Others are checked once at run time.
_VERIFIED_MODEL_TYPES = {"llama", "mistral", "qwen2", "qwen3", "gpt2"}
# Config fields that post-process logits after the head; we refuse rather than return wrong numbers.
_LOGIT_POSTPROCESSING = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier_scale")


@dataclass
class HeadPath:
    """Where a causal LM keeps the pieces sequence_logprobs needs."""

    backbone: nn.Module  # the decoder stack: returns hidden_states
    final_norm: nn.Module  # applied to intermediate hidden states
    lm_head: nn.Module  # output embeddings: a bias-free Linear [V, d]
    num_layers: int


def find_head_path(model: nn.Module) -> HeadPath:
    """Locate backbone, final norm and LM head of a Hugging Face causal LM, or raise a clear error."""
    model = unwrap_peft(model)
    name = type(model).__name__
    config = getattr(model, "config", None)
    if config is None:
        raise ValueError(f"sequence_logprobs: {name} has no Hugging Face config; pass a transformers causal LM.")
    for field in _LOGIT_POSTPROCESSING:
        value = getattr(config, field, None)
        if value not in (None, 1, 1.0, False):
            raise ValueError(
                f"sequence_logprobs: {name} post-processes its logits ({field}={value}); the fused head does not "
                f"support that, so its log-probs would be wrong. Use a model without {field}."
            )
    backbone = getattr(model, "base_model", None)
    if backbone is None or backbone is model:
        raise ValueError(f"sequence_logprobs: cannot find the decoder backbone of {name} (no base_model).")
    final_norm = next(
        (getattr(backbone, n) for n in _FINAL_NORM_NAMES if isinstance(getattr(backbone, n, None), nn.Module)), None)
    if final_norm is None:
        raise ValueError(
            f"sequence_logprobs: cannot find the final norm of {name} (looked for {', '.join(_FINAL_NORM_NAMES)} on "
            f"{type(backbone).__name__}); this architecture is not supported."
        )
    lm_head = model.get_output_embeddings()
    if hasattr(lm_head, "base_layer"):
        raise ValueError(
            f"sequence_logprobs: the LM head of {name} carries peft adapters; the fused head reads its base weight "
            f"only, so the adapters would be ignored. Leave lm_head out of the LoRA target modules.")
    if lm_head is None or not isinstance(getattr(lm_head, "weight", None), torch.Tensor) or lm_head.weight.dim() != 2:
        raise ValueError(f"sequence_logprobs: cannot find the LM head (output embeddings) of {name}.")
    if getattr(lm_head, "bias", None) is not None:
        raise ValueError(f"sequence_logprobs: the LM head of {name} has a bias, which the fused head does not support.")
    num_layers = getattr(config, "num_hidden_layers", None) or getattr(config, "n_layer", None)
    if not num_layers:
        raise ValueError(f"sequence_logprobs: {name}'s config gives no number of layers (num_hidden_layers).")
    return HeadPath(backbone=backbone, final_norm=final_norm, lm_head=lm_head, num_layers=int(num_layers))


_NO_FORWARD = object()


def call_as_forward(module: nn.Module, fn, *args):
    """Run ``fn(*args)`` as the forward of ``module`` (through ``module.__call__``), so that whatever a
    wrapper does around that module's forward happens around ``fn``: FSDP2 unshards the module's
    parameters in its forward hooks, an FSDP1 wrapper in its own forward. ``fn`` must read parameters
    from the module while it runs (they are swapped for full tensors only then).

    The instance's ``forward`` is replaced for the call and restored afterwards (including a ``forward``
    another library had set on the instance); Lightning redirects ``training_step`` the same way.
    """
    inner = getattr(module, "_fsdp_wrapped_module", module)  # FSDP1: its own forward unshards, then calls inner
    saved = inner.__dict__.get("forward", _NO_FORWARD)
    inner.forward = fn
    try:
        return module(*args)
    finally:
        if saved is _NO_FORWARD:
            del inner.forward
        else:
            inner.forward = saved


def _head_module(lm_head: nn.Module) -> nn.Module:
    return getattr(lm_head, "_fsdp_wrapped_module", lm_head)


def _verify_head_path_once(model: nn.Module, path: HeadPath) -> None:
    """For an unverified architecture, check once that lm_head(hidden_states[-1]) equals its logits."""
    base = unwrap_peft(model)
    if getattr(base, "_lit_idpo_head_verified", False):
        return
    if getattr(base.config, "model_type", None) in _VERIFIED_MODEL_TYPES:
        return
    probe = torch.arange(1, 5, device=path.lm_head.weight.device).unsqueeze(0) % path.lm_head.weight.shape[0]  # [1, 4]
    with torch.no_grad():
        out = base(input_ids=probe, output_hidden_states=True)
        ours = path.lm_head(out.hidden_states[-1]).float()
        if not torch.allclose(ours, out.logits.float(), rtol=1e-3, atol=1e-3):
            raise ValueError(
                f"sequence_logprobs: {type(base).__name__} does not produce its logits as lm_head(last hidden state); "
                f"its intermediate-layer log-probs cannot be computed reliably, so it is not supported."
            )
    base._lit_idpo_head_verified = True


def sequence_logprobs(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    completion_mask: torch.Tensor,
    layers: Sequence[int],
    *,
    backend: str = "auto",
) -> torch.Tensor:
    """Summed completion-token log-probs of a causal LM, read at several layers (padded rows).

    Args:
        model: a Hugging Face causal LM (Llama/Mistral/Qwen2-style or GPT-2-style), or a peft model.
        input_ids: ``[B, T]`` token ids, right- or left-padded.
        attention_mask: ``[B, T]`` 1 on real tokens, 0 on padding.
        completion_mask: ``[B, T]`` 1 on the tokens whose log-prob counts (the completion); the token at
            position t is predicted from position t-1, so position 0 can never be marked.
        layers: layer numbers 1..L (the output of decoder block l; L is the final layer, which uses the
            model's normal output path) or negative numbers counted from the end (-1 is L).
        backend: :func:`linear_logprobs` backend (``"auto"``: triton on CUDA, torch elsewhere).

    Returns:
        ``[len(layers), B]`` float32 (float64 for a float64 model): per layer, in the given order, the
        sum of the completion tokens' log-probs. :func:`batch_logprobs` does the same for a batch of any
        packing mode.
    """
    if input_ids.dim() != 2 or attention_mask.shape != input_ids.shape or completion_mask.shape != input_ids.shape:
        raise ValueError(
            f"sequence_logprobs: input_ids, attention_mask and completion_mask must share one [B, T] shape, got "
            f"{tuple(input_ids.shape)}, {tuple(attention_mask.shape)}, {tuple(completion_mask.shape)}."
        )
    completion = completion_mask.bool()
    if completion[:, 0].any():
        raise ValueError("sequence_logprobs: completion_mask marks position 0, which no earlier token predicts.")
    if (completion & ~attention_mask.bool()).any():
        raise ValueError("sequence_logprobs: completion_mask marks padding (attention_mask is 0 there).")
    batch = {"input_ids": input_ids, "attention_mask": attention_mask, "completion_mask": completion_mask}
    return batch_logprobs(model, batch, layers, backend=backend)


def _model_inputs(batch: Dict[str, torch.Tensor], model: nn.Module, dtype: torch.dtype) -> Dict[str, torch.Tensor]:
    """input_ids, attention mask (2-D padding mask or packed 4-D mask) and position_ids of a batch."""
    if is_packed(batch):
        implementation = getattr(unwrap_peft(model).config, "_attn_implementation", None) or "eager"
        return {"input_ids": batch["input_ids"], "position_ids": batch["position_ids"],
                "attention_mask": attention_for(batch, implementation, dtype)}
    attention_mask = batch["attention_mask"]
    # Positions count real tokens only, so a left-padded row sees the same positions as a right-padded
    # one (the backbones' default is 0..T-1 regardless of padding).
    position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)  # [B, T]
    return {"input_ids": batch["input_ids"], "attention_mask": attention_mask, "position_ids": position_ids}


def batch_logprobs(model: nn.Module, batch: Dict[str, torch.Tensor], layers: Sequence[int], *,
                   backend: str = "auto", plan: Optional[ScoringPlan] = None) -> torch.Tensor:
    """Per-layer summed completion log-probs of the ``2B`` sequences of a batch of any packing mode.

    ``batch`` is a padded batch (``input_ids``, ``attention_mask``, ``completion_mask``) or a packed one
    (:mod:`lit_idpo.batch`). The backbone runs once; the hidden states that predict a completion
    token (the batch's scoring plan) are gathered from every selected layer and go through ONE
    :func:`linear_logprobs` call; the token log-probs are summed per sequence.

    Returns:
        ``[len(layers), 2B]`` (``[len(layers), B]`` for padded rows of any count): chosen sequences first, then
        rejected, as :func:`sequence_logprobs`.
    """
    if len(layers) == 0:
        raise ValueError("sequence_logprobs: layers is empty; pass at least one layer (-1 is the final layer).")
    options = LinearLogprobsOptions(backend=backend)
    path = find_head_path(model)
    layer_ids = resolve_layers(list(layers), path.num_layers)
    _verify_head_path_once(model, path)
    plan = scoring_plan(batch) if plan is None else plan  # built once per batch by the caller that has it

    def compute() -> torch.Tensor:
        inputs = _model_inputs(batch, model, path.lm_head.weight.dtype)
        outputs = path.backbone(**inputs, output_hidden_states=True, use_cache=False)
        hidden_states = outputs.hidden_states  # L+1 x [R, T, d]; the last is already normed

        rows = []
        for layer in layer_ids:
            h = hidden_states[layer].flatten(0, 1)[plan.index]  # [n, d]: the states that predict a scored token
            rows.append(h if layer == path.num_layers else path.final_norm(h))
        stacked = torch.stack(rows)  # [layers, n, d]
        layer_targets = plan.target.unsqueeze(0).expand(len(layer_ids), -1)  # [layers, n]
        head = _head_module(path.lm_head)
        # Under autocast (Lightning's *-mixed precision) the op itself casts to the autocast dtype.
        token_logprobs = call_as_forward(
            path.lm_head, lambda: linear_logprobs(stacked, head.weight, layer_targets, options=options))  # [layers, n]

        sums = token_logprobs.new_zeros(len(layer_ids), plan.num_sequences)  # [layers, 2B]
        return sums.index_add(1, plan.sequence, token_logprobs)

    return call_as_forward(unwrap_peft(model), compute)
