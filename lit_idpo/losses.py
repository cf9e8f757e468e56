"""Preference losses on log-ratios, and the Intermediate DPO loss over layers.

Notation for one pair and one layer: the policy-vs-reference log-ratio of a completion is
``r(y) = log pi(y|x) - log ref(y|x)``; the preference margin is ``h = r(y_w) - r(y_l)``.
Per-pair losses (the definitions TRL uses, so numbers compare one to one):

    sigmoid  -(1-eps) log s(beta h) - eps log s(-beta h)             (eps = label_smoothing: cDPO)
    robust   (-(1-eps) log s(beta h) + eps log s(-beta h)) / (1 - 2 eps)
    hinge    max(0, 1 - beta h)                                       (SLiC)
    ipo      (h - 1 / (2 beta))^2                                      (IPO; feed it length-averaged
                                                                        log-probs, as TRL does)

Intermediate DPO combines the final layer (row 0) with K selected intermediate layers (rows 1..K):

    L = gamma * L(final) + (1 - gamma) * mean_k L(layer k)

each ``L(.)`` being the batch mean of the per-pair loss. ``gamma = 1`` or ``K = 0`` is plain DPO.

Default ``gamma = 0.5``: the final and the intermediate terms weigh the same. The paper (Kojima,
2024) combines them as a weighted sum; its exact weight is not restated here, so the default is the
neutral choice and the weight is a first-class option (the layer sweep varies it).

The early-exit term (:func:`exit_nll`, ``model.exit_loss_weight = w``) adds a language-modelling loss on the
chosen completions at the intermediate layers, so that layer k read through the shared head becomes a usable
draft model (LayerSkip-style self-speculative decoding):

    L_total = L + w * mean_k NLL_k,   NLL_k = -(sum of chosen-token log-probs at layer k) / (chosen tokens)
"""

from __future__ import annotations

from typing import Dict, Tuple

import torch
import torch.nn.functional as F

LOSS_TYPES = ("sigmoid", "robust", "hinge", "ipo")


def preference_loss(
    chosen_logratios: torch.Tensor,
    rejected_logratios: torch.Tensor,
    *,
    beta: float = 0.1,
    loss_type: str = "sigmoid",
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """Per-pair preference loss from policy-vs-reference log-ratios (any shape, elementwise)."""
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"loss_type={loss_type!r} is unknown; choose one of {LOSS_TYPES}.")
    if beta <= 0:
        raise ValueError(f"beta={beta} must be > 0.")
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing={label_smoothing} must be in [0, 0.5).")
    if label_smoothing and loss_type not in ("sigmoid", "robust"):
        raise ValueError(f"label_smoothing applies to loss_type 'sigmoid' or 'robust', not {loss_type!r}; set it to 0.")
    margin = chosen_logratios - rejected_logratios
    if loss_type == "sigmoid":
        return -(1 - label_smoothing) * F.logsigmoid(beta * margin) - label_smoothing * F.logsigmoid(-beta * margin)
    if loss_type == "robust":
        agree, disagree = F.logsigmoid(beta * margin), F.logsigmoid(-beta * margin)
        return (-(1 - label_smoothing) * agree + label_smoothing * disagree) / (1 - 2 * label_smoothing)
    if loss_type == "hinge":
        return torch.relu(1 - beta * margin)
    return (margin - 1 / (2 * beta)) ** 2  # ipo


def sequence_logps_for_loss(sums: torch.Tensor, completion_lengths: torch.Tensor, loss_type: str) -> torch.Tensor:
    """The sequence log-probs ``loss_type`` compares: the sums themselves, or for ``ipo`` their per-token mean.

    IPO's target margin ``1 / (2 beta)`` is on length-averaged log-probs (as in TRL), so ``ipo`` divides
    each column by its completion's token count. Applied to the policy's and the reference's sums alike
    (cached reference values are stored as sums, so one cache serves every loss type).

    Args:
        sums: ``[..., N]`` summed completion-token log-probs, one column per sequence.
        completion_lengths: ``[N]`` completion tokens scored per sequence (clamped to at least 1).
        loss_type: one of :data:`LOSS_TYPES`.
    """
    if loss_type == "ipo":
        return sums / completion_lengths.clamp(min=1)
    return sums


def exit_nll(chosen_sums: torch.Tensor, chosen_lengths: torch.Tensor) -> torch.Tensor:
    """Per-layer negative log-likelihood of the chosen completions, averaged over their tokens.

    Token-mean over the whole batch, not a mean of per-sequence means: for each layer,
    ``NLL = -(sum of the log-probs of every chosen completion token in the batch) / (number of those tokens)``,
    so a long completion weighs by its length and the value does not depend on how the batch is packed.
    The inputs are the per-sequence SUMS the DPO term already uses (no extra LM-head pass).

    Args:
        chosen_sums: ``[K, B]`` summed completion-token log-probs of the ``B`` chosen sequences at each of
            ``K`` layers (un-averaged, whatever the loss type).
        chosen_lengths: ``[B]`` completion tokens scored per chosen sequence.

    Returns:
        ``[K]``: the token-mean NLL per layer (0 for a batch without completion tokens).
    """
    if chosen_sums.dim() != 2 or chosen_lengths.shape != chosen_sums.shape[1:]:
        raise ValueError(f"exit_nll: expected sums [K, B] and lengths [B], got {tuple(chosen_sums.shape)} and "
                         f"{tuple(chosen_lengths.shape)}.")
    tokens = chosen_lengths.sum().clamp(min=1).to(chosen_sums.dtype)
    return -chosen_sums.sum(dim=1) / tokens  # [K]


def intermediate_dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    *,
    beta: float = 0.1,
    gamma: float = 0.5,
    loss_type: str = "sigmoid",
    label_smoothing: float = 0.0,
) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """Intermediate DPO loss and per-layer metrics.

    Args:
        policy_chosen, policy_rejected, ref_chosen, ref_rejected: ``[1 + K, B]`` sequence log-probs;
            row 0 is the final layer, rows 1..K the selected intermediate layers.
        beta: DPO temperature (the KL strength).
        gamma: weight of the final layer's loss; ``1 - gamma`` goes to the mean intermediate loss.
        loss_type: ``"sigmoid"`` (DPO), ``"robust"``, ``"hinge"`` or ``"ipo"``.
        label_smoothing: assumed label-noise rate for ``sigmoid`` (cDPO) and ``robust``.

    Returns:
        ``(loss, metrics)``: the scalar loss, and a dict of ``[1 + K]`` tensors (detached), one entry per
        layer row: ``loss``, ``rewards/chosen``, ``rewards/rejected``, ``rewards/margins``,
        ``rewards/accuracies``, ``logps/chosen``, ``logps/rejected`` (TRL's meanings, batch means).
    """
    shapes = {t.shape for t in (policy_chosen, policy_rejected, ref_chosen, ref_rejected)}
    if len(shapes) != 1:
        raise ValueError("intermediate_dpo_loss: all four inputs must have one shape [1 + K, B], "
                         f"got {sorted(map(tuple, shapes))}.")
    if policy_chosen.dim() != 2 or policy_chosen.shape[0] < 1:
        raise ValueError(f"intermediate_dpo_loss: inputs must be [1 + K, B], got {tuple(policy_chosen.shape)}.")
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"gamma={gamma} must be in [0, 1] (1 is plain DPO).")

    chosen_logratios = policy_chosen - ref_chosen  # [1+K, B]
    rejected_logratios = policy_rejected - ref_rejected  # [1+K, B]
    per_pair = preference_loss(chosen_logratios, rejected_logratios, beta=beta, loss_type=loss_type,
                               label_smoothing=label_smoothing)  # [1+K, B]
    per_layer = per_pair.mean(dim=1)  # [1+K]
    num_intermediate = per_layer.shape[0] - 1
    if num_intermediate == 0 or gamma == 1.0:
        loss = per_layer[0]
    else:
        loss = gamma * per_layer[0] + (1 - gamma) * per_layer[1:].mean()

    with torch.no_grad():
        chosen_rewards = beta * chosen_logratios.detach()
        rejected_rewards = beta * rejected_logratios.detach()
        metrics = {
            "loss": per_layer.detach(),
            "rewards/chosen": chosen_rewards.mean(1),
            "rewards/rejected": rejected_rewards.mean(1),
            "rewards/margins": (chosen_rewards - rejected_rewards).mean(1),
            "rewards/accuracies": (chosen_rewards > rejected_rewards).float().mean(1),
            "logps/chosen": policy_chosen.detach().mean(1),
            "logps/rejected": policy_rejected.detach().mean(1),
        }
    return loss, metrics
