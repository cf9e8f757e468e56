"""Shared test helpers: float64 truths computed independently of lit-idpo's code, and batch builders.

Every truth here is written the plain way (explicit full-vocabulary logits, autograd or the
closed-form gradient), never through the functions under test.
"""

from __future__ import annotations

from typing import Sequence

import torch

IGNORE_INDEX = -100


# --------------------------------------------------------------------------------------------------
# Fused LM-head op: log_softmax(hidden @ weight.T)[row, target]
# --------------------------------------------------------------------------------------------------


def head_inputs(lead: Sequence[int], d: int, vocab: int, *, dtype=torch.float64, seed: int = 0,
                scale: float = 1.0, device="cpu"):
    """Random ``hidden [*lead, d]``, ``weight [vocab, d]``, ``targets [*lead]`` and upstream gradient ``[*lead]``.

    Scaled so the logits spread over a few units whatever ``d`` (a realistic softmax). The first and
    last rows target the first and last vocabulary entries, so the ends of the vocabulary are hit.
    """
    gen = torch.Generator().manual_seed(seed)
    std = scale / max(d, 1) ** 0.25
    hidden = torch.randn(*lead, d, generator=gen, dtype=torch.float64) * std
    weight = torch.randn(vocab, d, generator=gen, dtype=torch.float64) * std
    targets = torch.randint(0, vocab, tuple(lead), generator=gen)
    flat = targets.view(-1)
    if flat.numel():
        flat[0] = 0
        flat[-1] = vocab - 1
    upstream = torch.randn(*lead, generator=gen, dtype=torch.float64)
    return (hidden.to(device=device, dtype=dtype), weight.to(device=device, dtype=dtype), targets.to(device),
            upstream.to(device))


def head_truth(hidden, weight, targets, upstream, ignore_index: int = IGNORE_INDEX):
    """float64 values and gradients of the head op from explicit logits; ignored rows give 0 and no gradient.

    Returns ``(values [*lead], grad_hidden, grad_weight)``.
    """
    h = hidden.detach().double().requires_grad_()
    w = weight.detach().double().requires_grad_()
    t = targets
    keep = t != ignore_index
    logits = h @ w.t()
    token = torch.log_softmax(logits, dim=-1).gather(-1, torch.where(keep, t, 0).unsqueeze(-1)).squeeze(-1)
    value = torch.where(keep, token, torch.zeros_like(token))
    grad_h, grad_w = torch.autograd.grad(value, (h, w), upstream.detach().double())
    return value.detach(), grad_h, grad_w


def assert_no_worse_than_eager(fused, eager, truth, eps):
    """The Cut Cross-Entropy rule: err(fused) <= err(eager) + tol against the float64 ``truth``, for the value
    and both gradients (``(value, grad_hidden, grad_weight)`` triples; a None gradient, frozen, is skipped),
    in max and in mean abs error. ``eps``: the input dtype's machine epsilon.

    Max error: tol = two ulps of the largest entry. The gradients come back in the input dtype, so
    both sides carry a final rounding of up to half an ulp per entry, and the largest of N*d errors
    is a noisy statistic: a different (even better) result can land an ulp or two away somewhere.
    Mean error: tol = one ulp of the mean entry; this one catches a systematic loss of accuracy.
    """
    for name, f, e, ref in zip(("value", "grad_hidden", "grad_weight"), fused, eager, truth):
        if f is None and e is None:
            continue
        err_f, err_e = (f.double() - ref).abs(), (e.double() - ref).abs()
        tol_max = 2 * eps * ref.abs().max().item()
        tol_mean = eps * ref.abs().mean().item()
        assert err_f.max() <= err_e.max() + tol_max, (
            f"{name}: fused max error {err_f.max():.3g} > eager {err_e.max():.3g} + {tol_max:.3g}"
        )
        assert err_f.mean() <= err_e.mean() + tol_mean, (
            f"{name}: fused mean error {err_f.mean():.3g} > eager {err_e.mean():.3g} + {tol_mean:.3g}"
        )


# --------------------------------------------------------------------------------------------------
# Token batches
# --------------------------------------------------------------------------------------------------


def padded_rows(vocab: int, generator: torch.Generator, lengths=(9, 6, 11), prompt_lengths=(4, 2, 5), left=False):
    """Random token rows with padding (right, or left with ``left=True``); the completion follows the prompt.

    Returns ``input_ids, attention_mask, completion_mask`` (``[B, T]`` each).
    """
    T, B = max(lengths), len(lengths)
    input_ids = torch.zeros(B, T, dtype=torch.long)
    attention_mask = torch.zeros(B, T, dtype=torch.long)
    completion_mask = torch.zeros(B, T, dtype=torch.long)
    for b, (n, p) in enumerate(zip(lengths, prompt_lengths)):
        start = T - n if left else 0
        input_ids[b, start:start + n] = torch.randint(1, vocab, (n,), generator=generator)
        attention_mask[b, start:start + n] = 1
        completion_mask[b, start + p:start + n] = 1
    return input_ids, attention_mask, completion_mask


def pair_batch(vocab: int = 1000, pairs: int = 2, length: int = 10, prompt: int = 5, seed: int = 0):
    """A training batch of ``pairs`` preference pairs (chosen rows first, then rejected), no padding."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, vocab, (2 * pairs, length), generator=g)
    completion = torch.zeros_like(ids)
    completion[:, prompt:] = 1
    return dict(input_ids=ids, attention_mask=torch.ones_like(ids), completion_mask=completion,
                pair_index=torch.arange(pairs))


# --------------------------------------------------------------------------------------------------
# Per-layer sequence log-probs of a Hugging Face causal LM
# --------------------------------------------------------------------------------------------------


def layer_logprob_sums(model, input_ids, attention_mask, completion_mask, layers: Sequence[int]) -> torch.Tensor:
    """float64 truth ``[len(layers), B]``: summed completion-token log-probs read at each layer.

    Layer ``l`` (1..L) is the output of decoder block ``l`` read through the final norm and the LM
    head; the final layer is the model's own logits. Built from the model's full forward with
    ``output_hidden_states`` and explicit full-vocabulary logits; position ids count real tokens, so
    left padding gives the same values as right padding. The model is run in float64 in eval mode and restored.
    """
    dtype, training = next(model.parameters()).dtype, model.training
    model.double().eval()  # no dropout (GPT-2 configs have it)
    try:
        with torch.no_grad():
            position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
            out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                        output_hidden_states=True)
            num_layers = len(out.hidden_states) - 1
            head = model.get_output_embeddings()
            norm = _final_norm(model)
            sums = []
            for layer in layers:
                layer = layer + num_layers + 1 if layer < 0 else layer
                logits = out.logits if layer == num_layers else head(norm(out.hidden_states[layer]))
                logp = torch.log_softmax(logits[:, :-1].double(), -1).gather(-1, input_ids[:, 1:, None]).squeeze(-1)
                sums.append((logp * completion_mask[:, 1:]).sum(-1))
    finally:
        model.to(dtype).train(training)
    return torch.stack(sums)


def _final_norm(model):
    """The final normalisation of the common decoder families (Llama/Qwen2/Mistral: ``model.norm``; GPT-2: ``ln_f``)."""
    base = model.base_model
    for name in ("norm", "ln_f", "final_layernorm"):
        if hasattr(base, name):
            return getattr(base, name)
    raise AssertionError(f"no final norm found on {type(model).__name__}")
